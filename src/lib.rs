//! vipps-order-gateway: holds Vipps MobilePay secrets centrally and offers a
//! simple REST façade over the Order Management API.
//!
//! A request flows one way: a `facade` handler parses it into domain types,
//! `translate` builds the Vipps request, the `vipps` client sends it with a
//! token from the cache, and the answer maps back to a response or a problem.

pub mod auth;
pub mod cli;
pub mod config;
pub mod domain;
pub mod error;
pub mod facade;
pub mod ops;
pub mod proxy;
pub mod request_id;
pub mod simulator;
pub mod telemetry;
pub mod translate;
pub mod vipps;

use std::net::TcpListener;
use std::sync::Arc;

use actix_web::dev::Server;
use actix_web::middleware::from_fn;
use actix_web::{web, App, HttpServer};

use crate::config::{ConfigError, Settings};
use crate::error::{ApiError, Kind};
use crate::facade::{AppState, MerchantRegistry};
use crate::vipps::{Upstream, VippsClient};

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: String,
        source: std::io::Error,
    },
    #[error("invalid settings: {0}")]
    Invalid(String),
}

/// Re-reads merchants and their secrets on demand (`SIGHUP`).
#[derive(Clone)]
pub struct Reloader {
    settings: Arc<Settings>,
    state: web::Data<AppState>,
    upstream: Arc<Upstream>,
}

impl Reloader {
    /// Reads every secret again; on success replaces the merchants and drops
    /// cached tokens, on failure keeps serving with the old ones.
    pub fn reload(&self, env: &dyn Fn(&str) -> Option<String>) -> Result<usize, ConfigError> {
        let merchants = self.settings.load_merchants(env)?;
        let n = merchants.len();
        self.state.merchants.replace(merchants);
        self.upstream.tokens.clear();
        Ok(n)
    }
}

/// The gateway, bound and ready to run.
pub struct Application {
    port: u16,
    server: Server,
    reloader: Reloader,
}

impl Application {
    /// Binds `settings.listen` and builds the server; secrets come from the
    /// process environment and the files the settings name.
    pub fn build(settings: Settings) -> Result<Self, StartupError> {
        let listener =
            TcpListener::bind(&settings.listen).map_err(|source| StartupError::Listen {
                addr: settings.listen.clone(),
                source,
            })?;
        Self::build_with_listener(settings, listener, &|k| std::env::var(k).ok())
    }

    /// Builds the server on a bound listener (tests bind port 0).
    pub fn build_with_listener(
        settings: Settings,
        listener: TcpListener,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, StartupError> {
        // awc's rustls needs a process-wide crypto provider; installing twice is harmless.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let merchants = settings.load_merchants(env)?;
        let port = listener
            .local_addr()
            .map_err(|source| StartupError::Listen {
                addr: settings.listen.clone(),
                source,
            })?
            .port();
        let upstream = Arc::new(Upstream::new(&settings).map_err(StartupError::Invalid)?);
        let state = web::Data::new(AppState {
            merchants: MerchantRegistry::new(merchants),
            limits: settings.limits.clone(),
        });
        let reloader = Reloader {
            settings: Arc::new(settings.clone()),
            state: state.clone(),
            upstream: upstream.clone(),
        };
        let app_state = state.clone();
        let up = upstream.clone();
        let proxy_settings = settings.proxy.clone();
        let mut server = HttpServer::new(move || {
            App::new()
                .wrap(from_fn(request_id::middleware))
                .app_data(app_state.clone())
                .app_data(web::Data::new(VippsClient::new(up.clone())))
                .app_data(web::QueryConfig::default().error_handler(|e, _| {
                    ApiError::field(Kind::InvalidRequest, "query", e.to_string()).into()
                }))
                .app_data(web::PathConfig::default().error_handler(|e, _| {
                    ApiError::field(Kind::InvalidRequest, "path", e.to_string()).into()
                }))
                .configure(ops::routes)
                .configure(facade::routes)
                .configure(|cfg| proxy::routes(cfg, &proxy_settings))
                .default_service(web::to(not_found))
        })
        .listen(listener)
        .map_err(|source| StartupError::Listen {
            addr: "listener".into(),
            source,
        })?
        .disable_signals()
        .shutdown_timeout(settings.shutdown_grace.as_secs().max(1));
        if let Some(w) = settings.workers {
            server = server.workers(w);
        }
        Ok(Self {
            port,
            server: server.run(),
            reloader,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn reloader(&self) -> Reloader {
        self.reloader.clone()
    }

    /// The server future; its handle stops it.
    pub fn server(self) -> Server {
        self.server
    }
}

async fn not_found() -> Result<actix_web::HttpResponse, ApiError> {
    Err(ApiError::new(Kind::NotFound, "No such resource."))
}
