//! Traces: W3C Trace Context in and out, and OpenTelemetry export over
//! OTLP/HTTP when `telemetry.otlp.endpoint` is set (docs/decisions.md,
//! "Traces").
//!
//! - A request continues the caller's `traceparent` (and `tracestate`), or
//!   starts a new trace; a malformed header starts a new trace.
//! - Every call to Vipps carries a `traceparent` naming the span it was
//!   sent from, so Vipps' side joins the same trace.
//! - The request span and each outbox delivery span carry `trace_id` and
//!   `span_id` as log fields, so every JSON line written within them names
//!   its trace.
//!
//! With export off, the ids are made here and no span is recorded: no
//! OpenTelemetry layer runs, and the spans that exist only for export
//! (one per attempt to Vipps, one per token fetch, under [`SPAN_TARGET`])
//! are disabled by the level filter. With export on,
//! tracing-opentelemetry records the gateway's `tracing` spans, the ids
//! are its spans' own, and a batch processor hands them to the OTLP
//! exporter on a thread of its own: a request never waits for the
//! exporter. Its queue is bounded; a span that finds it full is dropped
//! and counted, as is every span of a batch the receiver did not take
//! (`gateway_trace_spans_dropped_total`).

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use http::header::{HeaderName, HeaderValue};
use opentelemetry::propagation::{Extractor, TextMapPropagator as _};
use opentelemetry::trace::{
    SpanContext, SpanId, TraceContextExt as _, TraceFlags, TraceId, TraceState, TracerProvider as _,
};
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracerProvider, SpanData, SpanExporter,
    SpanProcessor,
};
use prometheus::{IntCounterVec, Opts};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use crate::config::{OtlpProtocol, TelemetrySettings};

/// The target of the spans that exist only to be exported: one per attempt
/// to Vipps and one per token fetch. The level filter disables them unless
/// export is on.
pub const SPAN_TARGET: &str = "vipps_order_gateway::otel";

/// `traceparent`, as a header name.
pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
/// `tracestate`, as a header name.
pub const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// Spans waiting for export at most; one more is dropped.
const QUEUE: usize = 2048;
/// Spans sent in one export request at most.
const BATCH: usize = 512;
/// How long a span waits for its batch at most.
const SCHEDULE: Duration = Duration::from_secs(1);

/// Whether spans are exported (set once, when the pipeline starts).
static EXPORTING: AtomicBool = AtomicBool::new(false);

/// Whether spans are recorded and exported.
pub fn exporting() -> bool {
    EXPORTING.load(Ordering::Relaxed)
}

/// The context of a span: its trace, its own id, the sampled flag and the
/// caller's `tracestate`.
pub type Context = SpanContext;

/// The caller's trace context from its `traceparent` and `tracestate`;
/// `None` when it sent none or a malformed one (the request then starts a
/// new trace: a bad header is never the caller's error).
pub fn extract(traceparent: Option<&[u8]>, tracestate: Option<&[u8]>) -> Option<Context> {
    struct Headers<'a> {
        parent: &'a str,
        state: Option<&'a str>,
    }
    impl Extractor for Headers<'_> {
        fn get(&self, key: &str) -> Option<&str> {
            match key {
                "traceparent" => Some(self.parent),
                "tracestate" => self.state,
                _ => None,
            }
        }
        fn keys(&self) -> Vec<&str> {
            vec!["traceparent", "tracestate"]
        }
    }
    let parent = std::str::from_utf8(traceparent?).ok()?;
    let state = tracestate.and_then(|s| std::str::from_utf8(s).ok());
    let cx = TraceContextPropagator::new()
        .extract_with_context(&opentelemetry::Context::new(), &Headers { parent, state });
    let remote = cx.span().span_context().clone();
    remote.is_valid().then_some(remote)
}

/// Places `span` in a trace: under `parent` (a caller's context, or the one
/// stored with an outbox entry) when there is one, as a new trace
/// otherwise. Call it before the span is first entered. Returns the span's
/// own context.
pub fn start(span: &tracing::Span, parent: Option<&Context>) -> Context {
    if exporting() && !span.is_disabled() {
        if let Some(parent) = parent {
            let cx = opentelemetry::Context::new().with_remote_span_context(parent.clone());
            let _ = span.set_parent(cx);
        }
        let own = span.context().span().span_context().clone();
        if own.is_valid() {
            return own;
        }
    }
    local(parent)
}

/// The context of a span opened within `parent`'s: the span `span` when it
/// is exported (its parent is then the enclosing `tracing` span), else a
/// new span id in `parent`'s trace (or in a new trace).
pub fn child(span: &tracing::Span, parent: Option<&Context>) -> Context {
    if exporting() && !span.is_disabled() {
        let own = span.context().span().span_context().clone();
        if own.is_valid() {
            return own;
        }
    }
    local(parent)
}

/// Names an exported span anew (a request's, once its route is known).
pub fn rename(span: &tracing::Span, name: String) {
    if exporting() && !span.is_disabled() {
        span.context().span().update_name(name);
    }
}

/// A new span id under `parent`, or a new trace: the ids of a span that is
/// not exported. Its sampled flag is the parent's: the gateway records
/// nothing, and says so to Vipps unless its caller recorded.
fn local(parent: Option<&Context>) -> Context {
    let span_id = SpanId::from(fastrand::u64(1..));
    match parent {
        Some(p) => SpanContext::new(
            p.trace_id(),
            span_id,
            p.trace_flags(),
            false,
            p.trace_state().clone(),
        ),
        None => SpanContext::new(
            TraceId::from(fastrand::u128(1..)),
            span_id,
            TraceFlags::default(),
            false,
            TraceState::default(),
        ),
    }
}

/// Lower-case hexadecimal digits of `bytes` into `out` (twice as long).
fn hex_into(bytes: &[u8], out: &mut [u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (i, b) in bytes.iter().enumerate() {
        out[2 * i] = DIGITS[usize::from(b >> 4)];
        out[2 * i + 1] = DIGITS[usize::from(b & 0xf)];
    }
}

/// A context's ids as the log writes them (`trace_id`, `span_id`), kept on
/// the stack.
pub struct Ids {
    trace: [u8; 32],
    span: [u8; 16],
}

impl Ids {
    pub fn of(cx: &Context) -> Self {
        let mut ids = Ids {
            trace: [b'0'; 32],
            span: [b'0'; 16],
        };
        hex_into(&cx.trace_id().to_bytes(), &mut ids.trace);
        hex_into(&cx.span_id().to_bytes(), &mut ids.span);
        ids
    }

    pub fn trace_id(&self) -> &str {
        std::str::from_utf8(&self.trace).unwrap_or_default()
    }

    pub fn span_id(&self) -> &str {
        std::str::from_utf8(&self.span).unwrap_or_default()
    }

    /// Records both on `span`, which declares them `Empty`.
    pub fn record(&self, span: &tracing::Span) {
        span.record("trace_id", self.trace_id());
        span.record("span_id", self.span_id());
    }
}

/// The `traceparent` a call sent from the span `cx` carries
/// (`00-<trace id>-<span id>-<flags>`).
pub fn traceparent(cx: &Context) -> HeaderValue {
    let mut out = *b"00-00000000000000000000000000000000-0000000000000000-00";
    hex_into(&cx.trace_id().to_bytes(), &mut out[3..35]);
    hex_into(&cx.span_id().to_bytes(), &mut out[36..52]);
    hex_into(&[cx.trace_flags().to_u8()], &mut out[53..55]);
    HeaderValue::from_bytes(&out).unwrap_or(HeaderValue::from_static(""))
}

/// The `tracestate` passed on with `cx`, when the caller sent one.
pub fn tracestate(cx: &Context) -> Option<HeaderValue> {
    let state = cx.trace_state().header();
    if state.is_empty() {
        return None;
    }
    HeaderValue::from_str(&state).ok()
}

/// A context as stored with an outbox entry: its `traceparent` and
/// `tracestate` header values.
pub fn to_stored(cx: &Context) -> (String, Option<String>) {
    let parent = traceparent(cx).to_str().unwrap_or_default().to_owned();
    let state = cx.trace_state().header();
    (parent, (!state.is_empty()).then_some(state))
}

/// A stored context back (see [`to_stored`]); `None` when there is none or
/// it does not read.
pub fn from_stored(parent: Option<&str>, state: Option<&str>) -> Option<Context> {
    extract(parent.map(str::as_bytes), state.map(str::as_bytes))
}

/// Spans dropped before reaching the receiver, by reason: `queue_full` (the
/// export queue was full) or `export_failed` (the receiver did not take
/// the batch). One counter for the process, registered in every metrics
/// registry.
pub fn dropped_spans() -> &'static IntCounterVec {
    static DROPPED: OnceLock<IntCounterVec> = OnceLock::new();
    DROPPED.get_or_init(|| {
        // A fixed, valid name and label: building it cannot fail.
        #[allow(clippy::expect_used)]
        let counter = IntCounterVec::new(
            Opts::new(
                "gateway_trace_spans_dropped_total",
                "Spans not exported: the export queue was full, or the OTLP receiver did not take them.",
            ),
            &["reason"],
        )
        .expect("a valid metric definition");
        for reason in ["queue_full", "export_failed"] {
            counter.with_label_values(&[reason]);
        }
        counter
    })
}

/// The export pipeline: the provider whose tracer tracing-opentelemetry
/// records with, and the thread its exporter runs on.
pub struct Pipeline {
    provider: SdkTracerProvider,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Pipeline {
    /// Starts export as `settings` say; `None` when no endpoint is set.
    pub fn start(settings: &TelemetrySettings) -> Result<Option<Self>, String> {
        let Some(endpoint) = &settings.otlp.endpoint else {
            return Ok(None);
        };
        let headers = match &settings.otlp.headers_file {
            Some(path) => read_headers(path)?,
            None => HashMap::new(),
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("telemetry: cannot start the export thread: {e}"))?;
        let handle = runtime.handle().clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        std::thread::Builder::new()
            .name("otlp-export".into())
            .spawn(move || {
                runtime.block_on(async move {
                    let _ = stopped.await;
                });
            })
            .map_err(|e| format!("telemetry: cannot start the export thread: {e}"))?;
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("telemetry: TLS setup failed: {e}"))?;
        let tls = hyper_rustls::ConfigBuilderExt::with_webpki_roots(tls).with_no_client_auth();
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .build();
        let client =
            opentelemetry_http::hyper::HyperClient::new(connector, settings.otlp.timeout, None);
        let protocol = match settings.otlp.protocol {
            OtlpProtocol::HttpProtobuf => opentelemetry_otlp::Protocol::HttpBinary,
        };
        use opentelemetry_otlp::{WithExportConfig as _, WithHttpConfig as _};
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_http_client(client)
            .with_endpoint(format!("{}/v1/traces", endpoint.trim_end_matches('/')))
            .with_protocol(protocol)
            .with_timeout(settings.otlp.timeout)
            .with_headers(headers)
            .build()
            .map_err(|e| format!("telemetry.otlp: {e}"))?;
        let queued = Arc::new(AtomicUsize::new(0));
        let exporter = OnThread {
            inner: Arc::new(exporter),
            handle,
            queued: queued.clone(),
            warned: Mutex::new(None),
        };
        let batch = BatchSpanProcessor::builder(exporter)
            .with_batch_config(
                BatchConfigBuilder::default()
                    .with_max_queue_size(QUEUE)
                    .with_max_export_batch_size(BATCH)
                    .with_scheduled_delay(SCHEDULE)
                    .build(),
            )
            .build();
        let provider = SdkTracerProvider::builder()
            .with_span_processor(Bounded {
                inner: batch,
                queued,
            })
            .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
                settings.sampling_ratio,
            ))))
            .with_resource(
                opentelemetry_sdk::Resource::builder_empty()
                    .with_service_name(env!("CARGO_PKG_NAME"))
                    .with_attribute(opentelemetry::KeyValue::new(
                        "service.version",
                        env!("CARGO_PKG_VERSION"),
                    ))
                    .build(),
            )
            .build();
        EXPORTING.store(true, Ordering::Relaxed);
        Ok(Some(Self {
            provider,
            stop: Some(stop),
        }))
    }

    /// The tracer tracing-opentelemetry records with.
    pub fn tracer(&self) -> opentelemetry_sdk::trace::Tracer {
        self.provider.tracer(env!("CARGO_PKG_NAME"))
    }

    /// Exports what is queued (waiting at most the export timeout) and
    /// stops the export thread.
    pub fn shutdown(mut self) {
        let _ = self.provider.shutdown();
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// `telemetry.otlp.headers_file`: one `Name: value` per line; blank lines
/// and lines starting with `#` are skipped. The values are secrets (an
/// `Authorization` header, an API key): an error names the line, never
/// its value.
pub fn read_headers(path: &std::path::Path) -> Result<HashMap<String, String>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        format!(
            "telemetry.otlp.headers_file: cannot read {}: {e}",
            path.display()
        )
    })?;
    let mut headers = HashMap::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bad = || {
            format!(
                "telemetry.otlp.headers_file {}: line {} is not 'Name: value'",
                path.display(),
                n + 1
            )
        };
        let (name, value) = line.split_once(':').ok_or_else(bad)?;
        let (name, value) = (name.trim(), value.trim());
        if HeaderName::from_bytes(name.as_bytes()).is_err()
            || value.is_empty()
            || HeaderValue::from_str(value).is_err()
        {
            return Err(bad());
        }
        headers.insert(name.to_ascii_lowercase(), value.to_owned());
    }
    Ok(headers)
}

/// The batch processor behind a bound: a span that would make more than
/// [`QUEUE`] wait for export is dropped and counted here, so the batch
/// processor's own queue (of the same size) never drops one uncounted.
#[derive(Debug)]
struct Bounded {
    inner: BatchSpanProcessor,
    /// Spans handed on and not yet taken by an export.
    queued: Arc<AtomicUsize>,
}

impl SpanProcessor for Bounded {
    fn on_start(&self, span: &mut opentelemetry_sdk::trace::Span, cx: &opentelemetry::Context) {
        self.inner.on_start(span, cx);
    }

    fn on_end(&self, span: SpanData) {
        if self.queued.fetch_add(1, Ordering::AcqRel) >= QUEUE {
            self.queued.fetch_sub(1, Ordering::AcqRel);
            dropped_spans().with_label_values(&["queue_full"]).inc();
            return;
        }
        self.inner.on_end(span);
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &opentelemetry_sdk::Resource) {
        self.inner.set_resource(resource);
    }
}

/// The OTLP exporter, run on the export thread's runtime (its HTTP client
/// needs one; the batch processor's thread has none). Counts the spans of
/// a batch the receiver did not take, and says so in the log at most once a
/// minute.
#[derive(Debug)]
struct OnThread {
    inner: Arc<opentelemetry_otlp::SpanExporter>,
    handle: tokio::runtime::Handle,
    queued: Arc<AtomicUsize>,
    /// When a failed export was last logged, and how many failed since.
    warned: Mutex<Option<(Instant, u64)>>,
}

/// How often a failing receiver is logged at most.
const WARN_EVERY: Duration = Duration::from_secs(60);

impl OnThread {
    fn failed(&self, spans: usize, error: &OTelSdkError) {
        dropped_spans()
            .with_label_values(&["export_failed"])
            .inc_by(u64::try_from(spans).unwrap_or(u64::MAX));
        let Ok(mut warned) = self.warned.lock() else {
            return;
        };
        let suppressed = match &mut *warned {
            Some((at, count)) if at.elapsed() < WARN_EVERY => {
                *count += 1;
                return;
            }
            Some((_, count)) => *count,
            None => 0,
        };
        *warned = Some((Instant::now(), 0));
        drop(warned);
        // The exporter's error names the endpoint and what failed, never
        // the configured headers.
        tracing::warn!(error = %error, spans, suppressed, "trace export failed; the batch's spans are dropped");
    }
}

impl SpanExporter for OnThread {
    fn export(&self, batch: Vec<SpanData>) -> impl Future<Output = OTelSdkResult> + Send {
        let spans = batch.len();
        self.queued.fetch_sub(spans, Ordering::AcqRel);
        let inner = self.inner.clone();
        let task = self.handle.spawn(async move { inner.export(batch).await });
        async move {
            let result = match task.await {
                Ok(result) => result,
                Err(e) => Err(OTelSdkError::InternalFailure(e.to_string())),
            };
            if let Err(e) = &result {
                self.failed(spans, e);
            }
            result
        }
    }

    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown()
    }

    fn set_resource(&mut self, resource: &opentelemetry_sdk::Resource) {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.set_resource(resource);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_callers_traceparent_is_continued_and_a_malformed_one_ignored() {
        let cx = extract(
            Some(b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
            Some(b"congo=t61rcWkgMzE"),
        )
        .unwrap();
        assert_eq!(
            format!("{:032x}", cx.trace_id()),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(format!("{:016x}", cx.span_id()), "00f067aa0ba902b7");
        assert!(cx.is_sampled());
        assert_eq!(cx.trace_state().header(), "congo=t61rcWkgMzE");
        for bad in [
            &b""[..],
            b"garbage",
            b"00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            b"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            b"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            b"\xff\xfe",
        ] {
            assert!(extract(Some(bad), None).is_none(), "{bad:?}");
        }
        assert!(extract(None, Some(b"congo=t61rcWkgMzE")).is_none());
    }

    #[test]
    fn an_unexported_span_stays_in_its_parents_trace_with_an_id_of_its_own() {
        let parent = extract(
            Some(b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
            Some(b"congo=t61rcWkgMzE"),
        )
        .unwrap();
        let own = start(&tracing::Span::none(), Some(&parent));
        assert_eq!(own.trace_id(), parent.trace_id());
        assert_ne!(own.span_id(), parent.span_id());
        assert!(own.is_sampled(), "the caller's flag is passed on");
        let header = traceparent(&own);
        let text = header.to_str().unwrap();
        assert_eq!(
            text,
            format!(
                "00-4bf92f3577b34da6a3ce929d0e0e4736-{:016x}-01",
                own.span_id()
            )
        );
        assert_eq!(tracestate(&own).unwrap(), "congo=t61rcWkgMzE");
        let again = extract(Some(text.as_bytes()), None).unwrap();
        assert_eq!(again.span_id(), own.span_id());

        let fresh = start(&tracing::Span::none(), None);
        assert!(fresh.is_valid());
        assert!(!fresh.is_sampled(), "a trace nobody records is not sampled");
        assert!(tracestate(&fresh).is_none());
        let ids = Ids::of(&fresh);
        assert_eq!(ids.trace_id(), format!("{:032x}", fresh.trace_id()));
        assert_eq!(ids.span_id(), format!("{:016x}", fresh.span_id()));
    }

    #[test]
    fn a_stored_context_reads_back() {
        let cx = local(None);
        let (parent, state) = to_stored(&cx);
        assert!(state.is_none());
        let back = from_stored(Some(&parent), None).unwrap();
        assert_eq!(
            (back.trace_id(), back.span_id()),
            (cx.trace_id(), cx.span_id())
        );
        assert!(from_stored(None, None).is_none());
        assert!(from_stored(Some("nonsense"), None).is_none());
    }

    #[test]
    fn the_headers_file_takes_name_value_lines_and_never_echoes_a_value() {
        let dir = std::env::temp_dir().join(format!("vog-otlp-headers-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let good = dir.join("good");
        std::fs::write(
            &good,
            "# the collector's key\nAuthorization: Bearer s3cret-value\n\nX-Scope-OrgID: tenant-1\n",
        )
        .unwrap();
        let headers = read_headers(&good).unwrap();
        assert_eq!(headers["authorization"], "Bearer s3cret-value");
        assert_eq!(headers["x-scope-orgid"], "tenant-1");
        let bad = dir.join("bad");
        std::fs::write(&bad, "Authorization Bearer s3cret-value\n").unwrap();
        let e = read_headers(&bad).unwrap_err();
        assert!(e.contains("line 1"), "{e}");
        assert!(!e.contains("s3cret"), "{e}");
        std::fs::write(&bad, "Bad Name: s3cret-value\n").unwrap();
        let e = read_headers(&bad).unwrap_err();
        assert!(!e.contains("s3cret"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
