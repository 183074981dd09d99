//! The built-in Vipps simulator: an in-memory stand-in for the access token
//! API and the Order Management API 2.1 (order lines with `taxRate` or 2.0's
//! `taxPercentage`, and `/v3/categories`), so
//! the gateway runs and is tested with
//! no Vipps account and no network.
//!
//! It keeps its own model of the upstream ([`model`], [`validate`]), written
//! from the Vipps documents and independent of the gateway's client, so that a
//! mistake in the gateway's model cannot pass the gateway's own tests. It is
//! stricter than the upstream in one way: unknown body fields are rejected by
//! name. Tests drive it through the control API under `/_simulator/`.

mod control;
mod image;
// The typed model spells out the whole documented shape (deserializing into it
// is a check in itself); the rules read only some of its fields.
#[allow(dead_code)]
mod model;
mod preview;
mod state;
mod upstream;
mod validate;

use std::net::TcpListener;
use std::time::Duration;

use actix_web::dev::Server;
use actix_web::web::{self, Bytes};
use actix_web::{App, HttpRequest, HttpServer};

pub use state::DEFAULT_MAX_ORDERS;
use state::{Endpoint, Shared, State};

/// The demo merchant's serial number.
pub const DEMO_MSN: &str = "123456";
/// The demo merchant's `client_id`.
pub const DEMO_CLIENT_ID: &str = "demo-client-id";
/// The demo merchant's `client_secret`.
pub const DEMO_CLIENT_SECRET: &str = "demo-client-secret";
/// The demo merchant's `Ocp-Apim-Subscription-Key`.
pub const DEMO_SUBSCRIPTION_KEY: &str = "demo-subscription-key";

/// Bodies up to this size reach the simulator's own checks, so the simulator,
/// not the framework, judges sizes (a 2 MB image is about 2.7 MB of base64).
const BODY_LIMIT: usize = 4 * 1024 * 1024;

/// A merchant the simulator knows. The simulator's credentials are test
/// fixtures, so they are plain strings.
#[derive(Clone, Debug)]
pub struct SimMerchant {
    pub msn: String,
    pub client_id: String,
    pub client_secret: String,
    pub subscription_key: String,
}

impl SimMerchant {
    /// The demo merchant ([`DEMO_MSN`] and the other `DEMO_*` credentials).
    pub fn demo() -> Self {
        SimMerchant {
            msn: DEMO_MSN.to_owned(),
            client_id: DEMO_CLIENT_ID.to_owned(),
            client_secret: DEMO_CLIENT_SECRET.to_owned(),
            subscription_key: DEMO_SUBSCRIPTION_KEY.to_owned(),
        }
    }
}

/// How a simulator starts.
#[derive(Clone, Debug)]
pub struct SimulatorSettings {
    pub merchants: Vec<SimMerchant>,
    /// Lifetime of the tokens it issues (the upstream: 1 hour in test).
    pub token_ttl: Duration,
    pub workers: usize,
    /// How many orders it holds at most; past it, the order changed longest
    /// ago is forgotten (at least 1).
    pub max_orders: usize,
}

impl SimulatorSettings {
    /// The demo merchant, one-hour tokens, one worker.
    pub fn demo() -> Self {
        SimulatorSettings {
            merchants: vec![SimMerchant::demo()],
            token_ttl: Duration::from_secs(3600),
            workers: 1,
            max_orders: state::DEFAULT_MAX_ORDERS,
        }
    }
}

/// A simulator bound to a listener, ready to run.
pub struct Simulator {
    server: Server,
    port: u16,
}

impl Simulator {
    /// Binds nothing itself: takes a bound listener (tests pass 127.0.0.1:0).
    pub fn build(listener: TcpListener, settings: SimulatorSettings) -> std::io::Result<Simulator> {
        let port = listener.local_addr()?.port();
        let shared = web::Data::new(Shared::new(State::new(&settings)));
        let server = HttpServer::new(move || {
            App::new()
                .app_data(shared.clone())
                .app_data(web::PayloadConfig::new(BODY_LIMIT))
                .configure(routes)
        })
        .listen(listener)?
        .workers(settings.workers.max(1))
        .disable_signals()
        .run();
        Ok(Simulator { server, port })
    }

    /// The port the simulator listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server future; the caller spawns or awaits it.
    pub fn run(self) -> Server {
        self.server
    }
}

/// One actix handler per upstream endpoint, all going through
/// [`upstream::dispatch`].
macro_rules! upstream {
    ($endpoint:expr) => {
        |req: HttpRequest, body: Bytes, shared: web::Data<Shared>| {
            upstream::dispatch($endpoint, req, body, shared)
        }
    };
}

/// Every path is a `resource`, so an unlisted method on a known path is a 405.
fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/accesstoken/get").route(web::post().to(upstream!(Endpoint::Token))),
    )
    .service(
        web::resource("/order-management/v1/images")
            .route(web::post().to(upstream!(Endpoint::Image))),
    )
    .service(
        web::resource("/order-management/v1/orders/{transactionId}")
            .route(web::put().to(upstream!(Endpoint::V1OrderPut)))
            .route(web::get().to(upstream!(Endpoint::V1OrderGet))),
    )
    .service(
        web::resource("/order-management/v1/receipts/{transactionId}")
            .route(web::get().to(upstream!(Endpoint::V1ReceiptGet)))
            .route(web::post().to(upstream!(Endpoint::V1ReceiptPost))),
    )
    .service(
        web::resource("/order-management/v2/{paymentType}/categories/{orderId}")
            .route(web::put().to(upstream!(Endpoint::Category))),
    )
    .service(
        web::resource("/order-management/v2/{paymentType}/receipts/{orderId}")
            .route(web::post().to(upstream!(Endpoint::Receipt))),
    )
    .service(
        web::resource("/order-management/v2/{paymentType}/{orderId}")
            .route(web::get().to(upstream!(Endpoint::Order))),
    )
    .service(
        web::resource("/order-management/v3/categories")
            .route(web::post().to(upstream!(Endpoint::V3CategoryPost)))
            .route(web::get().to(upstream!(Endpoint::V3CategoryList))),
    )
    .service(
        web::resource("/order-management/v3/categories/{categoryId}")
            .route(web::get().to(upstream!(Endpoint::V3CategoryGet)))
            .route(web::delete().to(upstream!(Endpoint::V3CategoryDelete))),
    )
    .service(web::resource("/_simulator/orders").route(web::get().to(preview::index)))
    .service(
        web::resource("/_simulator/orders/{msn}/{paymentType}/{orderId}")
            .route(web::get().to(preview::order)),
    )
    .service(
        web::resource("/_simulator/images/{msn}/{imageId}").route(web::get().to(preview::image)),
    )
    .service(web::resource("/_simulator/state").route(web::get().to(control::state)))
    .service(web::resource("/_simulator/counters").route(web::get().to(control::counters)))
    .service(
        web::resource("/_simulator/requests")
            .route(web::get().to(control::requests))
            .route(web::delete().to(control::clear_requests)),
    )
    .service(
        web::resource("/_simulator/faults")
            .route(web::post().to(control::add_fault))
            .route(web::get().to(control::faults))
            .route(web::delete().to(control::clear_faults)),
    )
    .service(
        web::resource("/_simulator/tokens/expire").route(web::post().to(control::expire_tokens)),
    )
    .service(web::resource("/_simulator/settings").route(web::put().to(control::settings)))
    .service(web::resource("/_simulator/merchants").route(web::post().to(control::add_merchant)))
    .service(web::resource("/_simulator/reset").route(web::post().to(control::reset)));
}
