//! The tracing subscriber: JSON lines in production, readable lines in a
//! terminal, both from tracing-subscriber's own formatters. `RUST_LOG`
//! overrides the configured level.
//!
//! Every request is served inside a span named [`REQUEST_SPAN`] carrying the
//! request's fields (`crate::middleware`); the JSON formatter writes that
//! span's fields under `span` on each line, the text formatter as
//! `request{...}`. The span is kept whatever the level, so a warning written
//! while a request is served still names the request.

use std::io::IsTerminal;

use tracing::Subscriber;
use tracing_appender::non_blocking::{NonBlocking, NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::filter::{filter_fn, FilterExt as _};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::{fmt, EnvFilter, Layer as _, Registry};

use crate::config::LogFormat;

/// The name of the span every request is served in.
pub const REQUEST_SPAN: &str = "request";

/// Builds a subscriber writing to `sink`; tests pass their own sink.
pub fn get_subscriber<W>(
    format: LogFormat,
    level: &str,
    sink: W,
) -> Box<dyn Subscriber + Send + Sync>
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    let levels = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let filter = levels.or(filter_fn(|meta| {
        meta.is_span() && meta.name() == REQUEST_SPAN
    }));
    match format {
        LogFormat::Json => Box::new(
            Registry::default().with(
                fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(true)
                    .with_span_list(false)
                    .with_writer(sink)
                    .with_filter(filter),
            ),
        ),
        // Colours only on a terminal: piped logs stay plain text.
        LogFormat::Text => Box::new(
            Registry::default().with(
                fmt::layer()
                    .with_writer(sink)
                    .with_target(false)
                    .with_ansi(std::io::stdout().is_terminal())
                    .with_filter(filter),
            ),
        ),
    }
}

/// stdout through tracing-appender's background writer: a request hands its
/// line to a channel instead of writing it. When stdout falls behind, the
/// request waits rather than a line being dropped. The guard writes what
/// is left when dropped, so `main` keeps it until the process exits.
pub fn stdout_writer() -> (NonBlocking, WorkerGuard) {
    NonBlockingBuilder::default()
        .lossy(false)
        .thread_name("log-writer")
        .finish(std::io::stdout())
}

/// Installs the subscriber for the process. A second call is ignored.
pub fn init_subscriber(subscriber: Box<dyn Subscriber + Send + Sync>) {
    let _ = tracing::subscriber::set_global_default(subscriber);
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Sink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Sink {
        type Writer = Sink;
        fn make_writer(&'a self) -> Sink {
            self.clone()
        }
    }

    fn lines(sink: &Sink) -> Vec<serde_json::Value> {
        let text = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
        text.lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect()
    }

    #[test]
    fn json_lines_carry_the_event_and_the_request_span_fields() {
        let sink = Sink::default();
        let subscriber = get_subscriber(LogFormat::Json, "info", sink.clone());
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!(
                REQUEST_SPAN,
                request_id = "r-1",
                route = "/v1/\"quoted\"\n",
                status = tracing::field::Empty,
            );
            span.record("status", 404_u16);
            span.in_scope(|| tracing::info!(latency_ms = 1.5, "request finished"));
            tracing::info!("outside");
        });
        let lines = lines(&sink);
        assert_eq!(lines.len(), 2, "{lines:?}");
        let first = &lines[0];
        assert_eq!(first["message"], "request finished");
        assert_eq!(first["level"], "INFO");
        assert_eq!(first["latency_ms"], 1.5);
        assert_eq!(first["span"]["name"], REQUEST_SPAN);
        assert_eq!(first["span"]["request_id"], "r-1");
        assert_eq!(first["span"]["route"], "/v1/\"quoted\"\n");
        assert_eq!(first["span"]["status"], 404);
        let stamp = first["timestamp"].as_str().unwrap();
        assert!(stamp.ends_with('Z') && stamp.len() == 27, "{stamp}");
        assert!(lines[1].get("span").is_none(), "{}", lines[1]);
    }

    #[test]
    fn the_request_span_is_kept_when_the_level_hides_info() {
        let sink = Sink::default();
        let subscriber = get_subscriber(LogFormat::Json, "warn", sink.clone());
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!(REQUEST_SPAN, request_id = "r-2");
            span.in_scope(|| {
                tracing::info!("hidden");
                tracing::warn!("shown");
            });
        });
        let lines = lines(&sink);
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert_eq!(lines[0]["message"], "shown");
        assert_eq!(lines[0]["span"]["request_id"], "r-2");
    }
}
