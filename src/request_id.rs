//! Request ids: taken from the caller's `X-Request-Id` when it is sane,
//! generated otherwise, returned on every response and put on every log line
//! of the request. The id and path are also kept in a task-local so an error
//! body can name them without threading the request through every function.
//!
//! The same middleware counts and times every request (`crate::metrics`) and
//! records the merchant, operation, upstream status and latency for the log.
//! Those fields live in the request's task-local record, which the JSON log
//! layer writes under `span` on each line (`crate::telemetry`); the text
//! format, read in a terminal, gets a tracing span carrying the same fields.

use std::cell::RefCell;
use std::sync::Arc;
use std::time::Instant;

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::middleware::Next;
use actix_web::{web, HttpMessage};
use tracing::Instrument;

use crate::config::Merchant;
use crate::domain::Msn;
use crate::error::{ApiError, Kind};
use crate::facade::AppState;
use crate::metrics::{self, Metrics};
use crate::telemetry::{Fields, Value};

pub const HEADER: &str = "x-request-id";
/// [`HEADER`] as a header name, for lookups without parsing the name.
pub const HEADER_NAME: HeaderName = HeaderName::from_static(HEADER);

/// What an error body needs to know about the request being served.
#[derive(Debug, Clone)]
pub struct RequestContext {
    pub id: Arc<str>,
    pub path: String,
    /// When the request must be answered; upstream calls and retries stop
    /// before it.
    pub deadline: Option<Instant>,
}

/// How requests are served, as app data: the most time one may take
/// (`resilience.request_deadline`), and whether its log fields also go on a
/// tracing span (the text log format, which shows spans; the JSON layer reads
/// the task-local record instead).
#[derive(Debug, Clone, Copy)]
pub struct RequestSettings {
    pub deadline: std::time::Duration,
    pub spans: bool,
}

/// The request id, as handlers read it from the request extensions.
#[derive(Debug, Clone)]
pub struct RequestId(pub Arc<str>);

/// The request being served: its context and its log fields.
struct Served {
    ctx: RequestContext,
    /// The fields every log line of the request carries, in the order they
    /// were first recorded.
    log: RefCell<Fields>,
    /// Whether the fields also go on the request's tracing span.
    spans: bool,
}

tokio::task_local! {
    static CONTEXT: Served;
}

/// The context of the request being served, if any.
pub fn current() -> Option<RequestContext> {
    CONTEXT.try_with(|s| s.ctx.clone()).ok()
}

/// The deadline of the request being served, if any.
pub fn deadline() -> Option<Instant> {
    CONTEXT.try_with(|s| s.ctx.deadline).ok().flatten()
}

/// Runs `write` on the log fields of the request being served, if any (the
/// JSON log layer, for each line written).
pub(crate) fn with_log(write: impl FnOnce(&Fields)) {
    let _ = CONTEXT.try_with(|s| {
        if let Ok(fields) = s.log.try_borrow() {
            write(&fields);
        }
    });
}

/// Records one log field of the request being served (nothing outside a
/// request). A field recorded again keeps its place and takes the new value.
fn record(name: &'static str, value: Value, on_span: impl FnOnce(&tracing::Span)) {
    let _ = CONTEXT.try_with(|s| {
        if let Ok(mut fields) = s.log.try_borrow_mut() {
            fields.set(name, value);
        }
        if s.spans {
            on_span(&tracing::Span::current());
        }
    });
}

/// Records a number field (statuses).
pub fn record_u64(name: &'static str, value: u64) {
    record(name, Value::U64(value), |span| {
        span.record(name, value);
    });
}

/// Records a fractional field (latencies in milliseconds).
pub fn record_f64(name: &'static str, value: f64) {
    record(name, Value::F64(value), |span| {
        span.record(name, value);
    });
}

/// Runs a handler's work within the request's deadline: past it the caller
/// gets a 504 and the work is dropped (a receipt that reached Vipps is found
/// by the caller's retry, which is answered `replayed`).
pub async fn within_deadline<T>(
    work: impl std::future::Future<Output = Result<T, ApiError>>,
) -> Result<T, ApiError> {
    match deadline() {
        Some(at) => tokio::time::timeout_at(at.into(), work).await.unwrap_or_else(|_| {
            Err(ApiError::new(
                Kind::DeadlineExceeded,
                "The request took longer than the gateway's deadline; its outcome at Vipps is unknown, retry it.",
            ))
        }),
        None => work.await,
    }
}

/// The merchant of a request, for the log (the path's MSN when it is well
/// formed) and for metrics (a configured MSN, `unknown` or `none`: never an
/// arbitrary value, so the label stays bounded).
fn merchant_labels(req: &ServiceRequest) -> (Option<String>, MsnLabel) {
    // The proxy names its merchant in a header, the façade in the path.
    let raw = if req.path().starts_with(crate::proxy::PREFIX) {
        req.headers()
            .get(&crate::proxy::MSN_HEADER)
            .and_then(|v| v.to_str().ok())
    } else {
        metrics::path_msn(req.path())
    };
    let Some(raw) = raw else {
        return (None, MsnLabel::Fixed(metrics::NO_MSN));
    };
    if !Msn::is_valid(raw) {
        return (None, MsnLabel::Fixed(metrics::UNKNOWN_MSN));
    }
    let label = req
        .app_data::<web::Data<AppState>>()
        .and_then(|s| s.merchants.get(raw))
        .map_or(MsnLabel::Fixed(metrics::UNKNOWN_MSN), MsnLabel::Configured);
    (Some(raw.to_owned()), label)
}

/// A request's `msn` metric label.
enum MsnLabel {
    Configured(Arc<Merchant>),
    Fixed(&'static str),
}

impl MsnLabel {
    fn as_str(&self) -> &str {
        match self {
            Self::Configured(m) => m.msn.as_str(),
            Self::Fixed(s) => s,
        }
    }
}

/// The route a proxied request's log line names.
const PROXY_ROUTE: &str = "/vipps/order-management/...";

/// A new request id: a random (version 4) UUID from a per-thread generator,
/// so no system call per request. Ids need to be unique, not secret.
fn new_id() -> Arc<str> {
    let uuid = uuid::Builder::from_random_bytes(fastrand::u128(..).to_le_bytes()).into_uuid();
    Arc::from(
        &*uuid
            .hyphenated()
            .encode_lower(&mut uuid::Uuid::encode_buffer()),
    )
}

/// A caller's id is kept when it is short and printable, so it can go into
/// a header and a log line unchanged.
fn usable(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:/+=@".contains(&b))
}

/// A request method as a log value: the usual ones without a copy.
fn method_value(method: &actix_web::http::Method) -> Value {
    use actix_web::http::Method;
    let known = [
        (Method::GET, "GET"),
        (Method::POST, "POST"),
        (Method::PUT, "PUT"),
        (Method::DELETE, "DELETE"),
        (Method::HEAD, "HEAD"),
        (Method::OPTIONS, "OPTIONS"),
        (Method::PATCH, "PATCH"),
    ];
    known.into_iter().find(|(m, _)| m == method).map_or_else(
        || Value::Str(method.as_str().to_owned()),
        |(_, s)| Value::Static(s),
    )
}

/// Middleware: assigns the id and the deadline, records the request's log
/// fields, and logs one line per request.
pub async fn middleware(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let id = req
        .headers()
        .get(&HEADER_NAME)
        .and_then(|v| v.to_str().ok())
        .filter(|v| usable(v))
        .map_or_else(new_id, Arc::from);
    req.extensions_mut().insert(RequestId(id.clone()));
    let settings = req.app_data::<RequestSettings>().copied();
    let started = Instant::now();
    let ctx = RequestContext {
        id: id.clone(),
        path: req.path().to_owned(),
        deadline: settings.map(|s| started + s.deadline),
    };
    let spans = settings.is_some_and(|s| s.spans);
    let proxied = req.path().starts_with(crate::proxy::PREFIX);
    // The proxy judges its raw path itself; its log names the surface, not
    // the caller's path, so a log line never carries an arbitrary path.
    // Only the façade's routes are matched again for their pattern.
    let (operation, route) = if proxied {
        ("proxy", PROXY_ROUTE)
    } else {
        let pattern =
            metrics::route_pattern(req.path()).or_else(|| crate::ops::problem_route(req.path()));
        debug_assert_eq!(
            pattern,
            req.match_pattern().as_deref(),
            "the route table and the registered routes differ for {}",
            req.path()
        );
        (metrics::operation(pattern), pattern.unwrap_or("unmatched"))
    };
    let (msn_log, msn_label) = merchant_labels(&req);
    let span = if spans {
        tracing::info_span!(
            "request",
            request_id = &*id,
            method = req.method().as_str(),
            route,
            operation,
            msn = msn_log.as_deref(),
            status = tracing::field::Empty,
            upstream_status = tracing::field::Empty,
            upstream_latency_ms = tracing::field::Empty,
        )
    } else {
        tracing::Span::none()
    };
    // The same fields, in the same order, as the span's.
    let mut log = Fields::with_capacity(9);
    log.set("request_id", Value::Shared(id.clone()));
    log.set("method", method_value(req.method()));
    log.set("route", Value::Static(route));
    log.set("operation", Value::Static(operation));
    if let Some(msn) = msn_log {
        log.set("msn", Value::Str(msn));
    }
    let served = Served {
        ctx,
        log: RefCell::new(log),
        spans,
    };
    let metrics = req.app_data::<web::Data<Metrics>>().cloned();
    let _in_flight = metrics.as_ref().map(|m| m.in_flight());
    // The closing line is written within the request's task-local record
    // (and span), so it carries the request's fields.
    let served_request = async move {
        let result = next.call(req).await;
        let elapsed = started.elapsed();
        let status = match &result {
            Ok(res) => res.status().as_u16(),
            Err(e) => e.as_response_error().status_code().as_u16(),
        };
        if let Some(m) = &metrics {
            m.observe_request(msn_label.as_str(), operation, status, elapsed);
        }
        if result.is_ok() {
            record_u64("status", u64::from(status));
            tracing::info!(
                latency_ms = elapsed.as_secs_f64() * 1000.0,
                "request finished"
            );
        }
        result
    };
    let mut res = CONTEXT
        .scope(served, served_request.instrument(span))
        .await?
        .map_into_boxed_body();
    if let Ok(value) = HeaderValue::from_str(&id) {
        res.headers_mut().insert(HEADER_NAME, value);
    }
    Ok(res)
}

#[cfg(test)]
mod tests {
    use super::{method_value, new_id, usable, Value, PROXY_ROUTE};
    use actix_web::http::Method;
    use std::sync::Arc;

    #[test]
    fn methods_are_logged_by_name() {
        assert_eq!(method_value(&Method::GET), Value::Static("GET"));
        assert_eq!(method_value(&Method::POST), Value::Static("POST"));
        assert_eq!(method_value(&Method::PATCH), Value::Static("PATCH"));
        let custom = Method::from_bytes(b"PURGE").unwrap();
        assert_eq!(method_value(&custom), Value::Str("PURGE".into()));
    }

    #[test]
    fn caller_ids_must_be_short_and_printable() {
        assert!(usable("req-123"));
        assert!(usable("00-abc-01"));
        assert!(!usable(""));
        assert!(!usable("a\r\nb"));
        assert!(!usable(&"x".repeat(129)));
    }

    #[test]
    fn generated_ids_are_distinct_version_4_uuids() {
        let ids: std::collections::HashSet<Arc<str>> = (0..1000).map(|_| new_id()).collect();
        assert_eq!(ids.len(), 1000);
        for id in &ids {
            let parsed = uuid::Uuid::parse_str(id).unwrap();
            assert_eq!(parsed.get_version_num(), 4, "{id}");
            assert!(usable(id));
        }
    }

    #[test]
    fn proxy_route_names_the_proxy_prefix() {
        assert_eq!(
            PROXY_ROUTE,
            format!("{}/...", crate::proxy::PREFIX),
            "the log's proxy route follows the prefix"
        );
    }
}
