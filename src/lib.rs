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
pub mod metrics;
pub mod middleware;
pub mod ops;
pub mod outbox;
pub mod proxy;
pub mod request;
pub mod simulator;
pub mod state;
pub mod telemetry;
#[cfg(test)]
mod test_seed;
pub mod trace;
pub mod translate;
pub mod usecase;
pub mod vipps;

use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::Server;
use actix_web::middleware::from_fn;
use actix_web::{web, App, HttpServer};

use crate::auth::Authenticator;
use crate::config::{ConfigError, MerchantRegistry, Settings};
use crate::domain::Msn;
use crate::error::{ApiError, Kind};
use crate::metrics::Metrics;
use crate::outbox::worker::Worker;
use crate::outbox::Outbox;
use crate::state::AppState;
use crate::vipps::resilience::Guards;
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

/// Re-reads merchants' secrets and the caller-auth keys on demand (`SIGHUP`).
#[derive(Clone)]
pub struct Reloader {
    settings: Arc<Settings>,
    /// The config file the merchants come from, re-read on every reload
    /// so merchants can be added or removed without a restart.
    config_file: Option<Arc<std::path::Path>>,
    state: web::Data<AppState>,
    upstream: Arc<Upstream>,
    auth: web::Data<Authenticator>,
}

impl Reloader {
    /// Reads every secret and caller-auth key file again. On success
    /// replaces the keys and the merchants and drops the tokens of merchants
    /// whose credentials changed (or who are gone); on any failure keeps
    /// serving with the old ones. In-flight requests keep the merchant they
    /// started with. Returns the MSNs whose credentials changed.
    pub async fn reload(
        &self,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Vec<Msn>, ConfigError> {
        let keys = self.auth.prepare_reload()?;
        let fresh = match &self.config_file {
            // Merchants come from the file as it is now; other settings
            // keep their values until a restart.
            Some(path) => Settings::load(path, std::env::vars())?.load_merchants(env)?,
            None => self.settings.load_merchants(env)?,
        };
        self.auth.commit_reload(keys);
        let old = self.state.merchants.snapshot();
        let mut changed: Vec<Msn> = old
            .iter()
            .filter(|(msn, m)| fresh.get(*msn).is_none_or(|f| !f.same_credentials(m)))
            .map(|(msn, _)| msn.clone())
            .collect();
        changed.extend(fresh.keys().filter(|msn| !old.contains_key(*msn)).cloned());
        changed.sort();
        if !changed.is_empty() {
            self.state.merchants.replace(fresh);
            for msn in &changed {
                self.upstream.tokens.invalidate(msn).await;
            }
        }
        Ok(changed)
    }

    /// Re-reads the merchants of this config file on every reload.
    pub fn with_config_file(mut self, path: &std::path::Path) -> Self {
        self.config_file = Some(Arc::from(path));
        self
    }

    /// How often mounted secret files are checked for changes.
    pub fn poll_interval(&self) -> Duration {
        self.settings.resilience.secret_poll
    }
}

/// The gateway, bound and ready to run.
pub struct Application {
    port: u16,
    server: Server,
    metrics_port: Option<u16>,
    metrics_server: Option<Server>,
    reloader: Reloader,
    /// Started with the server when the outbox is enabled.
    outbox: Option<OutboxTasks>,
    shutdown_grace: Duration,
}

/// The outbox's background work: opening its store, then delivering.
struct OutboxTasks {
    outbox: Arc<Outbox>,
    state: web::Data<AppState>,
    upstream: Arc<Upstream>,
}

impl Application {
    /// Binds `settings.listen` (and `metrics_listen`, when set) and builds
    /// the server; secrets come from the process environment and the files
    /// the settings name.
    pub fn build(settings: Settings) -> Result<Self, StartupError> {
        let listener =
            TcpListener::bind(&settings.listen).map_err(|source| StartupError::Listen {
                addr: settings.listen.clone(),
                source,
            })?;
        Self::build_with_listener(settings, listener, &|k| std::env::var(k).ok())
    }

    /// Builds the metrics-only server on `settings.metrics_listen`.
    fn metrics_server(
        settings: &Settings,
        upstream: &Arc<Upstream>,
    ) -> Result<Option<(u16, Server)>, StartupError> {
        let Some(addr) = settings.metrics_listen.as_deref() else {
            return Ok(None);
        };
        let listen_error = |source| StartupError::Listen {
            addr: addr.to_owned(),
            source,
        };
        let listener = TcpListener::bind(addr).map_err(listen_error)?;
        let port = listener.local_addr().map_err(listen_error)?.port();
        let data = web::Data::from(upstream.clone());
        let server = HttpServer::new(move || {
            App::new()
                .app_data(data.clone())
                .configure(ops::metrics_routes)
                .default_service(web::to(not_found))
        })
        .listen(listener)
        .map_err(listen_error)?
        .workers(1)
        .disable_signals()
        .shutdown_timeout(1)
        .run();
        Ok(Some((port, server)))
    }

    /// Builds the server on a bound listener (tests bind port 0).
    pub fn build_with_listener(
        settings: Settings,
        listener: TcpListener,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, StartupError> {
        // rustls needs a process-wide crypto provider; installing twice is harmless.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let merchants = settings.load_merchants(env)?;
        let auth = web::Data::new(Authenticator::load(&settings.auth)?);
        let port = listener
            .local_addr()
            .map_err(|source| StartupError::Listen {
                addr: settings.listen.clone(),
                source,
            })?
            .port();
        let guards = Arc::new(Guards::new(settings.resilience.clone()));
        // One registry per application: tests running side by side never
        // share counts.
        let metrics = Arc::new(Metrics::new().map_err(|e| StartupError::Invalid(e.to_string()))?);
        let upstream = Arc::new(
            Upstream::new(&settings, guards.clone(), metrics.clone())
                .map_err(StartupError::Invalid)?,
        );
        let metrics_server = Self::metrics_server(&settings, &upstream)?;
        let outbox = Outbox::new(settings.outbox.clone(), metrics.clone());
        let state = web::Data::new(AppState {
            merchants: Arc::new(MerchantRegistry::new(merchants)),
            api_version: settings.upstream.api_version,
            limits: settings.limits.clone(),
            guards,
            outbox: outbox.clone(),
        });
        let request_settings = middleware::RequestSettings {
            deadline: settings.resilience.request_deadline,
        };
        let reloader = Reloader {
            settings: Arc::new(settings.clone()),
            config_file: None,
            state: state.clone(),
            upstream: upstream.clone(),
            auth: auth.clone(),
        };
        let app_state = state.clone();
        let up = upstream.clone();
        let up_data = web::Data::from(upstream.clone());
        let metrics_data = web::Data::from(metrics);
        let proxy_settings = settings.proxy.clone();
        let mut server = HttpServer::new(move || {
            App::new()
                .wrap(from_fn(middleware::middleware))
                .app_data(app_state.clone())
                .app_data(request_settings)
                .app_data(up_data.clone())
                .app_data(metrics_data.clone())
                .app_data(auth.clone())
                .app_data(web::Data::new(VippsClient::new(up.clone())))
                .app_data(web::QueryConfig::default().error_handler(|e, _| {
                    ApiError::field(Kind::InvalidRequest, "query", e.to_string()).into()
                }))
                .app_data(web::PathConfig::default().error_handler(|e, _| {
                    ApiError::field(Kind::InvalidRequest, "path", e.to_string()).into()
                }))
                // The proxy's literal prefix first: its requests then skip
                // the façade's patterns when routed.
                .configure(|cfg| proxy::routes(cfg, &proxy_settings))
                .configure(ops::routes)
                .configure(ops::metrics_routes)
                .configure(facade::routes)
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
        let (metrics_port, metrics_server) = metrics_server.unzip();
        let outbox_worker = outbox.enabled().then(|| OutboxTasks {
            outbox,
            state,
            upstream,
        });
        Ok(Self {
            port,
            server: server.run(),
            metrics_port,
            metrics_server,
            reloader,
            outbox: outbox_worker,
            shutdown_grace: settings.shutdown_grace,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The port of the metrics-only listener, when `metrics_listen` is set.
    pub fn metrics_port(&self) -> Option<u16> {
        self.metrics_port
    }

    pub fn reloader(&self) -> Reloader {
        self.reloader.clone()
    }

    /// The server future; its handle stops it. The metrics-only listener,
    /// if any, is started alongside and serves until the process ends, so
    /// the last scrapes of a draining instance still succeed. The outbox's
    /// tasks run until the process ends; [`Self::run`] stops them with the
    /// server.
    pub fn server(mut self) -> Server {
        drop(self.start_tasks());
        self.server
    }

    /// Runs the gateway: its server's handle (which stops it) and a future
    /// that ends once the server has stopped and then the outbox with it:
    /// the worker ends, an attempt under way given `shutdown_grace` to be
    /// recorded, and the store's connections are closed, all before the
    /// runtime ends (a task dropped by a runtime that is ending would drop
    /// its database connection outside it).
    pub fn run(
        mut self,
    ) -> (
        actix_web::dev::ServerHandle,
        impl std::future::Future<Output = std::io::Result<()>>,
    ) {
        let outbox = self.start_tasks();
        let server = self.server;
        let handle = server.handle();
        let grace = self.shutdown_grace;
        let running = async move {
            let result = server.await;
            if let Some(outbox) = outbox {
                outbox.stop(grace).await;
            }
            result
        };
        (handle, running)
    }

    /// Starts the metrics listener and the outbox's tasks.
    fn start_tasks(&mut self) -> Option<RunningOutbox> {
        if let Some(metrics) = self.metrics_server.take() {
            actix_web::rt::spawn(metrics);
        }
        let tasks = self.outbox.take()?;
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let opener = actix_web::rt::spawn(tasks.outbox.clone().open());
        let client = VippsClient::new(tasks.upstream);
        let worker = Worker::new(
            tasks.outbox.clone(),
            client,
            tasks.state.merchants.clone(),
            tasks.state.guards.clone(),
        )
        .until(stopped);
        let worker = actix_web::rt::spawn(worker.run());
        Some(RunningOutbox {
            outbox: tasks.outbox,
            opener,
            worker,
            stop,
        })
    }
}

/// The outbox's tasks, once started.
struct RunningOutbox {
    outbox: Arc<Outbox>,
    opener: tokio::task::JoinHandle<()>,
    worker: tokio::task::JoinHandle<()>,
    stop: tokio::sync::watch::Sender<bool>,
}

impl RunningOutbox {
    /// Stops the worker (at once when idle; an attempt under way may take
    /// `grace` to be recorded), then closes the store.
    async fn stop(self, grace: Duration) {
        self.opener.abort();
        self.stop.send_replace(true);
        let mut worker = self.worker;
        if tokio::time::timeout(grace, &mut worker).await.is_err() {
            tracing::warn!("outbox worker still delivering at shutdown; its entries are taken over after their lease");
            worker.abort();
            let _ = worker.await;
        }
        let _ = self.opener.await;
        self.outbox.close().await;
        tracing::info!("outbox stopped: worker ended, store closed");
    }
}

async fn not_found() -> Result<actix_web::HttpResponse, ApiError> {
    Err(ApiError::new(Kind::NotFound, "No such resource."))
}
