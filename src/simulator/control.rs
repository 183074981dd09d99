//! The control API under `/_simulator/`: plain HTTP so tests and other teams'
//! CI can inspect the stored state, read counters and the request log, inject
//! faults, expire tokens and reset the simulator.

use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::web::{self, Bytes};
use actix_web::HttpResponse;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::image::ImageFormat;
use super::model::OrderCategory;
use super::state::{Endpoint, FaultSpec, Shared};
use super::SimMerchant;

fn bad_request(detail: String) -> HttpResponse {
    HttpResponse::BadRequest().json(json!({
        "type": "https://datatracker.ietf.org/doc/html/rfc7231#section-6.5.1",
        "title": "Bad control request",
        "detail": detail,
        "instance": "/_simulator",
        "invalidParams": [],
    }))
}

fn parse<T: serde::de::DeserializeOwned>(body: &Bytes) -> Result<T, Box<HttpResponse>> {
    serde_json::from_slice(body).map_err(|e| Box::new(bad_request(format!("invalid body: {e}"))))
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct OrderView<'a> {
    msn: &'a str,
    payment_type: &'a str,
    order_id: &'a str,
    category: &'a Option<OrderCategory>,
    receipt: &'a Option<Box<serde_json::value::RawValue>>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ImageView<'a> {
    msn: &'a str,
    image_id: &'a str,
    format: ImageFormat,
    bytes: usize,
    height: u32,
}

/// `GET /_simulator/state`: orders and images, sorted by their keys, and
/// the v3 category links, oldest first.
pub async fn state(shared: web::Data<Shared>) -> HttpResponse {
    let state = shared.lock();
    let mut links: Vec<_> = state.categories.iter().collect();
    links.sort_by_key(|(_, c)| c.seq);
    let categories: Vec<Value> = links
        .into_iter()
        .map(|((msn, id), c)| {
            let mut view = serde_json::to_value(c.link(*id)).unwrap_or(Value::Null);
            if let Some(o) = view.as_object_mut() {
                o.insert("msn".to_owned(), Value::String(msn.clone()));
            }
            view
        })
        .collect();
    let orders: Vec<OrderView> = state
        .orders
        .iter()
        .map(|((msn, payment_type, order_id), o)| OrderView {
            msn,
            payment_type,
            order_id,
            category: &o.category,
            receipt: &o.receipt,
        })
        .collect();
    let images: Vec<ImageView> = state
        .images
        .iter()
        .map(|((msn, image_id), i)| ImageView {
            msn,
            image_id,
            format: i.format,
            bytes: i.bytes,
            height: i.height,
        })
        .collect();
    HttpResponse::Ok().json(json!({ "orders": orders, "images": images, "categories": categories }))
}

/// `GET /_simulator/counters`.
pub async fn counters(shared: web::Data<Shared>) -> HttpResponse {
    HttpResponse::Ok().json(&shared.lock().counters)
}

/// `GET /_simulator/requests`: oldest first.
pub async fn requests(shared: web::Data<Shared>) -> HttpResponse {
    HttpResponse::Ok().json(&shared.lock().log)
}

/// `DELETE /_simulator/requests`.
pub async fn clear_requests(shared: web::Data<Shared>) -> HttpResponse {
    shared.lock().log.clear();
    HttpResponse::NoContent().finish()
}

fn check_fault(spec: &FaultSpec) -> Result<(), String> {
    if let Some(endpoint) = &spec.endpoint {
        if Endpoint::from_name(endpoint).is_none() {
            let names: Vec<&str> = Endpoint::ALL.iter().map(|e| e.name()).collect();
            return Err(format!(
                "endpoint must be one of {} (or absent for any)",
                names.join(", ")
            ));
        }
    }
    if let Some(status) = spec.status {
        if StatusCode::from_u16(status).is_err() || !(100..=599).contains(&status) {
            return Err("status must be an HTTP status code (100-599)".to_owned());
        }
    }
    if !spec.answers() && (spec.body.is_some() || spec.retry_after.is_some()) {
        return Err("body and retryAfter need a status".to_owned());
    }
    if spec.after_store && !spec.answers() {
        return Err("afterStore needs a status or drop".to_owned());
    }
    if !spec.answers() && spec.delay_ms.is_none() {
        return Err("a fault needs a status, drop or delayMs".to_owned());
    }
    if spec.percent.is_some_and(|p| p > 100) {
        return Err("percent must be between 0 and 100".to_owned());
    }
    if spec.times == Some(0) {
        return Err("times must be at least 1 (or absent for every request)".to_owned());
    }
    Ok(())
}

/// `POST /_simulator/faults`.
pub async fn add_fault(shared: web::Data<Shared>, body: Bytes) -> HttpResponse {
    let spec: FaultSpec = match parse(&body) {
        Ok(spec) => spec,
        Err(response) => return *response,
    };
    if let Err(detail) = check_fault(&spec) {
        return bad_request(detail);
    }
    let id = shared.lock().add_fault(spec);
    HttpResponse::Created().json(json!({ "id": id }))
}

/// `GET /_simulator/faults`.
pub async fn faults(shared: web::Data<Shared>) -> HttpResponse {
    HttpResponse::Ok().json(&shared.lock().faults)
}

/// `DELETE /_simulator/faults`.
pub async fn clear_faults(shared: web::Data<Shared>) -> HttpResponse {
    shared.lock().faults.clear();
    HttpResponse::NoContent().finish()
}

/// `POST /_simulator/tokens/expire`.
pub async fn expire_tokens(shared: web::Data<Shared>) -> HttpResponse {
    let expired = shared.lock().expire_tokens();
    HttpResponse::Ok().json(json!({ "expired": expired }))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct SettingsBody {
    #[serde(default)]
    token_ttl_seconds: Option<u64>,
    #[serde(default)]
    request_log: Option<bool>,
    #[serde(default)]
    max_orders: Option<usize>,
}

/// `PUT /_simulator/settings`.
pub async fn settings(shared: web::Data<Shared>, body: Bytes) -> HttpResponse {
    let settings: SettingsBody = match parse(&body) {
        Ok(s) => s,
        Err(response) => return *response,
    };
    if settings.token_ttl_seconds.is_none()
        && settings.request_log.is_none()
        && settings.max_orders.is_none()
    {
        return bad_request("give tokenTtlSeconds, requestLog, maxOrders or several".to_owned());
    }
    if settings.token_ttl_seconds == Some(0) {
        return bad_request("tokenTtlSeconds must be at least 1".to_owned());
    }
    if settings.max_orders == Some(0) {
        return bad_request("maxOrders must be at least 1".to_owned());
    }
    let mut state = shared.lock();
    if let Some(ttl) = settings.token_ttl_seconds {
        state.token_ttl = Duration::from_secs(ttl);
    }
    if let Some(on) = settings.request_log {
        state.request_log = on;
        if !on {
            state.log.clear();
        }
    }
    if let Some(max) = settings.max_orders {
        state.max_orders = max;
        state.forget_past(max);
    }
    HttpResponse::Ok().json(json!({
        "tokenTtlSeconds": state.token_ttl.as_secs(),
        "requestLog": state.request_log,
        "maxOrders": state.max_orders,
    }))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct MerchantBody {
    msn: String,
    client_id: String,
    client_secret: String,
    subscription_key: String,
}

/// `POST /_simulator/merchants`: adds a merchant or replaces the one with the
/// same MSN.
pub async fn add_merchant(shared: web::Data<Shared>, body: Bytes) -> HttpResponse {
    let m: MerchantBody = match parse(&body) {
        Ok(m) => m,
        Err(response) => return *response,
    };
    if [&m.msn, &m.client_id, &m.client_secret, &m.subscription_key]
        .iter()
        .any(|v| v.is_empty())
    {
        return bad_request(
            "msn, clientId, clientSecret and subscriptionKey must be non-empty".to_owned(),
        );
    }
    let msn = m.msn.clone();
    shared.lock().upsert_merchant(SimMerchant {
        msn: m.msn,
        client_id: m.client_id,
        client_secret: m.client_secret,
        subscription_key: m.subscription_key,
    });
    HttpResponse::Created().json(json!({ "msn": msn }))
}

/// `POST /_simulator/reset`.
pub async fn reset(shared: web::Data<Shared>) -> HttpResponse {
    shared.lock().reset();
    HttpResponse::NoContent().finish()
}
