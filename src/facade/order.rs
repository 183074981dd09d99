//! `GET /v1/merchants/{msn}/orders/{orderId}`.

use actix_web::http::StatusCode;
use actix_web::web;
use actix_web::HttpResponse;

use super::{
    json_bytes_response, upstream_problem, AppState, Operation, OrderTarget, PaymentQuery,
};
use crate::auth::Grant;
use crate::error::{ApiError, Kind};
use crate::json::Object;
use crate::request_id::within_deadline;
use crate::translate::receipt::totals;
use crate::vipps::model::{OrderCategory, Receipt};
use crate::vipps::VippsClient;

/// The `200` body: `{"category": …, "receipt": …, "totals": …}`, the
/// receipt in the Vipps shape (written by hand, as when it is sent) and
/// `totals` only with a receipt.
fn order_view(
    category: Option<&OrderCategory>,
    receipt: Option<&Receipt<'_>>,
) -> serde_json::Result<Vec<u8>> {
    let receipt_json = receipt.map(Receipt::to_json);
    let obj = Object::with_capacity(receipt_json.as_ref().map_or(0, Vec::len) + 512)
        .value("category", &category)?
        .raw("receipt", receipt_json.as_deref().unwrap_or(b"null"));
    Ok(match receipt.map(totals) {
        Some(t) => obj.value("totals", &t)?.finish(),
        None => obj.finish(),
    })
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
            Some(o) if o.category.is_some() || o.receipt.is_some() => {
                let body = order_view(o.category.as_ref(), o.receipt.as_ref())
                    .map_err(|e| ApiError::internal(&e))?;
                Ok(json_bytes_response(StatusCode::OK, body))
            }
            _ => Err(ApiError::new(
                Kind::OrderNotFound,
                "Vipps has neither a category nor a receipt for this order.",
            )),
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Category;
    use crate::translate::money::Currency;
    use crate::translate::receipt::Totals;
    use crate::vipps::model::{BottomLine, OrderLine};

    /// The answer as serde wrote it before it was written by hand.
    #[derive(serde::Serialize)]
    struct Reference<'a> {
        category: Option<&'a OrderCategory>,
        receipt: Option<&'a Receipt<'a>>,
        #[serde(skip_serializing_if = "Option::is_none")]
        totals: Option<Totals>,
    }

    #[test]
    fn the_view_is_what_serde_writes() {
        let category = OrderCategory {
            category: Category::Receipt,
            order_details_url: "https://shop.example/o/\"1\"".into(),
            image_id: None,
        };
        let receipt = Receipt {
            order_lines: vec![OrderLine {
                name: "Æble".into(),
                id: "a\tb".into(),
                total_amount: 12500,
                total_amount_excluding_tax: 10000,
                total_tax_amount: 2500,
                tax_percentage: 25,
                unit_info: None,
                discount: Some(0),
                product_url: None,
                is_return: Some(false),
                is_shipping: None,
            }],
            bottom_line: BottomLine {
                currency: Currency::NOK,
                tip_amount: Some(0),
                pos_id: None,
                payment_sources: None,
                barcode: None,
                receipt_number: None,
            },
        };
        for (c, r) in [
            (Some(&category), Some(&receipt)),
            (None, Some(&receipt)),
            (Some(&category), None),
        ] {
            let ours = String::from_utf8(order_view(c, r).unwrap()).unwrap();
            let reference = serde_json::to_string(&Reference {
                category: c,
                receipt: r,
                totals: r.map(totals),
            })
            .unwrap();
            assert_eq!(ours, reference);
        }
    }
}
