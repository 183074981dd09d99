//! Access tokens per merchant: fetched once however many requests arrive at
//! once (moka's `try_get_with` coalesces them), replaced in the background
//! once less than a margin of their life remains, never sent once (nearly)
//! expired, and dropped when the upstream answers 401 — but only if the
//! cached token is still the one that failed.
//!
//! Freshness is decided here, in code, not by cache eviction, so a token
//! whose refresh failed can still be served while it is valid.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix_web::http::header::HeaderValue;
use moka::future::Cache;
use moka::ops::compute::Op;
use secrecy::{ExposeSecret as _, SecretString};
// Tokio's clock, so tests can pause and advance it.
use tokio::time::Instant;

use crate::domain::Msn;

/// A token with the instant it expires.
pub struct AccessToken {
    pub value: SecretString,
    /// `Bearer <token>`, built once for every call that uses it; `None`
    /// when the token is not a valid header value.
    pub bearer: Option<HeaderValue>,
    pub expires_at: Instant,
    pub lifetime: Duration,
    /// Set while a background refresh of this token is under way.
    pub refreshing: AtomicBool,
}

impl std::fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessToken")
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

impl AccessToken {
    pub fn new(value: SecretString, expires_at: Instant, lifetime: Duration) -> Self {
        let bearer = HeaderValue::from_str(&format!("Bearer {}", value.expose_secret()))
            .ok()
            .map(|mut v| {
                v.set_sensitive(true);
                v
            });
        Self {
            value,
            bearer,
            expires_at,
            lifetime,
            refreshing: AtomicBool::new(false),
        }
    }

    /// No refresh needed yet: more than the margin (at most a fifth of
    /// its lifetime) left.
    pub fn is_fresh(&self, now: Instant, margin: Duration) -> bool {
        let margin = margin.min(self.lifetime / 5);
        self.expires_at
            .checked_sub(margin)
            .is_some_and(|refresh_at| now < refresh_at)
    }

    /// Still safe to send: more than a small allowance for the request's
    /// travel time (a twentieth of the lifetime, at most 5 s) left.
    pub fn is_usable(&self, now: Instant) -> bool {
        let travel = (self.lifetime / 20).min(Duration::from_secs(5));
        self.expires_at
            .checked_sub(travel)
            .is_some_and(|last_use| now < last_use)
    }
}

/// What a lookup found.
pub enum Lookup {
    /// Use it; no refresh needed.
    Fresh(Arc<AccessToken>),
    /// Use it, and start a background refresh (this caller won the right to).
    RefreshDue(Arc<AccessToken>),
}

impl Lookup {
    pub fn token(&self) -> &Arc<AccessToken> {
        match self {
            Lookup::Fresh(t) | Lookup::RefreshDue(t) => t,
        }
    }
}

/// The cache of tokens, shared by every worker.
#[derive(Clone)]
pub struct TokenCache {
    cache: Cache<Msn, Arc<AccessToken>>,
    margin: Duration,
}

impl TokenCache {
    pub fn new(margin: Duration) -> Self {
        Self {
            // Entries are replaced when stale, so no time-based eviction.
            cache: Cache::builder().max_capacity(1_000_000).build(),
            margin,
        }
    }

    /// A usable token for `msn`, fetching one with `fetch` when there is
    /// none (or only an unusable one). Concurrent callers share one fetch.
    pub async fn get<F, Fut, E>(&self, msn: &Msn, fetch: F) -> Result<Lookup, Arc<E>>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<Arc<AccessToken>, E>>,
        E: Send + Sync + 'static,
    {
        // Two rounds: an unusable token found in the first is removed and a
        // new one fetched in the second.
        for _ in 0..2 {
            let token = self.cache.try_get_with(msn.clone(), fetch()).await?;
            let now = Instant::now();
            if token.is_fresh(now, self.margin) {
                return Ok(Lookup::Fresh(token));
            }
            if token.is_usable(now) {
                let first = !token.refreshing.swap(true, Ordering::SeqCst);
                return Ok(if first {
                    Lookup::RefreshDue(token)
                } else {
                    Lookup::Fresh(token)
                });
            }
            self.invalidate_if_same(msn, &token).await;
        }
        // A token that is unusable as soon as it arrives (a lifetime shorter
        // than the travel allowance) is still valid: use it rather than fail.
        let token = self.cache.try_get_with(msn.clone(), fetch()).await?;
        Ok(Lookup::Fresh(token))
    }

    /// Stores a token fetched in the background in place of `old`, unless
    /// `old` is no longer the cached one (a 401 or a reload dropped it, or
    /// another fetch replaced it): a token fetched with credentials that a
    /// reload has since replaced is not put back.
    pub async fn replace(&self, msn: Msn, old: &Arc<AccessToken>, new: Arc<AccessToken>) {
        self.cache
            .entry(msn)
            .and_compute_with(|entry| {
                let op = match entry {
                    Some(e) if Arc::ptr_eq(e.value(), old) => Op::Put(new),
                    _ => Op::Nop,
                };
                std::future::ready(op)
            })
            .await;
    }

    /// Drops the cached token for `msn` if it is still `failed`; a token that
    /// another request already replaced stays.
    pub async fn invalidate_if_same(&self, msn: &Msn, failed: &Arc<AccessToken>) {
        self.cache
            .entry(msn.clone())
            .and_compute_with(|entry| {
                let op = match entry {
                    Some(e) if Arc::ptr_eq(e.value(), failed) => Op::Remove,
                    _ => Op::Nop,
                };
                std::future::ready(op)
            })
            .await;
    }

    /// Drops the token of one merchant (its credentials changed).
    pub async fn invalidate(&self, msn: &Msn) {
        self.cache.invalidate(msn).await;
    }

    /// The cached token for `msn` if it is fresh, without fetching.
    pub async fn fresh(&self, msn: &Msn) -> Option<Arc<AccessToken>> {
        self.cache
            .get(msn)
            .await
            .filter(|t| t.is_fresh(Instant::now(), self.margin))
    }

    /// Every cached token's merchant and expiry instant (for metrics).
    pub fn expiries(&self) -> Vec<(Msn, Instant)> {
        self.cache
            .iter()
            .map(|(msn, t)| ((*msn).clone(), t.expires_at))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(lifetime: Duration, left: Duration) -> AccessToken {
        AccessToken::new(
            SecretString::from("t".to_owned()),
            Instant::now() + left,
            lifetime,
        )
    }

    #[test]
    fn fresh_only_outside_the_margin() {
        let now = Instant::now();
        let hour = Duration::from_secs(3600);
        let margin = Duration::from_secs(300);
        assert!(token(hour, Duration::from_secs(301)).is_fresh(now, margin));
        assert!(!token(hour, Duration::from_secs(299)).is_fresh(now, margin));
        // Short-lived tokens: the margin shrinks to a fifth of the lifetime.
        let ten = Duration::from_secs(10);
        assert!(token(ten, Duration::from_secs(3)).is_fresh(now, margin));
        assert!(!token(ten, Duration::from_secs(1)).is_fresh(now, margin));
    }

    #[test]
    fn usable_until_just_before_expiry() {
        let now = Instant::now();
        let hour = Duration::from_secs(3600);
        assert!(token(hour, Duration::from_secs(6)).is_usable(now));
        assert!(!token(hour, Duration::from_secs(4)).is_usable(now));
        let two = Duration::from_secs(2);
        assert!(token(two, Duration::from_millis(200)).is_usable(now));
        assert!(!token(two, Duration::from_millis(50)).is_usable(now));
    }
}
