//! The tracing subscriber: JSON lines in production, readable lines in a
//! terminal. `RUST_LOG` overrides the configured level.

use std::io::IsTerminal;

use tracing::Subscriber;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Builds a subscriber writing to `sink`; tests pass their own sink.
pub fn get_subscriber<W>(
    format: LogFormat,
    level: &str,
    sink: W,
) -> Box<dyn Subscriber + Send + Sync>
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(sink);
    match format {
        LogFormat::Json => Box::new(
            builder
                .json()
                .with_current_span(true)
                .with_span_list(false)
                .flatten_event(true)
                .finish(),
        ),
        // Colours only on a terminal: piped logs stay plain text.
        LogFormat::Text => Box::new(
            builder
                .with_target(false)
                .with_ansi(std::io::stdout().is_terminal())
                .finish(),
        ),
    }
}

/// Installs the subscriber for the process. A second call is ignored.
pub fn init_subscriber(subscriber: Box<dyn Subscriber + Send + Sync>) {
    let _ = tracing::subscriber::set_global_default(subscriber);
}
