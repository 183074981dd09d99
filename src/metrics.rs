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
    Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};

use crate::domain::Msn;
use crate::vipps::token::TokenCache;

/// The `msn` label of a merchant path whose MSN is not configured.
pub const UNKNOWN_MSN: &str = "unknown";
/// The `msn` label of a route that names no merchant.
pub const NO_MSN: &str = "none";

/// Latency buckets in seconds: a few ms (cached token, fast Vipps) up to the
/// longest upstream timeout worth waiting for.
const LATENCY_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

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
        Ok(Self {
            registry,
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
    /// cache as it is now.
    pub fn render(&self, tokens: &TokenCache) -> Result<String, prometheus::Error> {
        self.token_expiry.reset();
        let now = tokio::time::Instant::now();
        for (msn, expires_at) in tokens.expiries() {
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

/// The route patterns of the API listener, besides the proxy's prefix: a
/// request's log line and metrics name the one its path matches. The API
/// test suite holds this list to the routes registered in the source.
pub mod route {
    pub const CATEGORY: &str = "/v1/merchants/{msn}/orders/{orderId}/category";
    pub const RECEIPT: &str = "/v1/merchants/{msn}/orders/{orderId}/receipt";
    pub const ORDER: &str = "/v1/merchants/{msn}/orders/{orderId}";
    pub const IMAGES: &str = "/v1/merchants/{msn}/images";
    pub const HEALTHZ: &str = "/healthz";
    pub const READYZ: &str = "/readyz";
    pub const OPENAPI: &str = "/openapi.json";
    pub const METRICS: &str = "/metrics";

    pub const ALL: [&str; 8] = [
        CATEGORY, RECEIPT, ORDER, IMAGES, HEALTHZ, READYZ, OPENAPI, METRICS,
    ];
}

/// The pattern of [`route::ALL`] that a raw path matches, as actix-web
/// matches it: literal segments equal, each `{name}` one non-empty segment.
/// A plain comparison, where asking actix-web's resource map costs a regex
/// search per pattern.
pub fn route_pattern(path: &str) -> Option<&'static str> {
    route::ALL.into_iter().find(|pattern| {
        let mut want = pattern.split('/');
        let mut got = path.split('/');
        loop {
            match (want.next(), got.next()) {
                (None, None) => return true,
                (Some(w), Some(g)) if w.starts_with('{') => {
                    if g.is_empty() {
                        return false;
                    }
                }
                (Some(w), Some(g)) if w == g => {}
                _ => return false,
            }
        }
    })
}

/// The `operation` label of a matched route pattern (`None`: no route matched).
pub fn operation(pattern: Option<&str>) -> &'static str {
    match pattern {
        Some(route::CATEGORY) => "category",
        Some(route::RECEIPT) => "receipt",
        Some(route::ORDER) => "order",
        Some(route::IMAGES) => "image",
        Some(route::HEALTHZ | route::READYZ) => "health",
        Some(route::METRICS) => "metrics",
        _ => "other",
    }
}

/// The raw `{msn}` segment of a merchant path (`/v1/merchants/{msn}/…`).
pub fn path_msn(path: &str) -> Option<&str> {
    path.strip_prefix("/v1/merchants/")
        .map(|rest| rest.split('/').next().unwrap_or(rest))
}

/// The upstream endpoint name of a Vipps path: a fixed word, never the path.
pub fn upstream_endpoint(path: &str) -> &'static str {
    let path = path.split('?').next().unwrap_or(path);
    if path == "/accesstoken/get" {
        return "token";
    }
    if path == "/order-management/v1/images" {
        return "image";
    }
    // The deprecated v1 order and receipt calls, reachable through the proxy.
    if let Some(rest) = path.strip_prefix("/order-management/v1/") {
        return match segments(rest).as_ref().map(|(s, n)| &s[..*n]) {
            Some(["orders", _]) => "v1-orders",
            Some(["receipts", _]) => "v1-receipts",
            _ => "other",
        };
    }
    match path.strip_prefix("/order-management/v2/") {
        Some(rest) => match segments(rest).as_ref().map(|(s, n)| &s[..*n]) {
            Some([_, "categories", _]) => "category",
            Some([_, "receipts", _]) => "receipt",
            Some([_, _]) => "order",
            _ => "other",
        },
        None => "other",
    }
}

/// Up to three `/`-separated segments, without allocating; `None` for more.
fn segments(s: &str) -> Option<([&str; 3], usize)> {
    let mut out = [""; 3];
    let mut n = 0;
    for segment in s.split('/') {
        *out.get_mut(n)? = segment;
        n += 1;
    }
    Some((out, n))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_patterns_match_as_actix_web_matches_them() {
        let paths = [
            "/v1/merchants/123/orders/o-1/receipt",
            "/v1/merchants/123/orders/o-1/receipt/",
            "/v1/merchants/123/orders/o-1/category",
            "/v1/merchants/123/orders/o-1",
            "/v1/merchants/123/orders/o-1/",
            "/v1/merchants/123/orders/",
            "/v1/merchants/123/orders//receipt",
            "/v1/merchants//orders/o-1",
            "/v1/merchants/123/images",
            "/v1/merchants/123/images/x",
            "/v1/merchants/a%2Fb/images",
            "/v1/merchants/{msn}/images",
            "/v1/merchants/æ/orders/ø/receipt",
            "/v1/Merchants/123/images",
            "//v1/merchants/123/images",
            "/healthz",
            "/healthz/",
            "/readyz",
            "/openapi.json",
            "/openapi.jsonx",
            "/metrics",
            "/",
            "",
            "/v1",
        ];
        for path in paths {
            let actix = route::ALL
                .into_iter()
                .find(|p| actix_web::dev::ResourceDef::new(*p).is_match(path));
            assert_eq!(route_pattern(path), actix, "{path:?}");
        }
        for pattern in route::ALL {
            let path = pattern
                .replace("{msn}", "123456")
                .replace("{orderId}", "o-1");
            assert_eq!(route_pattern(&path), Some(pattern));
        }
    }

    #[test]
    fn v1_paths_have_their_own_endpoint_names() {
        assert_eq!(
            upstream_endpoint("/order-management/v1/orders/t-1"),
            "v1-orders"
        );
        assert_eq!(
            upstream_endpoint("/order-management/v1/receipts/t-1"),
            "v1-receipts"
        );
        assert_eq!(upstream_endpoint("/order-management/v1/other/t-1"), "other");
        assert_eq!(
            upstream_endpoint("/order-management/v1/orders/t-1/x"),
            "other"
        );
        assert_eq!(
            upstream_endpoint("/order-management/v2/ecom/receipts/o/x"),
            "other"
        );
        assert_eq!(upstream_endpoint("/order-management/v2/ecom"), "other");
        assert_eq!(
            upstream_endpoint("/order-management/v2/ecom/receipts/o"),
            "receipt"
        );
    }

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
        assert_eq!(upstream_endpoint("/accesstoken/get"), "token");
        assert_eq!(upstream_endpoint("/order-management/v1/images"), "image");
        assert_eq!(
            upstream_endpoint("/order-management/v2/ecom/categories/o-1"),
            "category"
        );
        assert_eq!(
            upstream_endpoint("/order-management/v2/recurring/receipts/o-1"),
            "receipt"
        );
        assert_eq!(upstream_endpoint("/order-management/v2/ecom/o-1"), "order");
        assert_eq!(upstream_endpoint("/elsewhere/x"), "other");
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
            .render(&TokenCache::new(Duration::from_secs(1)))
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
    }
}
