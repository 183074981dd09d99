//! Per-merchant protection of the upstream and of the other merchants:
//! a limit on concurrent calls, a request rate limit, a retry budget, a
//! circuit breaker, and backoff for failing token fetches. One merchant's
//! outage or burst uses only its own slots, budget and breaker.
//!
//! Time is tokio's clock: the real one in the gateway, and one that tests
//! pause and advance, so every timer here is tested without waiting.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::config::Resilience;
use crate::domain::Msn;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Whole seconds for a `Retry-After` header: never 0.
pub fn retry_after_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0).max(u64::from(d.is_zero()))
}

/// The guards of every merchant, created on first use.
pub struct Guards {
    cfg: Resilience,
    map: RwLock<HashMap<Msn, Arc<MerchantGuard>, rustc_hash::FxBuildHasher>>,
}

impl Guards {
    pub fn new(cfg: Resilience) -> Self {
        Self {
            cfg,
            map: RwLock::new(HashMap::default()),
        }
    }

    pub fn config(&self) -> &Resilience {
        &self.cfg
    }

    /// The merchants whose breaker is open now (or whose half-open probe
    /// is out): a call for them would be refused without reaching Vipps.
    pub fn open_breakers(&self) -> Vec<Msn> {
        let map = self.map.read().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        map.iter()
            .filter(|(_, g)| lock(&g.breaker).refuses(&self.cfg, now))
            .map(|(msn, _)| msn.clone())
            .collect()
    }

    pub fn get(&self, msn: &Msn) -> Arc<MerchantGuard> {
        if let Some(g) = self.map.read().unwrap_or_else(|p| p.into_inner()).get(msn) {
            return g.clone();
        }
        let mut map = self.map.write().unwrap_or_else(|p| p.into_inner());
        map.entry(msn.clone())
            .or_insert_with(|| Arc::new(MerchantGuard::new(&self.cfg)))
            .clone()
    }
}

/// One merchant's limits and breaker.
pub struct MerchantGuard {
    slots: Arc<Semaphore>,
    in_flight: AtomicUsize,
    retrying: AtomicUsize,
    bucket: Mutex<Bucket>,
    /// Paces background deliveries at the rate, without its burst.
    pace: Mutex<Bucket>,
    breaker: Mutex<Breaker>,
    token_backoff: Mutex<Backoff>,
}

impl MerchantGuard {
    fn new(cfg: &Resilience) -> Self {
        Self {
            slots: Arc::new(Semaphore::new(cfg.max_concurrent)),
            in_flight: AtomicUsize::new(0),
            retrying: AtomicUsize::new(0),
            bucket: Mutex::new(Bucket::new(cfg.rate_burst, Instant::now())),
            pace: Mutex::new(Bucket::new(1, Instant::now())),
            breaker: Mutex::new(Breaker::Closed { failures: 0 }),
            token_backoff: Mutex::new(Backoff::default()),
        }
    }

    /// Takes one request from the rate bucket, or says how long to wait.
    pub fn admit(&self, cfg: &Resilience) -> Result<(), Duration> {
        if cfg.rate_per_second == 0 {
            return Ok(());
        }
        lock(&self.bucket).take(cfg.rate_per_second, cfg.rate_burst, Instant::now())
    }

    /// Takes one background delivery from the merchant's rate, or says how
    /// long to wait. Deliveries are paced at `rate_per_second` with no
    /// burst of their own, and each also takes a request from the rate
    /// bucket synchronous requests share, so both together stay within the
    /// merchant's limit.
    pub fn pace(&self, cfg: &Resilience) -> Result<(), Duration> {
        if cfg.rate_per_second == 0 {
            return Ok(());
        }
        let now = Instant::now();
        let mut pace = lock(&self.pace);
        pace.take(cfg.rate_per_second, 1, now)?;
        lock(&self.bucket)
            .take(cfg.rate_per_second, cfg.rate_burst, now)
            .inspect_err(|_| pace.give_back())
    }

    /// Waits up to `queue_timeout` for a call slot.
    pub async fn slot(&self, wait: Duration) -> Option<OwnedSemaphorePermit> {
        // A free slot is taken at once, without arming a timer.
        if let Ok(permit) = self.slots.clone().try_acquire_owned() {
            return Some(permit);
        }
        tokio::time::timeout(wait, self.slots.clone().acquire_owned())
            .await
            .ok()
            .and_then(Result::ok)
    }

    /// Counts an upstream call in flight for the retry budget.
    pub fn call_started(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        InFlight {
            guard: self.clone(),
            retrying: false,
        }
    }

    /// Asks the breaker whether a call may go out now.
    pub fn breaker_allows(&self, cfg: &Resilience) -> Result<(), Duration> {
        lock(&self.breaker).allow(cfg, Instant::now())
    }

    /// Reports a call's outcome to the breaker; `true` when the upstream
    /// answered (even with a 4xx), `false` on 5xx, timeouts and transport errors.
    pub fn record(&self, cfg: &Resilience, upstream_healthy: bool) {
        let mut b = lock(&self.breaker);
        let was_open = !matches!(*b, Breaker::Closed { .. });
        b.record(cfg, upstream_healthy, Instant::now());
        if !upstream_healthy && matches!(*b, Breaker::Open { .. }) && !was_open {
            tracing::warn!("circuit opened after consecutive upstream failures");
        }
    }

    /// Whether a token fetch may be tried now; if not, how long until it
    /// may and whether the last failure was a refusal of the credentials.
    pub fn token_fetch_allowed(&self) -> Result<(), (Duration, bool)> {
        let b = lock(&self.token_backoff);
        b.allowed(Instant::now()).map_err(|d| (d, b.rejected))
    }

    pub fn token_fetch_failed(&self, cfg: &Resilience, rejected: bool) {
        let mut b = lock(&self.token_backoff);
        b.failed(cfg.token_backoff, cfg.token_backoff_max, Instant::now());
        b.rejected = rejected;
    }

    pub fn token_fetch_succeeded(&self) {
        *lock(&self.token_backoff) = Backoff::default();
    }
}

/// An upstream call in flight; tracks whether it is a retry.
pub struct InFlight {
    guard: Arc<MerchantGuard>,
    retrying: bool,
}

impl InFlight {
    /// Marks the call as retrying if the merchant's budget allows: retries
    /// in flight stay within `percent` of calls in flight, or `min`.
    pub fn try_retry(&mut self, cfg: &Resilience) -> bool {
        if self.retrying {
            return true;
        }
        let g = &self.guard;
        let in_flight = g.in_flight.load(Ordering::SeqCst);
        let allowed = (in_flight * cfg.retry_budget_percent / 100).max(cfg.retry_budget_min);
        let mut current = g.retrying.load(Ordering::SeqCst);
        loop {
            if current >= allowed {
                return false;
            }
            match g.retrying.compare_exchange(
                current,
                current + 1,
                Ordering::SeqCst,
                Ordering::SeqCst,
            ) {
                Ok(_) => {
                    self.retrying = true;
                    return true;
                }
                Err(now) => current = now,
            }
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.guard.in_flight.fetch_sub(1, Ordering::SeqCst);
        if self.retrying {
            self.guard.retrying.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

/// Full-jitter exponential backoff: random in [0, min(max, base × 2^(n−1))].
pub fn backoff_delay(cfg: &Resilience, retry: u32) -> Duration {
    full_jitter(cfg.backoff_base, cfg.backoff_max, retry)
}

/// Random in [0, min(max, base × 2^(n−1))]: the wait before the `n`th
/// retry (the first is `n = 1`).
pub fn full_jitter(base: Duration, max: Duration, n: u32) -> Duration {
    let cap = base
        .saturating_mul(1u32 << n.saturating_sub(1).min(20))
        .min(max);
    let nanos = u64::try_from(cap.as_nanos()).unwrap_or(u64::MAX);
    Duration::from_nanos(fastrand::u64(0..=nanos))
}

/// A token bucket in millionths of a request, so refill is exact in integers.
struct Bucket {
    micro: u128,
    at: Instant,
}

const MICRO: u128 = 1_000_000;

impl Bucket {
    fn new(burst: usize, now: Instant) -> Self {
        Self {
            micro: burst as u128 * MICRO,
            at: now,
        }
    }

    /// Returns a request taken by [`Self::take`] but not used.
    fn give_back(&mut self) {
        self.micro += MICRO;
    }

    fn take(&mut self, rate: usize, burst: usize, now: Instant) -> Result<(), Duration> {
        let elapsed = now.saturating_duration_since(self.at).as_micros();
        self.micro = (self.micro + elapsed * rate as u128).min(burst as u128 * MICRO);
        self.at = now;
        if self.micro >= MICRO {
            self.micro -= MICRO;
            Ok(())
        } else {
            let missing = MICRO - self.micro;
            Err(Duration::from_micros(
                u64::try_from(missing.div_ceil(rate as u128)).unwrap_or(u64::MAX),
            ))
        }
    }
}

enum Breaker {
    Closed {
        failures: usize,
    },
    Open {
        until: Instant,
    },
    /// One probe is out; others are refused until it reports (or until it
    /// has taken an open period, in case it was abandoned).
    HalfOpen {
        probe_started: Instant,
    },
}

impl Breaker {
    /// Whether [`Self::allow`] would refuse a call at `now`, without
    /// changing the state (an open period that has ended lets the next
    /// call through as the probe).
    fn refuses(&self, cfg: &Resilience, now: Instant) -> bool {
        match *self {
            Breaker::Closed { .. } => false,
            Breaker::Open { until } => now < until,
            Breaker::HalfOpen { probe_started } => {
                now.saturating_duration_since(probe_started) < cfg.breaker_open
            }
        }
    }

    fn allow(&mut self, cfg: &Resilience, now: Instant) -> Result<(), Duration> {
        match *self {
            Breaker::Closed { .. } => Ok(()),
            Breaker::Open { until } if now < until => Err(until - now),
            Breaker::Open { .. } => {
                *self = Breaker::HalfOpen { probe_started: now };
                Ok(())
            }
            Breaker::HalfOpen { probe_started }
                if now.saturating_duration_since(probe_started) >= cfg.breaker_open =>
            {
                *self = Breaker::HalfOpen { probe_started: now };
                Ok(())
            }
            Breaker::HalfOpen { probe_started } => Err(cfg
                .breaker_open
                .saturating_sub(now.saturating_duration_since(probe_started))),
        }
    }

    fn record(&mut self, cfg: &Resilience, healthy: bool, now: Instant) {
        if cfg.breaker_failures == 0 {
            return;
        }
        *self = match (&*self, healthy) {
            (_, true) => Breaker::Closed { failures: 0 },
            (Breaker::Closed { failures }, false) if failures + 1 < cfg.breaker_failures => {
                Breaker::Closed {
                    failures: failures + 1,
                }
            }
            (Breaker::Open { until }, false) => Breaker::Open { until: *until },
            (_, false) => Breaker::Open {
                until: now + cfg.breaker_open,
            },
        };
    }
}

#[derive(Default)]
struct Backoff {
    failures: u32,
    until: Option<Instant>,
    rejected: bool,
}

impl Backoff {
    fn allowed(&self, now: Instant) -> Result<(), Duration> {
        match self.until {
            Some(until) if now < until => Err(until - now),
            _ => Ok(()),
        }
    }

    fn failed(&mut self, base: Duration, max: Duration, now: Instant) {
        self.failures = self.failures.saturating_add(1);
        let wait = base
            .saturating_mul(1u32 << (self.failures - 1).min(20))
            .min(max);
        self.until = Some(now + wait);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> Resilience {
        Resilience {
            breaker_failures: 3,
            breaker_open: Duration::from_secs(10),
            ..Resilience::default()
        }
    }

    #[test]
    fn bucket_refills_at_the_rate_up_to_the_burst() {
        let t0 = Instant::now();
        let mut b = Bucket::new(2, t0);
        assert!(b.take(4, 2, t0).is_ok());
        assert!(b.take(4, 2, t0).is_ok());
        assert_eq!(b.take(4, 2, t0), Err(Duration::from_millis(250)));
        assert!(b.take(4, 2, t0 + Duration::from_millis(250)).is_ok());
        // Long idle time refills only up to the burst.
        let later = t0 + Duration::from_secs(60);
        assert!(b.take(4, 2, later).is_ok());
        assert!(b.take(4, 2, later).is_ok());
        assert!(b.take(4, 2, later).is_err());
    }

    #[test]
    fn breaker_opens_after_consecutive_failures_and_probes_half_open() {
        let c = cfg();
        let t0 = Instant::now();
        let mut b = Breaker::Closed { failures: 0 };
        b.record(&c, false, t0);
        b.record(&c, false, t0);
        b.record(&c, true, t0); // a success resets the count
        for _ in 0..3 {
            assert!(b.allow(&c, t0).is_ok());
            b.record(&c, false, t0);
        }
        assert_eq!(
            b.allow(&c, t0 + Duration::from_secs(4)),
            Err(Duration::from_secs(6))
        );
        let t1 = t0 + Duration::from_secs(10);
        assert!(b.allow(&c, t1).is_ok(), "one probe");
        assert!(b.allow(&c, t1).is_err(), "only one probe");
        b.record(&c, false, t1);
        assert!(
            b.allow(&c, t1 + Duration::from_secs(1)).is_err(),
            "failed probe reopens"
        );
        let t2 = t1 + Duration::from_secs(10);
        assert!(b.allow(&c, t2).is_ok());
        b.record(&c, true, t2);
        assert!(
            b.allow(&c, t2).is_ok() && b.allow(&c, t2).is_ok(),
            "closed again"
        );
    }

    #[test]
    fn the_breaker_is_seen_open_without_taking_the_probe() {
        let c = cfg();
        let t0 = Instant::now();
        let mut b = Breaker::Closed { failures: 0 };
        assert!(!b.refuses(&c, t0));
        for _ in 0..3 {
            b.record(&c, false, t0);
        }
        assert!(b.refuses(&c, t0 + Duration::from_secs(9)));
        let t1 = t0 + Duration::from_secs(10);
        // Looking does not start the probe: the next call still may.
        assert!(!b.refuses(&c, t1) && !b.refuses(&c, t1));
        assert!(b.allow(&c, t1).is_ok(), "the probe");
        assert!(b.refuses(&c, t1), "others wait for the probe");
        assert!(
            !b.refuses(&c, t1 + Duration::from_secs(10)),
            "an abandoned probe"
        );
    }

    #[test]
    fn backoff_doubles_up_to_the_max() {
        let t0 = Instant::now();
        let mut b = Backoff::default();
        let (base, max) = (Duration::from_secs(1), Duration::from_secs(5));
        b.failed(base, max, t0);
        assert_eq!(b.allowed(t0), Err(Duration::from_secs(1)));
        b.failed(base, max, t0);
        assert_eq!(b.allowed(t0), Err(Duration::from_secs(2)));
        b.failed(base, max, t0);
        b.failed(base, max, t0);
        assert_eq!(b.allowed(t0), Err(Duration::from_secs(5)));
        assert!(b.allowed(t0 + Duration::from_secs(5)).is_ok());
    }

    #[test]
    fn jittered_backoff_stays_within_its_cap() {
        crate::test_seed::seeded();
        let c = Resilience::default();
        for retry in 1..10 {
            let cap = (c.backoff_base * (1 << (retry - 1))).min(c.backoff_max);
            for _ in 0..100 {
                assert!(backoff_delay(&c, retry) <= cap);
            }
        }
        // Far past the doubling range: the cap is the configured max, with
        // no overflow of the doubling.
        for retry in [20, 21, 32, 1000, u32::MAX] {
            for _ in 0..100 {
                assert!(backoff_delay(&c, retry) <= c.backoff_max);
            }
        }
        // Retry 0 (the first attempt) is not doubled below the base.
        for _ in 0..100 {
            assert!(backoff_delay(&c, 0) <= c.backoff_base);
        }
    }

    #[test]
    fn retry_budget_is_a_share_of_calls_in_flight_with_a_floor() {
        let c = Resilience {
            retry_budget_percent: 20,
            retry_budget_min: 2,
            ..Resilience::default()
        };
        let g = Arc::new(MerchantGuard::new(&c));
        let mut calls: Vec<InFlight> = (0..20).map(|_| g.call_started()).collect();
        // 20 % of 20 calls = 4 retries at once.
        let granted = calls
            .iter_mut()
            .filter_map(|f| f.try_retry(&c).then_some(()))
            .count();
        assert_eq!(granted, 4);
        drop(calls);
        let mut few: Vec<InFlight> = (0..3).map(|_| g.call_started()).collect();
        let granted = few
            .iter_mut()
            .filter_map(|f| f.try_retry(&c).then_some(()))
            .count();
        assert_eq!(granted, 2, "the floor allows retries at low traffic");
    }

    /// A guard with a 3-failure, 10 s breaker, a bucket of 2 at 4/s and
    /// token-fetch backoff from 1 s to 5 s, on tokio's (paused) clock.
    fn paused_guard() -> (Resilience, MerchantGuard) {
        let c = Resilience {
            breaker_failures: 3,
            breaker_open: Duration::from_secs(10),
            rate_per_second: 4,
            rate_burst: 2,
            token_backoff: Duration::from_secs(1),
            token_backoff_max: Duration::from_secs(5),
            ..Resilience::default()
        };
        let g = MerchantGuard::new(&c);
        (c, g)
    }

    #[tokio::test(start_paused = true)]
    async fn deliveries_are_paced_at_the_rate_without_its_burst_and_share_it() {
        let c = Resilience {
            rate_per_second: 10,
            rate_burst: 3,
            ..Resilience::default()
        };
        let g = MerchantGuard::new(&c);
        // However full the rate bucket, one delivery per 100 ms.
        assert!(g.pace(&c).is_ok());
        assert_eq!(g.pace(&c), Err(Duration::from_millis(100)));
        tokio::time::advance(Duration::from_millis(100)).await;
        assert!(g.pace(&c).is_ok());
        // Synchronous requests take the rest of the burst: the next
        // delivery waits for the shared bucket, and gives its pace back.
        assert!(g.admit(&c).is_ok());
        tokio::time::advance(Duration::from_millis(100)).await;
        assert!(g.admit(&c).is_ok() && g.admit(&c).is_ok());
        assert!(g.pace(&c).is_err(), "the shared bucket is empty");
        tokio::time::advance(Duration::from_millis(100)).await;
        assert!(g.pace(&c).is_ok());
        // No rate: nothing is paced.
        let free = Resilience {
            rate_per_second: 0,
            ..c
        };
        assert!((0..100).all(|_| g.pace(&free).is_ok()));
    }

    #[tokio::test(start_paused = true)]
    async fn breaker_opens_refuses_until_the_open_period_passes_then_probes_once() {
        let (c, g) = paused_guard();
        for _ in 0..2 {
            assert!(g.breaker_allows(&c).is_ok());
            g.record(&c, false);
        }
        assert!(g.breaker_allows(&c).is_ok(), "two failures keep it closed");
        g.record(&c, false);
        // Open: refused, with the time left of the open period.
        assert_eq!(g.breaker_allows(&c), Err(Duration::from_secs(10)));
        tokio::time::advance(Duration::from_millis(9_999)).await;
        assert_eq!(g.breaker_allows(&c), Err(Duration::from_millis(1)));
        tokio::time::advance(Duration::from_millis(1)).await;
        // Half open: exactly one probe goes out.
        assert!(g.breaker_allows(&c).is_ok(), "one probe");
        assert!(g.breaker_allows(&c).is_err(), "only one probe");
        tokio::time::advance(Duration::from_secs(3)).await;
        assert_eq!(
            g.breaker_allows(&c),
            Err(Duration::from_secs(7)),
            "still waiting for the probe"
        );
        // The probe succeeds: closed, every call goes out again.
        g.record(&c, true);
        for _ in 0..5 {
            assert!(g.breaker_allows(&c).is_ok());
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_probe_reopens_the_breaker_for_a_full_period() {
        let (c, g) = paused_guard();
        for _ in 0..3 {
            g.record(&c, false);
        }
        tokio::time::advance(Duration::from_secs(10)).await;
        assert!(g.breaker_allows(&c).is_ok(), "the probe");
        tokio::time::advance(Duration::from_secs(2)).await;
        g.record(&c, false);
        assert_eq!(g.breaker_allows(&c), Err(Duration::from_secs(10)));
        tokio::time::advance(Duration::from_secs(10)).await;
        assert!(g.breaker_allows(&c).is_ok(), "the next probe");
        assert!(g.breaker_allows(&c).is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn an_abandoned_probe_is_replaced_after_an_open_period() {
        let (c, g) = paused_guard();
        for _ in 0..3 {
            g.record(&c, false);
        }
        tokio::time::advance(Duration::from_secs(10)).await;
        assert!(g.breaker_allows(&c).is_ok(), "a probe that never reports");
        tokio::time::advance(Duration::from_millis(9_999)).await;
        assert!(g.breaker_allows(&c).is_err());
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(g.breaker_allows(&c).is_ok(), "a new probe");
        assert!(g.breaker_allows(&c).is_err(), "one at a time");
    }

    #[tokio::test(start_paused = true)]
    async fn the_rate_bucket_refills_with_time_up_to_its_burst() {
        let (c, g) = paused_guard();
        assert!(g.admit(&c).is_ok());
        assert!(g.admit(&c).is_ok());
        assert_eq!(g.admit(&c), Err(Duration::from_millis(250)));
        tokio::time::advance(Duration::from_millis(100)).await;
        assert_eq!(g.admit(&c), Err(Duration::from_millis(150)));
        tokio::time::advance(Duration::from_millis(150)).await;
        assert!(g.admit(&c).is_ok(), "one request refilled after 250 ms");
        assert!(g.admit(&c).is_err());
        // A long idle time refills only up to the burst.
        tokio::time::advance(Duration::from_secs(60)).await;
        assert!(g.admit(&c).is_ok());
        assert!(g.admit(&c).is_ok());
        assert!(g.admit(&c).is_err());
        // No rate limit configured: always admitted.
        let unlimited = Resilience {
            rate_per_second: 0,
            ..c
        };
        for _ in 0..10 {
            assert!(g.admit(&unlimited).is_ok());
        }
    }

    #[tokio::test(start_paused = true)]
    async fn token_fetch_backoff_doubles_up_to_its_max_and_resets_on_success() {
        let (c, g) = paused_guard();
        assert!(g.token_fetch_allowed().is_ok());
        for (wait, rejected) in [(1, false), (2, true), (4, false), (5, false), (5, true)] {
            g.token_fetch_failed(&c, rejected);
            let wait = Duration::from_secs(wait);
            assert_eq!(g.token_fetch_allowed(), Err((wait, rejected)));
            tokio::time::advance(wait - Duration::from_millis(1)).await;
            assert_eq!(
                g.token_fetch_allowed(),
                Err((Duration::from_millis(1), rejected))
            );
            tokio::time::advance(Duration::from_millis(1)).await;
            assert!(g.token_fetch_allowed().is_ok(), "allowed after {wait:?}");
        }
        g.token_fetch_succeeded();
        g.token_fetch_failed(&c, false);
        assert_eq!(
            g.token_fetch_allowed(),
            Err((Duration::from_secs(1), false)),
            "a success starts the doubling again"
        );
    }

    #[test]
    fn retry_after_is_whole_seconds_rounded_up() {
        assert_eq!(retry_after_secs(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1500)), 2);
        assert_eq!(retry_after_secs(Duration::from_secs(3)), 3);
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
    }
}
