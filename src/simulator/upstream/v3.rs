//! Order Management 2.1's `/v3/categories`: several links per order. Links
//! are kept per merchant: another merchant's `categoryId` is `404`, as if it
//! did not exist. As upstream, the order does not have to exist.

use std::collections::BTreeMap;

use actix_web::http::StatusCode;
use actix_web::web;
use serde_json::Value;

use super::{authorize, not_found, Call, Problem, Reply};
use crate::simulator::model::v3::{AddCategoryResponse, GetCategoriesResponse, StoredCategory};
use crate::simulator::state::State;
use crate::simulator::validate::v3 as validate;

fn to_json<T: serde::Serialize>(value: &T) -> Value {
    serde_json::to_value(value).unwrap_or(Value::Null)
}

/// Authorizes a request on `/v3/categories/{categoryId}` and returns the
/// merchant's key of that link.
fn category_key(state: &State, call: &Call) -> Result<(String, uuid::Uuid), Problem> {
    let id = validate::category_id(call.path_param("categoryId"));
    let msn = authorize(
        state,
        call,
        id.as_ref().err().cloned().into_iter().collect(),
    )?;
    // `authorize` refuses a bad id, so this is the valid one.
    let id = id.map_err(|p| Problem::invalid(vec![p]))?;
    Ok((msn, id))
}

/// `POST /order-management/v3/categories`.
pub(super) fn post_category(state: &mut State, call: &Call) -> Result<Reply, Problem> {
    let msn = authorize(state, call, Vec::new())?;
    let request = validate::add_category(&call.json()?).map_err(Problem::invalid)?;
    let id = uuid::Uuid::new_v4();
    let seq = state.next_category_seq;
    state.next_category_seq += 1;
    let order = (
        msn,
        request.payment_type.lower().to_owned(),
        request.order_id.clone(),
    );
    state.add_link(order, id, StoredCategory { request, seq });
    let body = AddCategoryResponse {
        category_id: id.hyphenated().to_string(),
    };
    Ok(Reply::json(StatusCode::CREATED, to_json(&body)))
}

/// `GET /order-management/v3/categories?orderId=`: the merchant's links of
/// that order (of either payment type), oldest first.
pub(super) fn list_categories(state: &mut State, call: &Call) -> Result<Reply, Problem> {
    let query = web::Query::<BTreeMap<String, String>>::from_query(call.req.query_string())
        .map(web::Query::into_inner)
        .unwrap_or_default();
    let order_id = validate::order_id_query(query.get("orderId").map(String::as_str));
    let msn = authorize(
        state,
        call,
        order_id.as_ref().err().cloned().into_iter().collect(),
    )?;
    let order_id = order_id.map_err(|p| Problem::invalid(vec![p]))?;
    let mut found: Vec<(&uuid::Uuid, &StoredCategory)> = state
        .categories
        .iter()
        .filter(|((m, _), c)| *m == msn && c.request.order_id == order_id)
        .map(|((_, id), c)| (id, c))
        .collect();
    found.sort_by_key(|(_, c)| c.seq);
    let body = GetCategoriesResponse {
        categories: found.into_iter().map(|(id, c)| c.link(*id)).collect(),
    };
    Ok(Reply::json(StatusCode::OK, to_json(&body)))
}

/// `GET /order-management/v3/categories/{categoryId}`.
pub(super) fn get_category(state: &mut State, call: &Call) -> Result<Reply, Problem> {
    let key = category_key(state, call)?;
    let link = state
        .categories
        .get(&key)
        .map(|c| c.link(key.1))
        .ok_or_else(|| not_found("Category"))?;
    Ok(Reply::json(StatusCode::OK, to_json(&link)))
}

/// `DELETE /order-management/v3/categories/{categoryId}`: `200` with no
/// body, as the document defines it.
pub(super) fn delete_category(state: &mut State, call: &Call) -> Result<Reply, Problem> {
    let key = category_key(state, call)?;
    state
        .remove_link(&key)
        .ok_or_else(|| not_found("Category"))?;
    Ok(Reply::empty(StatusCode::OK))
}
