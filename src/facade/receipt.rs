//! `POST /v1/merchants/{msn}/orders/{orderId}/receipt`.

use actix_web::http::StatusCode;
use actix_web::web;
use actix_web::{HttpRequest, HttpResponse};
use serde::Serialize;

use super::deliveries::accepted;
use super::{
    json_response, parse_json, read_body, upstream_problem, AppState, Operation, OrderTarget,
};
use crate::domain::{OrderId, PaymentType};
use crate::error::{ApiError, Kind};
use crate::middleware::within_deadline;
use crate::outbox::{
    fingerprint, now_ms, prefers_async, receipt_payload, Enqueued, Kind as OutboxKind, NewDelivery,
};
use crate::translate::receipt::{build_receipt, totals, ReceiptRequest, Totals};
use crate::vipps::model::{Receipt, ReceiptJson};
use crate::vipps::{CallContext, UpstreamError, VippsClient};

/// The `201` body: the very receipt sent to Vipps, its totals, and whether
/// it was stored by an earlier attempt.
#[derive(Serialize)]
struct ReceiptCreated<'a> {
    receipt: &'a ReceiptJson,
    totals: Totals,
    replayed: bool,
}

pub async fn post(
    // First, so an unauthenticated caller gets its 401 before any other check.
    target: OrderTarget,
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
    client: web::Data<VippsClient>,
) -> Result<HttpResponse, ApiError> {
    within_deadline(async move {
        let OrderTarget {
            ctx,
            order,
            payment_type,
        } = target;
        let body = read_body(&req, payload, state.limits.json_body).await?;
        let request: ReceiptRequest = parse_json(&req, &body)?;
        let receipt = build_receipt(&request, state.api_version).map_err(|r| {
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

        // Written once: the body sent to Vipps and the receipt in the answer.
        let sent = ReceiptJson::new(&receipt).map_err(|e| ApiError::internal(&e))?;
        if state.outbox.enabled() && prefers_async(req.headers()) {
            let receipt_totals = totals(&receipt);
            if let Some(accepted) =
                accept_async(&state, &ctx, payment_type, &order, &sent, &receipt_totals).await?
            {
                return Ok(accepted);
            }
        }
        let replayed = match client.post_receipt(&ctx, payment_type, &order, &sent).await {
            Ok(()) => false,
            Err(UpstreamError::Status { status, .. }) if status.as_u16() == 409 => {
                resolve_conflict(&client, &ctx, payment_type, &order, &receipt).await?
            }
            Err(e) => return Err(upstream_problem(e, Operation::Receipt)),
        };
        json_response(
            StatusCode::CREATED,
            &ReceiptCreated {
                receipt: &sent,
                totals: totals(&receipt),
                replayed,
            },
        )
    })
    .await
}

/// Stores the receipt in the outbox and answers `202` with its delivery
/// (the same delivery for an identical repost while it is pending). `None`:
/// the order's receipt was delivered already, and the request is answered
/// as a synchronous one (`201` replayed, or `409`).
async fn accept_async(
    state: &AppState,
    ctx: &CallContext,
    payment_type: PaymentType,
    order: &OrderId,
    sent: &ReceiptJson,
    receipt_totals: &Totals,
) -> Result<Option<HttpResponse>, ApiError> {
    let store = state.outbox.store().await?;
    let payload = receipt_payload(sent, receipt_totals).map_err(|e| ApiError::internal(&e))?;
    let msn = ctx.merchant.msn.as_str();
    let new = NewDelivery {
        msn: msn.to_owned(),
        kind: OutboxKind::Receipt,
        payment_type: payment_type.as_str().to_owned(),
        order_id: order.as_str().to_owned(),
        // The receipt as sent to Vipps: the same request gives the same text.
        fingerprint: fingerprint(sent.as_str()),
        payload,
    };
    match store
        .enqueue(&new, now_ms())
        .await
        .map_err(|e| state.outbox.failed(&e))?
    {
        Enqueued::Created(d) | Enqueued::Repost(d) | Enqueued::Replaced(d) => accepted(&d).map(Some),
        Enqueued::Conflict(_) => Err(ApiError::new(
            Kind::ReceiptConflict,
            "A different receipt for this order is waiting to be delivered; receipts cannot be changed.",
        )),
        Enqueued::AlreadyDelivered(_) => Ok(None),
    }
}

/// A receipt is immutable upstream. On a 409 the stored receipt is read
/// back: the same as the one sent means an earlier attempt succeeded (a
/// replay, `true`); a different one is a conflict.
async fn resolve_conflict(
    client: &VippsClient,
    ctx: &CallContext,
    payment_type: PaymentType,
    order: &OrderId,
    receipt: &Receipt<'_>,
) -> Result<bool, ApiError> {
    let stored = client
        .get_order(ctx, payment_type, order)
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
