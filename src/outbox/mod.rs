//! The outbox: receipts accepted with `Prefer: respond-async`, held until
//! Vipps has them.
//!
//! [`store`] keeps them durably in SQLite (one replica, the default) or
//! PostgreSQL (several replicas). A request is committed to the store
//! before the caller is answered `202`; a worker in every replica
//! ([`worker`]) claims due entries under a lease and delivers them through
//! the same Vipps client as the façade, so an entry is delivered by one
//! replica at a time, and one left by a replica that died is taken over
//! once its lease ends.
//!
//! A store that cannot be opened does not stop the gateway: [`Outbox`]
//! keeps trying to open it, and asynchronous requests are answered `503
//! outbox-unavailable` meanwhile. Entries already stored are delivered
//! once it is open.

pub mod store;
pub mod throttle;
pub mod worker;

use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use actix_web::http::header::HeaderMap;
use secrecy::SecretString;
use serde::Serialize;

#[doc(hidden)]
pub use store::{claim_statement_postgres, CLAIM_SETTINGS_POSTGRES, DUE_MERCHANTS_POSTGRES};
pub use store::{
    Claimed, Claims, Delivery, Enqueued, GroupObserver, Grouping, Kind, NewDelivery, Origin,
    Outcome, PendingStats, State, Store, StoreError,
};

use crate::config::OutboxSettings;
use crate::error::{ApiError, Kind as ProblemKind};
use crate::metrics::Metrics;

/// The gateway's outbox: its settings and, once opened, its store.
pub struct Outbox {
    pub settings: OutboxSettings,
    pub metrics: Arc<Metrics>,
    store: RwLock<Option<Store>>,
    /// Whether the first attempt to open the store has ended (either way):
    /// until it has, a request waits for it rather than being refused.
    first_attempt: tokio::sync::watch::Sender<bool>,
}

impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbox")
            .field("enabled", &self.settings.enabled)
            .finish_non_exhaustive()
    }
}

/// Between attempts to open a store that could not be opened: short, so
/// a database that comes back is used again within two seconds (an
/// attempt on a database that is down fails within its acquire timeout).
const REOPEN_MIN: Duration = Duration::from_millis(250);
const REOPEN_MAX: Duration = Duration::from_millis(1000);
/// How often a store that still cannot be opened is logged again.
const REOPEN_LOG_EVERY: Duration = Duration::from_secs(60);
/// The `Retry-After` of `outbox-full`: the backlog drains at the
/// merchant's rate, or not at all while Vipps is down.
const FULL_RETRY_AFTER_SECS: u64 = 30;
/// How long a request waits for the first attempt to open the store.
const FIRST_OPEN_WAIT: Duration = Duration::from_secs(5);

impl Outbox {
    pub fn new(settings: OutboxSettings, metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new(Self {
            settings,
            metrics,
            store: RwLock::new(None),
            first_attempt: tokio::sync::watch::Sender::new(false),
        })
    }

    pub fn enabled(&self) -> bool {
        self.settings.enabled
    }

    fn current(&self) -> Option<Store> {
        match self.store.read() {
            Ok(g) => g.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// The store, once open; `503 outbox-unavailable` before. While the
    /// first attempt to open it is under way (at start), waits for it.
    pub async fn store(&self) -> Result<Store, ApiError> {
        if let Some(store) = self.current() {
            return Ok(store);
        }
        let mut attempted = self.first_attempt.subscribe();
        let _ = tokio::time::timeout(FIRST_OPEN_WAIT, attempted.wait_for(|done| *done)).await;
        self.current().ok_or_else(|| {
            ApiError::new(
                ProblemKind::OutboxUnavailable,
                "The outbox's store cannot be opened; the gateway keeps trying. Requests without Prefer: respond-async are not affected.",
            )
            .with_retry_after(5)
        })
    }

    /// Opens the store, trying again with a growing pause (0.25 s to 1 s)
    /// while it cannot be opened, with a warning that names it: at the
    /// first failure, when the reason changes, and once a minute.
    pub async fn open(self: Arc<Self>) {
        let mut pause = REOPEN_MIN;
        let mut logged: Option<(String, tokio::time::Instant)> = None;
        let mut failures: u64 = 0;
        loop {
            match self.try_open().await {
                Ok(store) => {
                    tracing::info!(store = store.name(), "outbox store open");
                    match self.store.write() {
                        Ok(mut g) => *g = Some(store),
                        Err(poisoned) => *poisoned.into_inner() = Some(store),
                    }
                    self.first_attempt.send_replace(true);
                    return;
                }
                Err(e) => {
                    self.metrics.outbox_store_error();
                    failures += 1;
                    let reason = e.to_string();
                    let due = logged.as_ref().is_none_or(|(last, at)| {
                        *last != reason || at.elapsed() >= REOPEN_LOG_EVERY
                    });
                    if due {
                        tracing::warn!(error = %e, failures, "outbox store cannot be opened; asynchronous requests are answered 503 until it is");
                        logged = Some((reason, tokio::time::Instant::now()));
                    }
                    self.first_attempt.send_replace(true);
                }
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(REOPEN_MAX);
        }
    }

    async fn try_open(&self) -> Result<Store, StoreError> {
        let password = match &self.settings.password_file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| StoreError::Unavailable {
                    store: format!("password file {}", path.display()),
                    reason: e.kind().to_string(),
                })?;
                Some(SecretString::from(text.trim_end_matches(['\r', '\n'])))
            }
            None => None,
        };
        let metrics = self.metrics.clone();
        let grouping = Grouping {
            wait: self.settings.group_commit_wait,
            observe: Some(Arc::new(move |store: &'static str, size: usize| {
                metrics.outbox_commit_group(store, size);
            })),
        };
        Store::open_with(&self.settings.url, password.as_ref(), grouping)
            .await
            .map(|s| s.with_max_pending(self.settings.max_pending_per_merchant))
    }

    /// Stores a request ([`Store::enqueue`]): `503 outbox-full` past the
    /// merchant's bound, `503 outbox-unavailable` when the store fails.
    pub async fn enqueue(&self, store: &Store, new: &NewDelivery) -> Result<Enqueued, ApiError> {
        match store.enqueue(new, now_ms()).await {
            Ok(Enqueued::Full) => Err(ApiError::new(
                    ProblemKind::OutboxFull,
                    format!(
                        "This merchant has {} requests waiting for delivery, the most the outbox holds (outbox.max_pending_per_merchant); retry later, or send the request without Prefer: respond-async.",
                        self.settings.max_pending_per_merchant
                    ),
                )
            .with_retry_after(FULL_RETRY_AFTER_SECS)),
            Ok(enqueued) => Ok(enqueued),
            Err(e) => Err(self.failed(&e)),
        }
    }

    /// A statement the store failed: counted and logged, and answered `503
    /// outbox-unavailable`.
    pub fn failed(&self, e: &StoreError) -> ApiError {
        self.metrics.outbox_store_error();
        tracing::warn!(error = %e, "outbox store failed");
        if let StoreError::CommitUnknown { .. } = e {
            return ApiError::new(
                ProblemKind::OutboxUnavailable,
                "The connection to the outbox's store broke while the request was committed: it may or may not be stored. Send the identical request again: it returns the same delivery if it was stored, and stores it if not.",
            )
            .with_retry_after(1);
        }
        ApiError::new(
            ProblemKind::OutboxUnavailable,
            "The outbox's store cannot be used right now; the gateway keeps trying.",
        )
        .with_retry_after(5)
    }

    /// Closes the store's connections.
    pub async fn close(&self) {
        if let Some(store) = self.current() {
            store.close().await;
        }
    }
}

/// Whether the request asks to be answered before its work is done
/// (RFC 7240 `Prefer: respond-async`, in any `Prefer` header, among other
/// preferences, with or without parameters).
pub fn prefers_async(headers: &HeaderMap) -> bool {
    headers
        .get_all("prefer")
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|pref| {
            let token = pref.split([';', '=']).next().unwrap_or_default().trim();
            token.eq_ignore_ascii_case("respond-async")
        })
}

/// Now, on the wall clock, in Unix milliseconds: the store's time, shared
/// by every replica.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// A Unix millisecond time in RFC 3339 (UTC, milliseconds).
pub fn rfc3339(ms: i64) -> String {
    let format = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| t.format(format).ok())
        .unwrap_or_default()
}

/// The location of a delivery.
pub fn location(msn: &str, id: &str) -> String {
    format!("/v1/merchants/{msn}/deliveries/{id}")
}

/// What the outbox keeps of a receipt, as the worker and the delivery
/// resource read it: the very Vipps receipt it sends and the totals the
/// `201` would have carried. Written by [`receipt_payload`].
#[derive(serde::Deserialize)]
pub struct ReceiptPayload {
    pub receipt: Box<serde_json::value::RawValue>,
    pub totals: Box<serde_json::value::RawValue>,
}

/// The stored form of a receipt about to be accepted ([`ReceiptPayload`]).
pub fn receipt_payload(
    receipt: &crate::vipps::model::ReceiptJson,
    totals: &crate::translate::receipt::Totals,
) -> serde_json::Result<String> {
    #[derive(Serialize)]
    struct Stored<'a> {
        receipt: &'a crate::vipps::model::ReceiptJson,
        totals: &'a crate::translate::receipt::Totals,
    }
    serde_json::to_string(&Stored { receipt, totals })
}

/// What the outbox keeps of a category link: the link, and an inline image
/// to upload before it.
#[derive(Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CategoryPayload {
    pub category: crate::domain::Category,
    pub url: String,
    pub image_id: Option<String>,
    pub image: Option<StoredImage>,
}

#[derive(Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StoredImage {
    /// Base64, as checked when the request was accepted.
    pub data: String,
    /// The caller's name for it; its content-derived id otherwise.
    pub image_id: Option<String>,
}

/// Identifies a request's content (SHA-256 of `text`, base64url): the same
/// request gives the same fingerprint.
pub fn fingerprint(text: &str) -> String {
    use base64::Engine as _;
    use sha2::Digest as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(text.as_bytes()))
}

/// A delivery as the delivery resource shows it.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeliveryView<'a> {
    pub delivery_id: &'a str,
    pub state: &'static str,
    pub kind: &'static str,
    pub order_id: &'a str,
    pub payment_type: &'a str,
    pub attempts: i64,
    pub created_at: String,
    pub delivered_at: Option<String>,
    pub next_attempt_at: Option<String>,
    pub last_error: Option<Box<serde_json::value::RawValue>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub receipt: Option<Box<serde_json::value::RawValue>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub totals: Option<Box<serde_json::value::RawValue>>,
    /// The JWT caller that stored it; null without JWT authentication.
    pub created_by: Option<CreatedBy<'a>>,
    /// The trace of the request that stored it, which its attempts join.
    pub trace_id: Option<&'a str>,
}

/// Who stored a delivery: the `sub` of the caller's token, and its client
/// id (`azp` or `client_id`) when it had one.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CreatedBy<'a> {
    pub sub: Option<&'a str>,
    pub client_id: Option<&'a str>,
}

impl<'a> DeliveryView<'a> {
    pub fn new(d: &'a Delivery) -> Self {
        let payload = match d.kind {
            Kind::Receipt => serde_json::from_str::<ReceiptPayload>(&d.payload).ok(),
            Kind::Category => None,
        };
        let (receipt, totals) = payload.map(|p| (p.receipt, p.totals)).unzip();
        Self {
            delivery_id: &d.id,
            state: d.state.as_str(),
            kind: d.kind.as_str(),
            order_id: &d.order_id,
            payment_type: &d.payment_type,
            attempts: d.attempts,
            created_at: rfc3339(d.created_at),
            delivered_at: d.delivered_at.map(rfc3339),
            next_attempt_at: match d.state {
                State::Pending => d.next_attempt_at.map(rfc3339),
                State::Delivered | State::Failed => None,
            },
            last_error: d
                .last_error
                .as_deref()
                .and_then(|e| serde_json::value::RawValue::from_string(e.to_owned()).ok()),
            receipt,
            totals,
            created_by: (d.origin.created_by.is_some() || d.origin.created_by_client.is_some())
                .then_some(CreatedBy {
                    sub: d.origin.created_by.as_deref(),
                    client_id: d.origin.created_by_client.as_deref(),
                }),
            // `00-<trace id>-<span id>-<flags>`.
            trace_id: d.origin.trace_parent.as_deref().and_then(|p| p.get(3..35)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::http::header::{HeaderName, HeaderValue};

    fn prefer(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(
                HeaderName::from_static("prefer"),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn respond_async_is_found_among_preferences() {
        assert!(prefers_async(&prefer(&["respond-async"])));
        assert!(prefers_async(&prefer(&["Respond-Async"])));
        assert!(prefers_async(&prefer(&["wait=10, respond-async"])));
        assert!(prefers_async(&prefer(&[
            "return=minimal",
            "respond-async; x=1"
        ])));
        assert!(!prefers_async(&prefer(&[])));
        assert!(!prefers_async(&prefer(&["return=representation"])));
        assert!(!prefers_async(&prefer(&["respond-asynchronously"])));
        assert!(!prefers_async(&prefer(&["x=respond-async"])));
    }

    #[test]
    fn times_are_rfc_3339_in_utc_with_milliseconds() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(1_800_000_000_123), "2027-01-15T08:00:00.123Z");
    }
}
