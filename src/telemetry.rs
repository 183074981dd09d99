//! The tracing subscriber: JSON lines in production, readable lines in a
//! terminal. `RUST_LOG` overrides the configured level.
//!
//! The JSON lines come from the gateway's own layer ([`JsonLines`]) rather
//! than `tracing-subscriber`'s JSON formatter, which keeps a span's fields as
//! a JSON string and parses and re-writes it on every `record` and every
//! event: several parses per request on the hot path. Here a span keeps its
//! fields as typed values, updated in place, and an event writes one line
//! from a reused buffer. The shape is the same: `timestamp`, `level`, the
//! event's fields (`message` first), `target`, and the current span's fields
//! with its `name` under `span`.
//!
//! A request served in this format opens no tracing span: its fields live in
//! the request's task-local record ([`crate::request_id`]) and every line the
//! request's task writes carries them under `span`, named `request`, as a
//! span's would be. Creating, entering, recording and closing a span on every
//! request cost about 8 % of a proxied request's instructions.

use std::cell::RefCell;
use std::fmt::{self, Write as _};
use std::io::{IsTerminal, Write as _};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tracing::field::{Field, Visit};

use crate::json::write_str;
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::{Context, SubscriberExt as _};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::{EnvFilter, Layer, Registry};

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
    match format {
        LogFormat::Json => Box::new(Registry::default().with(filter).with(JsonLines::new(sink))),
        // Colours only on a terminal: piped logs stay plain text.
        LogFormat::Text => Box::new(
            tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_writer(sink)
                .with_target(false)
                .with_ansi(std::io::stdout().is_terminal())
                .finish(),
        ),
    }
}

/// How long a JSON log line may wait in [`BufferedStdout`] before it is written.
pub const FLUSH_EVERY: Duration = Duration::from_millis(50);
/// Buffered bytes that wake the writer thread before [`FLUSH_EVERY`].
const FLUSH_AT: usize = 64 * 1024;
/// Buffered bytes beyond which a request writes the buffer itself: when
/// stdout is slower than the traffic, requests wait rather than lines being
/// dropped or memory growing.
const MAX_PENDING: usize = 4 * 1024 * 1024;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Lines waiting for stdout, and the writer thread that takes them.
struct Pending {
    lines: Mutex<Vec<u8>>,
    /// Held while a batch is taken and written, so batches stay in order.
    writing: Mutex<()>,
    writer: OnceLock<std::thread::Thread>,
}

impl Pending {
    fn flush(&self) {
        let _order = lock(&self.writing);
        let batch = std::mem::take(&mut *lock(&self.lines));
        if !batch.is_empty() {
            let mut out = std::io::stdout().lock();
            let _ = out.write_all(&batch);
            let _ = out.flush();
        }
    }
}

static PENDING: OnceLock<Arc<Pending>> = OnceLock::new();

/// stdout for the JSON log, written in batches by a background thread: a
/// request copies its line into a buffer instead of making a `write` system
/// call, and the thread writes what has gathered every [`FLUSH_EVERY`] (or
/// sooner, once 64 KiB wait). [`flush`] writes the rest at exit; a process
/// killed outright loses at most the last [`FLUSH_EVERY`] of lines.
#[derive(Clone)]
pub struct BufferedStdout(Arc<Pending>);

impl BufferedStdout {
    /// The process's buffered stdout, starting its writer thread on first use.
    pub fn get() -> Self {
        let pending = PENDING.get_or_init(|| {
            let pending = Arc::new(Pending {
                lines: Mutex::new(Vec::with_capacity(FLUSH_AT)),
                writing: Mutex::new(()),
                writer: OnceLock::new(),
            });
            let shared = pending.clone();
            let spawned = std::thread::Builder::new()
                .name("log-writer".into())
                .spawn(move || loop {
                    std::thread::park_timeout(FLUSH_EVERY);
                    shared.flush();
                });
            if let Ok(handle) = spawned {
                let _ = pending.writer.set(handle.thread().clone());
            }
            pending
        });
        Self(pending.clone())
    }
}

impl std::io::Write for BufferedStdout {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let waiting = {
            let mut lines = lock(&self.0.lines);
            lines.extend_from_slice(buf);
            lines.len()
        };
        match self.0.writer.get() {
            // Without a writer thread every line is written at once.
            None => self.0.flush(),
            Some(_) if waiting > MAX_PENDING => self.0.flush(),
            Some(writer) if waiting > FLUSH_AT => writer.unpark(),
            Some(_) => {}
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush();
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for BufferedStdout {
    type Writer = BufferedStdout;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

/// Writes the log lines still buffered; `main` calls it before exiting.
pub fn flush() {
    if let Some(pending) = PENDING.get() {
        pending.flush();
    }
}

/// Installs the subscriber for the process. A second call is ignored.
pub fn init_subscriber(subscriber: Box<dyn Subscriber + Send + Sync>) {
    let _ = tracing::subscriber::set_global_default(subscriber);
}

/// One recorded field value.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Value {
    Str(String),
    /// A string known when the gateway was built: no copy per request.
    Static(&'static str),
    /// A string shared with the rest of the request (its id).
    Shared(std::sync::Arc<str>),
    I64(i64),
    U64(u64),
    F64(f64),
    Bool(bool),
}

impl Value {
    fn write(&self, out: &mut Vec<u8>) {
        match self {
            Self::Str(s) => write_str(out, s),
            Self::Static(s) => write_str(out, s),
            Self::Shared(s) => write_str(out, s),
            Self::I64(n) => out.extend_from_slice(itoa::Buffer::new().format(*n).as_bytes()),
            Self::U64(n) => out.extend_from_slice(itoa::Buffer::new().format(*n).as_bytes()),
            // JSON has no NaN or infinity.
            Self::F64(n) if n.is_finite() => {
                out.extend_from_slice(ryu::Buffer::new().format_finite(*n).as_bytes());
            }
            Self::F64(_) => out.extend_from_slice(b"null"),
            Self::Bool(b) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
        }
    }
}

/// Fields in the order they were first recorded; a field recorded again is
/// replaced in place.
#[derive(Debug, Default)]
pub(crate) struct Fields(Vec<(&'static str, Value)>);

impl Fields {
    pub(crate) fn with_capacity(n: usize) -> Self {
        Self(Vec::with_capacity(n))
    }

    pub(crate) fn set(&mut self, name: &'static str, value: Value) {
        match self.0.iter_mut().find(|(n, _)| *n == name) {
            Some(slot) => slot.1 = value,
            None => self.0.push((name, value)),
        }
    }

    pub(crate) fn write(&self, out: &mut Vec<u8>) {
        for (name, value) in &self.0 {
            write_str(out, name);
            out.push(b':');
            value.write(out);
            out.push(b',');
        }
    }
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.set(field.name(), Value::Str(value.to_owned()));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.set(field.name(), Value::I64(value));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.set(field.name(), Value::U64(value));
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.set(field.name(), Value::F64(value));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.set(field.name(), Value::Bool(value));
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.set(field.name(), Value::Str(value.to_string()));
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        let mut s = String::new();
        let _ = write!(s, "{value:?}");
        self.set(field.name(), Value::Str(s));
    }
}

/// Writes an event's fields straight into its line, as `"name":value,`.
struct Direct<'a>(&'a mut Vec<u8>);

impl Direct<'_> {
    fn field(&mut self, field: &Field, value: &Value) {
        write_str(self.0, field.name());
        self.0.push(b':');
        value.write(self.0);
        self.0.push(b',');
    }
}

impl Visit for Direct<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        write_str(self.0, field.name());
        self.0.push(b':');
        write_str(self.0, value);
        self.0.push(b',');
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.field(field, &Value::I64(value));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.field(field, &Value::U64(value));
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.field(field, &Value::F64(value));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.field(field, &Value::Bool(value));
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.record_str(field, &value.to_string());
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        SCRATCH.with(|scratch| {
            let mut text = scratch.borrow_mut();
            text.clear();
            let _ = write!(text, "{value:?}");
            self.record_str(field, &text);
        });
    }
}

/// `YYYY-MM-DDTHH:MM:SS.ffffffZ` (RFC 3339, UTC, microseconds). The part up
/// to the seconds is formatted once per second and thread.
fn write_timestamp(out: &mut Vec<u8>, now: SystemTime) {
    let since = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    SECOND.with(|cached| {
        let mut cached = cached.borrow_mut();
        if cached.0 != Some(secs) {
            let (days, rem) = (secs / 86_400, secs % 86_400);
            let (y, m, d) = civil_from_days(days);
            cached.1.clear();
            let _ = write!(
                cached.1,
                "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}",
                rem / 3600,
                rem % 3600 / 60,
                rem % 60,
            );
            cached.0 = Some(secs);
        }
        out.extend_from_slice(&cached.1);
    });
    let micros = since.subsec_micros();
    out.push(b'.');
    for div in [100_000, 10_000, 1_000, 100, 10, 1] {
        // One decimal digit: the cast cannot truncate.
        #[allow(clippy::cast_possible_truncation)]
        out.push(b'0' + (micros / div % 10) as u8);
    }
    out.push(b'Z');
}

/// The proleptic Gregorian date of a day count since 1970-01-01
/// (H. Hinnant's `civil_from_days`, for days on or after the epoch).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d)
}

thread_local! {
    /// The line being written, reused so an event allocates nothing here.
    static LINE: RefCell<Vec<u8>> = RefCell::new(Vec::with_capacity(512));
    /// A field's `Debug` text, before it is escaped into the line.
    static SCRATCH: RefCell<String> = const { RefCell::new(String::new()) };
    /// The second last formatted, and its `YYYY-MM-DDTHH:MM:SS`.
    static SECOND: RefCell<(Option<u64>, Vec<u8>)> = const { RefCell::new((None, Vec::new())) };
}

/// The layer writing one JSON object per event.
pub struct JsonLines<W> {
    sink: W,
}

impl<W> JsonLines<W> {
    pub fn new(sink: W) -> Self {
        Self { sink }
    }
}

impl<S, W> Layer<S> for JsonLines<W>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    W: for<'a> MakeWriter<'a> + 'static,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let mut fields = Fields::default();
        attrs.record(&mut fields);
        span.extensions_mut().insert(fields);
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let mut ext = span.extensions_mut();
        if let Some(fields) = ext.get_mut::<Fields>() {
            values.record(fields);
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let meta = event.metadata();
        LINE.with(|line| {
            let Ok(mut out) = line.try_borrow_mut() else {
                return;
            };
            out.clear();
            out.extend_from_slice(b"{\"timestamp\":\"");
            write_timestamp(&mut out, SystemTime::now());
            out.extend_from_slice(b"\",\"level\":\"");
            out.extend_from_slice(meta.level().as_str().as_bytes());
            out.extend_from_slice(b"\",");
            // The macros put `message` first.
            event.record(&mut Direct(&mut out));
            out.extend_from_slice(b"\"target\":");
            write_str(&mut out, meta.target());
            if let Some(span) = ctx.event_span(event) {
                out.extend_from_slice(b",\"span\":{");
                if let Some(f) = span.extensions().get::<Fields>() {
                    f.write(&mut out);
                }
                out.extend_from_slice(b"\"name\":");
                write_str(&mut out, span.name());
                out.push(b'}');
            } else {
                crate::request_id::with_log(|fields| {
                    out.extend_from_slice(b",\"span\":{");
                    fields.write(&mut out);
                    out.extend_from_slice(b"\"name\":\"request\"}");
                });
            }
            out.extend_from_slice(b"}\n");
            let _ = self.sink.make_writer_for(meta).write_all(&out);
        });
    }
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
    fn lines_carry_event_and_span_fields_as_json() {
        let sink = Sink::default();
        let subscriber = get_subscriber(LogFormat::Json, "info", sink.clone());
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!(
                "request",
                request_id = %"r-1",
                route = "/v1/\"quoted\"\n",
                status = tracing::field::Empty,
                later = tracing::field::Empty,
            );
            span.record("status", 201_u16);
            span.record("status", 404_u16);
            span.in_scope(|| {
                tracing::info!(latency_ms = 1.5, ok = true, n = -3_i64, "request finished");
                tracing::debug!("filtered out");
            });
            tracing::warn!(error = %"boom\u{1}", "outside any span");
        });
        let lines = lines(&sink);
        assert_eq!(lines.len(), 2, "{lines:?}");
        let first = &lines[0];
        assert_eq!(first["level"], "INFO");
        assert_eq!(first["message"], "request finished");
        assert_eq!(first["latency_ms"].to_string(), "1.5");
        assert_eq!(first["ok"], true);
        assert_eq!(first["n"], -3);
        assert_eq!(first["target"], module_path!());
        assert_eq!(first["span"]["request_id"], "r-1");
        assert_eq!(first["span"]["route"], "/v1/\"quoted\"\n");
        assert_eq!(first["span"]["status"], 404);
        assert!(first["span"].get("later").is_none());
        assert_eq!(first["span"]["name"], "request");
        let second = &lines[1];
        assert_eq!(second["level"], "WARN");
        assert_eq!(second["error"], "boom\u{1}");
        assert!(second.get("span").is_none());
        // The first key is the timestamp, in RFC 3339 with microseconds.
        let ts = first["timestamp"].as_str().unwrap();
        assert_eq!(ts.len(), 27, "{ts}");
        assert!(ts.ends_with('Z') && ts.as_bytes()[10] == b'T', "{ts}");
    }

    #[test]
    fn timestamps_are_utc_calendar_dates() {
        let at = |secs: u64, micros: u32| {
            let mut out = Vec::new();
            write_timestamp(
                &mut out,
                UNIX_EPOCH + std::time::Duration::new(secs, micros * 1000),
            );
            String::from_utf8(out).unwrap()
        };
        assert_eq!(at(0, 0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(at(951_782_400, 7), "2000-02-29T00:00:00.000007Z");
        assert_eq!(at(1_795_836_091, 123_456), "2026-11-28T03:21:31.123456Z");
        assert_eq!(at(4_107_542_399, 999_999), "2100-02-28T23:59:59.999999Z");
        // The cached second is replaced when the second changes.
        assert_eq!(at(4_107_542_400, 10), "2100-03-01T00:00:00.000010Z");
        assert_eq!(at(4_107_542_400, 999_000), "2100-03-01T00:00:00.999000Z");
    }
}
