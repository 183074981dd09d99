//! Access tokens per merchant: fetched once however many requests arrive at
//! once (moka's `try_get_with` coalesces them), used while more than a safety
//! margin of their life remains, and dropped when the upstream answers 401 —
//! but only if the cached token is still the one that failed.
//!
//! Freshness is decided here, in code, not by cache eviction alone, so a
//! still-valid token can be told apart from an expired one.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use moka::future::Cache;
use moka::ops::compute::Op;
use secrecy::SecretString;

use crate::domain::Msn;

/// A token with the instant it expires.
pub struct AccessToken {
    pub value: SecretString,
    pub expires_at: Instant,
    pub lifetime: Duration,
}

impl std::fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessToken")
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

impl AccessToken {
    /// Usable now: more than the margin (at most a fifth of its lifetime) left.
    pub fn is_fresh(&self, now: Instant, margin: Duration) -> bool {
        let margin = margin.min(self.lifetime / 5);
        self.expires_at
            .checked_sub(margin)
            .is_some_and(|use_until| now < use_until)
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
            // One entry per configured merchant at most; entries are
            // replaced when stale, so no time-based eviction is needed.
            cache: Cache::builder().max_capacity(1_000_000).build(),
            margin,
        }
    }

    /// A fresh token for `msn`, fetching one with `fetch` when there is none.
    /// Concurrent callers for the same MSN share a single fetch.
    pub async fn get<F, Fut, E>(&self, msn: &Msn, fetch: F) -> Result<Arc<AccessToken>, Arc<E>>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<Arc<AccessToken>, E>>,
        E: Send + Sync + 'static,
    {
        // Two rounds: a stale token found in the first is removed and a
        // new one fetched in the second.
        let mut last = None;
        for _ in 0..2 {
            let token = self.cache.try_get_with(msn.clone(), fetch()).await?;
            if token.is_fresh(Instant::now(), self.margin) {
                return Ok(token);
            }
            self.invalidate_if_same(msn, &token).await;
            last = Some(token);
        }
        // A token just fetched that is already inside its margin (a very short
        // lifetime) is still valid: use it rather than fail.
        match last {
            Some(t) if Instant::now() < t.expires_at => Ok(t),
            _ => self.cache.try_get_with(msn.clone(), fetch()).await,
        }
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

    /// Drops every token (credentials reloaded).
    pub fn clear(&self) {
        self.cache.invalidate_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(lifetime: Duration, left: Duration) -> AccessToken {
        AccessToken {
            value: SecretString::from("t".to_owned()),
            expires_at: Instant::now() + left,
            lifetime,
        }
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
}
