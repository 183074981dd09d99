//! `GET /v1/merchants/{msn}/deliveries/{deliveryId}` and
//! `GET /v1/merchants/{msn}/deliveries`: the outbox's deliveries of a
//! merchant.

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use serde::{Deserialize, Serialize};

use super::query::{self, Others};
use super::{json_response, AppState, StoreTarget};
use crate::domain::parse_hyphenated_uuid;
use crate::error::{ApiError, Kind};
use crate::outbox::{location, Delivery, DeliveryView, State, Store};
use actix_web::http::header;

/// Most deliveries on one page, and the default.
const MAX_LIMIT: i64 = 100;
const DEFAULT_LIMIT: i64 = 50;

/// The outbox's store, or why there is none.
async fn store(state: &AppState) -> Result<Store, ApiError> {
    if !state.outbox.enabled() {
        return Err(ApiError::new(
            Kind::OutboxUnavailable,
            "The outbox is turned off on this gateway (outbox.enabled = false).",
        ));
    }
    state.outbox.store().await
}

/// The `202` of a request stored in the outbox: its delivery, where to
/// find it, and that the preference was applied.
pub fn accepted(delivery: &Delivery) -> Result<HttpResponse, ApiError> {
    let body =
        serde_json::to_vec(&DeliveryView::new(delivery)).map_err(|e| ApiError::internal(&e))?;
    Ok(HttpResponse::Accepted()
        .insert_header((header::LOCATION, location(&delivery.msn, &delivery.id)))
        .insert_header(("Preference-Applied", "respond-async"))
        .content_type("application/json")
        .body(body))
}

fn not_found() -> ApiError {
    ApiError::new(
        Kind::DeliveryNotFound,
        "This merchant has no delivery with this id.",
    )
}

pub async fn get(
    target: StoreTarget,
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let id = req.match_info().get("deliveryId").unwrap_or_default();
    // Ids are hyphenated UUIDs, stored in lower case; anything else names
    // no delivery.
    let id = parse_hyphenated_uuid(id)
        .ok_or_else(not_found)?
        .hyphenated()
        .to_string();
    let store = store(&state).await?;
    let delivery = store
        .get(target.ctx.merchant.msn.as_str(), &id)
        .await
        .map_err(|e| state.outbox.failed(&e))?
        .ok_or_else(not_found)?;
    json_response(StatusCode::OK, &DeliveryView::new(&delivery))
}

#[derive(Deserialize)]
struct ListQuery {
    state: Option<String>,
    limit: Option<String>,
    cursor: Option<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Page<'a> {
    deliveries: Vec<DeliveryView<'a>>,
    next_cursor: Option<String>,
}

pub async fn list(
    target: StoreTarget,
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let query: ListQuery = query::parse(
        req.query_string(),
        &["state", "limit", "cursor"],
        Others::Refused,
    )?;
    let wanted = match query.state.as_deref() {
        None => None,
        Some(s) => Some(State::parse(s).ok_or_else(|| {
            ApiError::field(
                Kind::InvalidRequest,
                "state",
                "must be pending, delivered or failed",
            )
        })?),
    };
    let limit = match query.limit.as_deref() {
        None => DEFAULT_LIMIT,
        Some(l) => l
            .parse::<i64>()
            .ok()
            .filter(|l| (1..=MAX_LIMIT).contains(l))
            .ok_or_else(|| {
                ApiError::field(
                    Kind::InvalidRequest,
                    "limit",
                    "must be a whole number from 1 to 100",
                )
            })?,
    };
    let before = match query.cursor.as_deref() {
        None => None,
        Some(c) => Some(c.parse::<i64>().ok().filter(|c| *c > 0).ok_or_else(|| {
            ApiError::field(
                Kind::InvalidRequest,
                "cursor",
                "must be the nextCursor of an earlier page",
            )
        })?),
    };
    let store = store(&state).await?;
    // One more than the page: a next page exists only when it is there,
    // so a last page that is exactly full still ends the listing.
    let mut deliveries = store
        .list(target.ctx.merchant.msn.as_str(), wanted, before, limit + 1)
        .await
        .map_err(|e| state.outbox.failed(&e))?;
    let page = usize::try_from(limit).unwrap_or(usize::MAX);
    let next_cursor = if deliveries.len() > page {
        deliveries.truncate(page);
        deliveries.last().map(|d| d.seq.to_string())
    } else {
        None
    };
    json_response(
        StatusCode::OK,
        &Page {
            deliveries: deliveries.iter().map(DeliveryView::new).collect(),
            next_cursor,
        },
    )
}
