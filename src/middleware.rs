//! The request middleware: each request gets an id (the caller's
//! `X-Request-Id` when it is sane, a new one otherwise, returned on every
//! response), a deadline, a tracing span with its log fields, and its
//! metrics. The id, path and deadline are also kept in a task-local
//! ([`crate::request`]) so an error body can name them without threading
//! the request through every function.

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::middleware::Next;
use actix_web::{web, HttpMessage};
use futures_util::future::{Either, FutureExt as _};
use tracing::field::Empty;
use tracing::Instrument;

use crate::config::Merchant;
use crate::domain::PROXY_PREFIX;
use crate::domain::{Msn, MSN_HEADER};
use crate::error::{ApiError, Kind};
use crate::metrics::{self, Metrics};
pub use crate::request::{
    call_context, current, RequestContext, RequestSettings, HEADER, HEADER_NAME,
};
use crate::request::{current_deadline, serve, Routed, DEFAULT_DEADLINE};
use crate::state::AppState;
use crate::telemetry::{REQUEST_SPAN, REQUEST_TARGET};
use crate::trace;
use crate::vipps::{Exchange, Observed};

/// Runs a handler's work within the request's deadline: past it the caller
/// gets a 504 and the work is dropped (a receipt that reached Vipps is found
/// by the caller's retry, which is answered `replayed`).
/// Not an `async fn`: that would hold `work` and its timeout side by side,
/// doubling the size of every handler's future.
pub fn within_deadline<T>(
    work: impl Future<Output = Result<T, ApiError>>,
) -> impl Future<Output = Result<T, ApiError>> {
    match current_deadline() {
        Some(at) => Either::Left(tokio::time::timeout_at(at, work).map(|done| {
            done.unwrap_or_else(|_| {
                Err(ApiError::new(
                    Kind::DeadlineExceeded,
                    "The request took longer than the gateway's deadline; its outcome at Vipps is unknown, retry it.",
                ))
            })
        })),
        None => Either::Right(work),
    }
}

/// The merchant of a request, for the log (the path's MSN when it is well
/// formed) and for metrics (a configured MSN, `unknown` or `none`: never an
/// arbitrary value, so the label stays bounded).
fn merchant_labels(req: &ServiceRequest) -> (Option<String>, MsnLabel) {
    // The proxy names its merchant in a header, the façade in the path.
    let raw = if req.path().starts_with(PROXY_PREFIX) {
        req.headers().get(MSN_HEADER).and_then(|v| v.to_str().ok())
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

/// The W3C trace context headers, as actix-web's header names (looked up
/// without parsing a name on every request).
const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// The route a proxied request's log line names.
const PROXY_ROUTE: &str = "/vipps/order-management/...";
/// A proxied request's operation (`metrics::operation` of [`PROXY_ROUTE`]).
const PROXY_OPERATION: &str = "proxy";

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

/// Records a routed request's `route` (its resource's pattern) and
/// `operation` on its span, as the resource's first step. The resource
/// knows its pattern from registration; the request middleware, which runs
/// before routing, would have to match the path against every pattern
/// again.
pub fn routed(req: &ServiceRequest, route: &str, operation: &'static str) {
    let span = tracing::Span::current();
    span.record("route", route);
    span.record("operation", operation);
    if trace::exporting() {
        trace::rename(&span, format!("{} {route}", req.method()));
    }
    if let Some(ctx) = req.extensions().get::<RequestContext>() {
        ctx.routed.0.set(Some(operation));
    }
}

/// What a request ended with, recorded on its span in one `record_all`.
struct End<'a> {
    /// The route and operation, unless [`routed`] recorded them.
    route: Option<(&'a str, &'static str)>,
    /// The status, when it was answered.
    status: Option<u16>,
    /// The last upstream exchange (status `0`: no answer).
    last: Option<Exchange>,
}

/// Records how the request ended on its span: its route and operation when
/// no resource recorded them, its status and the last upstream exchange's
/// status and latency.
fn record_end(span: &tracing::Span, end: &End<'_>) {
    let Some(meta) = span.metadata() else {
        return;
    };
    let fields = meta.fields();
    let (Some(route), Some(operation), Some(status), Some(upstream), Some(latency)) = (
        fields.field("route"),
        fields.field("operation"),
        fields.field("status"),
        fields.field("upstream_status"),
        fields.field("upstream_latency_ms"),
    ) else {
        return;
    };
    let status_value = end.status.map(u64::from);
    let upstream_value = end.last.map(|l| u64::from(l.status.unwrap_or(0)));
    let latency_value = end.last.map(|l| l.latency.as_secs_f64() * 1000.0);
    let route_value = end.route.map(|(r, _)| r);
    let operation_value = end.route.map(|(_, o)| o);
    let values: [(&tracing::field::Field, Option<&dyn tracing::Value>); 5] = [
        (
            &route,
            route_value.as_ref().map(|v| v as &dyn tracing::Value),
        ),
        (
            &operation,
            operation_value.as_ref().map(|v| v as &dyn tracing::Value),
        ),
        (
            &status,
            status_value.as_ref().map(|v| v as &dyn tracing::Value),
        ),
        (
            &upstream,
            upstream_value.as_ref().map(|v| v as &dyn tracing::Value),
        ),
        (
            &latency,
            latency_value.as_ref().map(|v| v as &dyn tracing::Value),
        ),
    ];
    span.record_all(&fields.value_set(&values));
}

/// Middleware: assigns the id and the deadline, serves the request in its
/// span, records what it ended with, and logs one line per request.
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
    let settings = req.app_data::<RequestSettings>().copied();
    let started = Instant::now();
    let observed = Observed::default();
    let routed = Routed::default();
    // The proxy judges its raw path itself; its log names the surface, not
    // the caller's path, so a log line never carries an arbitrary path.
    let proxied = req.path().starts_with(PROXY_PREFIX);
    let (msn_log, msn_label) = merchant_labels(&req);
    // The caller's trace is continued; a malformed `traceparent` starts a
    // new one.
    let parent = req.headers().get(&TRACEPARENT).and_then(|parent| {
        trace::extract(
            Some(parent.as_bytes()),
            req.headers().get(&TRACESTATE).map(HeaderValue::as_bytes),
        )
    });
    // A façade request's route is recorded once routed (`routed`); the
    // proxy's is known now. With export off the span's ids are known before
    // it is made; with export on they are the exported span's own.
    // The request span: `[otel fields]` for tracing-opentelemetry, then
    // its log fields, `trace_id` and `span_id` as given.
    macro_rules! request_span {
        ([$($otel:tt)*], $trace_id:expr, $span_id:expr) => {
            tracing::info_span!(
                target: REQUEST_TARGET,
                REQUEST_SPAN,
                $($otel)*
                request_id = &*id,
                method = req.method().as_str(),
                msn = msn_log.as_deref(),
                route = proxied.then_some(PROXY_ROUTE),
                operation = proxied.then_some(PROXY_OPERATION),
                order_id = Empty,
                caller = Empty,
                caller_client = Empty,
                trace_id = $trace_id,
                span_id = $span_id,
                status = Empty,
                upstream_status = Empty,
                upstream_latency_ms = Empty,
            )
        };
    }
    let (span, trace_cx) = if trace::exporting() {
        let name = if proxied {
            format!("{} {PROXY_ROUTE}", req.method())
        } else {
            req.method().to_string()
        };
        let span = request_span!([otel.kind = "server", otel.name = name,], Empty, Empty);
        let cx = trace::start(&span, parent.as_ref());
        cx.record(&span);
        (span, cx)
    } else {
        let cx = trace::start(&tracing::Span::none(), parent.as_ref());
        (request_span!([], cx.trace_id(), cx.span_id()), cx)
    };
    let ctx = RequestContext {
        id: id.clone(),
        path: req.path().to_owned(),
        deadline: tokio::time::Instant::now() + settings.map_or(DEFAULT_DEADLINE, |s| s.deadline),
        observed: observed.clone(),
        routed: routed.clone(),
        trace: trace_cx,
        merchant: match &msn_label {
            MsnLabel::Configured(m) => Some(m.clone()),
            MsnLabel::Fixed(_) => None,
        },
    };
    req.extensions_mut().insert(ctx.clone());
    let method = req.method().clone();
    let metrics = req.app_data::<web::Data<Metrics>>().cloned();
    let _in_flight = metrics.as_ref().map(|m| m.in_flight());
    // The closing line is written within the request's span, so it
    // carries the request's fields.
    let served_request = async move {
        let result = next.call(req).await;
        let elapsed = started.elapsed();
        let status = match &result {
            Ok(res) => res.status().as_u16(),
            Err(e) => e.as_response_error().status_code().as_u16(),
        };
        // The route is still to be found only when the request reached no
        // resource (every route but the proxy's is one): a 404.
        let (operation, unrouted) = match routed.0.get() {
            _ if proxied => (PROXY_OPERATION, None),
            Some(operation) => (operation, None),
            None => {
                let route = result
                    .as_ref()
                    .ok()
                    .and_then(|r| r.request().match_pattern());
                (metrics::operation(route.as_deref()), Some(route))
            }
        };
        if let Some(m) = &metrics {
            m.observe_request(msn_label.as_str(), operation, status, elapsed);
        }
        let end = End {
            route: unrouted
                .as_ref()
                .map(|route| (route.as_deref().unwrap_or("unmatched"), operation)),
            status: result.is_ok().then_some(status),
            last: observed.last(),
        };
        let span = tracing::Span::current();
        record_end(&span, &end);
        if let (true, Some((route, _))) = (trace::exporting(), end.route) {
            trace::rename(&span, format!("{method} {route}"));
        }
        if result.is_ok() {
            tracing::info!(
                latency_ms = elapsed.as_secs_f64() * 1000.0,
                "request finished"
            );
        }
        result
    };
    let mut res = serve(ctx, served_request.instrument(span))
        .await?
        .map_into_boxed_body();
    if let Ok(value) = HeaderValue::from_str(&id) {
        res.headers_mut().insert(HEADER_NAME, value);
    }
    Ok(res)
}

#[cfg(test)]
mod tests {
    use super::{new_id, usable, PROXY_ROUTE};
    use std::sync::Arc;

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
    fn proxy_operation_is_the_operation_of_the_proxy_route() {
        assert_eq!(
            crate::metrics::operation(Some(PROXY_ROUTE)),
            super::PROXY_OPERATION
        );
    }

    #[test]
    fn proxy_route_names_the_proxy_prefix() {
        assert_eq!(
            PROXY_ROUTE,
            format!("{}/...", crate::domain::PROXY_PREFIX),
            "the log's proxy route follows the prefix"
        );
    }
}
