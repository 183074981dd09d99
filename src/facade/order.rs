//! `GET /v1/merchants/{msn}/orders/{orderId}`.

use actix_web::http::StatusCode;
use actix_web::web;
use actix_web::HttpResponse;
use serde::Serialize;

use super::categories::{link_views, LinkView};
use super::{json_response, upstream_problem, AppState, Operation, OrderTarget};
use crate::domain::ApiVersion;
use crate::error::{ApiError, Kind};
use crate::middleware::within_deadline;
use crate::translate::receipt::{totals, Totals};
use crate::vipps::model::{OrderCategory, Receipt};
use crate::vipps::VippsClient;

/// The `200` body: the category and receipt in the Vipps shape, `totals`
/// only with a receipt, and the order's v3 links (2.1) beside them.
#[derive(Serialize)]
struct OrderView<'a> {
    category: Option<&'a OrderCategory>,
    receipt: Option<&'a Receipt<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    totals: Option<Totals>,
    categories: Vec<LinkView<'a>>,
}

pub async fn get(
    // First, so an unauthenticated caller gets its 401 before any other check.
    target: OrderTarget,
    state: web::Data<AppState>,
    client: web::Data<VippsClient>,
) -> Result<HttpResponse, ApiError> {
    within_deadline(async move {
        let OrderTarget {
            ctx,
            order,
            payment_type,
        } = target;
        // One after the other, so the calls of a read come in a fixed order.
        let found = client
            .get_order(&ctx, payment_type, &order)
            .await
            .map_err(|e| upstream_problem(e, Operation::Order))?;
        // Category links are 2.1's: a 2.0 Vipps has none to list.
        let links = match state.api_version {
            ApiVersion::V2_1 => client
                .list_categories_v3(&ctx, &order)
                .await
                .map_err(|e| upstream_problem(e, Operation::Order))?,
            ApiVersion::V2_0 => Vec::new(),
        };
        let categories = link_views(&links, payment_type);
        let (category, receipt) = found
            .as_ref()
            .map_or((None, None), |o| (o.category.as_ref(), o.receipt.as_ref()));
        // An order with only v3 links exists as much as one with a v2 category.
        if category.is_none() && receipt.is_none() && categories.is_empty() {
            return Err(ApiError::new(
                Kind::OrderNotFound,
                "Vipps has no category, category link or receipt for this order.",
            ));
        }
        json_response(
            StatusCode::OK,
            &OrderView {
                category,
                receipt,
                totals: receipt.map(totals),
                categories,
            },
        )
    })
    .await
}
