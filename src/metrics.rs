//! The Prometheus registry and the gateway's metric families.
//!
//! One [`Metrics`] value per application (never a global), so every test app
//! counts only its own traffic. Label values are bounded by construction:
//!
//! - `msn` is a configured merchant's MSN, `unknown` for a merchant path whose
//!   MSN is not configured (malformed or not), or `none` for a route without
//!   an MSN (health, metrics, unknown paths). A flood of random MSNs adds no
//!   series beyond the one `unknown` set.
//! - `operation` comes from the matched route pattern, never the raw path.
//! - `status` on requests is the class (`2xx` … `5xx`); on upstream calls it
//!   is the exact code (100–599) or `error` when no answer arrived.
//!
//! A label combination appears when it is first used, so configured merchants
//! without traffic cost no series.

use std::time::Duration;

use prometheus::{
    Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::domain::Msn;

/// The `msn` label of a merchant path whose MSN is not configured.
pub const UNKNOWN_MSN: &str = "unknown";
/// The `msn` label of a route that names no merchant.
pub const NO_MSN: &str = "none";

/// Latency buckets in seconds: a few ms (cached token, fast Vipps) up to the
/// longest upstream timeout worth waiting for.
const LATENCY_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Requests per committed outbox group, up to the store's most (64).
const GROUP_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0];

/// How a token fetch ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenFetch {
    Ok,
    /// The token endpoint refused the credentials (401/403).
    Rejected,
    /// Any other failure: transport, 5xx, unreadable answer.
    Failed,
}

impl TokenFetch {
    fn label(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Rejected => "rejected",
            Self::Failed => "failed",
        }
    }
}

/// Every metric family of the gateway, registered in its own registry.
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    request_duration: HistogramVec,
    in_flight: IntGauge,
    upstream_requests: IntCounterVec,
    upstream_duration: HistogramVec,
    retries: IntCounterVec,
    token_fetches: IntCounterVec,
    token_cache: IntCounterVec,
    token_expiry: GaugeVec,
    outbox_pending: IntGaugeVec,
    outbox_oldest: GaugeVec,
    outbox_deliveries: IntCounterVec,
    outbox_store_errors: IntCounter,
    outbox_commit_groups: HistogramVec,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

/// Registration fails only for a duplicate or malformed family: a
/// programming error, reported at start.
fn reg<C: prometheus::core::Collector + Clone + 'static>(
    registry: &Registry,
    c: C,
) -> Result<C, prometheus::Error> {
    registry.register(Box::new(c.clone()))?;
    Ok(c)
}

impl Metrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        #[cfg(target_os = "linux")]
        registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;
        // The process's one counter of spans not exported (crate::trace).
        registry.register(Box::new(crate::trace::dropped_spans().clone()))?;
        let requests = reg(
            &registry,
            IntCounterVec::new(
                Opts::new(
                    "gateway_requests_total",
                    "Requests answered, by merchant, operation and status class.",
                ),
                &["msn", "operation", "status"],
            )?,
        )?;
        let request_duration = reg(
            &registry,
            HistogramVec::new(
                HistogramOpts::new(
                    "gateway_request_duration_seconds",
                    "Time from receiving a request to answering it, by merchant and operation.",
                )
                .buckets(LATENCY_BUCKETS.to_vec()),
                &["msn", "operation"],
            )?,
        )?;
        let in_flight = reg(
            &registry,
            IntGauge::new(
                "gateway_requests_in_flight",
                "Requests being served right now.",
            )?,
        )?;
        let upstream_requests = reg(
            &registry,
            IntCounterVec::new(
                Opts::new(
                    "gateway_upstream_requests_total",
                    "Calls to Vipps, by merchant, upstream endpoint and answer status (`error`: no answer).",
                ),
                &["msn", "endpoint", "status"],
            )?,
        )?;
        let upstream_duration = reg(
            &registry,
            HistogramVec::new(
                HistogramOpts::new(
                    "gateway_upstream_request_duration_seconds",
                    "Duration of one call to Vipps, by merchant and upstream endpoint.",
                )
                .buckets(LATENCY_BUCKETS.to_vec()),
                &["msn", "endpoint"],
            )?,
        )?;
        let retries = reg(
            &registry,
            IntCounterVec::new(
                Opts::new(
                    "gateway_upstream_retries_total",
                    "Upstream calls sent again, by merchant, upstream endpoint and reason.",
                ),
                &["msn", "endpoint", "reason"],
            )?,
        )?;
        let token_fetches = reg(
            &registry,
            IntCounterVec::new(
                Opts::new(
                    "gateway_token_fetches_total",
                    "Access token fetches, by merchant and result (ok, rejected, failed).",
                ),
                &["msn", "result"],
            )?,
        )?;
        let token_cache = reg(
            &registry,
            IntCounterVec::new(
                Opts::new(
                    "gateway_token_cache_lookups_total",
                    "Token cache lookups, by merchant and result: hit (a fresh token was cached) or miss (one had to be fetched, possibly shared with concurrent requests).",
                ),
                &["msn", "result"],
            )?,
        )?;
        let token_expiry = reg(
            &registry,
            GaugeVec::new(
                Opts::new(
                    "gateway_token_expiry_seconds",
                    "Seconds until the cached access token of a merchant expires, computed at scrape time; absent when no token is cached.",
                ),
                &["msn"],
            )?,
        )?;
        let outbox_pending = reg(
            &registry,
            IntGaugeVec::new(
                Opts::new(
                    "gateway_outbox_pending",
                    "Outbox entries not yet delivered, by merchant and kind (receipt, category), as the worker last counted them.",
                ),
                &["msn", "kind"],
            )?,
        )?;
        let outbox_oldest = reg(
            &registry,
            GaugeVec::new(
                Opts::new(
                    "gateway_outbox_oldest_pending_seconds",
                    "Age of the merchant's oldest outbox entry not yet delivered; 0 when none is pending.",
                ),
                &["msn"],
            )?,
        )?;
        let outbox_deliveries = reg(
            &registry,
            IntCounterVec::new(
                Opts::new(
                    "gateway_outbox_deliveries_total",
                    "Outbox delivery attempts, by merchant, kind and result (delivered, retried, failed).",
                ),
                &["msn", "kind", "result"],
            )?,
        )?;
        let outbox_store_errors = reg(
            &registry,
            IntCounter::new(
                "gateway_outbox_store_errors_total",
                "Failures of the outbox's store: it could not be opened, or a statement failed.",
            )?,
        )?;
        let outbox_commit_groups = reg(
            &registry,
            HistogramVec::new(
                HistogramOpts::new(
                    "gateway_outbox_commit_group_size",
                    "Asynchronous requests answered by one commit of the outbox's store, by store (sqlite, postgres).",
                )
                .buckets(GROUP_BUCKETS.to_vec()),
                &["store"],
            )?,
        )?;
        Ok(Self {
            registry,
            outbox_commit_groups,
            outbox_pending,
            outbox_oldest,
            outbox_deliveries,
            outbox_store_errors,
            requests,
            request_duration,
            in_flight,
            upstream_requests,
            upstream_duration,
            retries,
            token_fetches,
            token_cache,
            token_expiry,
        })
    }

    /// Counts one answered request. `msn` must be a label from
    /// [`msn_label`]-style lookups: a configured MSN, `unknown` or `none`.
    pub fn observe_request(&self, msn: &str, operation: &str, status: u16, elapsed: Duration) {
        self.requests
            .with_label_values(&[msn, operation, status_class(status)])
            .inc();
        self.request_duration
            .with_label_values(&[msn, operation])
            .observe(elapsed.as_secs_f64());
    }

    /// Counts one outbox delivery attempt: `result` is `delivered`,
    /// `retried` or `failed`.
    pub fn outbox_attempt(&self, msn: &str, kind: &str, result: &str) {
        self.outbox_deliveries
            .with_label_values(&[msn, kind, result])
            .inc();
    }

    /// One committed group of the outbox's store (`sqlite`, `postgres`)
    /// and the requests it answered.
    pub fn outbox_commit_group(&self, store: &str, size: usize) {
        self.outbox_commit_groups
            .with_label_values(&[store])
            .observe(size as f64);
    }

    /// Counts one failure of the outbox's store.
    pub fn outbox_store_error(&self) {
        self.outbox_store_errors.inc();
    }

    /// One merchant's outbox backlog: pending entries per kind and the
    /// age of the oldest (zero when none is pending).
    pub fn set_outbox_backlog(&self, msn: &str, pending: [(&str, i64); 2], oldest_seconds: f64) {
        for (kind, count) in pending {
            self.outbox_pending
                .with_label_values(&[msn, kind])
                .set(count);
        }
        self.outbox_oldest
            .with_label_values(&[msn])
            .set(oldest_seconds);
    }

    /// Marks a request as in flight until the guard is dropped (also when
    /// the request is cancelled).
    pub fn in_flight(&self) -> InFlight {
        self.in_flight.inc();
        InFlight(self.in_flight.clone())
    }

    /// Counts one upstream call; `status` is `None` when no answer arrived.
    pub fn observe_upstream(
        &self,
        msn: &Msn,
        endpoint: &str,
        status: Option<u16>,
        elapsed: Duration,
    ) {
        // Formatted on the stack: no allocation per call.
        let mut code = itoa::Buffer::new();
        let status = match status {
            Some(s @ 100..=599) => code.format(s),
            Some(_) => "invalid",
            None => "error",
        };
        self.upstream_requests
            .with_label_values(&[msn.as_str(), endpoint, status])
            .inc();
        self.upstream_duration
            .with_label_values(&[msn.as_str(), endpoint])
            .observe(elapsed.as_secs_f64());
    }

    /// Counts an upstream call sent again; `reason` is a fixed word such as
    /// `unauthorized`.
    pub fn observe_retry(&self, msn: &Msn, endpoint: &str, reason: &'static str) {
        self.retries
            .with_label_values(&[msn.as_str(), endpoint, reason])
            .inc();
    }

    pub fn observe_token_fetch(&self, msn: &Msn, result: TokenFetch) {
        self.token_fetches
            .with_label_values(&[msn.as_str(), result.label()])
            .inc();
    }

    pub fn observe_token_lookup(&self, msn: &Msn, hit: bool) {
        self.token_cache
            .with_label_values(&[msn.as_str(), if hit { "hit" } else { "miss" }])
            .inc();
    }

    /// The text exposition, with the token expiry gauge computed from the
    /// cached tokens' expiry instants as they are now.
    pub fn render(
        &self,
        token_expiries: impl IntoIterator<Item = (Msn, tokio::time::Instant)>,
    ) -> Result<String, prometheus::Error> {
        self.token_expiry.reset();
        let now = tokio::time::Instant::now();
        for (msn, expires_at) in token_expiries {
            let left = expires_at.saturating_duration_since(now).as_secs_f64();
            self.token_expiry
                .with_label_values(&[msn.as_str()])
                .set(left);
        }
        let mut out = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut out)?;
        String::from_utf8(out).map_err(|e| prometheus::Error::Msg(e.to_string()))
    }
}

/// Decrements the in-flight gauge when dropped.
pub struct InFlight(IntGauge);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// `2xx`, `4xx`, …; anything outside 100–599 is `other`.
pub fn status_class(status: u16) -> &'static str {
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        500..=599 => "5xx",
        _ => "other",
    }
}

/// The `operation` label of a matched route pattern (`None`: no route
/// matched): a fixed word, never the raw path.
pub fn operation(pattern: Option<&str>) -> &'static str {
    let Some(pattern) = pattern else {
        return "other";
    };
    if pattern.starts_with("/vipps/") {
        return "proxy";
    }
    match pattern.strip_prefix("/v1/merchants/{msn}") {
        Some("/orders/{orderId}/category") => "category",
        Some("/orders/{orderId}/receipt") => "receipt",
        Some("/orders/{orderId}/categories" | "/orders/{orderId}/categories/{categoryId}") => {
            "categories"
        }
        Some("/orders/{orderId}") => "order",
        Some("/images") => "image",
        Some("/deliveries" | "/deliveries/{deliveryId}") => "deliveries",
        Some(_) => "other",
        None => match pattern {
            "/healthz" | "/readyz" => "health",
            "/metrics" => "metrics",
            _ => "other",
        },
    }
}

/// The raw `{msn}` segment of a merchant path (`/v1/merchants/{msn}/…`).
pub fn path_msn(path: &str) -> Option<&str> {
    path.strip_prefix("/v1/merchants/")
        .map(|rest| rest.split('/').next().unwrap_or(rest))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_fixed_words() {
        assert_eq!(status_class(201), "2xx");
        assert_eq!(status_class(404), "4xx");
        assert_eq!(status_class(999), "other");
        assert_eq!(
            operation(Some("/v1/merchants/{msn}/orders/{orderId}/receipt")),
            "receipt"
        );
        assert_eq!(operation(Some("/somewhere")), "other");
        assert_eq!(operation(None), "other");
        assert_eq!(path_msn("/v1/merchants/123456/images"), Some("123456"));
        assert_eq!(path_msn("/v1/merchants/12"), Some("12"));
        assert_eq!(path_msn("/healthz"), None);
        for (pattern, label) in [
            ("/v1/merchants/{msn}/orders/{orderId}/category", "category"),
            (
                "/v1/merchants/{msn}/orders/{orderId}/categories",
                "categories",
            ),
            (
                "/v1/merchants/{msn}/orders/{orderId}/categories/{categoryId}",
                "categories",
            ),
            ("/v1/merchants/{msn}/orders/{orderId}", "order"),
            ("/v1/merchants/{msn}/images", "image"),
            ("/v1/merchants/{msn}/deliveries", "deliveries"),
            ("/v1/merchants/{msn}/deliveries/{deliveryId}", "deliveries"),
            ("/healthz", "health"),
            ("/readyz", "health"),
            ("/metrics", "metrics"),
            ("/openapi.json", "other"),
            ("/vipps/order-management/...", "proxy"),
        ] {
            assert_eq!(operation(Some(pattern)), label, "{pattern}");
        }
    }

    #[test]
    fn an_upstream_status_outside_http_is_one_value() {
        let m = Metrics::new().expect("metrics");
        let msn = Msn::parse("123456").expect("msn");
        m.observe_upstream(&msn, "token", Some(201), Duration::from_millis(3));
        m.observe_upstream(&msn, "token", Some(7), Duration::from_millis(3));
        m.observe_upstream(&msn, "token", Some(9999), Duration::from_millis(3));
        m.observe_upstream(&msn, "token", None, Duration::from_millis(3));
        let text = m
            .render([(
                msn.clone(),
                tokio::time::Instant::now() + Duration::from_secs(30),
            )])
            .expect("render");
        assert!(text.contains(
            r#"gateway_upstream_requests_total{endpoint="token",msn="123456",status="201"} 1"#
        ));
        assert!(text.contains(
            r#"gateway_upstream_requests_total{endpoint="token",msn="123456",status="invalid"} 2"#
        ));
        assert!(text.contains(
            r#"gateway_upstream_requests_total{endpoint="token",msn="123456",status="error"} 1"#
        ));
        let expiry = text
            .lines()
            .find_map(|l| l.strip_prefix(r#"gateway_token_expiry_seconds{msn="123456"} "#))
            .expect("expiry gauge")
            .parse::<f64>()
            .expect("a number");
        assert!((29.0..=30.0).contains(&expiry), "{expiry}");
    }
}
