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

use http::{header, HeaderMap, HeaderValue};
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
    /// The headers of every call made with this token: `Authorization`
    /// (when `bearer` is set), the merchant's headers the token was
    /// fetched with, and a `traceparent` that each call replaces with its
    /// own. Built once per token, cloned for each call.
    pub call_headers: HeaderMap,
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
    /// A token, sent on each call with `merchant_headers` (the headers of
    /// the merchant's every call, `Authorization` aside).
    pub fn new(
        value: SecretString,
        expires_at: Instant,
        lifetime: Duration,
        mut merchant_headers: HeaderMap,
    ) -> Self {
        let bearer = HeaderValue::from_str(&format!("Bearer {}", value.expose_secret()))
            .ok()
            .map(|mut v| {
                v.set_sensitive(true);
                v
            });
        if let Some(bearer) = &bearer {
            merchant_headers.insert(header::AUTHORIZATION, bearer.clone());
        }
        // Each call's own `traceparent` takes this slot: set in place, it
        // does not grow the cloned map (a reallocation on every call).
        merchant_headers.insert(
            crate::trace::TRACEPARENT,
            HeaderValue::from_static("00-00000000000000000000000000000000-0000000000000000-00"),
        );
        Self {
            value,
            bearer,
            call_headers: merchant_headers,
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
    cache: Cache<Msn, Arc<AccessToken>, rustc_hash::FxBuildHasher>,
    margin: Duration,
}

impl TokenCache {
    pub fn new(margin: Duration) -> Self {
        Self {
            // Entries are replaced when stale, so no time-based eviction.
            cache: Cache::builder()
                .max_capacity(1_000_000)
                .build_with_hasher(rustc_hash::FxBuildHasher),
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
    use std::sync::atomic::AtomicUsize;

    use super::*;

    fn token(lifetime: Duration, left: Duration) -> AccessToken {
        AccessToken::new(
            SecretString::from("t".to_owned()),
            Instant::now() + left,
            lifetime,
            HeaderMap::new(),
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

    const HOUR: Duration = Duration::from_secs(3600);
    const MARGIN: Duration = Duration::from_secs(300);

    fn msn() -> Msn {
        Msn::parse("123456").unwrap()
    }

    /// A fetch that counts its calls and issues `lifetime` tokens, after
    /// `latency` (on tokio's clock).
    struct Issuer {
        fetches: AtomicUsize,
        lifetime: Duration,
        latency: Duration,
    }

    impl Issuer {
        fn new(lifetime: Duration) -> Self {
            Self {
                fetches: AtomicUsize::new(0),
                lifetime,
                latency: Duration::ZERO,
            }
        }

        fn fetches(&self) -> usize {
            self.fetches.load(Ordering::SeqCst)
        }

        /// Counted when the fetch runs, not when its future is made: moka
        /// makes every caller's future but runs only one.
        async fn fetch(&self) -> Result<Arc<AccessToken>, ()> {
            let n = self.fetches.fetch_add(1, Ordering::SeqCst) + 1;
            tokio::time::sleep(self.latency).await;
            Ok(Arc::new(AccessToken::new(
                SecretString::from(format!("token-{n}")),
                Instant::now() + self.lifetime,
                self.lifetime,
                HeaderMap::new(),
            )))
        }
    }

    fn value(t: &AccessToken) -> &str {
        t.value.expose_secret()
    }

    #[tokio::test(start_paused = true)]
    async fn a_token_is_fresh_until_the_margin_usable_until_the_travel_allowance_then_replaced() {
        let (cache, msn, issuer) = (TokenCache::new(MARGIN), msn(), Issuer::new(HOUR));
        let (c, m, i) = (&cache, &msn, &issuer);
        let get = move || c.get(m, move || i.fetch());

        let first = get().await.unwrap();
        assert!(matches!(first, Lookup::Fresh(_)));
        assert_eq!(value(first.token()), "token-1");
        assert_eq!(issuer.fetches(), 1);

        // Fresh until the margin (5 min before expiry).
        tokio::time::advance(HOUR - MARGIN - Duration::from_millis(1)).await;
        assert!(matches!(get().await.unwrap(), Lookup::Fresh(_)));
        assert!(cache.fresh(&msn).await.is_some());
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(cache.fresh(&msn).await.is_none());

        // Inside the margin: still served, and exactly one caller is told
        // to refresh it in the background.
        let due = get().await.unwrap();
        assert!(
            matches!(due, Lookup::RefreshDue(_)),
            "the first caller refreshes"
        );
        assert_eq!(value(due.token()), "token-1");
        for _ in 0..3 {
            let again = get().await.unwrap();
            assert!(matches!(again, Lookup::Fresh(_)), "a refresh is under way");
            assert!(Arc::ptr_eq(again.token(), due.token()));
        }
        assert_eq!(issuer.fetches(), 1, "no fetch while the token is usable");

        // Usable until the travel allowance (5 s before expiry for an hour).
        tokio::time::advance(MARGIN - Duration::from_secs(5) - Duration::from_millis(1)).await;
        assert_eq!(value(get().await.unwrap().token()), "token-1");
        tokio::time::advance(Duration::from_millis(1)).await;

        // Then it is never sent: a new one is fetched.
        let next = get().await.unwrap();
        assert!(matches!(next, Lookup::Fresh(_)));
        assert_eq!(value(next.token()), "token-2");
        assert_eq!(issuer.fetches(), 2);
        assert_eq!(value(get().await.unwrap().token()), "token-2");
        assert_eq!(issuer.fetches(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_callers_share_one_fetch() {
        let cache = TokenCache::new(MARGIN);
        let msn = msn();
        let issuer = Issuer {
            latency: Duration::from_secs(2),
            ..Issuer::new(HOUR)
        };
        let lookups =
            futures_util::future::join_all((0..50).map(|_| cache.get(&msn, || issuer.fetch())))
                .await;
        assert_eq!(issuer.fetches(), 1);
        let first = lookups[0].as_ref().unwrap().token().clone();
        for l in &lookups {
            let l = l.as_ref().unwrap();
            assert!(matches!(l, Lookup::Fresh(_)));
            assert!(Arc::ptr_eq(l.token(), &first));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_callers_share_the_fetch_that_replaces_an_unusable_token() {
        let cache = TokenCache::new(MARGIN);
        let msn = msn();
        let issuer = Issuer {
            latency: Duration::from_millis(500),
            ..Issuer::new(HOUR)
        };
        cache.get(&msn, || issuer.fetch()).await.unwrap();
        tokio::time::advance(HOUR).await;
        let lookups =
            futures_util::future::join_all((0..20).map(|_| cache.get(&msn, || issuer.fetch())))
                .await;
        assert_eq!(issuer.fetches(), 2, "one fetch replaced the expired token");
        for l in &lookups {
            assert_eq!(value(l.as_ref().unwrap().token()), "token-2");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_token_unusable_on_arrival_is_still_used() {
        // Lifetime 0: unusable as soon as it is issued, but valid at Vipps.
        let (cache, msn, issuer) = (TokenCache::new(MARGIN), msn(), Issuer::new(Duration::ZERO));
        let l = cache.get(&msn, || issuer.fetch()).await.unwrap();
        assert!(matches!(l, Lookup::Fresh(_)));
        // Two rounds replaced the unusable token, the third is kept.
        assert_eq!(issuer.fetches(), 3);
        assert_eq!(value(l.token()), "token-3");
    }

    #[tokio::test(start_paused = true)]
    async fn replace_and_invalidate_if_same_keep_a_newer_token() {
        let (cache, msn, issuer) = (TokenCache::new(MARGIN), msn(), Issuer::new(HOUR));
        let t1 = cache
            .get(&msn, || issuer.fetch())
            .await
            .unwrap()
            .token()
            .clone();
        let t2 = issuer.fetch().await.unwrap();
        let t3 = issuer.fetch().await.unwrap();
        let (c, m) = (&cache, &msn);
        let cached = move || async move { c.fresh(m).await.map(|t| value(&t).to_owned()) };

        // A background refresh replaces the token it started from.
        cache.replace(msn.clone(), &t1, t2.clone()).await;
        assert_eq!(cached().await.as_deref(), Some("token-2"));
        // A refresh that started from a token since replaced is dropped.
        cache.replace(msn.clone(), &t1, t3.clone()).await;
        assert_eq!(cached().await.as_deref(), Some("token-2"));
        // A 401 on the old token does not drop the newer one.
        cache.invalidate_if_same(&msn, &t1).await;
        assert_eq!(cached().await.as_deref(), Some("token-2"));
        // A 401 on the cached token drops it, and the next caller fetches.
        cache.invalidate_if_same(&msn, &t2).await;
        assert_eq!(cached().await, None);
        let fetched = cache.get(&msn, || issuer.fetch()).await.unwrap();
        assert_eq!(value(fetched.token()), "token-4");
        // Nothing is put back in place of a dropped token (a reload
        // invalidated the merchant while a refresh was under way).
        cache.invalidate(&msn).await;
        cache.replace(msn.clone(), fetched.token(), t3).await;
        assert_eq!(cached().await, None);
    }

    #[tokio::test(start_paused = true)]
    async fn expiries_follow_the_clock() {
        let (cache, msn, issuer) = (TokenCache::new(MARGIN), msn(), Issuer::new(HOUR));
        let t0 = Instant::now();
        cache.get(&msn, || issuer.fetch()).await.unwrap();
        tokio::time::advance(Duration::from_secs(600)).await;
        let expiries = cache.expiries();
        assert_eq!(expiries.len(), 1);
        assert_eq!(expiries[0].0, msn);
        assert_eq!(expiries[0].1, t0 + HOUR);
        assert_eq!(
            expiries[0].1.saturating_duration_since(Instant::now()),
            HOUR - Duration::from_secs(600)
        );
    }
}
