//! `GET /v1/merchants/{msn}/orders/{orderId}`.

use actix_web::http::StatusCode;
use actix_web::web;
use actix_web::HttpResponse;
use serde::Serialize;

use super::{json_response, upstream_problem, AppState, Operation, OrderTarget, PaymentQuery};
use crate::auth::Grant;
use crate::error::{ApiError, Kind};
use crate::request_id::within_deadline;
use crate::translate::receipt::{totals, Totals};
use crate::vipps::model::{OrderCategory, Receipt};
use crate::vipps::VippsClient;

#[derive(Serialize)]
struct OrderView {
    category: Option<OrderCategory>,
    receipt: Option<Receipt>,
    #[serde(skip_serializing_if = "Option::is_none")]
    totals: Option<Totals>,
}

pub async fn get(
    // First, so an unauthenticated caller gets its 401 before any other check.
    grant: Grant,
    path: web::Path<(String, String)>,
    query: web::Query<PaymentQuery>,
    state: web::Data<AppState>,
    client: web::Data<VippsClient>,
) -> Result<HttpResponse, ApiError> {
    within_deadline(async move {
        let OrderTarget {
            merchant,
            order,
            payment_type,
        } = state.order_target(&grant, path.into_inner(), &query)?;
        let found = client
            .get_order(&merchant, payment_type, &order)
            .await
            .map_err(|e| upstream_problem(e, Operation::Order))?;
        match found {
            Some(o) if o.category.is_some() || o.receipt.is_some() => json_response(
                StatusCode::OK,
                &OrderView {
                    totals: o.receipt.as_ref().map(totals),
                    category: o.category,
                    receipt: o.receipt,
                },
            ),
            _ => Err(ApiError::new(
                Kind::OrderNotFound,
                "Vipps has neither a category nor a receipt for this order.",
            )),
        }
    })
    .await
}
