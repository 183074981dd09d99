//! The Vipps endpoints the simulator serves: the access token endpoint and
//! Order Management 2.0 (with the deprecated v1 surface).
//!
//! Every request goes through [`dispatch`], which counts it, applies the
//! first matching fault rule, runs the endpoint under the state lock, and logs
//! it with the status it got.

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use actix_web::http::header::{HeaderMap, RETRY_AFTER};
use actix_web::http::StatusCode;
use actix_web::web::{self, Bytes};
use actix_web::{HttpRequest, HttpResponse};
use base64::Engine as _;
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::image;
use super::model::{
    ErrorResponse, ImageResponse, InvalidParam, OrderV2Response, TokenResponse, V1ImageRef,
    V1OrderResponse,
};
use super::state::{Endpoint, FaultSpec, ImageRecord, IssuedToken, LoggedRequest, Shared, State};
use super::validate;

mod v3;

const MSN: &str = "Merchant-Serial-Number";
const SUBSCRIPTION_KEY: &str = "Ocp-Apim-Subscription-Key";
const SYSTEM_HEADERS: [&str; 4] = [
    "Vipps-System-Name",
    "Vipps-System-Version",
    "Vipps-System-Plugin-Name",
    "Vipps-System-Plugin-Version",
];
/// The token endpoint documents 30 characters per system header, Order
/// Management 100.
const TOKEN_SYSTEM_HEADER_MAX: usize = 30;
const ORDER_SYSTEM_HEADER_MAX: usize = 100;
const MAX_IMAGE_BYTES: usize = 2_000_000;
const MIN_IMAGE_HEIGHT: u32 = 167;
const TOKEN_RESOURCE: &str = "00000002-0000-0000-c000-000000000000";
const TOKEN_CONTENT_TYPE: &str = "application/json;charset=UTF-8";
/// Logged image sources longer than this are replaced by their digest, so a
/// benchmark uploading many images does not fill memory with the log.
const LOGGED_SRC_MAX: usize = 64 * 1024;

/// What an endpoint answers, before it becomes an HTTP response.
pub struct Reply {
    status: StatusCode,
    body: ReplyBody,
    retry_after: Option<String>,
    drop: bool,
}

enum ReplyBody {
    Empty,
    Json(Value, &'static str),
    /// JSON already written out.
    Text(String, &'static str),
}

impl Reply {
    fn json(status: StatusCode, value: Value) -> Self {
        Reply {
            status,
            body: ReplyBody::Json(value, "application/json"),
            retry_after: None,
            drop: false,
        }
    }

    fn empty(status: StatusCode) -> Self {
        Reply {
            status,
            body: ReplyBody::Empty,
            retry_after: None,
            drop: false,
        }
    }

    /// A JSON string holding a fresh uuid: what the v2 category and receipt
    /// endpoints answer.
    fn uuid(status: StatusCode) -> Self {
        Reply::json(status, Value::String(uuid::Uuid::new_v4().to_string()))
    }

    fn from_fault(fault: &FaultSpec) -> Self {
        let status = fault
            .status
            .and_then(|s| StatusCode::from_u16(s).ok())
            .unwrap_or(StatusCode::OK);
        let body = match &fault.body {
            Some(body) => ReplyBody::Json(body.clone(), "application/json"),
            None => ReplyBody::Json(
                problem_body(status, "Injected fault", Vec::new()),
                "application/json",
            ),
        };
        Reply {
            status,
            body,
            retry_after: fault.retry_after.clone(),
            drop: fault.drop,
        }
    }

    /// The status the request log records: 0 when the connection was broken.
    fn logged_status(&self) -> u16 {
        if self.drop {
            0
        } else {
            self.status.as_u16()
        }
    }

    fn into_response(self) -> HttpResponse {
        let mut builder = HttpResponse::build(self.status);
        if let Some(retry_after) = &self.retry_after {
            builder.insert_header((RETRY_AFTER, retry_after.as_str()));
        }
        if self.drop {
            // Send the head, then fail the body: actix aborts the connection
            // and the client never receives a complete response.
            let broken = futures_util::stream::once(async {
                Err::<Bytes, _>(std::io::Error::new(
                    std::io::ErrorKind::ConnectionAborted,
                    "simulated dropped connection",
                ))
            });
            return builder.content_type("application/json").streaming(broken);
        }
        match self.body {
            ReplyBody::Empty => builder.finish(),
            ReplyBody::Json(value, content_type) => {
                builder.content_type(content_type).body(value.to_string())
            }
            ReplyBody::Text(text, content_type) => builder.content_type(content_type).body(text),
        }
    }
}

fn problem_type(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 => "https://datatracker.ietf.org/doc/html/rfc7231#section-6.5.1",
        401 => "https://datatracker.ietf.org/doc/html/rfc7235#section-3.1",
        404 => "https://datatracker.ietf.org/doc/html/rfc7231#section-6.5.4",
        409 => "https://datatracker.ietf.org/doc/html/rfc7231#section-6.5.8",
        _ => "about:blank",
    }
}

/// A trace-context style id, as the upstream puts in `instance`.
fn instance_id() -> String {
    let trace = uuid::Uuid::new_v4().simple().to_string();
    let span = uuid::Uuid::new_v4().simple().to_string();
    format!("00-{trace}-{}-00", &span[..16])
}

fn problem_body(status: StatusCode, detail: &str, invalid_params: Vec<InvalidParam>) -> Value {
    let title = if status == StatusCode::BAD_REQUEST && !invalid_params.is_empty() {
        "One or more validation errors occurred.".to_owned()
    } else {
        status
            .canonical_reason()
            .unwrap_or("Simulated error")
            .to_owned()
    };
    let body = ErrorResponse {
        kind: problem_type(status).to_owned(),
        title,
        detail: detail.to_owned(),
        instance: instance_id(),
        invalid_params,
    };
    serde_json::to_value(body).unwrap_or(Value::Null)
}

/// An error answer of an endpoint.
pub struct Problem {
    status: StatusCode,
    detail: String,
    invalid_params: Vec<InvalidParam>,
}

impl Problem {
    fn new(status: StatusCode, detail: impl Into<String>) -> Self {
        Problem {
            status,
            detail: detail.into(),
            invalid_params: Vec::new(),
        }
    }

    fn invalid(invalid_params: Vec<InvalidParam>) -> Self {
        Problem {
            status: StatusCode::BAD_REQUEST,
            detail: "BadRequest".to_owned(),
            invalid_params,
        }
    }

    fn unauthorized(detail: impl Into<String>) -> Self {
        Problem::new(StatusCode::UNAUTHORIZED, detail)
    }

    fn into_reply(self) -> Reply {
        Reply::json(
            self.status,
            problem_body(self.status, &self.detail, self.invalid_params),
        )
    }
}

/// A request as the endpoints see it.
pub struct Call<'a> {
    req: &'a HttpRequest,
    body: &'a Bytes,
}

impl Call<'_> {
    fn header(&self, name: &str) -> Option<&str> {
        header(self.req.headers(), name)
    }

    fn path_param(&self, name: &str) -> &str {
        self.req.match_info().get(name).unwrap_or_default()
    }

    /// The body as JSON; malformed or absent JSON is a 400, a body sent as
    /// another media type a 415 (as an ASP.NET API answers a JSON operation
    /// sent, say, `text/plain`). A body without a `Content-Type` is read as
    /// JSON.
    fn json(&self) -> Result<Value, Problem> {
        if let Some(media) = self.header("content-type") {
            let media = media.split(';').next().unwrap_or_default().trim();
            let json = media.eq_ignore_ascii_case("application/json")
                || (media.len() > 5 && media[media.len() - 5..].eq_ignore_ascii_case("+json"));
            if !json {
                return Err(Problem::new(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    format!("Unsupported media type {media}: send application/json"),
                ));
            }
        }
        serde_json::from_slice(self.body).map_err(|e| {
            Problem::invalid(vec![InvalidParam::new(
                "body",
                format!("must be well-formed JSON: {e}"),
            )])
        })
    }
}

fn header<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

type Handler = fn(&mut State, &Call) -> Result<Reply, Problem>;

fn handler(endpoint: Endpoint) -> Handler {
    match endpoint {
        Endpoint::Token => token,
        Endpoint::Image => upload_image,
        Endpoint::Category => put_category,
        Endpoint::Receipt => post_receipt,
        Endpoint::Order => get_order,
        Endpoint::V1OrderPut => v1_put_order,
        Endpoint::V1OrderGet => v1_get_order,
        Endpoint::V1ReceiptGet => v1_get_receipt,
        Endpoint::V1ReceiptPost => v1_post_receipt,
        Endpoint::V3CategoryPost => v3::post_category,
        Endpoint::V3CategoryList => v3::list_categories,
        Endpoint::V3CategoryGet => v3::get_category,
        Endpoint::V3CategoryDelete => v3::delete_category,
    }
}

/// Serves one upstream request: count, fault, handle, log.
pub async fn dispatch(
    endpoint: Endpoint,
    req: HttpRequest,
    body: Bytes,
    shared: web::Data<Shared>,
) -> HttpResponse {
    let arrived_ms = super::state::unix_ms();
    let msn = header(req.headers(), MSN).map(str::to_owned);
    let (fault, logging) = {
        let mut state = shared.lock();
        state.count_call(endpoint);
        (
            state.take_fault(endpoint, msn.as_deref()),
            state.request_log,
        )
    };
    if let Some(delay) = fault.as_ref().and_then(|f| f.delay_ms) {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }

    let call = Call {
        req: &req,
        body: &body,
    };
    let reply = {
        let mut state = shared.lock();
        let reply = match &fault {
            Some(f) if f.answers() && !f.after_store => Reply::from_fault(f),
            _ => {
                let real = handler(endpoint)(&mut state, &call).unwrap_or_else(Problem::into_reply);
                if real.status == StatusCode::UNAUTHORIZED {
                    state.count_rejection(msn.as_deref());
                }
                match &fault {
                    Some(f) if f.answers() => Reply::from_fault(f),
                    _ => real,
                }
            }
        };
        reply
    };
    // The entry is built outside the lock: it copies every header and parses
    // the body, which would otherwise serialize all workers.
    if logging {
        let entry = log_entry(endpoint, &req, &body, reply.logged_status(), arrived_ms);
        shared.lock().log_request(entry);
    }
    tracing::debug!(
        endpoint = endpoint.name(),
        status = reply.status.as_u16(),
        "simulator request"
    );
    reply.into_response()
}

/// The log's entry for a request that arrived at `at_ms` (Unix ms), before
/// any delay a fault adds.
fn log_entry(
    endpoint: Endpoint,
    req: &HttpRequest,
    body: &Bytes,
    status: u16,
    at_ms: u64,
) -> LoggedRequest {
    let mut headers: BTreeMap<String, String> = BTreeMap::new();
    for (name, value) in req.headers() {
        let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
        headers
            .entry(name.as_str().to_ascii_lowercase())
            .and_modify(|v| {
                v.push_str(", ");
                v.push_str(&value);
            })
            .or_insert(value);
    }
    let mut body: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    if let Some(Value::String(src)) = body.get_mut("src") {
        if src.len() > LOGGED_SRC_MAX {
            let digest: String = Sha256::digest(src.as_bytes())
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            *src = format!("<{} characters, sha256 {digest}>", src.len());
        }
    }
    let body = serde_json::value::to_raw_value(&body)
        .unwrap_or_else(|_| serde_json::value::RawValue::NULL.to_owned());
    LoggedRequest {
        endpoint: endpoint.name(),
        method: req.method().to_string(),
        path: req.path().to_owned(),
        query: req.query_string().to_owned(),
        headers,
        body,
        status,
        at_ms,
    }
}

fn check_system_headers(call: &Call, max: usize, errors: &mut Vec<InvalidParam>) {
    for name in SYSTEM_HEADERS {
        if let Some(value) = call.req.headers().get(name) {
            let len = String::from_utf8_lossy(value.as_bytes()).chars().count();
            if len > max {
                errors.push(InvalidParam::new(
                    name,
                    format!("must be at most {max} characters long (got {len})"),
                ));
            }
        }
    }
}

fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// `POST /accesstoken/get`.
fn token(state: &mut State, call: &Call) -> Result<Reply, Problem> {
    let mut errors = Vec::new();
    check_system_headers(call, TOKEN_SYSTEM_HEADER_MAX, &mut errors);
    if !errors.is_empty() {
        return Err(Problem::invalid(errors));
    }
    let client_id = call.header("client_id").unwrap_or_default();
    let merchant = state
        .merchant_by_client_id(client_id)
        .ok_or_else(|| Problem::unauthorized("Unknown client_id"))?;
    if call.header("client_secret") != Some(merchant.client_secret.as_str()) {
        return Err(Problem::unauthorized("Wrong client_secret"));
    }
    if call.header(SUBSCRIPTION_KEY) != Some(merchant.subscription_key.as_str()) {
        return Err(Problem::unauthorized("Wrong Ocp-Apim-Subscription-Key"));
    }
    // The document makes the MSN header optional; when given, it must be the
    // merchant's own.
    if let Some(msn) = call.header(MSN) {
        if msn != merchant.msn {
            return Err(Problem::unauthorized(
                "Merchant-Serial-Number does not belong to this client_id",
            ));
        }
    }
    let msn = merchant.msn.clone();
    let ttl = state.token_ttl;
    let access_token = format!(
        "sim.{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    );
    state.issue_token(
        access_token.clone(),
        IssuedToken {
            msn: msn.clone(),
            expires_at: Instant::now() + ttl,
        },
    );
    *state.counters.token_fetches.entry(msn).or_insert(0) += 1;
    let now = SystemTime::now();
    let expires_in = ttl.as_secs().max(1).to_string();
    let body = TokenResponse {
        token_type: "Bearer".to_owned(),
        expires_in: expires_in.clone(),
        ext_expires_in: expires_in,
        expires_on: unix_secs(now + ttl).to_string(),
        not_before: unix_secs(now).to_string(),
        resource: TOKEN_RESOURCE.to_owned(),
        access_token,
    };
    let value = serde_json::to_value(body)
        .map_err(|_| Problem::new(StatusCode::INTERNAL_SERVER_ERROR, "token serialization"))?;
    Ok(Reply {
        status: StatusCode::OK,
        body: ReplyBody::Json(value, TOKEN_CONTENT_TYPE),
        retry_after: None,
        drop: false,
    })
}

/// The checks every Order Management request passes before its own: a
/// known, unexpired bearer token (401), the MSN header (400), the token's
/// MSN and the subscription key (401), then the system headers and the
/// path parameters (400). Returns the MSN. Authentication comes first, as
/// Vipps' API gateway answers a request without a valid token before its
/// service reads any header.
fn authorize(
    state: &State,
    call: &Call,
    path_errors: Vec<InvalidParam>,
) -> Result<String, Problem> {
    let bearer = call
        .header("Authorization")
        .and_then(|v| {
            v.split_once(' ')
                .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        })
        .map(|(_, token)| token.trim())
        .ok_or_else(|| Problem::unauthorized("Missing bearer token"))?;
    let token = state
        .tokens
        .get(bearer)
        .ok_or_else(|| Problem::unauthorized("Unknown access token"))?;
    if Instant::now() >= token.expires_at {
        return Err(Problem::unauthorized("Expired access token"));
    }
    let msn = call
        .header(MSN)
        .filter(|m| !m.is_empty())
        .ok_or_else(|| Problem::invalid(vec![InvalidParam::new(MSN, "is a required header")]))?;
    if token.msn != msn {
        return Err(Problem::unauthorized(
            "The access token was not issued for this Merchant-Serial-Number",
        ));
    }
    let merchant = state
        .merchant_by_msn(msn)
        .ok_or_else(|| Problem::unauthorized("Unknown Merchant-Serial-Number"))?;
    if call.header(SUBSCRIPTION_KEY) != Some(merchant.subscription_key.as_str()) {
        return Err(Problem::unauthorized("Wrong Ocp-Apim-Subscription-Key"));
    }
    let mut errors = Vec::new();
    check_system_headers(call, ORDER_SYSTEM_HEADER_MAX, &mut errors);
    errors.extend(path_errors);
    if errors.is_empty() {
        Ok(msn.to_owned())
    } else {
        Err(Problem::invalid(errors))
    }
}

/// The v2 path's `{paymentType}` as the order key holds it: 2.0's document
/// spells it `ecom`/`recurring`, 2.1's `ECOM`/`RECURRING`, and both name
/// the same order, kept under the lower-case name (as v1 and the state
/// show it). Any other spelling is refused.
pub(super) fn payment_type(raw: &str) -> Option<&'static str> {
    match raw {
        "ecom" | "ECOM" => Some("ecom"),
        "recurring" | "RECURRING" => Some("recurring"),
        _ => None,
    }
}

/// Checks `{paymentType}` and `{orderId}` and returns them.
fn order_path(call: &Call) -> (String, String, Vec<InvalidParam>) {
    let raw_payment_type = call.path_param("paymentType");
    let order_id = call.path_param("orderId").to_owned();
    let mut errors = Vec::new();
    let payment_type = payment_type(raw_payment_type).unwrap_or_else(|| {
        errors.push(InvalidParam::new(
            "paymentType",
            "must be ECOM or RECURRING (or, as in 2.0, ecom or recurring)",
        ));
        ""
    });
    let payment_type = payment_type.to_owned();
    if !validate::is_id(&order_id) {
        errors.push(InvalidParam::new(
            "orderId",
            "must match ^[0-9A-Za-z-_\\.]+$",
        ));
    }
    (payment_type, order_id, errors)
}

/// Authorizes a v2 request and returns its order key.
fn v2_key(state: &State, call: &Call) -> Result<(String, String, String), Problem> {
    let (payment_type, order_id, errors) = order_path(call);
    let msn = authorize(state, call, errors)?;
    Ok((msn, payment_type, order_id))
}

/// Authorizes a v1 request: the transaction is an ecom order.
fn v1_key(state: &State, call: &Call) -> Result<(String, String, String), Problem> {
    let transaction_id = call.path_param("transactionId").to_owned();
    let msn = authorize(state, call, Vec::new())?;
    Ok((msn, "ecom".to_owned(), transaction_id))
}

fn not_found(what: &str) -> Problem {
    Problem::new(StatusCode::NOT_FOUND, format!("{what} not found"))
}

/// `POST /order-management/v1/images`.
fn upload_image(state: &mut State, call: &Call) -> Result<Reply, Problem> {
    let msn = authorize(state, call, Vec::new())?;
    let image = validate::image(&call.json()?).map_err(Problem::invalid)?;
    let src_error = |reason: String| Problem::invalid(vec![InvalidParam::new("src", reason)]);
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(image.src.as_bytes())
        .map_err(|e| src_error(format!("must be standard base64: {e}")))?;
    if bytes.len() > MAX_IMAGE_BYTES {
        return Err(src_error(format!(
            "decodes to {} bytes; at most {MAX_IMAGE_BYTES} are allowed",
            bytes.len()
        )));
    }
    let info = image::sniff(&bytes).map_err(|reason| src_error(reason.to_owned()))?;
    if info.height < MIN_IMAGE_HEIGHT {
        return Err(src_error(format!(
            "is {} px high; at least {MIN_IMAGE_HEIGHT} px are required",
            info.height
        )));
    }
    let key = (msn, image.image_id.clone());
    if state.images.contains_key(&key) {
        return Err(Problem::new(
            StatusCode::CONFLICT,
            format!("Image {} already exists and cannot be overwritten", key.1),
        ));
    }
    state.add_image(
        key,
        ImageRecord {
            format: info.format,
            bytes: bytes.len(),
            height: info.height,
            data: Some(bytes::Bytes::from(bytes)),
        },
    );
    let body = ImageResponse {
        image_id: image.image_id,
    };
    Ok(Reply::json(
        StatusCode::OK,
        serde_json::to_value(body).unwrap_or(Value::Null),
    ))
}

/// `PUT /order-management/v2/{paymentType}/categories/{orderId}`.
fn put_category(state: &mut State, call: &Call) -> Result<Reply, Problem> {
    let key = v2_key(state, call)?;
    let category = validate::order_category(&call.json()?).map_err(Problem::invalid)?;
    state.orders.entry(key.clone()).or_default().category = Some(category);
    state.touch(key);
    Ok(Reply::uuid(StatusCode::OK))
}

fn store_receipt(
    state: &mut State,
    call: &Call,
    key: (String, String, String),
) -> Result<(), Problem> {
    if state
        .orders
        .get(&key)
        .is_some_and(|order| order.receipt.is_some())
    {
        return Err(Problem::new(
            StatusCode::CONFLICT,
            format!(
                "Order {} already has a receipt; a receipt cannot be changed",
                key.2
            ),
        ));
    }
    let body = call.json()?;
    validate::receipt(&body).map_err(Problem::invalid)?;
    let text = serde_json::value::to_raw_value(&body)
        .map_err(|_| Problem::new(StatusCode::INTERNAL_SERVER_ERROR, "receipt serialization"))?;
    state.orders.entry(key.clone()).or_default().receipt = Some(text);
    state.touch(key);
    Ok(())
}

/// `POST /order-management/v2/{paymentType}/receipts/{orderId}`.
fn post_receipt(state: &mut State, call: &Call) -> Result<Reply, Problem> {
    let key = v2_key(state, call)?;
    store_receipt(state, call, key)?;
    Ok(Reply::uuid(StatusCode::CREATED))
}

/// `GET /order-management/v2/{paymentType}/{orderId}`.
fn get_order(state: &mut State, call: &Call) -> Result<Reply, Problem> {
    let key = v2_key(state, call)?;
    let order = state
        .orders
        .get(&key)
        .filter(|o| o.category.is_some() || o.receipt.is_some())
        .ok_or_else(|| not_found("Order"))?;
    let body = serde_json::to_string(&OrderV2Response {
        category: &order.category,
        receipt: &order.receipt,
    })
    .map_err(|_| Problem::new(StatusCode::INTERNAL_SERVER_ERROR, "order serialization"))?;
    Ok(Reply {
        status: StatusCode::OK,
        body: ReplyBody::Text(body, "application/json"),
        retry_after: None,
        drop: false,
    })
}

/// `PUT /order-management/v1/orders/{transactionId}` (deprecated).
fn v1_put_order(state: &mut State, call: &Call) -> Result<Reply, Problem> {
    let key = v1_key(state, call)?;
    let category = validate::order_category(&call.json()?).map_err(Problem::invalid)?;
    state.orders.entry(key.clone()).or_default().category = Some(category);
    state.touch(key);
    Ok(Reply::empty(StatusCode::OK))
}

/// `GET /order-management/v1/orders/{transactionId}` (deprecated).
fn v1_get_order(state: &mut State, call: &Call) -> Result<Reply, Problem> {
    let key = v1_key(state, call)?;
    let category = state
        .orders
        .get(&key)
        .and_then(|o| o.category.clone())
        .ok_or_else(|| not_found("Order"))?;
    let body = V1OrderResponse {
        category: category.category,
        order_details_url: category.order_details_url,
        image_ids: category
            .image_id
            .into_iter()
            .map(|id| V1ImageRef { id, sort_order: 1 })
            .collect(),
    };
    Ok(Reply::json(
        StatusCode::OK,
        serde_json::to_value(body).unwrap_or(Value::Null),
    ))
}

/// `GET /order-management/v1/receipts/{transactionId}` (deprecated).
fn v1_get_receipt(state: &mut State, call: &Call) -> Result<Reply, Problem> {
    let key = v1_key(state, call)?;
    let receipt = state
        .orders
        .get(&key)
        .and_then(|o| o.receipt.as_ref())
        .map(|text| text.get().to_owned())
        .ok_or_else(|| not_found("Receipt"))?;
    Ok(Reply {
        status: StatusCode::OK,
        body: ReplyBody::Text(receipt, "application/json"),
        retry_after: None,
        drop: false,
    })
}

/// `POST /order-management/v1/receipts/{transactionId}` (deprecated).
fn v1_post_receipt(state: &mut State, call: &Call) -> Result<Reply, Problem> {
    let key = v1_key(state, call)?;
    store_receipt(state, call, key)?;
    Ok(Reply::empty(StatusCode::OK))
}
