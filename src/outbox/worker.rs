//! The outbox's worker: one per replica. It claims due entries and
//! delivers them through the gateway's Vipps client and the same use cases
//! as the façade ([`crate::usecase`]), within the merchant's limits, a
//! batch at a time in each of its lanes. The merchants with due entries
//! share each batch, and take turns ([`Store::claim_shares`]).
//!
//! - Vipps took it: `delivered`. A `409` is settled by reading the stored
//!   receipt back: identical means `delivered`, different means `failed`
//!   with `receipt-conflict`.
//! - A problem the request itself caused (Vipps answered 400 or 404, an
//!   image id taken): `failed`, the problem kept.
//! - Anything else (`429`, `5xx`, a timeout, a broken exchange, Vipps
//!   refusing the gateway's credentials): another attempt after a
//!   full-jitter backoff (`outbox.backoff_base`, `outbox.backoff_max`),
//!   until `outbox.max_age` has passed since the entry was accepted; then
//!   `failed`.
//!
//! Deliveries take the merchant's rate: they are paced at
//! `resilience.rate_per_second`, never in a burst, and share the rate with
//! synchronous requests. While a merchant's breaker is open its entries
//! are not claimed: they wait in the store untouched. An attempt that sent
//! nothing toward Vipps (the breaker opened meanwhile, no call slot, no
//! token fetch allowed) is postponed without counting: `attempts` counts
//! attempts that sent, or tried to send, a call to Vipps. A merchant with
//! an attempt postponed so is held: none of its entries is claimed until
//! that attempt is due again.
//!
//! Delivered and failed entries are deleted `outbox.retention` after they
//! ended.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use super::throttle::StoreWarnings;
use super::{
    location, now_ms, CategoryPayload, Claimed, Claims, Delivery, Kind, Outbox, Outcome,
    ReceiptPayload, Store,
};
use tracing::field::Empty;
use tracing::Instrument as _;

use crate::config::MerchantRegistry;
use crate::domain::{Category, ImageId, OrderId, PaymentType};
use crate::error::{ApiError, Kind as ProblemKind};
use crate::telemetry::{DELIVERY_SPAN, DELIVERY_TARGET};
use crate::trace;
use crate::translate::image::check_base64;
use crate::usecase::{is_final, post_receipt, put_category, LinkImage};
use crate::vipps::model::ReceiptJson;
use crate::vipps::resilience::{full_jitter, Guards};
use crate::vipps::{CallContext, Observed, VippsClient};

/// How often an idle worker looks for due entries.
const POLL: Duration = Duration::from_millis(250);
/// Entries claimed at once; they belong to different orders, and are
/// delivered side by side.
const BATCH: i64 = 32;
/// Batches in flight at once: each lane claims, delivers and records its
/// own, so that one lane's calls to Vipps overlap the other's statements
/// (docs/decisions.md, "Outbox"). Two batches of [`BATCH`] are the default
/// `resilience.max_concurrent`.
const LANES: usize = 2;
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
    /// Nothing was sent: due again after `wait`, not counted; `problem`
    /// (JSON) is why, kept if `outbox.max_age` passes meanwhile.
    NotSent {
        wait: Duration,
        problem: Option<String>,
    },
}

/// The entry cannot be read back: it can never be delivered.
fn unreadable(problem: &dyn Fn(ApiError) -> String) -> Attempt {
    Attempt::Refused(problem(ApiError::internal(&"unreadable outbox entry")))
}

pub struct Worker {
    outbox: Arc<Outbox>,
    client: VippsClient,
    merchants: Arc<MerchantRegistry>,
    guards: Arc<Guards>,
    /// This replica's name; each lane claims as `NAME/LANE`.
    owner: String,
    /// A failing store is logged once a minute per kind of failure.
    warnings: StoreWarnings,
    /// Merchants held until a time ([`Worker::hold`]): left out of claims.
    held: Mutex<HashMap<String, tokio::time::Instant>>,
    /// Turns `true` when the gateway stops.
    stop: tokio::sync::watch::Receiver<bool>,
}

impl Worker {
    pub fn new(
        outbox: Arc<Outbox>,
        client: VippsClient,
        merchants: Arc<MerchantRegistry>,
        guards: Arc<Guards>,
    ) -> Self {
        Self {
            outbox,
            client,
            merchants,
            guards,
            owner: uuid::Uuid::new_v4().to_string(),
            warnings: StoreWarnings::default(),
            held: Mutex::default(),
            stop: tokio::sync::watch::channel(false).1,
        }
    }

    /// The worker, ending once `stop` turns `true`: between batches, and
    /// at once while it waits.
    pub fn until(mut self, stop: tokio::sync::watch::Receiver<bool>) -> Self {
        self.stop = stop;
        self
    }

    /// Waits `pause`, or less when the worker is told to stop.
    async fn pause(&self, pause: Duration) {
        let mut stop = self.stop.clone();
        let until = tokio::time::Instant::now() + pause;
        let closed = matches!(
            tokio::time::timeout_at(until, stop.wait_for(|stop| *stop)).await,
            Ok(Err(_))
        );
        if closed {
            // Nothing can tell this worker to stop any more (the channel
            // closed): the pause is slept out, not skipped.
            tokio::time::sleep_until(until).await;
        }
    }

    fn stopping(&self) -> bool {
        *self.stop.borrow()
    }

    /// Delivers due entries until the process ends, in [`LANES`] lanes.
    pub async fn run(self) {
        let more = tokio::sync::Notify::new();
        futures_util::future::join_all((0..LANES).map(|lane| {
            // Each lane claims in a name of its own: a lane's late record
            // never counts for an entry another lane claimed since.
            let owner = format!("{}/{lane}", self.owner);
            self.lane(owner, lane == 0, &more)
        }))
        .await;
    }

    /// One lane: claims a batch, delivers it, records it, and again. The
    /// first lane also purges and counts, and looks for due entries every
    /// [`POLL`] while there are none; the others start once a claim comes
    /// back full (`more`), work while claims do, and wait otherwise.
    async fn lane(&self, owner: String, first: bool, more: &tokio::sync::Notify) {
        let mut purged_at: Option<tokio::time::Instant> = None;
        let mut counted_at: Option<tokio::time::Instant> = None;
        if !first {
            self.idle(first, more).await;
        }
        while !self.stopping() {
            let Ok(store) = self.outbox.store().await else {
                self.idle(first, more).await;
                continue;
            };
            if first && purged_at.is_none_or(|at| at.elapsed() >= PURGE_EVERY) {
                self.purge(&store).await;
                purged_at = Some(tokio::time::Instant::now());
            }
            if first && counted_at.is_none_or(|at| at.elapsed() >= COUNT_EVERY) {
                self.count_backlog(&store).await;
                counted_at = Some(tokio::time::Instant::now());
            }
            // A merchant whose breaker is open would refuse every call, and
            // a held one would send none: their entries stay in the store,
            // unclaimed and unchanged.
            let open = self.guards.open_breakers();
            let held = self.held();
            let skip: Vec<&str> = open
                .iter()
                .map(|m| m.as_str())
                .chain(held.iter().map(String::as_str))
                .collect();
            match store
                .claim_shares(&owner, now_ms(), self.outbox.settings.lease, BATCH, &skip)
                .await
            {
                Ok(Claims {
                    claimed: batch,
                    more: full,
                }) if !batch.is_empty() => {
                    if full {
                        // More may be due: a waiting lane claims too, or
                        // a busy one claims again before it waits.
                        more.notify_one();
                    }
                    let attempts = batch.iter().map(|c| self.outcome(&c.delivery));
                    let (outcomes, spans): (Vec<Outcome>, Vec<tracing::Span>) =
                        futures_util::future::join_all(attempts)
                            .await
                            .into_iter()
                            .unzip();
                    self.hold(&batch, &outcomes);
                    self.record(&store, &owner, &batch, &outcomes, &spans).await;
                    if !full && !first {
                        self.idle(first, more).await;
                    }
                }
                Ok(_) => self.idle(first, more).await,
                Err(e) => {
                    self.outbox.metrics.outbox_store_error();
                    if let Some(suppressed) = self.warnings.claim.admit() {
                        tracing::warn!(error = %e, store = store.name(), suppressed, "outbox claim failed");
                    }
                    self.idle(first, more).await;
                }
            }
        }
    }

    /// Nothing more to claim for now: the first lane looks again after
    /// [`POLL`], the others once a claim comes back full. Both end at once
    /// when the worker is told to stop.
    async fn idle(&self, first: bool, more: &tokio::sync::Notify) {
        if first {
            self.pause(POLL).await;
        } else {
            let mut stop = self.stop.clone();
            // A stop channel already closed never says stop: only `more`
            // is waited for then, rather than returning at once.
            tokio::select! {
                () = more.notified() => {}
                Ok(_) = stop.wait_for(|stop| *stop) => {}
            }
        }
    }

    /// Holds each merchant of `batch` with an attempt there that sent
    /// nothing toward Vipps and was postponed (its token fetches backing
    /// off, its breaker opened meanwhile, no call slot or turn of its pace
    /// free, a merchant no longer configured), until the earliest of those
    /// is due again. Each of these holds for the merchant, not for the
    /// entry: claimed in the meantime, its other due entries would each be
    /// taken, postponed and written back, batch after batch (during a
    /// token outage, 20,000 pending entries were rewritten at 2,600 a
    /// second; docs/decisions.md, "Outbox").
    fn hold(&self, batch: &[Claimed], outcomes: &[Outcome]) {
        let mut earliest: HashMap<&str, i64> = HashMap::new();
        for (claimed, outcome) in batch.iter().zip(outcomes) {
            if let Outcome::Postponed { next_attempt_at } = outcome {
                let at = earliest
                    .entry(claimed.delivery.msn.as_str())
                    .or_insert(i64::MAX);
                *at = (*at).min(*next_attempt_at);
            }
        }
        let now = now_ms();
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        for (msn, at) in earliest {
            if at > now {
                let wait = Duration::from_millis(u64::try_from(at - now).unwrap_or(0));
                held.insert(msn.to_owned(), tokio::time::Instant::now() + wait);
            }
        }
    }

    /// The merchants held now; the holds that ended are dropped.
    fn held(&self) -> Vec<String> {
        let now = tokio::time::Instant::now();
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        held.retain(|_, until| *until > now);
        held.keys().cloned().collect()
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
        for msn in self.merchants.snapshot().keys() {
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

    /// What one attempt on `d` came to, and when it is due again; and the
    /// attempt's span, in the trace of the request that stored `d`.
    async fn outcome(&self, d: &Delivery) -> (Outcome, tracing::Span) {
        let (span, cx) = delivery_span(d);
        let attempt = self.attempt(d, cx).instrument(span.clone()).await;
        (self.judge(d, attempt), span)
    }

    /// The outcome of an attempt on `d`.
    fn judge(&self, d: &Delivery, attempt: Attempt) -> Outcome {
        let now = now_ms();
        let max_age = i64::try_from(self.outbox.settings.max_age.as_millis()).unwrap_or(i64::MAX);
        let too_old = now.saturating_sub(d.created_at) >= max_age;
        match attempt {
            Attempt::Delivered => Outcome::Delivered,
            // Held back until max_age passed: failed with why, the last
            // attempt's problem if one was sent, or the hold's.
            Attempt::NotSent { problem, .. } if too_old => Outcome::Failed {
                error: problem.or_else(|| d.last_error.clone()).unwrap_or_else(|| {
                    ApiError::new(
                        ProblemKind::UpstreamFailed,
                        "Not delivered within outbox.max_age: calls to Vipps were held back (an open breaker, the merchant's rate) until it passed.",
                    )
                    .problem_json(&location(&d.msn, &d.id), None)
                    .unwrap_or_default()
                }),
            },
            Attempt::NotSent { wait, .. } => Outcome::Postponed {
                next_attempt_at: now
                    .saturating_add(i64::try_from(wait.as_millis()).unwrap_or(i64::MAX)),
            },
            Attempt::Refused(error) => Outcome::Failed { error },
            Attempt::Again(error) => {
                if too_old {
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
    async fn record(
        &self,
        store: &Store,
        owner: &str,
        batch: &[Claimed],
        outcomes: &[Outcome],
        spans: &[tracing::Span],
    ) {
        let attempts: Vec<(&str, &Outcome)> = batch
            .iter()
            .zip(outcomes)
            .map(|(c, o)| (c.delivery.id.as_str(), o))
            .collect();
        let recorded = match store.finish_all(owner, &attempts, now_ms()).await {
            Ok(recorded) => recorded,
            Err(e) => {
                self.outbox.metrics.outbox_store_error();
                if let Some(suppressed) = self.warnings.record.admit() {
                    tracing::warn!(error = %e, store = store.name(), suppressed, entries = batch.len(), "outbox attempts could not be recorded; the entries are claimed again after their lease");
                }
                return;
            }
        };
        for (((claimed, outcome), ours), span) in
            batch.iter().zip(outcomes).zip(recorded).zip(spans)
        {
            let d = &claimed.delivery;
            let _in_attempt = span.enter();
            if !ours {
                tracing::warn!(
                    delivery = d.id.as_str(),
                    "outbox entry was taken over by another claimer (a replica, or this worker's other lane) after its lease ended; its attempt is not recorded"
                );
                continue;
            }
            let result = match outcome {
                Outcome::Delivered => "delivered",
                Outcome::Retry { .. } => "retried",
                Outcome::Failed { .. } => "failed",
                // Nothing was sent: no attempt to count or log.
                Outcome::Postponed { .. } => {
                    span.record("result", "postponed");
                    continue;
                }
            };
            span.record("result", result);
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

    async fn attempt(&self, d: &Delivery, trace: trace::Context) -> Attempt {
        let instance = location(&d.msn, &d.id);
        let problem = |e: ApiError| e.problem_json(&instance, None).unwrap_or_default();
        let held_back = self.outbox.settings.backoff_base;
        let Some(merchant) = self.merchants.get(&d.msn) else {
            // Removed by a reload: it may come back before max_age. Nothing
            // is sent, so no attempt is counted.
            return Attempt::NotSent {
                wait: held_back,
                problem: Some(problem(ApiError::new(
                    ProblemKind::MerchantNotFound,
                    "No merchant with this MSN is configured.",
                ))),
            };
        };
        let (Ok(order), Ok(pt)) = (
            OrderId::parse(&d.order_id),
            PaymentType::parse(&d.payment_type),
        ) else {
            return unreadable(&problem);
        };
        // Within the lease: another replica may take the entry after it.
        let started = tokio::time::Instant::now();
        let deadline = started + self.outbox.settings.lease / 2;
        // The merchant's rate, without its burst: wait for a turn within
        // the first half of the attempt's time (the call keeps the rest),
        // or come back when it will have one.
        let guard = self.guards.get(&merchant.msn);
        while let Err(wait) = guard.pace(self.guards.config()) {
            if tokio::time::Instant::now() + wait >= started + self.outbox.settings.lease / 4 {
                return Attempt::NotSent {
                    wait,
                    problem: None,
                };
            }
            tokio::time::sleep(wait).await;
        }
        let ctx = CallContext {
            merchant,
            deadline,
            observed: Observed::default(),
            trace: Some(trace),
        };
        let result = match d.kind {
            Kind::Receipt => match serde_json::from_str::<ReceiptPayload>(&d.payload) {
                Ok(payload) => {
                    let sent = ReceiptJson::from_raw(payload.receipt);
                    post_receipt(&self.client, &ctx, pt, &order, &sent)
                        .await
                        .map(|_| ())
                }
                Err(_) => return unreadable(&problem),
            },
            Kind::Category => match link(&d.payload) {
                Some((category, url, image)) => {
                    put_category(&self.client, &ctx, pt, &order, category, url, image)
                        .await
                        .map(|_| ())
                }
                None => return unreadable(&problem),
            },
        };
        match result {
            Ok(()) => Attempt::Delivered,
            Err(e) if is_final(&e) => Attempt::Refused(problem(e)),
            // Held back before anything reached Vipps (an open breaker,
            // no call slot, token fetches backing off).
            Err(e) if ctx.observed.last().is_none() => Attempt::NotSent {
                wait: e.retry_after.map_or(held_back, Duration::from_secs),
                problem: Some(problem(e)),
            },
            Err(e) => Attempt::Again(problem(e)),
        }
    }
}

/// The span of one delivery attempt on `d`, and its trace context: a
/// child of the request span that stored `d` (docs/decisions.md,
/// "Traces"), or of a new trace for an entry stored without one. Every
/// line logged within it carries `trace_id` and `span_id`.
fn delivery_span(d: &Delivery) -> (tracing::Span, trace::Context) {
    let parent = trace::from_stored(
        d.origin.trace_parent.as_deref(),
        d.origin.trace_state.as_deref(),
    );
    // `[otel fields]` for tracing-opentelemetry, then the log fields,
    // `trace_id` and `span_id` as given.
    macro_rules! delivery_span {
        ([$($otel:tt)*], $trace_id:expr, $span_id:expr) => {
            tracing::info_span!(
                target: DELIVERY_TARGET,
                DELIVERY_SPAN,
                $($otel)*
                delivery = d.id.as_str(),
                msn = d.msn.as_str(),
                kind = d.kind.as_str(),
                order_id = d.order_id.as_str(),
                attempt = d.attempts + 1,
                created_by = d.origin.created_by.as_deref(),
                trace_id = $trace_id,
                span_id = $span_id,
                result = Empty,
            )
        };
    }
    if trace::exporting() {
        let name = format!("outbox delivery {}", d.kind.as_str());
        let span = delivery_span!([otel.kind = "consumer", otel.name = name,], Empty, Empty);
        let cx = trace::start(&span, parent.as_ref());
        cx.record(&span);
        (span, cx)
    } else {
        let cx = trace::start(&tracing::Span::none(), parent.as_ref());
        (delivery_span!([], cx.trace_id(), cx.span_id()), cx)
    }
}

/// A stored category link: its category, url and image (uploaded first
/// under its content-derived id, unless the caller named it). `None`: the
/// entry cannot be read.
fn link(payload: &str) -> Option<(Category, String, LinkImage)> {
    let link = serde_json::from_str::<CategoryPayload>(payload).ok()?;
    let image = match (link.image_id, link.image) {
        (Some(id), _) => LinkImage::Id(ImageId::parse(&id).ok()?),
        (None, Some(stored)) => LinkImage::Inline {
            named: stored
                .image_id
                .as_deref()
                .map(ImageId::parse)
                .transpose()
                .ok()?,
            image: check_base64(&stored.data).ok()?,
        },
        (None, None) => LinkImage::None,
    };
    Some((link.category, link.url, image))
}
