//! Warnings about a failure that repeats. A full volume fails every claim
//! the worker makes, four times a second; one line a minute says as much,
//! with how many were left out. Metrics still count every failure.

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

/// At most one line per kind of store failure in this time.
pub const WARN_EVERY: Duration = Duration::from_secs(60);

/// Lets the first of a repeating event through, then at most one per
/// period, counting the others.
#[derive(Debug)]
pub struct Throttle {
    every: Duration,
    window: Mutex<Window>,
}

#[derive(Debug, Default)]
struct Window {
    /// When the last event was let through.
    passed_at: Option<Instant>,
    /// Events held back since then.
    held_back: u64,
}

impl Throttle {
    pub fn new(every: Duration) -> Self {
        Self {
            every,
            window: Mutex::new(Window::default()),
        }
    }

    /// One more event: `Some(n)` when it is to be logged, `n` being how
    /// many were held back since the last one logged; `None` when it is
    /// held back.
    pub fn admit(&self) -> Option<u64> {
        let mut window = self.window.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        match window.passed_at {
            Some(at) if now.duration_since(at) < self.every => {
                window.held_back = window.held_back.saturating_add(1);
                None
            }
            _ => {
                window.passed_at = Some(now);
                Some(std::mem::take(&mut window.held_back))
            }
        }
    }
}

/// The worker's warnings about its store, each kind throttled on its own,
/// so a failing claim does not hide a failing purge.
#[derive(Debug)]
pub struct StoreWarnings {
    pub claim: Throttle,
    pub record: Throttle,
    pub purge: Throttle,
    pub count: Throttle,
}

impl Default for StoreWarnings {
    fn default() -> Self {
        Self {
            claim: Throttle::new(WARN_EVERY),
            record: Throttle::new(WARN_EVERY),
            purge: Throttle::new(WARN_EVERY),
            count: Throttle::new(WARN_EVERY),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLL: Duration = Duration::from_millis(250);

    #[tokio::test(start_paused = true)]
    async fn a_failure_every_poll_is_let_through_once_a_minute_with_the_count_held_back() {
        let throttle = Throttle::new(WARN_EVERY);
        assert_eq!(throttle.admit(), Some(0), "the first is logged");
        let mut held = 0;
        // Four a second until just before the minute is up.
        for _ in 0..239 {
            tokio::time::advance(POLL).await;
            assert_eq!(throttle.admit(), None);
            held += 1;
        }
        tokio::time::advance(POLL).await;
        assert_eq!(throttle.admit(), Some(held), "a minute after the first");
        tokio::time::advance(POLL).await;
        assert_eq!(throttle.admit(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failure_after_a_quiet_minute_is_logged_with_nothing_held_back() {
        let throttle = Throttle::new(WARN_EVERY);
        assert_eq!(throttle.admit(), Some(0));
        tokio::time::advance(Duration::from_secs(3600)).await;
        assert_eq!(throttle.admit(), Some(0));
    }

    #[tokio::test(start_paused = true)]
    async fn each_kind_of_failure_has_its_own_minute() {
        let warnings = StoreWarnings::default();
        assert_eq!(warnings.claim.admit(), Some(0));
        assert_eq!(warnings.claim.admit(), None);
        assert_eq!(warnings.count.admit(), Some(0), "not held back by claims");
        assert_eq!(warnings.purge.admit(), Some(0));
        assert_eq!(warnings.record.admit(), Some(0));
        tokio::time::advance(Duration::from_secs(30)).await;
        assert_eq!(warnings.claim.admit(), None);
        assert_eq!(warnings.count.admit(), None);
        tokio::time::advance(Duration::from_secs(30)).await;
        assert_eq!(warnings.claim.admit(), Some(2));
        assert_eq!(warnings.count.admit(), Some(1));
    }
}
