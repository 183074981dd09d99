//! `POST /v1/merchants/{msn}/orders/{orderId}/receipt`.

use actix_web::http::StatusCode;
use actix_web::web::{self, Bytes};
use actix_web::{HttpRequest, HttpResponse};

use super::{
    json_bytes_response, parse_json, read_body, upstream_problem, AppState, Operation, OrderTarget,
    PaymentQuery,
};
use crate::auth::Grant;
use crate::config::Merchant;
use crate::domain::{OrderId, PaymentType};
use crate::error::{ApiError, Kind};
use crate::json::Object;
use crate::request_id::within_deadline;
use crate::translate::receipt::{build_receipt, totals, ReceiptRequest, Totals};
use crate::vipps::model::Receipt;
use crate::vipps::{UpstreamError, VippsClient};

/// The `201` body: `{"receipt": …, "totals": …, "replayed": …}`, where
/// `receipt` is the very JSON sent to Vipps, written once for both.
fn response_body(sent: &[u8], totals: &Totals, replayed: bool) -> serde_json::Result<Vec<u8>> {
    Ok(Object::with_capacity(sent.len() + 256)
        .raw("receipt", sent)
        .value("totals", totals)?
        .value("replayed", &replayed)?
        .finish())
}

pub async fn post(
    // First, so an unauthenticated caller gets its 401 before any other check.
    grant: Grant,
    req: HttpRequest,
    path: web::Path<(String, String)>,
    query: web::Query<PaymentQuery>,
    payload: web::Payload,
    state: web::Data<AppState>,
    client: web::Data<VippsClient>,
) -> Result<HttpResponse, ApiError> {
    within_deadline(async move {
        let OrderTarget {
            merchant,
            order,
            payment_type,
        } = state.order_target(&grant, path.into_inner(), &query)?;
        let body = read_body(&req, payload, state.limits.json_body).await?;
        let request: ReceiptRequest = parse_json(&req, &body)?;
        let receipt = build_receipt(&request).map_err(|r| {
            let kind = if r.syntax {
                Kind::InvalidRequest
            } else {
                Kind::Unprocessable
            };
            let names: Vec<&str> = r.params.iter().map(|p| p.name.as_str()).collect();
            ApiError::invalid(
                kind,
                format!("The receipt cannot be built: {}.", names.join(", ")),
                r.params,
            )
        })?;

        let sent = Bytes::from(receipt.to_json());
        let replayed = match client
            .post_receipt(&merchant, payment_type, &order, sent.clone())
            .await
        {
            Ok(()) => false,
            Err(UpstreamError::Status { status, .. }) if status == StatusCode::CONFLICT => {
                resolve_conflict(&client, &merchant, payment_type, &order, &receipt).await?
            }
            Err(e) => return Err(upstream_problem(e, Operation::Receipt)),
        };
        let body = response_body(&sent, &totals(&receipt), replayed)
            .map_err(|e| ApiError::internal(&e))?;
        Ok(json_bytes_response(StatusCode::CREATED, body))
    })
    .await
}

/// A receipt is immutable upstream. On a 409 the stored receipt is read
/// back: the same as the one sent means an earlier attempt succeeded (a
/// replay, `true`); a different one is a conflict.
async fn resolve_conflict(
    client: &VippsClient,
    merchant: &Merchant,
    payment_type: PaymentType,
    order: &OrderId,
    receipt: &Receipt<'_>,
) -> Result<bool, ApiError> {
    let stored = client
        .get_order(merchant, payment_type, order)
        .await
        .map_err(|e| upstream_problem(e, Operation::Order))?
        .and_then(|o| o.receipt);
    match stored {
        Some(s) if s.canonical() == receipt.canonical() => {
            tracing::info!(
                order = order.as_str(),
                "receipt already stored and identical: replayed"
            );
            Ok(true)
        }
        Some(_) => Err(ApiError::new(
            Kind::ReceiptConflict,
            "This order already has a different receipt; receipts cannot be changed.",
        )),
        None => Err(ApiError::new(
            Kind::UpstreamConflict,
            "Vipps reported a conflict but holds no receipt for this order.",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::translate::receipt::RateTotals;

    #[test]
    fn response_body_is_json_with_the_sent_receipt_verbatim() {
        let totals = Totals {
            total: "10.00".into(),
            tax: "2.00".into(),
            by_tax_percent: vec![RateTotals {
                tax_percent: "25".into(),
                gross: "10.00".into(),
                tax: "2.00".into(),
                excluding_tax: "8.00".into(),
            }],
        };
        let sent = br#"{"orderLines":[],"bottomLine":{"currency":"NOK","tipAmount":0}}"#;
        for replayed in [false, true] {
            let body = response_body(sent, &totals, replayed).expect("written");
            let v: serde_json::Value = serde_json::from_slice(&body).expect("JSON");
            assert_eq!(
                v["receipt"],
                serde_json::from_slice::<serde_json::Value>(sent).unwrap()
            );
            assert_eq!(v["totals"]["byTaxPercent"][0]["excludingTax"], "8.00");
            assert_eq!(v["replayed"], replayed);
            assert!(body.windows(sent.len()).any(|w| w == sent), "sent verbatim");
        }
    }
}
