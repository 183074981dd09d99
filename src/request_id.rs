//! Request ids: taken from the caller's `X-Request-Id` when it is sane,
//! generated otherwise, returned on every response and put on the request's
//! tracing span. The id and path are also kept in a task-local so an error
//! body can name them without threading the request through every function.
//!
//! The same middleware counts and times every request (`crate::metrics`) and
//! fills the span with the merchant, operation, upstream status and latency.

use std::borrow::Cow;
use std::time::Instant;

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::middleware::Next;
use actix_web::{web, HttpMessage};
use tracing::Instrument;

use crate::domain::Msn;
use crate::error::{ApiError, Kind};
use crate::facade::AppState;
use crate::metrics::{self, Metrics};

pub const HEADER: &str = "x-request-id";
/// [`HEADER`] as a header name, for lookups without parsing the name.
pub const HEADER_NAME: HeaderName = HeaderName::from_static(HEADER);

/// What an error body needs to know about the request being served.
#[derive(Debug, Clone)]
pub struct RequestContext {
    pub id: String,
    pub path: String,
    /// When the request must be answered; upstream calls and retries stop
    /// before it.
    pub deadline: Option<Instant>,
}

/// The most time a request may take, as app data (`resilience.request_deadline`).
#[derive(Debug, Clone, Copy)]
pub struct RequestDeadline(pub std::time::Duration);

/// The request id, as handlers read it from the request extensions.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

tokio::task_local! {
    static CONTEXT: RequestContext;
}

/// The context of the request being served, if any.
pub fn current() -> Option<RequestContext> {
    CONTEXT.try_with(Clone::clone).ok()
}

/// The deadline of the request being served, if any.
pub fn deadline() -> Option<Instant> {
    CONTEXT.try_with(|c| c.deadline).ok().flatten()
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
fn merchant_labels(req: &ServiceRequest) -> (Option<String>, String) {
    // The proxy names its merchant in a header, the façade in the path.
    let raw = if req.path().starts_with(crate::proxy::PREFIX) {
        req.headers()
            .get(&crate::proxy::MSN_HEADER)
            .and_then(|v| v.to_str().ok())
    } else {
        metrics::path_msn(req.path())
    };
    let Some(raw) = raw else {
        return (None, metrics::NO_MSN.to_owned());
    };
    let Ok(msn) = Msn::parse(raw) else {
        return (None, metrics::UNKNOWN_MSN.to_owned());
    };
    let configured = req
        .app_data::<web::Data<AppState>>()
        .is_some_and(|s| s.merchants.get(&msn).is_some());
    let label = if configured {
        msn.as_str().to_owned()
    } else {
        metrics::UNKNOWN_MSN.to_owned()
    };
    (Some(msn.as_str().to_owned()), label)
}

/// The route a proxied request's log line names.
const PROXY_ROUTE: &str = "/vipps/order-management/...";

/// A new request id: a random (version 4) UUID from a per-thread generator,
/// so no system call per request. Ids need to be unique, not secret.
fn new_id() -> String {
    uuid::Builder::from_random_bytes(fastrand::u128(..).to_le_bytes())
        .into_uuid()
        .to_string()
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

/// Middleware: assigns the id and the deadline, opens the request span, and
/// logs one line per request.
pub async fn middleware(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let id = req
        .headers()
        .get(&HEADER_NAME)
        .and_then(|v| v.to_str().ok())
        .filter(|v| usable(v))
        .map_or_else(new_id, str::to_owned);
    req.extensions_mut().insert(RequestId(id.clone()));
    let limit = req.app_data::<RequestDeadline>().map(|d| d.0);
    let started = Instant::now();
    let ctx = RequestContext {
        id: id.clone(),
        path: req.path().to_owned(),
        deadline: limit.map(|l| started + l),
    };
    let proxied = req.path().starts_with(crate::proxy::PREFIX);
    // The proxy judges its raw path itself; its log names the surface, not
    // the caller's path, so a log line never carries an arbitrary path.
    // Only the façade's routes are matched again for their pattern.
    let (operation, route) = if proxied {
        ("proxy", Cow::Borrowed(PROXY_ROUTE))
    } else {
        let pattern = req.match_pattern();
        (
            metrics::operation(pattern.as_deref()),
            pattern.map_or(Cow::Borrowed("unmatched"), Cow::Owned),
        )
    };
    let (msn_log, msn_label) = merchant_labels(&req);
    let span = tracing::info_span!(
        "request",
        request_id = id.as_str(),
        method = req.method().as_str(),
        route = route.as_ref(),
        operation,
        msn = msn_log.as_deref(),
        status = tracing::field::Empty,
        upstream_status = tracing::field::Empty,
        upstream_latency_ms = tracing::field::Empty,
    );
    let metrics = req.app_data::<web::Data<Metrics>>().cloned();
    let _in_flight = metrics.as_ref().map(|m| m.in_flight());
    let result = CONTEXT
        .scope(ctx, next.call(req).instrument(span.clone()))
        .await;
    let elapsed = started.elapsed();
    let status = match &result {
        Ok(res) => res.status().as_u16(),
        Err(e) => e.as_response_error().status_code().as_u16(),
    };
    if let Some(m) = &metrics {
        m.observe_request(&msn_label, operation, status, elapsed);
    }
    let mut res = result?.map_into_boxed_body();
    span.record("status", status);
    span.in_scope(|| {
        tracing::info!(
            latency_ms = elapsed.as_secs_f64() * 1000.0,
            "request finished"
        );
    });
    if let Ok(value) = HeaderValue::from_str(&id) {
        res.headers_mut().insert(HEADER_NAME, value);
    }
    Ok(res)
}

#[cfg(test)]
mod tests {
    use super::{new_id, usable, PROXY_ROUTE};

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
        let ids: std::collections::HashSet<String> = (0..1000).map(|_| new_id()).collect();
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
