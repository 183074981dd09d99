//! `POST /v1/merchants/{msn}/orders/{orderId}/receipt`.

use actix_web::http::StatusCode;
use actix_web::web;
use actix_web::{HttpRequest, HttpResponse};
use serde::Serialize;

use super::deliveries::accepted;
use super::{json_response, parse_json, read_body, AppState, AsyncOrderTarget, OrderTarget};
use crate::domain::{OrderId, PaymentType};
use crate::error::{ApiError, Kind};
use crate::middleware::within_deadline;
use crate::outbox::{
    fingerprint, prefers_async, receipt_payload, Enqueued, Kind as OutboxKind, NewDelivery, Origin,
};
use crate::translate::receipt::{build_receipt, totals, ReceiptRequest, Totals};
use crate::usecase::post_receipt;
use crate::vipps::model::ReceiptJson;
use crate::vipps::{CallContext, VippsClient};

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
    AsyncOrderTarget(target, origin): AsyncOrderTarget,
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
    client: web::Data<VippsClient>,
) -> Result<HttpResponse, ApiError> {
    // The work's future is large (the receipt, its translation and the
    // Vipps call, all held across awaits): on the heap, it is moved once
    // instead of with every move of the handler's future.
    Box::pin(within_deadline(async move {
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
            if let Some(accepted) = accept_async(
                &state,
                &ctx,
                origin,
                payment_type,
                &order,
                &sent,
                &receipt_totals,
            )
            .await?
            {
                return Ok(accepted);
            }
            // Delivered already: answered as a synchronous request, which
            // calls Vipps and so takes one from the merchant's rate.
            state.admit(&ctx.merchant)?;
        }
        let replayed = post_receipt(&client, &ctx, payment_type, &order, &sent).await?;
        json_response(
            StatusCode::CREATED,
            &ReceiptCreated {
                receipt: &sent,
                totals: totals(&receipt),
                replayed,
            },
        )
    }))
    .await
}

/// Stores the receipt in the outbox and answers `202` with its delivery
/// (the same delivery for an identical repost while it is pending). `None`:
/// the order's receipt was delivered already, and the request is answered
/// as a synchronous one (`201` replayed, or `409`).
async fn accept_async(
    state: &AppState,
    ctx: &CallContext,
    origin: Origin,
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
        origin,
    };
    match state.outbox.enqueue(&store, &new).await? {
        Enqueued::Created(d) | Enqueued::Repost(d) | Enqueued::Replaced(d) => accepted(&d).map(Some),
        Enqueued::Conflict(_) => Err(ApiError::new(
            Kind::ReceiptConflict,
            "A different receipt for this order is waiting to be delivered; receipts cannot be changed.",
        )),
        Enqueued::AlreadyDelivered(_) => Ok(None),
        // Answered as `outbox-full` by the outbox.
        Enqueued::Full => Err(ApiError::internal(&"the outbox answered full as stored")),
    }
}
