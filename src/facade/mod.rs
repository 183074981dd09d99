//! The REST façade: thin handlers that parse input into domain types, call
//! `translate` and the upstream client, and map results to responses.

pub mod categories;
pub mod category;
pub mod deliveries;
pub mod images;
pub mod order;
pub mod query;
pub mod receipt;

use std::future::{ready, Ready};
use std::sync::Arc;

use actix_web::dev::{AppService, HttpServiceFactory, Payload};
use actix_web::http::header::{self, HeaderValue};
use actix_web::http::Method;
use actix_web::web::{self, Bytes};
use actix_web::{
    FromRequest, Handler, HttpMessage as _, HttpRequest, HttpResponse, Responder,
    ResponseError as _,
};
use futures_util::StreamExt as _;
use serde::Deserialize;

use crate::auth::{Caller, Grant};
use crate::domain::{OrderId, PaymentType};
use crate::error::{ApiError, Kind};
use crate::middleware::call_context;
use crate::outbox::{prefers_async, Origin};
pub use crate::state::AppState;
use crate::trace;
pub use crate::usecase::{upstream_problem, Operation};
use crate::vipps::CallContext;

/// The merchant a request acts for, checked as SPEC §3 says (the caller's
/// grant, then a configured merchant, then its rate), with the context of
/// the request's upstream calls.
pub struct MerchantTarget {
    pub ctx: CallContext,
}

impl FromRequest for MerchantTarget {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        ready(merchant_target(req, payload, Admit::Always))
    }
}

/// Whether a request takes one from its merchant's rate.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Admit {
    /// It calls Vipps.
    Always,
    /// It calls Vipps unless the outbox stores it (`Prefer:
    /// respond-async`): a `202` touches only the store, which has its own
    /// bound (`outbox.max_pending_per_merchant`).
    UnlessStored,
    /// It reads the gateway's own store only.
    Never,
}

fn merchant_target(
    req: &HttpRequest,
    payload: &mut Payload,
    admit: Admit,
) -> Result<MerchantTarget, ApiError> {
    let grant = Grant::from_request(req, payload).into_inner()?;
    let state = req
        .app_data::<web::Data<AppState>>()
        .ok_or_else(|| ApiError::internal(&"no application state is registered"))?;
    let msn = req.match_info().get("msn").unwrap_or_default();
    let merchant = state.merchant(req, &grant, msn)?;
    let stored = state.outbox.enabled() && prefers_async(req.headers());
    if admit == Admit::Always || (admit == Admit::UnlessStored && !stored) {
        state.admit(&merchant)?;
    }
    Ok(MerchantTarget {
        ctx: call_context(req, merchant),
    })
}

/// The merchant of a route that reads the gateway's own store (the
/// outbox's deliveries): checked as [`MerchantTarget`], but not counted
/// against the merchant's rate, which guards calls to Vipps.
pub struct StoreTarget {
    pub ctx: CallContext,
}

impl FromRequest for StoreTarget {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        ready(merchant_target(req, payload, Admit::Never).map(|t| StoreTarget { ctx: t.ctx }))
    }
}

/// What an order route acts on: the merchant (as [`MerchantTarget`]), then
/// the order id and payment type.
pub struct OrderTarget {
    pub ctx: CallContext,
    pub order: OrderId,
    pub payment_type: PaymentType,
}

impl FromRequest for OrderTarget {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        ready(order_target(req, payload, Admit::Always))
    }
}

/// An order route that may store the request in the outbox (`Prefer:
/// respond-async`) instead of calling Vipps: the merchant's rate is taken
/// only when it calls Vipps. A handler that ends up calling Vipps after all
/// takes it then ([`AppState::admit`]).
/// Its [`Origin`] is what an entry the outbox stores keeps of the request:
/// its trace context and its JWT caller.
pub struct AsyncOrderTarget(pub OrderTarget, pub Origin);

impl FromRequest for AsyncOrderTarget {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        ready(
            order_target(req, payload, Admit::UnlessStored).map(|target| {
                let origin = origin(&target.ctx, req.extensions().get::<Caller>());
                AsyncOrderTarget(target, origin)
            }),
        )
    }
}

/// What a stored request keeps of where it came from.
fn origin(ctx: &CallContext, caller: Option<&Caller>) -> Origin {
    let (trace_parent, trace_state) = ctx.trace.as_ref().map(trace::to_stored).unzip();
    Origin {
        trace_parent,
        trace_state: trace_state.flatten(),
        created_by: caller.and_then(|c| c.subject.clone()),
        created_by_client: caller.and_then(|c| c.client.clone()),
    }
}

fn order_target(
    req: &HttpRequest,
    payload: &mut Payload,
    admit: Admit,
) -> Result<OrderTarget, ApiError> {
    let MerchantTarget { ctx } = merchant_target(req, payload, admit)?;
    let order = order_id(req.match_info().get("orderId").unwrap_or_default())?;
    tracing::Span::current().record("order_id", order.as_str());
    let query: PaymentQuery =
        query::parse(req.query_string(), &["paymentType"], query::Others::Ignored)?;
    Ok(OrderTarget {
        ctx,
        order,
        payment_type: query.parse()?,
    })
}

/// Registers the façade's routes.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(resource(
        "/v1/merchants/{msn}/orders/{orderId}/category",
        Method::PUT,
        category::put,
    ))
    .service(resource(
        "/v1/merchants/{msn}/orders/{orderId}/receipt",
        Method::POST,
        receipt::post,
    ))
    .service(
        resource(
            "/v1/merchants/{msn}/orders/{orderId}/categories",
            Method::POST,
            categories::post,
        )
        .or(resource(
            "/v1/merchants/{msn}/orders/{orderId}/categories",
            Method::GET,
            categories::list,
        )),
    )
    .service(resource(
        "/v1/merchants/{msn}/orders/{orderId}/categories/{categoryId}",
        Method::DELETE,
        categories::delete,
    ))
    .service(resource(
        "/v1/merchants/{msn}/orders/{orderId}",
        Method::GET,
        order::get,
    ))
    .service(resource(
        "/v1/merchants/{msn}/deliveries/{deliveryId}",
        Method::GET,
        deliveries::get,
    ))
    .service(resource(
        "/v1/merchants/{msn}/deliveries",
        Method::GET,
        deliveries::list,
    ))
    .service(resource(
        "/v1/merchants/{msn}/images",
        Method::POST,
        images::post,
    ));
}

/// A path and the methods it serves; any other method gets a 405 problem
/// whose `Allow` header names them (RFC 9110 §15.5.6). Made by
/// [`resource`]; a path served by several methods joins them with
/// [`MethodResource::or`].
pub struct MethodResource {
    path: String,
    routes: Vec<(Method, actix_web::Route)>,
}

/// A resource served by one method (see [`MethodResource`]).
pub fn resource<F, Args>(path: &str, method: Method, handler: F) -> MethodResource
where
    F: Handler<Args>,
    Args: FromRequest + 'static,
    F::Output: Responder + 'static,
{
    MethodResource {
        path: path.to_owned(),
        routes: vec![(method.clone(), web::method(method).to(handler))],
    }
}

impl MethodResource {
    /// The same path served by another method too. Written
    /// `resource(path, A, a).or(resource(path, B, b))`, so each method's
    /// route reads (and is found by the OpenAPI test's scan) like any other.
    pub fn or(mut self, other: MethodResource) -> Self {
        debug_assert_eq!(self.path, other.path, "one resource, one path");
        self.routes.extend(other.routes);
        self
    }
}

impl HttpServiceFactory for MethodResource {
    fn register(self, config: &mut AppService) {
        let names: Vec<&str> = self.routes.iter().map(|(m, _)| m.as_str()).collect();
        // Method names are tokens, always a valid header value.
        let allow = HeaderValue::from_str(&names.join(", ")).ok();
        // Registered at the application's root (no scope prefix), so the
        // path is the full pattern actix-web reports as matched.
        debug_assert!(config.is_root(), "a resource inside a scope: {}", self.path);
        let pattern: Arc<str> = Arc::from(self.path.as_str());
        let operation = crate::metrics::operation(Some(&self.path));
        let mut resource = web::resource(self.path);
        for (_, route) in self.routes {
            resource = resource.route(route);
        }
        resource
            .default_service(web::to(move |req: HttpRequest| {
                let allow = allow.clone();
                async move { method_not_allowed(&req, allow) }
            }))
            // Routed: the request's log fields gain its route before the
            // handler runs, so its lines name the route.
            .wrap_fn(move |req, service| {
                crate::middleware::routed(&req, &pattern, operation);
                actix_web::dev::Service::call(service, req)
            })
            .register(config);
    }
}

fn method_not_allowed(req: &HttpRequest, allow: Option<HeaderValue>) -> HttpResponse {
    let mut resp = ApiError::new(
        Kind::MethodNotAllowed,
        format!("{} is not allowed on this resource.", req.method()),
    )
    .error_response();
    if let Some(allow) = allow {
        resp.headers_mut().insert(header::ALLOW, allow);
    }
    resp
}

/// The `paymentType` query parameter.
#[derive(Debug, Deserialize)]
pub struct PaymentQuery {
    #[serde(rename = "paymentType")]
    pub payment_type: Option<String>,
}

impl PaymentQuery {
    pub fn parse(&self) -> Result<PaymentType, ApiError> {
        match &self.payment_type {
            None => Ok(PaymentType::default()),
            Some(s) => PaymentType::parse(s)
                .map_err(|e| ApiError::field(Kind::InvalidRequest, "paymentType", e.0)),
        }
    }
}

pub fn order_id(raw: &str) -> Result<OrderId, ApiError> {
    OrderId::parse(raw).map_err(|e| ApiError::field(Kind::InvalidRequest, "orderId", e.0))
}

/// Reads a body up to `limit` bytes; a larger one is a 413 before it is read whole.
pub async fn read_body(
    req: &HttpRequest,
    mut payload: web::Payload,
    limit: usize,
) -> Result<Bytes, ApiError> {
    let too_large = || {
        ApiError::new(
            Kind::PayloadTooLarge,
            format!("The body may be at most {limit} bytes."),
        )
    };
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(too_large());
    }
    let mut body = web::BytesMut::with_capacity(declared.unwrap_or(0));
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| {
            ApiError::new(
                Kind::InvalidRequest,
                format!("The body could not be read: {e}"),
            )
        })?;
        if body.len() + chunk.len() > limit {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

/// The media type of the request without parameters, lower case.
pub fn media_type(req: &HttpRequest) -> Option<String> {
    req.headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
}

fn is_json(media: &str) -> bool {
    media == "application/json" || (media.starts_with("application/") && media.ends_with("+json"))
}

/// Parses a JSON body into `T`, naming the field at fault in the caller's
/// terms (`lines[1].taxPercent`). A body without a content type is read as JSON.
pub fn parse_json<'a, T: Deserialize<'a>>(
    req: &HttpRequest,
    body: &'a [u8],
) -> Result<T, ApiError> {
    if let Some(media) = media_type(req) {
        if !is_json(&media) {
            return Err(ApiError::new(
                Kind::UnsupportedMediaType,
                format!("Expected application/json, got {media}."),
            ));
        }
    }
    json_from_slice(body)
}

/// Deserializes JSON with the path of the first error. Well-formed bodies
/// are read once without tracking the path; only a body that fails is read
/// again to name the field.
pub fn json_from_slice<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, ApiError> {
    if let Ok(parsed) = serde_json::from_slice(body) {
        return Ok(parsed);
    }
    let de = &mut serde_json::Deserializer::from_slice(body);
    let parsed: T = serde_path_to_error::deserialize(&mut *de).map_err(json_error)?;
    // Trailing data after the value is malformed JSON too.
    de.end().map_err(|e| {
        ApiError::field(Kind::InvalidRequest, "body", format!("malformed JSON: {e}"))
    })?;
    Ok(parsed)
}

fn json_error(e: serde_path_to_error::Error<serde_json::Error>) -> ApiError {
    let inner = e.inner();
    let message = inner.to_string();
    // serde_json appends " at line L column C"; the path says where instead.
    let reason = message
        .rsplit_once(" at line ")
        .map_or(message.as_str(), |(m, _)| m)
        .to_owned();
    if inner.is_syntax() || inner.is_eof() || inner.is_io() {
        return ApiError::field(
            Kind::InvalidRequest,
            "body",
            format!("malformed JSON: {reason}"),
        );
    }
    let path = e.path().to_string();
    let mut name = if path == "." { String::new() } else { path };
    if let Some(missing) = reason
        .strip_prefix("missing field `")
        .and_then(|r| r.split('`').next())
    {
        if !name.is_empty() {
            name.push('.');
        }
        name.push_str(missing);
    }
    if name.is_empty() {
        name.push_str("body");
    }
    ApiError::field(Kind::InvalidRequest, &name, reason)
}

/// A JSON response.
pub fn json_response(
    status: actix_web::http::StatusCode,
    body: &impl serde::Serialize,
) -> Result<HttpResponse, ApiError> {
    let bytes = serde_json::to_vec(body).map_err(|e| ApiError::internal(&e))?;
    Ok(HttpResponse::build(status)
        .content_type("application/json")
        .body(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Outer {
        lines: Vec<Inner>,
    }
    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Inner {
        name: String,
    }

    #[test]
    fn json_errors_name_the_field() {
        let name = |body: &str| {
            json_from_slice::<Outer>(body.as_bytes())
                .expect_err("invalid")
                .invalid_params[0]
                .name
                .clone()
        };
        assert_eq!(
            name(r#"{"lines":[{"name":"a"},{"name":"b","x":1}]}"#),
            "lines[1].x"
        );
        assert_eq!(name(r#"{"lines":[{}]}"#), "lines[0].name");
        assert_eq!(name(r#"{"lines":[{"name":5}]}"#), "lines[0].name");
        assert_eq!(name(r#"{"lines":"#), "body");
        assert_eq!(name(r#"{"lines":[]} x"#), "body");
        assert_eq!(name(r#"{}"#), "lines");
    }
}
