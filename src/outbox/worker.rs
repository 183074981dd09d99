//! The outbox's worker: one per replica. It claims due entries and
//! delivers them through the gateway's Vipps client, with the same
//! per-merchant slots, retry budget and breaker as the façade.
//!
//! - Vipps took it: `delivered`. A `409` is settled by reading the stored
//!   receipt back: identical means `delivered`, different means `failed`
//!   with `receipt-conflict`.
//! - Vipps refused it (`400`, `403`, `404`): `failed`, Vipps' problem kept.
//! - Anything else (`429`, `5xx`, a timeout, a broken exchange, no token,
//!   an open breaker): another attempt after a full-jitter backoff
//!   (`outbox.backoff_base`, `outbox.backoff_max`), until `outbox.max_age`
//!   has passed since the entry was accepted; then `failed`.
//!
//! Delivered and failed entries are deleted `outbox.retention` after they
//! ended.

use std::sync::Arc;
use std::time::Duration;

use actix_web::web;

use super::throttle::StoreWarnings;
use super::{
    location, now_ms, CategoryPayload, Claimed, Delivery, Kind, Outbox, Outcome, ReceiptPayload,
    Store,
};
use crate::domain::{ImageId, OrderId, PaymentType};
use crate::error::{ApiError, Kind as ProblemKind};
use crate::facade::images::upload;
use crate::facade::{upstream_problem, AppState, Operation};
use crate::translate::image::check_base64;
use crate::vipps::model::OrderCategory;
use crate::vipps::model::{Receipt, ReceiptJson};
use crate::vipps::resilience::full_jitter;
use crate::vipps::{CallContext, Observed, UpstreamError, VippsClient};

/// How often an idle worker looks for due entries.
const POLL: Duration = Duration::from_millis(250);
/// Entries claimed at once; they belong to different orders, and are
/// delivered side by side.
const BATCH: i64 = 32;
/// How often finished entries past their retention are deleted.
const PURGE_EVERY: Duration = Duration::from_secs(600);
/// How often the backlog gauges are counted again.
const COUNT_EVERY: Duration = Duration::from_secs(5);

/// What one attempt came to.
enum Attempt {
    Delivered,
    /// Vipps refused it: give up. The problem (JSON).
    Refused(String),
    /// Try again later. The problem (JSON).
    Again(String),
}

/// A Vipps call that failed: Vipps refused it (`400`, `403`, `404`), which
/// is final; anything else is tried again.
fn failed_call(e: UpstreamError, op: Operation, problem: &dyn Fn(ApiError) -> String) -> Attempt {
    let refused = matches!(&e, UpstreamError::Status { status, .. }
        if matches!(status.as_u16(), 400 | 403 | 404));
    let problem = problem(upstream_problem(e, op));
    if refused {
        Attempt::Refused(problem)
    } else {
        Attempt::Again(problem)
    }
}

/// An attempt that ended in a façade problem (an image upload): one the
/// caller could fix (a 4xx other than 429) is final, anything else (Vipps
/// unavailable, its credentials) is tried again.
fn judged(e: ApiError, problem: &dyn Fn(ApiError) -> String) -> Attempt {
    let status = e.kind.status();
    if status.is_client_error() && status.as_u16() != 429 {
        Attempt::Refused(problem(e))
    } else {
        Attempt::Again(problem(e))
    }
}

pub struct Worker {
    outbox: Arc<Outbox>,
    client: VippsClient,
    state: web::Data<AppState>,
    /// This replica's name on its claims.
    owner: String,
    /// A failing store is logged once a minute per kind of failure.
    warnings: StoreWarnings,
}

impl Worker {
    pub fn new(outbox: Arc<Outbox>, client: VippsClient, state: web::Data<AppState>) -> Self {
        Self {
            outbox,
            client,
            state,
            owner: uuid::Uuid::new_v4().to_string(),
            warnings: StoreWarnings::default(),
        }
    }

    /// Delivers due entries until the process ends.
    pub async fn run(self) {
        let mut purged_at: Option<tokio::time::Instant> = None;
        let mut counted_at: Option<tokio::time::Instant> = None;
        loop {
            let Ok(store) = self.outbox.store().await else {
                tokio::time::sleep(POLL).await;
                continue;
            };
            if purged_at.is_none_or(|at| at.elapsed() >= PURGE_EVERY) {
                self.purge(&store).await;
                purged_at = Some(tokio::time::Instant::now());
            }
            if counted_at.is_none_or(|at| at.elapsed() >= COUNT_EVERY) {
                self.count_backlog(&store).await;
                counted_at = Some(tokio::time::Instant::now());
            }
            match store
                .claim(&self.owner, now_ms(), self.outbox.settings.lease, BATCH)
                .await
            {
                Ok(batch) if !batch.is_empty() => {
                    let attempts = batch.iter().map(|c| self.outcome(&c.delivery));
                    let outcomes = futures_util::future::join_all(attempts).await;
                    self.record(&store, &batch, &outcomes).await;
                }
                Ok(_) => tokio::time::sleep(POLL).await,
                Err(e) => {
                    self.outbox.metrics.outbox_store_error();
                    if let Some(suppressed) = self.warnings.claim.admit() {
                        tracing::warn!(error = %e, store = store.name(), suppressed, "outbox claim failed");
                    }
                    tokio::time::sleep(POLL).await;
                }
            }
        }
    }

    async fn purge(&self, store: &Store) {
        let retention =
            i64::try_from(self.outbox.settings.retention.as_millis()).unwrap_or(i64::MAX);
        match store.purge(now_ms().saturating_sub(retention)).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(deleted = n, "outbox entries past their retention deleted"),
            Err(e) => {
                self.outbox.metrics.outbox_store_error();
                if let Some(suppressed) = self.warnings.purge.admit() {
                    tracing::warn!(error = %e, store = store.name(), suppressed, "outbox purge failed");
                }
            }
        }
    }

    /// Sets the backlog gauges of every configured merchant (zero when it
    /// has nothing pending).
    async fn count_backlog(&self, store: &Store) {
        let stats = match store.pending_stats().await {
            Ok(stats) => stats,
            Err(e) => {
                self.outbox.metrics.outbox_store_error();
                if let Some(suppressed) = self.warnings.count.admit() {
                    tracing::warn!(error = %e, store = store.name(), suppressed, "outbox backlog could not be counted");
                }
                return;
            }
        };
        let now = now_ms();
        for msn in self.state.merchants.snapshot().keys() {
            let mine = stats.iter().filter(|s| s.msn == msn.as_str());
            let count = |kind: Kind| {
                mine.clone()
                    .filter(|s| s.kind == kind)
                    .map(|s| s.count)
                    .sum::<i64>()
            };
            let oldest = mine
                .clone()
                .map(|s| s.oldest_created_at)
                .min()
                .map_or(0.0, |created| {
                    Duration::from_millis(u64::try_from(now.saturating_sub(created)).unwrap_or(0))
                        .as_secs_f64()
                });
            self.outbox.metrics.set_outbox_backlog(
                msn.as_str(),
                [
                    (Kind::Receipt.as_str(), count(Kind::Receipt)),
                    (Kind::Category.as_str(), count(Kind::Category)),
                ],
                oldest,
            );
        }
    }

    /// What one attempt on `d` came to, and when it is due again.
    async fn outcome(&self, d: &Delivery) -> Outcome {
        match self.attempt(d).await {
            Attempt::Delivered => Outcome::Delivered,
            Attempt::Refused(error) => Outcome::Failed { error },
            Attempt::Again(error) => {
                let now = now_ms();
                let max_age =
                    i64::try_from(self.outbox.settings.max_age.as_millis()).unwrap_or(i64::MAX);
                if now.saturating_sub(d.created_at) >= max_age {
                    Outcome::Failed { error }
                } else {
                    let s = &self.outbox.settings;
                    let n = u32::try_from(d.attempts + 1).unwrap_or(u32::MAX);
                    let wait = full_jitter(s.backoff_base, s.backoff_max, n);
                    Outcome::Retry {
                        next_attempt_at: now
                            .saturating_add(i64::try_from(wait.as_millis()).unwrap_or(i64::MAX)),
                        error,
                    }
                }
            }
        }
    }

    /// Records a batch's attempts in one transaction, then counts and logs
    /// each.
    async fn record(&self, store: &Store, batch: &[Claimed], outcomes: &[Outcome]) {
        let attempts: Vec<(&str, &Outcome)> = batch
            .iter()
            .zip(outcomes)
            .map(|(c, o)| (c.delivery.id.as_str(), o))
            .collect();
        let recorded = match store.finish_all(&self.owner, &attempts, now_ms()).await {
            Ok(recorded) => recorded,
            Err(e) => {
                self.outbox.metrics.outbox_store_error();
                if let Some(suppressed) = self.warnings.record.admit() {
                    tracing::warn!(error = %e, store = store.name(), suppressed, entries = batch.len(), "outbox attempts could not be recorded; the entries are claimed again after their lease");
                }
                return;
            }
        };
        for ((claimed, outcome), ours) in batch.iter().zip(outcomes).zip(recorded) {
            let d = &claimed.delivery;
            if !ours {
                tracing::warn!(
                    delivery = d.id.as_str(),
                    "outbox entry was taken over by another replica after its lease ended; its attempt is not recorded"
                );
                continue;
            }
            let result = match outcome {
                Outcome::Delivered => "delivered",
                Outcome::Retry { .. } => "retried",
                Outcome::Failed { .. } => "failed",
            };
            self.outbox
                .metrics
                .outbox_attempt(&d.msn, d.kind.as_str(), result);
            tracing::info!(
                delivery = d.id.as_str(),
                msn = d.msn.as_str(),
                kind = d.kind.as_str(),
                attempts = d.attempts + 1,
                result,
                "outbox delivery attempt"
            );
        }
    }

    async fn attempt(&self, d: &Delivery) -> Attempt {
        let instance = location(&d.msn, &d.id);
        let problem = |e: ApiError| e.problem_json(&instance, None).unwrap_or_default();
        let Some(merchant) = self.state.merchants.get(&d.msn) else {
            // Removed by a reload: it may come back before max_age.
            return Attempt::Again(problem(ApiError::new(
                ProblemKind::MerchantNotFound,
                "No merchant with this MSN is configured.",
            )));
        };
        let (Ok(order), Ok(pt)) = (
            OrderId::parse(&d.order_id),
            PaymentType::parse(&d.payment_type),
        ) else {
            return Attempt::Refused(problem(ApiError::internal(&"unreadable outbox entry")));
        };
        // Within the lease: another replica may take the entry after it.
        let ctx = CallContext {
            merchant,
            deadline: tokio::time::Instant::now() + self.outbox.settings.lease / 2,
            observed: Observed::default(),
        };
        if d.kind == Kind::Category {
            return self.deliver_category(&ctx, pt, &order, d, &problem).await;
        }
        let Ok(payload) = serde_json::from_str::<ReceiptPayload>(&d.payload) else {
            return Attempt::Refused(problem(ApiError::internal(&"unreadable outbox entry")));
        };
        let sent = ReceiptJson::from_raw(payload.receipt);
        match self.client.post_receipt(&ctx, pt, &order, &sent).await {
            Ok(()) => Attempt::Delivered,
            Err(UpstreamError::Status { status, .. }) if status.as_u16() == 409 => {
                self.settle_conflict(&ctx, pt, &order, &sent, &problem)
                    .await
            }
            Err(e) => failed_call(e, Operation::Receipt, &problem),
        }
    }

    /// A category link: its inline image uploaded first (under its
    /// content-derived id, unless the caller named it), then the link.
    async fn deliver_category(
        &self,
        ctx: &CallContext,
        pt: PaymentType,
        order: &OrderId,
        d: &Delivery,
        problem: &dyn Fn(ApiError) -> String,
    ) -> Attempt {
        let Ok(link) = serde_json::from_str::<CategoryPayload>(&d.payload) else {
            return Attempt::Refused(problem(ApiError::internal(&"unreadable outbox entry")));
        };
        let image_id = match (link.image_id, link.image) {
            (Some(id), _) => match ImageId::parse(&id) {
                Ok(id) => Some(id),
                Err(_) => {
                    return Attempt::Refused(problem(ApiError::internal(
                        &"unreadable outbox entry",
                    )))
                }
            },
            (None, Some(stored)) => {
                let named = stored.image_id.as_deref().map(ImageId::parse).transpose();
                let (Ok(image), Ok(named)) = (check_base64(&stored.data), named) else {
                    return Attempt::Refused(problem(ApiError::internal(
                        &"unreadable outbox entry",
                    )));
                };
                match upload(&self.client, ctx, image, named).await {
                    Ok((id, _)) => Some(id),
                    Err(e) => return judged(e, problem),
                }
            }
            (None, None) => None,
        };
        let upstream = OrderCategory {
            category: link.category,
            order_details_url: link.url,
            image_id: image_id.map(|i| i.as_str().to_owned()),
        };
        match self.client.put_category(ctx, pt, order, &upstream).await {
            Ok(()) => Attempt::Delivered,
            Err(e) => failed_call(e, Operation::Category, problem),
        }
    }

    /// A receipt is immutable at Vipps: on a 409 the stored one is read
    /// back, as the façade does.
    async fn settle_conflict(
        &self,
        ctx: &CallContext,
        pt: PaymentType,
        order: &OrderId,
        sent: &ReceiptJson,
        problem: &dyn Fn(ApiError) -> String,
    ) -> Attempt {
        let Ok(ours) = serde_json::from_str::<Receipt<'_>>(sent.as_str()) else {
            return Attempt::Refused(problem(ApiError::internal(&"unreadable outbox entry")));
        };
        match self.client.get_order(ctx, pt, order).await {
            Ok(Some(o)) => match o.receipt {
                Some(stored) if stored.canonical() == ours.canonical() => Attempt::Delivered,
                Some(_) => Attempt::Refused(problem(ApiError::new(
                    ProblemKind::ReceiptConflict,
                    "This order already has a different receipt; receipts cannot be changed.",
                ))),
                None => Attempt::Again(problem(ApiError::new(
                    ProblemKind::UpstreamConflict,
                    "Vipps reported a conflict but holds no receipt for this order.",
                ))),
            },
            Ok(None) => Attempt::Again(problem(ApiError::new(
                ProblemKind::UpstreamConflict,
                "Vipps reported a conflict but holds no receipt for this order.",
            ))),
            Err(e) => Attempt::Again(problem(upstream_problem(e, Operation::Order))),
        }
    }
}
