//! Thin entry point: parse the command line, set up logging, load the
//! config, run.

use std::net::TcpListener;
use std::process::ExitCode;

use clap::Parser;
use secrecy::SecretString;
use tracing_appender::non_blocking::NonBlocking;
use vipps_order_gateway::cli::{Cli, Command};
use vipps_order_gateway::config::{InlineSecrets, LogFormat, MerchantSettings, Settings};
use vipps_order_gateway::domain::Msn;
use vipps_order_gateway::simulator::{self, Simulator, SimulatorSettings};
use vipps_order_gateway::{telemetry, trace, Application};

/// mimalloc instead of the system allocator (docs/decisions.md, "Memory
/// allocator").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The log writer's guard writes the lines still queued when dropped,
    // after the server has stopped.
    let (stdout, _guard) = telemetry::stdout_writer();
    let result = actix_web::rt::System::new().block_on(run(cli, stdout));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli, stdout: NonBlocking) -> Result<(), String> {
    match cli.command {
        Command::Serve {
            config,
            simulator,
            listen,
        } => serve(config, simulator, listen, stdout).await,
        Command::Simulate {
            listen,
            workers,
            max_orders,
        } => {
            init_logging(LogFormat::Text, "info", stdout, None);
            let listener = TcpListener::bind(&listen)
                .map_err(|e| format!("cannot listen on {listen}: {e}"))?;
            let settings = SimulatorSettings {
                workers: workers.max(1),
                max_orders: usize::try_from(max_orders).unwrap_or(usize::MAX),
                ..SimulatorSettings::demo()
            };
            let sim = Simulator::build(listener, settings).map_err(|e| e.to_string())?;
            tracing::info!(
                port = sim.port(),
                "simulator listening; demo merchant {}; receipts at /_simulator/orders",
                simulator::DEMO_MSN
            );
            let server = sim.run();
            spawn_shutdown(server.handle());
            server.await.map_err(|e| e.to_string())
        }
        Command::CheckConfig { config, connect } => {
            vipps_order_gateway::ops::check_config(&config, connect).await
        }
    }
}

/// JSON lines go through the background writer; text lines, read by a
/// person at a terminal, are written at once.
fn init_logging(
    format: LogFormat,
    level: &str,
    stdout: NonBlocking,
    tracer: Option<opentelemetry_sdk::trace::Tracer>,
) {
    let subscriber = match format {
        LogFormat::Json => telemetry::get_subscriber(format, level, stdout, tracer),
        LogFormat::Text => telemetry::get_subscriber(format, level, std::io::stdout, tracer),
    };
    telemetry::init_subscriber(subscriber);
}

async fn serve(
    config: Option<std::path::PathBuf>,
    with_simulator: bool,
    listen: Option<String>,
    stdout: NonBlocking,
) -> Result<(), String> {
    let mut settings = match &config {
        Some(path) => Settings::load(path, std::env::vars()).map_err(|e| e.to_string())?,
        None if with_simulator => {
            Settings::from_toml("", std::env::vars()).map_err(|e| e.to_string())?
        }
        None => {
            return Err(
                "give --config FILE, or --simulator to run against the built-in simulator".into(),
            )
        }
    };
    if let Some(listen) = listen {
        settings.listen = listen;
    }
    let mut sim_server = None;
    if with_simulator {
        if config.is_none() {
            settings.log.format = LogFormat::Text;
            if std::env::var_os("VOG_LISTEN").is_none() {
                settings.listen = settings.listen.replace("0.0.0.0", "127.0.0.1");
            }
        }
        let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
        let sim =
            Simulator::build(listener, SimulatorSettings::demo()).map_err(|e| e.to_string())?;
        settings.upstream.base_url = format!("http://127.0.0.1:{}", sim.port());
        settings.merchants = vec![demo_merchant()?];
        // The simulator forgets everything when it stops; so does the
        // outbox that delivers to it.
        let dir =
            std::env::temp_dir().join(format!("vipps-order-gateway-outbox-{}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        settings.outbox.url = format!("sqlite://{}", dir.join("outbox.db").display());
        sim_server = Some(sim.run());
    }
    // Spans are exported from here on when telemetry.otlp.endpoint is set;
    // what is queued is sent when the gateway stops.
    let pipeline = trace::Pipeline::start(&settings.telemetry)?;
    init_logging(
        settings.log.format,
        &settings.log.level,
        stdout,
        pipeline.as_ref().map(trace::Pipeline::tracer),
    );
    if let Some(endpoint) = &settings.telemetry.otlp.endpoint {
        tracing::info!(endpoint = %endpoint, sampling_ratio = settings.telemetry.sampling_ratio, "exporting traces over OTLP");
    }
    let result = serve_with(settings, config, with_simulator, sim_server).await;
    if let Some(pipeline) = pipeline {
        // The provider's shutdown waits for the last export: off the
        // runtime's thread.
        let _ = actix_web::rt::task::spawn_blocking(move || pipeline.shutdown()).await;
    }
    result
}

async fn serve_with(
    settings: Settings,
    config: Option<std::path::PathBuf>,
    with_simulator: bool,
    sim_server: Option<actix_web::dev::Server>,
) -> Result<(), String> {
    if let Some(url) = with_simulator.then(|| settings.upstream.base_url.clone()) {
        tracing::info!(
            upstream = %url,
            msn = simulator::DEMO_MSN,
            receipts = %format!("{url}/_simulator/orders"),
            "running against the built-in simulator"
        );
    }
    let app = Application::build(settings).map_err(|e| e.to_string())?;
    tracing::info!(port = app.port(), "gateway listening");
    if let Some(port) = app.metrics_port() {
        tracing::info!(port, "metrics listening");
    }
    // With --simulator the merchants are built in; otherwise they come from
    // the file, re-read on every reload.
    let reloader = match (&config, with_simulator) {
        (Some(path), false) => app.reloader().with_config_file(path),
        _ => app.reloader(),
    };
    let (handle, running) = app.run();
    spawn_shutdown(handle);
    spawn_reload_on_hangup(reloader);
    if let Some(sim) = sim_server {
        let handle = sim.handle();
        actix_web::rt::spawn(sim);
        let result = running.await;
        handle.stop(true).await;
        result.map_err(|e| e.to_string())
    } else {
        running.await.map_err(|e| e.to_string())
    }
}

fn demo_merchant() -> Result<MerchantSettings, String> {
    Ok(MerchantSettings {
        msn: Msn::parse(simulator::DEMO_MSN).map_err(|e| e.to_string())?,
        client_id: simulator::DEMO_CLIENT_ID.into(),
        client_secret_file: None,
        client_secret_env: None,
        subscription_key_file: None,
        subscription_key_env: None,
        inline: Some(InlineSecrets {
            client_secret: SecretString::from(simulator::DEMO_CLIENT_SECRET),
            subscription_key: SecretString::from(simulator::DEMO_SUBSCRIPTION_KEY),
        }),
    })
}

/// SIGTERM and Ctrl-C stop the server gracefully: no new connections,
/// in-flight requests finish.
fn spawn_shutdown(handle: actix_web::dev::ServerHandle) {
    actix_web::rt::spawn(async move {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            let Ok(mut term) = signal(SignalKind::terminate()) else {
                return;
            };
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
        tracing::info!("shutting down");
        handle.stop(true).await;
    });
}

/// SIGHUP re-reads merchants' secrets at once; between signals, the
/// secret files are checked every `resilience.secret_poll` (a Kubernetes
/// Secret mount changes its files in place). A failed reload keeps the
/// old secrets.
fn spawn_reload_on_hangup(reloader: vipps_order_gateway::Reloader) {
    async fn reload(reloader: &vipps_order_gateway::Reloader, why: &str) {
        match reloader.reload(&|k| std::env::var(k).ok()).await {
            Ok(changed) if changed.is_empty() => {
                if why == "SIGHUP" {
                    tracing::info!("secrets reloaded on SIGHUP; nothing changed");
                }
            }
            Ok(changed) => {
                let msns: Vec<String> = changed.iter().map(ToString::to_string).collect();
                tracing::info!(trigger = why, merchants = %msns.join(","), "secrets reloaded; tokens of changed merchants dropped");
            }
            Err(e) => {
                tracing::error!(trigger = why, error = %e, "secret reload failed; keeping the previous secrets")
            }
        }
    }
    let poll = reloader.poll_interval();
    if !poll.is_zero() {
        let r = reloader.clone();
        actix_web::rt::spawn(async move {
            let mut tick = tokio::time::interval(poll);
            tick.tick().await;
            loop {
                tick.tick().await;
                reload(&r, "file change").await;
            }
        });
    }
    #[cfg(unix)]
    actix_web::rt::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let Ok(mut hup) = signal(SignalKind::hangup()) else {
            return;
        };
        while hup.recv().await.is_some() {
            reload(&reloader, "SIGHUP").await;
        }
    });
    #[cfg(not(unix))]
    drop(reloader);
}
