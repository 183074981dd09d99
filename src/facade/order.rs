//! `GET /v1/merchants/{msn}/orders/{orderId}`.

use actix_web::http::StatusCode;
use actix_web::web;
use actix_web::HttpResponse;
use serde::Serialize;

use super::{json_response, upstream_problem, Operation, OrderTarget};
use crate::error::{ApiError, Kind};
use crate::middleware::within_deadline;
use crate::translate::receipt::{totals, Totals};
use crate::vipps::model::{OrderCategory, Receipt};
use crate::vipps::VippsClient;

/// The `200` body: the category and receipt in the Vipps shape, and
/// `totals` only with a receipt.
#[derive(Serialize)]
struct OrderView<'a> {
    category: Option<&'a OrderCategory>,
    receipt: Option<&'a Receipt<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    totals: Option<Totals>,
}

pub async fn get(
    // First, so an unauthenticated caller gets its 401 before any other check.
    target: OrderTarget,
    client: web::Data<VippsClient>,
) -> Result<HttpResponse, ApiError> {
    within_deadline(async move {
        let OrderTarget {
            ctx,
            order,
            payment_type,
        } = target;
        let found = client
            .get_order(&ctx, payment_type, &order)
            .await
            .map_err(|e| upstream_problem(e, Operation::Order))?;
        match found {
            Some(o) if o.category.is_some() || o.receipt.is_some() => json_response(
                StatusCode::OK,
                &OrderView {
                    category: o.category.as_ref(),
                    receipt: o.receipt.as_ref(),
                    totals: o.receipt.as_ref().map(totals),
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
