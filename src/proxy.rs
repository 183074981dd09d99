//! The reverse-proxy surface (SPEC §4): `/vipps/order-management/...` with a
//! `Merchant-Serial-Number` header, forwarded to `{base_url}/order-management/...`
//! with the gateway's own credentials.
//!
//! Only the method and path pairs of SPEC §2 are forwarded. The route is
//! judged on the raw request target, before any percent-decoding or
//! normalisation, and every path parameter must match its documented pattern
//! (letters, digits, `-`, `_`, `.`; not dots only). So `%2F`, `%2e%2e`, `//`,
//! `/./`, backslashes and absolute URLs never reach Vipps: whatever passes the
//! check is sent upstream byte for byte as it arrived.

use std::sync::LazyLock;

use actix_web::http::header::{self, HeaderName, HeaderValue};
use actix_web::http::Method;
use actix_web::{web, HttpMessage as _, HttpRequest, HttpResponse, ResponseError as _};

use crate::auth::Grant;
use crate::config::ProxySettings;
use crate::domain::{parse_hyphenated_uuid, OrderId, MSN_HEADER};
use crate::error::{ApiError, Kind};
use crate::facade::read_body;
use crate::middleware::{call_context, within_deadline, RequestContext};
use crate::state::AppState;
use crate::vipps::VippsClient;

/// The gateway's prefix; what follows it is the upstream path below `/order-management`.
pub use crate::domain::PROXY_PREFIX as PREFIX;

/// Where Order Management's paths start upstream.
const UPSTREAM_PREFIX: &str = "/order-management";

/// Request headers passed on to Vipps, each by its name in actix-web's and in
/// the client's (hyper's) header types. Everything else the caller sent
/// (credentials, `Vipps-System-*`, cookies, forwarding headers, hop-by-hop
/// headers) is dropped; the client adds the gateway's own credentials.
const FORWARDED_REQUEST: [(HeaderName, http::HeaderName); 3] = [
    (header::CONTENT_TYPE, http::header::CONTENT_TYPE),
    (header::ACCEPT, http::header::ACCEPT),
    (header::ACCEPT_LANGUAGE, http::header::ACCEPT_LANGUAGE),
];

/// Response headers passed back from Vipps. Hop-by-hop and framing headers
/// are the gateway's own; `X-Request-Id` is the gateway's request id.
const FORWARDED_RESPONSE: [(HeaderName, http::HeaderName); 7] = [
    (header::CONTENT_TYPE, http::header::CONTENT_TYPE),
    (header::CONTENT_ENCODING, http::header::CONTENT_ENCODING),
    (header::CONTENT_LANGUAGE, http::header::CONTENT_LANGUAGE),
    (header::RETRY_AFTER, http::header::RETRY_AFTER),
    (header::CACHE_CONTROL, http::header::CACHE_CONTROL),
    (header::ETAG, http::header::ETAG),
    (header::LAST_MODIFIED, http::header::LAST_MODIFIED),
];

/// The allow-list (SPEC §2): each path below [`PREFIX`] (and below Vipps'
/// `/order-management`) with the methods forwarded on it. `{paymentType}`
/// is one of [`PAYMENT_TYPES`]; `{orderId}` and `{transactionId}` follow
/// the order id rules; `{categoryId}` is a hyphenated UUID.
pub const ROUTES: [(&str, &[Method]); 8] = [
    ("/v1/images", &[Method::POST]),
    ("/v1/orders/{transactionId}", &[Method::PUT, Method::GET]),
    ("/v1/receipts/{transactionId}", &[Method::GET, Method::POST]),
    ("/v2/{paymentType}/categories/{orderId}", &[Method::PUT]),
    ("/v2/{paymentType}/receipts/{orderId}", &[Method::POST]),
    ("/v2/{paymentType}/{orderId}", &[Method::GET]),
    // Order Management 2.1's several links per order.
    ("/v3/categories", &[Method::POST, Method::GET]),
    (
        "/v3/categories/{categoryId}",
        &[Method::GET, Method::DELETE],
    ),
];

/// The v2 path's `{paymentType}` as Vipps spells it: 2.0's document wrote
/// it in lower case, 2.1's enumerates it in upper case. Forwarded exactly as
/// the caller wrote it; any other spelling (`Ecom`) is no route.
const PAYMENT_TYPES: [&str; 4] = ["ecom", "recurring", "ECOM", "RECURRING"];

/// The one operation that takes a query: 2.1's list of an order's links,
/// `GET /v3/categories?orderId=`. Its query must be exactly that one
/// parameter, with a valid order id; every other query is refused.
const ORDER_QUERY_ROUTE: (&str, Method) = ("/v3/categories", Method::GET);

/// Why a path is not forwarded.
#[derive(Debug, PartialEq, Eq)]
enum Refusal {
    /// Not an allow-listed path (or a parameter breaks its pattern).
    NoRoute,
    /// An allow-listed path with another method.
    Method(&'static [Method]),
    /// A query string on an operation that takes none.
    Query,
    /// A query on [`ORDER_QUERY_ROUTE`] that is not exactly
    /// `orderId=<order id>`.
    OrderQuery,
}

/// Whether one raw path segment fits a pattern segment.
fn segment_ok(pattern: &str, raw: &str) -> bool {
    match pattern {
        // Sent upstream verbatim, so exactly as Vipps spells it.
        "{paymentType}" => PAYMENT_TYPES.contains(&raw),
        // `transactionId` is documented only as a string; Vipps ids are
        // digits or order ids, so the order id rules (and length) apply.
        "{orderId}" | "{transactionId}" => OrderId::is_valid(raw),
        "{categoryId}" => parse_hyphenated_uuid(raw).is_some(),
        literal => literal == raw,
    }
}

/// Whether a query is exactly `orderId=<order id>`. An order id holds only
/// unreserved characters, so a percent-encoded one is refused too.
fn order_query_ok(query: &str) -> bool {
    query
        .strip_prefix("orderId=")
        .is_some_and(OrderId::is_valid)
}

/// Most segments of an allow-listed path.
const MAX_SEGMENTS: usize = 4;

/// [`ROUTES`] with each pattern split into its segments once.
static ROUTE_SEGMENTS: LazyLock<Vec<(Vec<&'static str>, &'static [Method])>> =
    LazyLock::new(|| {
        ROUTES
            .iter()
            .map(|(pattern, methods)| (pattern[1..].split('/').collect(), *methods))
            .collect()
    });

/// Matches the raw path below [`PREFIX`] against the allow-list; the
/// matched pattern.
fn route(method: &Method, rest: &str) -> Result<&'static str, Refusal> {
    let rest = rest.strip_prefix('/').ok_or(Refusal::NoRoute)?;
    // Split once, without allocating; a longer path matches nothing.
    let mut raw = [""; MAX_SEGMENTS];
    let mut count = 0;
    for segment in rest.split('/') {
        *raw.get_mut(count).ok_or(Refusal::NoRoute)? = segment;
        count += 1;
    }
    let raw = &raw[..count];
    let (index, (_, methods)) = ROUTE_SEGMENTS
        .iter()
        .enumerate()
        .find(|(_, (pattern, _))| {
            pattern.len() == raw.len() && pattern.iter().zip(raw).all(|(p, r)| segment_ok(p, r))
        })
        .ok_or(Refusal::NoRoute)?;
    if methods.contains(method) {
        Ok(ROUTES[index].0)
    } else {
        Err(Refusal::Method(methods))
    }
}

/// Registers the proxy below [`PREFIX`].
pub fn routes(cfg: &mut web::ServiceConfig, settings: &ProxySettings) {
    cfg.service(
        web::scope(PREFIX)
            .app_data(web::Data::new(settings.clone()))
            .default_service(web::to(forward)),
    );
}

/// The upstream path (and query) for a request, or why it is refused.
/// Judged on the raw request target: an absolute-form target (`GET
/// http://host/...`) is refused, since the gateway is not a forward proxy,
/// and so is any query but [`ORDER_QUERY_ROUTE`]'s.
fn upstream_path(req: &HttpRequest) -> Result<String, Refusal> {
    let uri = req.uri();
    if uri.scheme().is_some() || uri.authority().is_some() {
        return Err(Refusal::NoRoute);
    }
    let rest = uri.path().strip_prefix(PREFIX).ok_or(Refusal::NoRoute)?;
    let pattern = route(req.method(), rest)?;
    let query = uri.query();
    if let Some(q) = query {
        let takes_order_query =
            (pattern, req.method()) == (ORDER_QUERY_ROUTE.0, &ORDER_QUERY_ROUTE.1);
        if !takes_order_query {
            return Err(Refusal::Query);
        }
        if !order_query_ok(q) {
            return Err(Refusal::OrderQuery);
        }
    }
    let mut path = String::with_capacity(
        UPSTREAM_PREFIX.len() + rest.len() + query.map_or(0, |q| q.len() + 1),
    );
    path.push_str(UPSTREAM_PREFIX);
    path.push_str(rest);
    if let Some(q) = query {
        path.push('?');
        path.push_str(q);
    }
    Ok(path)
}

/// The problem answer for a refused request; a 405 names the allowed methods.
fn refusal_response(refusal: Refusal, method: &Method) -> HttpResponse {
    match refusal {
        Refusal::NoRoute => ApiError::new(
            Kind::NotFound,
            "No such Vipps operation; the proxy forwards only the documented Order Management paths.",
        )
        .error_response(),
        Refusal::Query => ApiError::field(
            Kind::InvalidRequest,
            "query",
            "this operation takes no query parameters; only GET /v3/categories takes one, exactly orderId=<order id>",
        )
        .error_response(),
        Refusal::OrderQuery => ApiError::field(
            Kind::InvalidRequest,
            "query",
            "this operation takes exactly one query parameter, once: orderId=<order id>, the order id 1 to 256 characters of ^[0-9A-Za-z-_.]+$, not percent-encoded",
        )
        .error_response(),
        Refusal::Method(allowed) => {
            let mut resp = ApiError::new(
                Kind::MethodNotAllowed,
                format!("{method} is not allowed on this Vipps operation."),
            )
            .error_response();
            let allow = allowed
                .iter()
                .map(Method::as_str)
                .collect::<Vec<_>>()
                .join(", ");
            if let Ok(v) = HeaderValue::from_str(&allow) {
                resp.headers_mut().insert(header::ALLOW, v);
            }
            resp
        }
    }
}

/// The request headers to pass on: the allow-list, minus any header the
/// caller's `Connection` names (those are hop-by-hop by declaration).
fn forwarded_request_headers(req: &HttpRequest) -> http::HeaderMap {
    let connection_named: Vec<String> = req
        .headers()
        .get_all(&header::CONNECTION)
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .collect();
    // actix-web's header types and the client's (hyper's) are separate
    // crates' types: values cross as bytes.
    let mut out = http::HeaderMap::new();
    for (name, upstream_name) in &FORWARDED_REQUEST {
        if connection_named.iter().any(|c| c == name.as_str()) {
            continue;
        }
        for value in req.headers().get_all(name) {
            if let Ok(v) = http::HeaderValue::from_bytes(value.as_bytes()) {
                out.append(upstream_name.clone(), v);
            }
        }
    }
    if let Some(ctx) = req.extensions().get::<RequestContext>() {
        if let Ok(v) = http::HeaderValue::from_str(&ctx.id) {
            out.insert(crate::middleware::HEADER, v);
        }
    }
    out
}

/// Forwards one allow-listed call. The body is read whole, up to
/// `proxy.body_limit` (413 beyond, before any upstream call), because a 401
/// from Vipps makes the client send it once more with a new token.
pub async fn forward(
    req: HttpRequest,
    payload: web::Payload,
    grant: Grant,
    state: web::Data<AppState>,
    settings: web::Data<ProxySettings>,
    client: web::Data<VippsClient>,
) -> Result<HttpResponse, ApiError> {
    let path = match upstream_path(&req) {
        Ok(p) => p,
        Err(refusal) => return Ok(refusal_response(refusal, req.method())),
    };
    let msn = req
        .headers()
        .get(MSN_HEADER)
        .ok_or_else(|| {
            ApiError::field(
                Kind::InvalidRequest,
                "Merchant-Serial-Number",
                "the header is required",
            )
        })?
        .to_str()
        .map_err(|_| {
            ApiError::field(
                Kind::InvalidRequest,
                "Merchant-Serial-Number",
                "must be visible ASCII",
            )
        })?;
    let merchant = state.merchant(&req, &grant, msn)?;
    // Every proxied call goes to Vipps: it takes from the merchant's rate.
    state.admit(&merchant)?;
    let ctx = call_context(&req, merchant);
    let body = read_body(&req, payload, settings.body_limit).await?;
    let body = (!body.is_empty()).then_some(body);
    let headers = forwarded_request_headers(&req);
    let method = http::Method::from_bytes(req.method().as_str().as_bytes())
        .map_err(|e| ApiError::internal(&e))?;
    // Within the request's deadline, as on the façade: a token fetch or a
    // wait for a call slot counts too. The call's future is large (the
    // request, its retries and the exchange, all held across awaits): on
    // the heap, it is moved once instead of with every move of the
    // handler's future.
    let answer = Box::pin(within_deadline(async {
        Ok(client
            .send_with_headers(&ctx, method, &path, body, &headers)
            .await)
    }))
    .await?;
    // Transport failures and token trouble map as on the façade (502/504),
    // Vipps' field names unchanged; any complete answer from Order
    // Management is passed back as it is.
    let resp = answer.map_err(|e| ApiError::upstream(e, &str::to_owned))?;
    if matches!(resp.status.as_u16(), 401 | 403) {
        // A 401 is already the answer to a fresh token, and a 403 refuses the
        // gateway's subscription key: the gateway's credentials are wrong,
        // which the caller cannot fix (and passing it on would blame the caller).
        return Err(ApiError::upstream_auth());
    }
    let status = actix_web::http::StatusCode::from_u16(resp.status.as_u16())
        .map_err(|e| ApiError::internal(&e))?;
    let mut out = HttpResponse::build(status);
    for (name, upstream_name) in &FORWARDED_RESPONSE {
        for value in resp.headers.get_all(upstream_name) {
            if let Ok(v) = HeaderValue::from_bytes(value.as_bytes()) {
                out.append_header((name.clone(), v));
            }
        }
    }
    Ok(out.body(resp.body))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hop-by-hop headers (RFC 9110 §7.6.1), never forwarded in either direction.
    const HOP_BY_HOP: [&str; 9] = [
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    ];

    #[test]
    fn allow_lists_never_pass_credentials_or_hop_by_hop_headers() {
        let banned = [
            "authorization",
            "ocp-apim-subscription-key",
            "client_id",
            "client_secret",
            "merchant-serial-number",
        ];
        for (name, upstream_name) in FORWARDED_REQUEST.iter().chain(&FORWARDED_RESPONSE) {
            assert_eq!(
                name.as_str(),
                upstream_name.as_str(),
                "one header, two types"
            );
            assert!(!HOP_BY_HOP.contains(&name.as_str()), "{name}");
            assert!(!banned.contains(&name.as_str()), "{name}");
        }
        // The gateway sends its own trace context (the client sets it).
        for (name, _) in &FORWARDED_REQUEST {
            assert!(!["traceparent", "tracestate"].contains(&name.as_str()));
        }
    }

    #[test]
    fn no_route_is_longer_than_the_split_allows() {
        for (pattern, _) in ROUTES {
            assert!(pattern[1..].split('/').count() <= MAX_SEGMENTS, "{pattern}");
        }
        assert_eq!(
            route(&Method::GET, "/v2/ecom/receipts/o-1/extra"),
            Err(Refusal::NoRoute)
        );
        assert_eq!(route(&Method::GET, "/a/b/c/d/e/f/g"), Err(Refusal::NoRoute));
    }

    #[test]
    fn allow_list_is_exactly_spec_section_2() {
        let ok = [
            (Method::PUT, "/v2/ecom/categories/o-1"),
            (Method::POST, "/v2/recurring/receipts/o.1_x"),
            (Method::GET, "/v2/ecom/o-1"),
            // 2.1's document spells the payment type in upper case.
            (Method::GET, "/v2/ECOM/o-1"),
            (Method::PUT, "/v2/RECURRING/categories/o-1"),
            (Method::POST, "/v2/ECOM/receipts/o-1"),
            (Method::POST, "/v1/images"),
            (Method::PUT, "/v1/orders/123"),
            (Method::GET, "/v1/orders/123"),
            (Method::GET, "/v1/receipts/123"),
            (Method::POST, "/v1/receipts/123"),
            (Method::POST, "/v3/categories"),
            (Method::GET, "/v3/categories"),
            (
                Method::GET,
                "/v3/categories/337f5e5d-288b-40d5-be14-901cc3acacc0",
            ),
            (
                Method::DELETE,
                "/v3/categories/337F5E5D-288B-40D5-BE14-901CC3ACACC0",
            ),
        ];
        for (m, p) in ok {
            assert!(route(&m, p).is_ok(), "{m} {p} refused");
        }
        assert_eq!(
            route(&Method::DELETE, "/v3/categories"),
            Err(Refusal::Method(&[Method::POST, Method::GET]))
        );
        assert_eq!(
            route(
                &Method::PUT,
                "/v3/categories/337f5e5d-288b-40d5-be14-901cc3acacc0"
            ),
            Err(Refusal::Method(&[Method::GET, Method::DELETE]))
        );
        assert_eq!(
            route(&Method::DELETE, "/v2/ecom/o-1"),
            Err(Refusal::Method(&[Method::GET]))
        );
        assert_eq!(
            route(&Method::GET, "/v2/ecom/categories/o-1"),
            Err(Refusal::Method(&[Method::PUT]))
        );
        // An order may be called "categories": with GET it is an order.
        assert_eq!(
            route(&Method::GET, "/v2/ecom/categories"),
            Ok("/v2/{paymentType}/{orderId}")
        );
    }

    #[test]
    fn only_the_category_list_takes_a_query_and_only_an_order_id() {
        assert!(order_query_ok("orderId=o-1"));
        assert!(order_query_ok("orderId=PaymentReference123"));
        for bad in [
            "",
            "orderId=",
            "orderId=..",
            "orderId=a%2Fb",
            "orderId=o-1&orderId=o-2",
            "orderId=o-1&x=1",
            "x=1&orderId=o-1",
            "orderid=o-1",
            "orderId=o 1",
        ] {
            assert!(!order_query_ok(bad), "{bad:?}");
        }
    }

    #[test]
    fn category_ids_are_uuid_shaped() {
        assert!(parse_hyphenated_uuid("337f5e5d-288b-40d5-be14-901cc3acacc0").is_some());
        for bad in [
            "",
            "337f5e5d288b40d5be14901cc3acacc0",
            "337f5e5d-288b-40d5-be14-901cc3acacc",
            "337f5e5d-288b-40d5-be14-901cc3acacc00",
            "337f5e5d-288b-40d5-be14-901cc3acaccg",
            "337f5e5d-288b-40d5-be1-4901cc3acacc0",
            "..",
        ] {
            assert!(parse_hyphenated_uuid(bad).is_none(), "{bad:?}");
            assert_eq!(
                route(&Method::GET, &format!("/v3/categories/{bad}")),
                Err(Refusal::NoRoute),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn traversal_and_encoding_tricks_are_no_route() {
        for p in [
            "",
            "/",
            "/v2/ecom/..",
            "/v2/ecom/.",
            "/v2/Ecom/o-1",
            "/v2/Recurring/o-1",
            "/v2/pos/o-1",
            "/v2/ecom/a%2Fb",
            "/v2/ecom/%2e%2e",
            "/v2/ecom//o-1",
            "/v2/ecom/./o-1",
            "/v2/ecom/o-1/",
            "/v2/ecom/a\\b",
            "/v2/ecom/categories/../o-1",
            "/v1/images/",
            "/v1/images/x",
            "/v1/orders/..",
            "/v1/orders/a;b",
            "/v3/ecom/o-1",
            "/v3/categories/",
            "/v3/categories/x/y",
            "/v3/categories/%33%33%37f5e5d-288b-40d5-be14-901cc3acacc0",
            "//v2/ecom/o-1",
            "/v2/ecom/http:",
        ] {
            assert_eq!(route(&Method::GET, p), Err(Refusal::NoRoute), "{p:?}");
            assert_eq!(route(&Method::PUT, p), Err(Refusal::NoRoute), "{p:?}");
        }
    }
}
