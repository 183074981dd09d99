//! The upstream client: sends Vipps calls with the merchant's credentials
//! and a cached token, and retries once with a new token on a 401.
//! It knows nothing of the façade.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::http::header::{self, HeaderMap, HeaderName, HeaderValue};
use actix_web::http::{Method, StatusCode};
use actix_web::web::Bytes;
use serde::de::{DeserializeOwned, IgnoredAny};

use super::http1::{self, Origin, SendError};
use super::model::{ImageUpload, OrderCategory, OrderResponse, TokenResponse, VippsProblem};
use super::resilience::{backoff_delay, Guards};
use super::token::{AccessToken, Lookup, TokenCache};
use crate::config::{expose, Merchant, Settings};
use crate::domain::{ImageId, OrderId, PaymentType};
use crate::metrics::{upstream_endpoint, Metrics, TokenFetch};

/// The header carrying the merchant's subscription key.
const SUBSCRIPTION_KEY: HeaderName = HeaderName::from_static("ocp-apim-subscription-key");

/// Most bytes read from an upstream response.
const MAX_RESPONSE_BYTES: usize = 8 * 1024 * 1024;

/// Why an upstream call did not produce a usable answer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum UpstreamError {
    /// The upstream answered with a non-success status.
    #[error("upstream answered {status}")]
    Status {
        status: StatusCode,
        problem: Option<Box<VippsProblem>>,
        retry_after: Option<u64>,
    },
    /// The token endpoint refused the merchant's credentials.
    #[error("token endpoint refused the credentials ({0})")]
    TokenRejected(StatusCode),
    /// The token endpoint failed otherwise.
    #[error("token endpoint failed: {0}")]
    TokenFailed(String),
    /// No connection could be made: nothing was sent.
    #[error("cannot connect to upstream: {0}")]
    Connect(String),
    /// No answer in time: the request may or may not have been handled.
    #[error("upstream timed out")]
    Timeout,
    /// The exchange broke after sending: the outcome is unknown.
    #[error("upstream exchange broke: {0}")]
    Broken(String),
    /// The upstream answered 2xx with a body the gateway cannot read.
    #[error("unreadable upstream answer: {0}")]
    BadResponse(String),
    /// Token fetches for this merchant are backing off after failures.
    #[error("token fetches are backing off")]
    TokenUnavailable(Duration),
    /// The merchant's circuit is open after consecutive upstream failures.
    #[error("circuit open")]
    CircuitOpen(Duration),
    /// Every upstream call slot of the merchant stayed busy.
    #[error("too many upstream calls in flight")]
    Overloaded(Duration),
    /// The request's deadline passed before an answer came.
    #[error("request deadline passed")]
    DeadlineExceeded,
}

impl UpstreamError {
    /// Whether this says the upstream is unwell (for the circuit breaker).
    fn upstream_unhealthy(&self) -> bool {
        matches!(
            self,
            Self::Connect(_) | Self::Timeout | Self::Broken(_) | Self::BadResponse(_)
        )
    }
}

/// When a failed call may be sent again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// Repeating is harmless whatever happened (reads, overwriting PUTs,
    /// receipts — a repeat that meets the stored receipt is resolved by
    /// reading it back): retry on connection errors, timeouts, broken
    /// exchanges, 429, 502, 503 and 504.
    Safe,
    /// Only when the upstream cannot have acted on it: connection errors
    /// before sending, and 429.
    IfNotProcessed,
}

/// One upstream call.
pub struct Call<'a> {
    pub method: Method,
    pub path: &'a str,
    pub body: Option<Bytes>,
    pub retry: Retry,
    /// Headers sent before the gateway's own (which replace any of the same name).
    pub extra: Option<&'a HeaderMap>,
}

/// A complete upstream answer.
#[derive(Debug)]
pub struct RawResponse {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// What every worker's client shares: settings, static headers, tokens.
pub struct Upstream {
    origin: Origin,
    timeout: Duration,
    connect_timeout: Duration,
    system_headers: Vec<(HeaderName, HeaderValue)>,
    pub tokens: TokenCache,
    pub guards: Arc<Guards>,
    pub metrics: Arc<Metrics>,
}

impl Upstream {
    pub fn new(
        settings: &Settings,
        guards: Arc<Guards>,
        metrics: Arc<Metrics>,
    ) -> Result<Self, String> {
        let s = &settings.system;
        let mut system_headers = Vec::with_capacity(4);
        for (name, value) in [
            ("vipps-system-name", &s.name),
            ("vipps-system-version", &s.version),
            ("vipps-system-plugin-name", &s.plugin_name),
            ("vipps-system-plugin-version", &s.plugin_version),
        ] {
            let v = HeaderValue::from_str(value)
                .map_err(|_| format!("{name} is not a valid header value"))?;
            system_headers.push((HeaderName::from_static(name), v));
        }
        Ok(Self {
            origin: Origin::parse(&settings.upstream.base_url)?,
            timeout: settings.upstream.timeout,
            connect_timeout: settings.upstream.connect_timeout,
            system_headers,
            tokens: TokenCache::new(settings.upstream.token_margin),
            guards,
            metrics,
        })
    }
}

/// One worker's client. Its connections are the worker's own (not `Send`),
/// so each worker builds one.
pub struct VippsClient {
    http: http1::Client,
    up: Arc<Upstream>,
}

fn secret_header(value: &str) -> Result<HeaderValue, UpstreamError> {
    let mut v = HeaderValue::from_str(value)
        .map_err(|_| UpstreamError::TokenFailed("credential is not a valid header value".into()))?;
    v.set_sensitive(true);
    Ok(v)
}

fn retry_after(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(&header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
}

impl VippsClient {
    pub fn new(up: Arc<Upstream>) -> Self {
        let http = http1::Client::new(up.origin.clone(), up.connect_timeout);
        Self { http, up }
    }

    /// A usable token for the merchant, fetched once for concurrent
    /// callers; when its refresh is due, a new one is fetched in the
    /// background while this one is still used.
    pub async fn token(&self, merchant: &Merchant) -> Result<Arc<AccessToken>, UpstreamError> {
        let cached = self.up.tokens.fresh(&merchant.msn).await;
        self.up
            .metrics
            .observe_token_lookup(&merchant.msn, cached.is_some());
        if let Some(token) = cached {
            return Ok(token);
        }
        let lookup = self
            .up
            .tokens
            .get(&merchant.msn, || {
                fetch_token(&self.http, &self.up, merchant)
            })
            .await
            .map_err(|e| (*e).clone())?;
        if let Lookup::RefreshDue(old) = &lookup {
            let (http, up, m, old) = (
                self.http.clone(),
                self.up.clone(),
                merchant.clone(),
                old.clone(),
            );
            actix_web::rt::spawn(async move {
                match fetch_token(&http, &up, &m).await {
                    Ok(new) => up.tokens.replace(m.msn.clone(), &old, new).await,
                    Err(e) => {
                        // The old token stays in use while it is valid; the
                        // next request may try again once the backoff allows.
                        old.refreshing.store(false, Ordering::SeqCst);
                        tracing::warn!(msn = %m.msn, error = %e, "background token refresh failed; still using the current token");
                    }
                }
            });
        }
        Ok(lookup.token().clone())
    }

    /// Sends a call with the default retry rule for its method: reads and
    /// PUTs are safe to repeat, POSTs only when not processed.
    pub async fn send(
        &self,
        merchant: &Merchant,
        method: Method,
        path: &str,
        body: Option<Bytes>,
    ) -> Result<RawResponse, UpstreamError> {
        self.send_with_headers(merchant, method, path, body, &HeaderMap::new())
            .await
    }

    /// [`Self::send`] with extra request headers (the reverse proxy's
    /// `Content-Type`, `Accept`, `X-Request-Id`). The caller filters them:
    /// the credential, MSN and `Vipps-System-*` headers are set afterwards
    /// and replace any of the same name. A `Content-Type` among them is used
    /// for the body instead of `application/json`.
    pub async fn send_with_headers(
        &self,
        merchant: &Merchant,
        method: Method,
        path: &str,
        body: Option<Bytes>,
        extra: &HeaderMap,
    ) -> Result<RawResponse, UpstreamError> {
        let retry = if method == Method::POST {
            Retry::IfNotProcessed
        } else {
            Retry::Safe
        };
        let call = Call {
            method,
            path,
            body,
            retry,
            extra: Some(extra),
        };
        self.call(merchant, call).await
    }

    /// Sends one call with the merchant's credentials, within the request's
    /// deadline, the merchant's breaker, call slots and retry budget.
    /// Failures that are safe to repeat are retried with full-jitter
    /// exponential backoff. Any complete answer is returned, whatever its status.
    pub async fn call(
        &self,
        merchant: &Merchant,
        call: Call<'_>,
    ) -> Result<RawResponse, UpstreamError> {
        let cfg = self.up.guards.config();
        let guard = self.up.guards.get(&merchant.msn);
        let deadline =
            crate::request_id::deadline().unwrap_or_else(|| Instant::now() + cfg.request_deadline);
        let mut flight = guard.call_started();
        let mut attempt: u32 = 1;
        loop {
            guard
                .breaker_allows(cfg)
                .map_err(UpstreamError::CircuitOpen)?;
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(UpstreamError::DeadlineExceeded);
            }
            let Some(slot) = guard.slot(cfg.queue_timeout.min(remaining)).await else {
                return Err(UpstreamError::Overloaded(
                    cfg.queue_timeout.max(Duration::from_secs(1)),
                ));
            };
            let outcome = self.send_authorized(merchant, &call, deadline).await;
            drop(slot);
            match &outcome {
                Ok(r) if r.status.is_server_error() => guard.record(cfg, false),
                Ok(r) if r.status != StatusCode::TOO_MANY_REQUESTS => guard.record(cfg, true),
                Err(e) if e.upstream_unhealthy() => guard.record(cfg, false),
                _ => {}
            }
            let retryable = match &outcome {
                // A 429 was refused before any work. A 502/503/504 may come
                // after Vipps acted (a proxy in front of it timing out), so
                // only calls that are safe to repeat are resent after one.
                Ok(r) if r.status == StatusCode::TOO_MANY_REQUESTS => true,
                Ok(r) => call.retry == Retry::Safe && matches!(r.status.as_u16(), 502..=504),
                Err(UpstreamError::Connect(_)) => true,
                Err(UpstreamError::Timeout | UpstreamError::Broken(_)) => call.retry == Retry::Safe,
                Err(_) => false,
            };
            if !retryable || attempt as usize >= cfg.max_attempts || !flight.try_retry(cfg) {
                return outcome;
            }
            let asked = outcome
                .as_ref()
                .ok()
                .and_then(|r| retry_after(&r.headers))
                .map(Duration::from_secs);
            // A Retry-After longer than the backoff allows is the caller's
            // to honour: waiting here would hold the request for it.
            if asked.is_some_and(|a| a > cfg.backoff_max) {
                return outcome;
            }
            let delay = backoff_delay(cfg, attempt).max(asked.unwrap_or_default());
            if Instant::now() + delay >= deadline {
                return outcome;
            }
            let reason = match &outcome {
                Ok(_) => "status",
                Err(UpstreamError::Connect(_)) => "connect",
                Err(UpstreamError::Timeout) => "timeout",
                Err(_) => "broken",
            };
            self.up
                .metrics
                .observe_retry(&merchant.msn, upstream_endpoint(call.path), reason);
            tracing::info!(
                msn = %merchant.msn,
                endpoint = upstream_endpoint(call.path),
                attempt,
                delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                "retrying upstream call"
            );
            tokio::time::sleep(delay).await;
            attempt += 1;
        }
    }

    /// One attempt: on a 401 drops the token (if still the one used),
    /// fetches a new one and sends once more.
    async fn send_authorized(
        &self,
        m: &Merchant,
        call: &Call<'_>,
        deadline: Instant,
    ) -> Result<RawResponse, UpstreamError> {
        let token = self.token(m).await?;
        let first = self.send_once(m, &token, call, deadline).await?;
        if first.status != StatusCode::UNAUTHORIZED {
            return Ok(first);
        }
        tracing::info!(msn = %m.msn, "upstream answered 401; fetching a new token");
        self.up
            .metrics
            .observe_retry(&m.msn, upstream_endpoint(call.path), "unauthorized");
        self.up.tokens.invalidate_if_same(&m.msn, &token).await;
        let token = self.token(m).await?;
        self.send_once(m, &token, call, deadline).await
    }

    /// One exchange, counted and timed under its fixed endpoint name.
    async fn send_once(
        &self,
        m: &Merchant,
        token: &AccessToken,
        call: &Call<'_>,
        deadline: Instant,
    ) -> Result<RawResponse, UpstreamError> {
        let started = Instant::now();
        let result = self.exchange(m, token, call, deadline).await;
        let code = result.as_ref().ok().map(|r| r.status.as_u16());
        let elapsed = started.elapsed();
        self.up
            .metrics
            .observe_upstream(&m.msn, upstream_endpoint(call.path), code, elapsed);
        record_upstream(code, elapsed);
        result
    }

    async fn exchange(
        &self,
        m: &Merchant,
        token: &AccessToken,
        call: &Call<'_>,
        deadline: Instant,
    ) -> Result<RawResponse, UpstreamError> {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Err(UpstreamError::DeadlineExceeded);
        }
        // A timeout that the request's deadline shortened is the deadline's.
        let timed_out = if remaining < self.up.timeout {
            UpstreamError::DeadlineExceeded
        } else {
            UpstreamError::Timeout
        };
        let base = self.up.origin.path();
        let mut path = String::with_capacity(base.len() + call.path.len());
        path.push_str(base);
        path.push_str(call.path);
        let bearer = token.bearer.clone().ok_or_else(|| {
            UpstreamError::TokenFailed("credential is not a valid header value".into())
        })?;
        let msn = HeaderValue::from_str(m.msn.as_str())
            .map_err(|_| UpstreamError::TokenFailed("MSN is not a valid header value".into()))?;
        let extra = call.extra.filter(|h| !h.is_empty());
        let mut headers = HeaderMap::with_capacity(
            8 + self.up.system_headers.len() + extra.map_or(0, HeaderMap::len),
        );
        for (name, value) in extra.into_iter().flatten() {
            headers.append(name.clone(), value.clone());
        }
        headers.insert(header::AUTHORIZATION, bearer);
        headers.insert(
            SUBSCRIPTION_KEY,
            secret_header(expose(&m.subscription_key))?,
        );
        headers.insert(crate::proxy::MSN_HEADER, msn);
        for (name, value) in &self.up.system_headers {
            headers.insert(name.clone(), value.clone());
        }
        if call.body.is_some() && !headers.contains_key(header::CONTENT_TYPE) {
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
        }
        let resp = self
            .http
            .send(http1::Request {
                method: call.method.clone(),
                path: &path,
                headers,
                body: call.body.clone(),
                timeout: self.up.timeout.min(remaining),
                limit: MAX_RESPONSE_BYTES,
            })
            .await
            .map_err(|e| match e {
                SendError::Timeout => timed_out,
                SendError::Connect(c) => UpstreamError::Connect(c),
                // The request may have arrived: that outcome is unknown,
                // not "never sent".
                SendError::Closed => {
                    UpstreamError::Broken("connection closed without an answer".into())
                }
                SendError::Broken(b) => UpstreamError::Broken(b),
            })?;
        Ok(RawResponse {
            status: resp.status,
            headers: resp.headers,
            body: resp.body,
        })
    }

    async fn json_call<T: DeserializeOwned>(
        &self,
        merchant: &Merchant,
        call: Call<'_>,
    ) -> Result<Option<T>, UpstreamError> {
        let resp = self.call(merchant, call).await?;
        if !resp.status.is_success() {
            return Err(status_error(&resp));
        }
        if resp.body.is_empty() {
            return Ok(None);
        }
        crate::json_from_bytes(&resp.body)
            .map(Some)
            .map_err(|e| UpstreamError::BadResponse(e.to_string()))
    }

    /// `POST /order-management/v1/images`. `retry` is `Safe` for a
    /// content-derived id (a repeat that meets the stored image is the same
    /// image) and `IfNotProcessed` for a caller-named one.
    pub async fn upload_image(
        &self,
        m: &Merchant,
        id: &ImageId,
        base64: String,
        retry: Retry,
    ) -> Result<(), UpstreamError> {
        let body = to_body(&ImageUpload {
            image_id: id.as_str(),
            src: base64,
            type_: "base64",
        })?;
        let call = Call {
            method: Method::POST,
            path: "/order-management/v1/images",
            body: Some(body),
            retry,
            extra: None,
        };
        self.json_call::<IgnoredAny>(m, call).await.map(drop)
    }

    /// `PUT /order-management/v2/{paymentType}/categories/{orderId}`.
    pub async fn put_category(
        &self,
        m: &Merchant,
        pt: PaymentType,
        order: &OrderId,
        category: &OrderCategory,
    ) -> Result<(), UpstreamError> {
        let path = format!(
            "/order-management/v2/{}/categories/{}",
            pt.as_str(),
            order.as_str()
        );
        let call = Call {
            method: Method::PUT,
            path: &path,
            body: Some(to_body(category)?),
            retry: Retry::Safe,
            extra: None,
        };
        self.json_call::<IgnoredAny>(m, call).await.map(drop)
    }

    /// `POST /order-management/v2/{paymentType}/receipts/{orderId}`, with
    /// the receipt already serialized (the façade answers with the same JSON).
    pub async fn post_receipt(
        &self,
        m: &Merchant,
        pt: PaymentType,
        order: &OrderId,
        receipt: Bytes,
    ) -> Result<(), UpstreamError> {
        let path = format!(
            "/order-management/v2/{}/receipts/{}",
            pt.as_str(),
            order.as_str()
        );
        // Safe to repeat: a repeat that meets the stored receipt gets a 409,
        // which the caller resolves by reading the receipt back.
        let call = Call {
            method: Method::POST,
            path: &path,
            body: Some(receipt),
            retry: Retry::Safe,
            extra: None,
        };
        self.json_call::<IgnoredAny>(m, call).await.map(drop)
    }

    /// `GET /order-management/v2/{paymentType}/{orderId}`; `None` on 404.
    pub async fn get_order(
        &self,
        m: &Merchant,
        pt: PaymentType,
        order: &OrderId,
    ) -> Result<Option<OrderResponse>, UpstreamError> {
        let path = format!("/order-management/v2/{}/{}", pt.as_str(), order.as_str());
        let call = Call {
            method: Method::GET,
            path: &path,
            body: None,
            retry: Retry::Safe,
            extra: None,
        };
        match self.json_call::<OrderResponse>(m, call).await {
            Ok(Some(o)) => Ok(Some(o)),
            Ok(None) => Err(UpstreamError::BadResponse("empty order answer".into())),
            Err(UpstreamError::Status { status, .. }) if status == StatusCode::NOT_FOUND => {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }
}

fn to_body<T: serde::Serialize>(value: &T) -> Result<Bytes, UpstreamError> {
    serde_json::to_vec(value)
        .map(Bytes::from)
        .map_err(|e| UpstreamError::BadResponse(format!("cannot serialize request: {e}")))
}

/// The error for a non-success answer, with the upstream's problem body when readable.
pub fn status_error(resp: &RawResponse) -> UpstreamError {
    UpstreamError::Status {
        status: resp.status,
        problem: serde_json::from_slice(&resp.body).ok().map(Box::new),
        retry_after: retry_after(&resp.headers),
    }
}

/// Puts the last upstream call's status (0: no answer) and latency on the
/// request's log record.
fn record_upstream(code: Option<u16>, elapsed: Duration) {
    crate::request_id::record_u64("upstream_status", u64::from(code.unwrap_or(0)));
    crate::request_id::record_f64("upstream_latency_ms", elapsed.as_secs_f64() * 1000.0);
}

/// Fetches a token with the merchant's credentials, unless fetches for it are
/// backing off after failures (then fails at once, without a call).
async fn fetch_token(
    http: &http1::Client,
    up: &Upstream,
    m: &Merchant,
) -> Result<Arc<AccessToken>, UpstreamError> {
    let guard = up.guards.get(&m.msn);
    if let Err((wait, rejected)) = guard.token_fetch_allowed() {
        return Err(if rejected {
            UpstreamError::TokenRejected(StatusCode::UNAUTHORIZED)
        } else {
            UpstreamError::TokenUnavailable(wait)
        });
    }
    let result = fetch_token_now(http, up, m).await;
    let outcome = match &result {
        Ok(_) => TokenFetch::Ok,
        Err(UpstreamError::TokenRejected(_)) => TokenFetch::Rejected,
        Err(_) => TokenFetch::Failed,
    };
    up.metrics.observe_token_fetch(&m.msn, outcome);
    match &result {
        Ok(_) => guard.token_fetch_succeeded(),
        Err(e) => guard.token_fetch_failed(
            up.guards.config(),
            matches!(e, UpstreamError::TokenRejected(_)),
        ),
    }
    result
}

async fn fetch_token_now(
    http: &http1::Client,
    up: &Upstream,
    m: &Merchant,
) -> Result<Arc<AccessToken>, UpstreamError> {
    let started = tokio::time::Instant::now();
    let plain = |v: &str, what: &str| {
        HeaderValue::from_str(v)
            .map_err(|_| UpstreamError::TokenFailed(format!("{what} is not a valid header value")))
    };
    let mut headers = HeaderMap::with_capacity(4 + up.system_headers.len());
    headers.insert(
        HeaderName::from_static("client_id"),
        plain(&m.client_id, "client_id")?,
    );
    headers.insert(
        HeaderName::from_static("client_secret"),
        secret_header(expose(&m.client_secret))?,
    );
    headers.insert(
        SUBSCRIPTION_KEY,
        secret_header(expose(&m.subscription_key))?,
    );
    headers.insert(crate::proxy::MSN_HEADER, plain(m.msn.as_str(), "MSN")?);
    for (name, value) in &up.system_headers {
        headers.insert(name.clone(), value.clone());
    }
    let path = format!("{}/accesstoken/get", up.origin.path());
    let observe = |status: Option<StatusCode>| {
        let code = status.map(|s| s.as_u16());
        let elapsed = started.elapsed();
        up.metrics.observe_upstream(&m.msn, "token", code, elapsed);
        record_upstream(code, elapsed);
    };
    let resp = http
        .send(http1::Request {
            method: Method::POST,
            path: &path,
            headers,
            body: None,
            timeout: up.timeout,
            limit: 64 * 1024,
        })
        .await
        .map_err(|e| {
            observe(None);
            tracing::warn!(msn = %m.msn, error = %e, "token fetch failed");
            UpstreamError::TokenFailed(e.to_string())
        })?;
    let (status, body) = (resp.status, resp.body);
    observe(Some(status));
    if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
        tracing::warn!(msn = %m.msn, %status, "token endpoint refused the merchant's credentials");
        return Err(UpstreamError::TokenRejected(status));
    }
    if !status.is_success() {
        tracing::warn!(msn = %m.msn, %status, "token endpoint failed");
        return Err(UpstreamError::TokenFailed(format!(
            "token endpoint answered {status}"
        )));
    }
    let parsed: TokenResponse = serde_json::from_slice(&body).map_err(|_| {
        UpstreamError::TokenFailed("token answer is not the documented JSON".into())
    })?;
    let secs: u64 = parsed.expires_in.trim().parse().map_err(|_| {
        UpstreamError::TokenFailed("token expires_in is not a number of seconds".into())
    })?;
    let lifetime = Duration::from_secs(secs);
    tracing::info!(msn = %m.msn, expires_in = secs, "fetched access token");
    // Counted from before the request was sent, so the local expiry is
    // never later than the upstream's.
    Ok(Arc::new(AccessToken::new(
        parsed.access_token,
        started + lifetime,
        lifetime,
    )))
}
