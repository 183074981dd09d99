//! The tracing subscriber: JSON lines in production, readable lines in a
//! terminal, both written by tracing-subscriber's `fmt` layer. `RUST_LOG`
//! overrides the configured level.
//!
//! Every request is served inside a span named [`REQUEST_SPAN`] carrying the
//! request's fields (`crate::middleware`); a JSON line written within it
//! carries that span's fields under `span`, a text line as `request{...}`.
//! The span is kept whatever the level, so a warning written while a request
//! is served still names the request.
//!
//! The text lines are tracing-subscriber's own formatter. The JSON lines use
//! the `fmt` layer with [`JsonLines`] and [`JsonSpanFields`], which keep a
//! span's fields as a JSON object that a later `record` extends in place.
//! tracing-subscriber's JSON formatter re-parses and rewrites a span's
//! fields on every `record` and on every line (docs/decisions.md, "JSON log
//! lines").

use std::fmt;
use std::io::IsTerminal;
use std::str::FromStr as _;

use serde::Serialize;
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_appender::non_blocking::{NonBlocking, NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::filter::Directive;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields, MakeWriter};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::{fmt as tfmt, EnvFilter, Registry};

use crate::config::LogFormat;
use crate::trace::SPAN_TARGET;

/// The name of the span every request is served in.
pub const REQUEST_SPAN: &str = "request";

/// The target of the request span. The level filter enables it at every
/// level, so a line written while a request is served names the request
/// whatever the level.
pub const REQUEST_TARGET: &str = "vipps_order_gateway::request";

/// The name of the span each outbox delivery attempt runs in.
pub const DELIVERY_SPAN: &str = "delivery";

/// The target of the delivery span; enabled at every level, as the request
/// span.
pub const DELIVERY_TARGET: &str = "vipps_order_gateway::delivery";

/// Builds a subscriber writing to `sink`; tests pass their own sink.
/// With a `tracer` (export on, [`crate::trace::Pipeline`]),
/// tracing-opentelemetry records the spans with it, and the spans that
/// exist only for export ([`crate::trace::SPAN_TARGET`]) are enabled.
///
/// The level filter is a global one (`Registry` → `EnvFilter` → `fmt`),
/// not a per-layer filter on the `fmt` layer: with a single layer both
/// filter the same lines, and a per-layer filter consults its own state
/// on every span entry, exit and record (docs/decisions.md, "JSON log
/// lines").
pub fn get_subscriber<W>(
    format: LogFormat,
    level: &str,
    sink: W,
    tracer: Option<opentelemetry_sdk::trace::Tracer>,
) -> Box<dyn Subscriber + Send + Sync>
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    let mut levels = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    // A fixed directive, which always parses (the request-span tests below
    // fail otherwise).
    for target in [REQUEST_TARGET, DELIVERY_TARGET] {
        if let Ok(always) = Directive::from_str(&format!("{target}=trace")) {
            levels = levels.add_directive(always);
        }
    }
    let export_spans = if tracer.is_some() { "info" } else { "off" };
    if let Ok(directive) = Directive::from_str(&format!("{SPAN_TARGET}={export_spans}")) {
        levels = levels.add_directive(directive);
    }
    let otel = tracer.map(|tracer| {
        tracing_opentelemetry::layer()
            .with_tracer(tracer)
            .with_location(false)
            .with_threads(false)
            .with_tracked_inactivity(false)
            .with_target(false)
    });
    let registry = Registry::default().with(levels).with(otel);
    match format {
        LogFormat::Json => Box::new(
            registry.with(
                tfmt::layer()
                    .fmt_fields(JsonSpanFields)
                    .event_format(JsonLines)
                    .with_writer(sink),
            ),
        ),
        // Colours only on a terminal: piped logs stay plain text.
        LogFormat::Text => Box::new(
            registry.with(
                tfmt::layer()
                    .with_writer(sink)
                    .with_target(false)
                    .with_ansi(std::io::stdout().is_terminal()),
            ),
        ),
    }
}

/// A span's fields as one JSON object (`{"request_id":"…","status":200}`),
/// kept by the `fmt` layer with the span. A later `record` drops the closing
/// brace and appends its fields, so no field is parsed again.
pub struct JsonSpanFields;

impl<'writer> FormatFields<'writer> for JsonSpanFields {
    fn format_fields<R: RecordFields>(
        &self,
        mut writer: Writer<'writer>,
        fields: R,
    ) -> fmt::Result {
        let mut out = Vec::with_capacity(256);
        out.push(b'{');
        fields.record(&mut Entries::new(&mut out, true));
        out.push(b'}');
        writer.write_str(std::str::from_utf8(&out).map_err(|_| fmt::Error)?)
    }

    fn add_fields(
        &self,
        current: &'writer mut FormattedFields<Self>,
        fields: &tracing::span::Record<'_>,
    ) -> fmt::Result {
        if current.fields.pop() != Some('}') {
            current.fields.clear();
            return self.format_fields(current.as_writer(), fields);
        }
        let mut out = Vec::with_capacity(128);
        fields.record(&mut Entries::new(&mut out, current.fields.len() == 1));
        out.push(b'}');
        current
            .fields
            .push_str(std::str::from_utf8(&out).map_err(|_| fmt::Error)?);
        Ok(())
    }
}

/// A line's `timestamp`: RFC 3339 in UTC with microseconds, as
/// tracing-subscriber's own `SystemTime` writes it.
const TIMESTAMP: &[time::format_description::BorrowedFormatItem<'static>] = time::macros::format_description!(
    "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]Z"
);

/// One JSON object per line: `timestamp` (RFC 3339, UTC, microseconds),
/// `level`, the event's fields, `target` and, within a span, `span` with
/// the span's fields and `name`. The same layout as tracing-subscriber's JSON
/// formatter with `flatten_event(true)` and `with_current_span(true)`.
pub struct JsonLines;

impl<S> FormatEvent<S, JsonSpanFields> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, JsonSpanFields>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        let mut out = Vec::with_capacity(512);
        out.extend_from_slice(b"{\"timestamp\":\"");
        time::OffsetDateTime::now_utc()
            .format_into(&mut out, TIMESTAMP)
            .map_err(|_| fmt::Error)?;
        out.extend_from_slice(b"\",\"level\":\"");
        out.extend_from_slice(meta.level().as_str().as_bytes());
        out.push(b'"');
        let mut entries = Entries::new(&mut out, false);
        event.record(&mut entries);
        entries.entry("target", meta.target());
        let span = event
            .parent()
            .and_then(|id| ctx.span(id))
            .or_else(|| ctx.lookup_current());
        if let Some(span) = span {
            out.extend_from_slice(b",\"span\":");
            let extensions = span.extensions();
            let fields = extensions
                .get::<FormattedFields<JsonSpanFields>>()
                .map(|f| f.fields.as_str())
                .filter(|f| f.len() >= 2 && f.starts_with('{') && f.ends_with('}'))
                .unwrap_or("{}");
            out.extend_from_slice(&fields.as_bytes()[..fields.len() - 1]);
            Entries::new(&mut out, fields.len() == 2).entry("name", span.name());
            out.push(b'}');
        }
        out.extend_from_slice(b"}\n");
        writer.write_str(std::str::from_utf8(&out).map_err(|_| fmt::Error)?)
    }
}

/// Writes the fields it visits as `"name":value` object entries, each name
/// and value encoded by serde_json.
struct Entries<'a> {
    out: &'a mut Vec<u8>,
    first: bool,
}

impl<'a> Entries<'a> {
    fn new(out: &'a mut Vec<u8>, first: bool) -> Self {
        Self { out, first }
    }

    fn entry<T: Serialize + ?Sized>(&mut self, name: &str, value: &T) {
        // `otel.kind`, `otel.name`: directions to tracing-opentelemetry,
        // not log fields.
        if name.starts_with("otel.") {
            return;
        }
        if !self.first {
            self.out.push(b',');
        }
        self.first = false;
        // A string, number or bool always serializes, and a Vec takes
        // every byte: neither call can fail.
        let _ = serde_json::to_writer(&mut *self.out, name);
        self.out.push(b':');
        let _ = serde_json::to_writer(&mut *self.out, value);
    }
}

impl Visit for Entries<'_> {
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.entry(field.name(), &value);
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.entry(field.name(), &value);
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.entry(field.name(), &value);
    }
    fn record_i128(&mut self, field: &Field, value: i128) {
        self.entry(field.name(), &value);
    }
    fn record_u128(&mut self, field: &Field, value: u128) {
        self.entry(field.name(), &value);
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.entry(field.name(), &value);
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.entry(field.name(), value);
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.entry(field.name(), &format!("{value:?}"));
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
        let subscriber = get_subscriber(LogFormat::Json, "info", sink.clone(), None);
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!(
                target: REQUEST_TARGET,
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
    fn fields_recorded_later_extend_the_span_object_and_every_value_is_valid_json() {
        let sink = Sink::default();
        let subscriber = get_subscriber(LogFormat::Json, "info", sink.clone(), None);
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!(
                target: REQUEST_TARGET,
                REQUEST_SPAN,
                status = tracing::field::Empty,
                upstream_status = tracing::field::Empty,
                note = tracing::field::Empty,
            );
            span.in_scope(|| tracing::info!("before any record"));
            span.record("status", 201_u16);
            span.record("note", "tab\tquote\"ctl\u{1}ø");
            span.record("upstream_status", 0_u64);
            span.in_scope(|| {
                tracing::warn!(
                    ratio = f64::NAN,
                    negative = -3_i64,
                    flag = true,
                    debug = ?Some("x"),
                    "after"
                );
            });
        });
        let lines = lines(&sink);
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert_eq!(
            lines[0]["span"],
            serde_json::json!({"name": REQUEST_SPAN}),
            "a span with no field yet is its name alone"
        );
        let second = &lines[1];
        assert_eq!(second["level"], "WARN");
        assert_eq!(second["message"], "after");
        assert!(
            second["ratio"].is_null(),
            "NaN has no JSON number: {second}"
        );
        assert_eq!(second["negative"], -3);
        assert_eq!(second["flag"], true);
        assert_eq!(second["debug"], "Some(\"x\")");
        assert_eq!(second["target"], module_path!());
        assert_eq!(
            second["span"],
            serde_json::json!({
                "status": 201,
                "note": "tab\tquote\"ctl\u{1}ø",
                "upstream_status": 0,
                "name": REQUEST_SPAN,
            })
        );
    }

    #[test]
    fn the_request_span_is_kept_when_the_level_hides_info() {
        let sink = Sink::default();
        let subscriber = get_subscriber(LogFormat::Json, "warn", sink.clone(), None);
        tracing::subscriber::with_default(subscriber, || {
            let span =
                tracing::info_span!(target: REQUEST_TARGET, REQUEST_SPAN, request_id = "r-2");
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
