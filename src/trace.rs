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
/// caller's `tracestate`, with its `traceparent` written once: the log's
/// `trace_id` and `span_id` are read from it, and a call sent from the span
/// carries it.
///
/// Shared: a request's context is cloned into its task-local and each call
/// context, and held across awaits, so it is a pointer wide.
#[derive(Debug, Clone)]
pub struct Context(Arc<Shared>);

#[derive(Debug)]
struct Shared {
    span: SpanContext,
    header: HeaderValue,
}

impl Context {
    fn new(span: SpanContext) -> Self {
        let mut out = *b"00-00000000000000000000000000000000-0000000000000000-00";
        hex_into(&span.trace_id().to_bytes(), &mut out[3..35]);
        hex_into(&span.span_id().to_bytes(), &mut out[36..52]);
        hex_into(&[span.trace_flags().to_u8()], &mut out[53..55]);
        let header = HeaderValue::from_bytes(&out).unwrap_or(HeaderValue::from_static(""));
        Self(Arc::new(Shared { span, header }))
    }

    /// The OpenTelemetry span context.
    pub fn span_context(&self) -> &SpanContext {
        &self.0.span
    }

    /// The `traceparent` a call sent from this span carries
    /// (`00-<trace id>-<span id>-<flags>`).
    pub fn traceparent(&self) -> &HeaderValue {
        &self.0.header
    }

    /// The trace id, as the log writes it (32 hexadecimal digits).
    pub fn trace_id(&self) -> &str {
        self.header_part(3..35)
    }

    /// The span id, as the log writes it (16 hexadecimal digits).
    pub fn span_id(&self) -> &str {
        self.header_part(36..52)
    }

    fn header_part(&self, range: std::ops::Range<usize>) -> &str {
        self.0
            .header
            .as_bytes()
            .get(range)
            .and_then(|b| std::str::from_utf8(b).ok())
            .unwrap_or_default()
    }

    /// Records `trace_id` and `span_id` on `span`, which declares them
    /// `Empty`.
    pub fn record(&self, span: &tracing::Span) {
        span.record("trace_id", self.trace_id());
        span.record("span_id", self.span_id());
    }
}

/// The caller's trace context from its `traceparent` and `tracestate`;
/// `None` when it sent none or a malformed one (the request then starts a
/// new trace: a bad header is never the caller's error).
pub fn extract(traceparent: Option<&[u8]>, tracestate: Option<&[u8]>) -> Option<SpanContext> {
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
pub fn start(span: &tracing::Span, parent: Option<&SpanContext>) -> Context {
    if exporting() && !span.is_disabled() {
        if let Some(parent) = parent {
            let cx = opentelemetry::Context::new().with_remote_span_context(parent.clone());
            let _ = span.set_parent(cx);
        }
        let own = span.context().span().span_context().clone();
        if own.is_valid() {
            return Context::new(own);
        }
    }
    Context::new(local(parent))
}

/// The context a call made within `parent`'s span is sent from: the span
/// `span` when it is exported (its parent is then the enclosing `tracing`
/// span); else `parent` itself, since nothing records a span of the call
/// (Vipps sees the request's or the delivery's span as its parent); else,
/// with no parent, a new trace.
pub fn child(span: &tracing::Span, parent: Option<&Context>) -> Context {
    if exporting() && !span.is_disabled() {
        let own = span.context().span().span_context().clone();
        if own.is_valid() {
            return Context::new(own);
        }
    }
    match parent {
        Some(parent) => parent.clone(),
        None => Context::new(local(None)),
    }
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
fn local(parent: Option<&SpanContext>) -> SpanContext {
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

/// The `tracestate` passed on with `cx`, when the caller sent one.
pub fn tracestate(cx: &Context) -> Option<HeaderValue> {
    let state = cx.0.span.trace_state().header();
    if state.is_empty() {
        return None;
    }
    HeaderValue::from_str(&state).ok()
}

/// A context as stored with an outbox entry: its `traceparent` and
/// `tracestate` header values.
pub fn to_stored(cx: &Context) -> (String, Option<String>) {
    let parent = cx.traceparent().to_str().unwrap_or_default().to_owned();
    let state = cx.0.span.trace_state().header();
    (parent, (!state.is_empty()).then_some(state))
}

/// A stored context back (see [`to_stored`]); `None` when there is none or
/// it does not read.
pub fn from_stored(parent: Option<&str>, state: Option<&str>) -> Option<SpanContext> {
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
        let client = OtlpClient::new(settings.otlp.timeout)?;
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

/// The exporter's HTTP client: hyper-util's pooled HTTP/1.1 client with
/// hyper-rustls (the webpki roots, rustls' ring provider), as the Vipps
/// client uses, so the export adds no HTTP stack to the build.
/// opentelemetry-http's own hyper client would turn on hyper's HTTP/2 for
/// the whole process, the Vipps client's included.
#[derive(Debug, Clone)]
struct OtlpClient {
    inner: hyper_util::client::legacy::Client<
        hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
        http_body_util::Full<bytes::Bytes>,
    >,
    timeout: Duration,
}

/// Most bytes read from a receiver's answer (a partial-success message).
const MAX_ANSWER: usize = 4 * 1024 * 1024;

impl OtlpClient {
    fn new(timeout: Duration) -> Result<Self, String> {
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
        let inner =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build(connector);
        Ok(Self { inner, timeout })
    }
}

type ExportAnswer = Result<http::Response<bytes::Bytes>, opentelemetry_http::HttpError>;

impl opentelemetry_http::HttpClient for OtlpClient {
    fn send_bytes<'client, 'call>(
        &'client self,
        request: http::Request<bytes::Bytes>,
    ) -> std::pin::Pin<Box<dyn Future<Output = ExportAnswer> + Send + 'call>>
    where
        'client: 'call,
        Self: 'call,
    {
        use http_body_util::BodyExt as _;
        Box::pin(async move {
            let (parts, body) = request.into_parts();
            let request = http::Request::from_parts(parts, http_body_util::Full::new(body));
            let exchange = async {
                let answer = self.inner.request(request).await?;
                let (parts, body) = answer.into_parts();
                let body = http_body_util::Limited::new(body, MAX_ANSWER)
                    .collect()
                    .await?
                    .to_bytes();
                Ok::<_, opentelemetry_http::HttpError>(http::Response::from_parts(parts, body))
            };
            tokio::time::timeout(self.timeout, exchange)
                .await
                .map_err(|_| "the OTLP receiver did not answer in time")?
        })
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
        let sc = own.span_context();
        assert_eq!(sc.trace_id(), parent.trace_id());
        assert_ne!(sc.span_id(), parent.span_id());
        assert!(sc.is_sampled(), "the caller's flag is passed on");
        let text = own.traceparent().to_str().unwrap();
        assert_eq!(
            text,
            format!(
                "00-4bf92f3577b34da6a3ce929d0e0e4736-{:016x}-01",
                sc.span_id()
            )
        );
        assert_eq!(own.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(own.span_id(), format!("{:016x}", sc.span_id()));
        assert_eq!(tracestate(&own).unwrap(), "congo=t61rcWkgMzE");
        let again = extract(Some(text.as_bytes()), None).unwrap();
        assert_eq!(again.span_id(), sc.span_id());
        // A call made within it, with export off, is sent from it.
        let call = child(&tracing::Span::none(), Some(&own));
        assert_eq!(call.traceparent(), own.traceparent());

        let fresh = start(&tracing::Span::none(), None);
        let sc = fresh.span_context();
        assert!(sc.is_valid());
        assert!(!sc.is_sampled(), "a trace nobody records is not sampled");
        assert!(tracestate(&fresh).is_none());
        assert_eq!(fresh.trace_id(), format!("{:032x}", sc.trace_id()));
        assert_eq!(fresh.span_id(), format!("{:016x}", sc.span_id()));
        assert!(fresh.traceparent().to_str().unwrap().ends_with("-00"));
        let orphan = child(&tracing::Span::none(), None);
        assert_ne!(
            orphan.trace_id(),
            fresh.trace_id(),
            "no parent: a new trace"
        );
    }

    #[test]
    fn a_stored_context_reads_back() {
        let cx = start(&tracing::Span::none(), None);
        let (parent, state) = to_stored(&cx);
        assert!(state.is_none());
        let back = from_stored(Some(&parent), None).unwrap();
        assert_eq!(
            (back.trace_id(), back.span_id()),
            (cx.span_context().trace_id(), cx.span_context().span_id())
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
