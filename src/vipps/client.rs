//! The upstream client: sends Vipps calls with the merchant's credentials
//! and a cached token, within the caller's deadline and the merchant's
//! limits, and retries what is safe to repeat. It knows nothing of its
//! callers: they pass a [`CallContext`] and read back what it observed.

use std::cell::Cell;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, StatusCode};
use http_body_util::Full;
use serde::de::{DeserializeOwned, IgnoredAny};

use super::model::{
    AddCategoryV3, AddCategoryV3Response, CategoriesV3, CategoryV3, ImageUpload, OrderCategory,
    OrderResponse, ReceiptJson, TokenResponse, VippsProblem,
};
use super::resilience::{backoff_delay, Guards};
use super::token::{AccessToken, Lookup, TokenCache};
pub use super::transport::RawResponse;
use super::transport::{self, SendError, Transport};
use crate::config::{expose, Merchant, Settings};
use crate::domain::{ImageId, OrderId, PaymentType, MSN_HEADER};
use crate::metrics::{Metrics, TokenFetch};
use crate::trace::{self, SPAN_TARGET};
use tracing::Instrument as _;

/// The header carrying the merchant's subscription key.
const SUBSCRIPTION_KEY: HeaderName = HeaderName::from_static("ocp-apim-subscription-key");

/// Most bytes read from an upstream answer.
const MAX_RESPONSE_BYTES: usize = 8 * 1024 * 1024;
/// Most bytes read from a token answer.
const MAX_TOKEN_BYTES: usize = 64 * 1024;

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
    /// The gateway could not build the call (nothing was sent).
    #[error("cannot build the upstream call: {0}")]
    Internal(String),
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
    /// exchanges, 429, 500, 502, 503 and 504.
    Safe,
    /// Only when the upstream cannot have acted on it: connection errors
    /// before sending, and 429.
    IfNotProcessed,
}

/// What the last upstream exchange of a caller's request showed: its status
/// (`None`: no answer) and how long it took. The caller reads it for its log.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Exchange {
    pub status: Option<u16>,
    pub latency: Duration,
}

/// Where the client leaves the last [`Exchange`] of a caller's request.
/// A request's calls all run on the worker serving it, so it is not shared
/// across threads.
#[derive(Debug, Clone, Default)]
pub struct Observed(Rc<Cell<Option<Exchange>>>);

impl Observed {
    /// The last exchange, if any call was made.
    pub fn last(&self) -> Option<Exchange> {
        self.0.get()
    }

    fn set(&self, exchange: Exchange) {
        self.0.set(Some(exchange));
    }
}

/// What one caller request's upstream calls share: the merchant they act
/// for, the instant they must be done by, and where to leave what they saw.
#[derive(Debug, Clone)]
pub struct CallContext {
    pub merchant: Arc<Merchant>,
    /// On tokio's clock, as the timers that enforce it.
    pub deadline: tokio::time::Instant,
    pub observed: Observed,
    /// The span the calls are made within (a request's, a delivery's):
    /// each attempt's `traceparent` continues its trace.
    pub trace: Option<crate::trace::Context>,
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

/// What every worker's client shares: settings, static headers, tokens.
pub struct Upstream {
    /// `upstream.base_url`'s scheme and authority.
    scheme: http::uri::Scheme,
    authority: http::uri::Authority,
    /// `upstream.base_url`'s path without a trailing `/` (usually empty);
    /// call paths are appended.
    base_path: String,
    /// The `Host` header of every call, worked out once.
    host: HeaderValue,
    timeout: Duration,
    connect_timeout: Duration,
    tls: rustls::ClientConfig,
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
        let uri = settings.upstream.base_uri()?;
        let (Some(scheme), Some(authority), Some(host)) =
            (uri.scheme(), uri.authority(), uri.host())
        else {
            return Err("upstream.base_url must be an http or https URL with a host".into());
        };
        let default_port = if scheme == &http::uri::Scheme::HTTPS {
            443
        } else {
            80
        };
        let host = host_header(host, authority.port_u16(), default_port)?;
        Ok(Self {
            scheme: scheme.clone(),
            authority: authority.clone(),
            base_path: uri.path().trim_end_matches('/').to_owned(),
            host,
            timeout: settings.upstream.timeout,
            connect_timeout: settings.upstream.connect_timeout,
            tls: transport::default_tls_config()?,
            system_headers,
            tokens: TokenCache::new(settings.upstream.token_margin),
            guards,
            metrics,
        })
    }

    /// The headers of every call for merchant `m`, the token request's
    /// included: `Host`, its subscription key and MSN, the `Vipps-System-*`
    /// headers, and `Accept-Encoding: identity` (the gateway reads and
    /// forwards bodies as they are: no compression).
    fn merchant_headers(&self, headers: &mut HeaderMap, m: &Merchant) -> Result<(), UpstreamError> {
        headers.insert(header::HOST, self.host.clone());
        headers.insert(
            SUBSCRIPTION_KEY,
            secret_header(expose(&m.subscription_key))?,
        );
        let msn = HeaderValue::from_str(m.msn.as_str())
            .map_err(|_| UpstreamError::TokenFailed("MSN is not a valid header value".into()))?;
        headers.insert(HeaderName::from_static(MSN_HEADER), msn);
        for (name, value) in &self.system_headers {
            headers.insert(name.clone(), value.clone());
        }
        headers.insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_static("identity"),
        );
        Ok(())
    }

    fn uri(&self, path: &str) -> Result<http::Uri, UpstreamError> {
        let path_and_query = if self.base_path.is_empty() {
            http::uri::PathAndQuery::try_from(path)
        } else {
            http::uri::PathAndQuery::try_from(format!("{}{path}", self.base_path))
        };
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(self.scheme.clone());
        parts.authority = Some(self.authority.clone());
        parts.path_and_query = Some(
            path_and_query.map_err(|_| UpstreamError::Internal("invalid upstream path".into()))?,
        );
        http::Uri::from_parts(parts)
            .map_err(|_| UpstreamError::Internal("invalid upstream path".into()))
    }
}

/// The `Host` header for `host` and `port`: the port only when it is not
/// the scheme's default, as clients write it.
fn host_header(host: &str, port: Option<u16>, default_port: u16) -> Result<HeaderValue, String> {
    let text = match port {
        Some(port) if port != default_port => format!("{host}:{port}"),
        _ => host.to_owned(),
    };
    HeaderValue::from_str(&text)
        .map_err(|_| format!("upstream.base_url's host is not a valid header value: {text}"))
}

/// One worker's client. Each worker builds its own, so a connection's task
/// runs on the worker that uses it.
pub struct VippsClient {
    http: Transport,
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
        .get(header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
}

/// The upstream endpoint name of a Vipps path, for metrics and logs: a
/// fixed word, never the path.
pub fn endpoint(path: &str) -> &'static str {
    let path = path.split('?').next().unwrap_or(path);
    // No name has more than five segments; a longer path is "other".
    let mut segments = [""; 6];
    let mut count = 0;
    for segment in path.split('/').skip(1) {
        if count == segments.len() {
            return "other";
        }
        segments[count] = segment;
        count += 1;
    }
    match &segments[..count] {
        ["accesstoken", "get"] => "token",
        ["order-management", "v1", "images"] => "image",
        // The deprecated v1 order and receipt calls, reachable through the proxy.
        ["order-management", "v1", "orders", _] => "v1-orders",
        ["order-management", "v1", "receipts", _] => "v1-receipts",
        ["order-management", "v2", _, "categories", _] => "category",
        ["order-management", "v2", _, "receipts", _] => "receipt",
        ["order-management", "v2", _, _] => "order",
        // 2.1's several links per order: the collection (add, list) and one link.
        ["order-management", "v3", "categories"] => "categories-v3",
        ["order-management", "v3", "categories", _] => "category-v3",
        _ => "other",
    }
}

impl VippsClient {
    pub fn new(up: Arc<Upstream>) -> Self {
        let http = Transport::new(up.tls.clone(), up.connect_timeout);
        Self { http, up }
    }

    /// A usable token for the merchant (see [`Self::token_for`]).
    pub async fn token(&self, merchant: &Merchant) -> Result<Arc<AccessToken>, UpstreamError> {
        self.token_for(merchant, None, None).await
    }

    /// A usable token for the merchant, fetched once for concurrent
    /// callers; when its refresh is due, a new one is fetched in the
    /// background while this one is still used.
    async fn token_for(
        &self,
        merchant: &Merchant,
        observed: Option<&Observed>,
        parent: Option<&trace::Context>,
    ) -> Result<Arc<AccessToken>, UpstreamError> {
        let cached = self.up.tokens.fresh(&merchant.msn).await;
        self.up
            .metrics
            .observe_token_lookup(&merchant.msn, cached.is_some());
        if let Some(token) = cached {
            return Ok(token);
        }
        // The fetch's state lives on the heap: inline it would make every
        // call's future (and so every handler's) several kilobytes larger,
        // moved on each request for a path taken once per token lifetime.
        Box::pin(self.fetch_or_wait(merchant, observed, parent)).await
    }

    /// A token from the cache's single fetch for the merchant, started here
    /// or by a concurrent caller.
    async fn fetch_or_wait(
        &self,
        merchant: &Merchant,
        observed: Option<&Observed>,
        parent: Option<&trace::Context>,
    ) -> Result<Arc<AccessToken>, UpstreamError> {
        let lookup = self
            .up
            .tokens
            .get(&merchant.msn, || {
                fetch_token(&self.http, &self.up, merchant, observed, parent)
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
                match fetch_token(&http, &up, &m, None, None).await {
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

    /// [`Self::call`] with extra request headers (the reverse proxy's
    /// `Content-Type`, `Accept`, `X-Request-Id`) and the default retry rule
    /// for the method: POSTs only when not processed, others when safe. The
    /// caller filters the headers: the credential, MSN and `Vipps-System-*`
    /// headers are set afterwards and replace any of the same name. A
    /// `Content-Type` among them is used for the body instead of
    /// `application/json`.
    pub async fn send_with_headers(
        &self,
        ctx: &CallContext,
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
        self.call(ctx, call).await
    }

    /// Sends one call with the merchant's credentials, within the request's
    /// deadline, the merchant's breaker, call slots and retry budget.
    /// Failures that are safe to repeat are retried with full-jitter
    /// exponential backoff. Any complete answer is returned, whatever its status.
    pub async fn call(
        &self,
        ctx: &CallContext,
        call: Call<'_>,
    ) -> Result<RawResponse, UpstreamError> {
        let merchant = &*ctx.merchant;
        let cfg = self.up.guards.config();
        let guard = self.up.guards.get(&merchant.msn);
        let deadline = ctx.deadline;
        let endpoint = endpoint(call.path);
        let mut flight = guard.call_started();
        let mut attempt: u32 = 1;
        loop {
            guard
                .breaker_allows(cfg)
                .map_err(UpstreamError::CircuitOpen)?;
            let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
            if remaining.is_zero() {
                return Err(UpstreamError::DeadlineExceeded);
            }
            let Some(slot) = guard.slot(cfg.queue_timeout.min(remaining)).await else {
                return Err(UpstreamError::Overloaded(
                    cfg.queue_timeout.max(Duration::from_secs(1)),
                ));
            };
            let outcome = self.send_authorized(ctx, &call, endpoint, attempt).await;
            drop(slot);
            match &outcome {
                Ok(r) if r.status.is_server_error() => guard.record(cfg, false),
                Ok(r) if r.status != StatusCode::TOO_MANY_REQUESTS => guard.record(cfg, true),
                Err(e) if e.upstream_unhealthy() => guard.record(cfg, false),
                _ => {}
            }
            let retryable = match &outcome {
                // A 429 was refused before any work. A 5xx may come after
                // Vipps acted (a proxy in front of it timing out), so only
                // calls that are safe to repeat are resent after one.
                Ok(r) if r.status == StatusCode::TOO_MANY_REQUESTS => true,
                Ok(r) => call.retry == Retry::Safe && matches!(r.status.as_u16(), 500 | 502..=504),
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
            if tokio::time::Instant::now() + delay >= deadline {
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
                .observe_retry(&merchant.msn, endpoint, reason);
            tracing::info!(
                msn = %merchant.msn,
                endpoint,
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
        ctx: &CallContext,
        call: &Call<'_>,
        endpoint: &'static str,
        attempt: u32,
    ) -> Result<RawResponse, UpstreamError> {
        let m = &*ctx.merchant;
        let token = self
            .token_for(m, Some(&ctx.observed), ctx.trace.as_ref())
            .await?;
        let first = self
            .send_once(ctx, &token, call, endpoint, (attempt, false))
            .await?;
        if first.status != StatusCode::UNAUTHORIZED {
            return Ok(first);
        }
        tracing::info!(msn = %m.msn, "upstream answered 401; fetching a new token");
        self.up
            .metrics
            .observe_retry(&m.msn, endpoint, "unauthorized");
        Box::pin(self.up.tokens.invalidate_if_same(&m.msn, &token)).await;
        let token = self
            .token_for(m, Some(&ctx.observed), ctx.trace.as_ref())
            .await?;
        self.send_once(ctx, &token, call, endpoint, (attempt, true))
            .await
    }

    /// One exchange, counted, timed and logged under its endpoint name
    /// (`endpoint` of the call's path, worked out once per call), in a
    /// client span of its own when spans are exported. `(attempt, replay)`:
    /// the call's attempt number, and whether this is the one resend after
    /// a `401` with a new token.
    async fn send_once(
        &self,
        ctx: &CallContext,
        token: &AccessToken,
        call: &Call<'_>,
        endpoint: &'static str,
        (attempt, replay): (u32, bool),
    ) -> Result<RawResponse, UpstreamError> {
        let started = Instant::now();
        let span = tracing::info_span!(
            target: SPAN_TARGET,
            "vipps",
            otel.kind = "client",
            otel.name = endpoint,
            endpoint,
            method = call.method.as_str(),
            msn = ctx.merchant.msn.as_str(),
            attempt,
            retry = attempt > 1,
            replay,
            status = tracing::field::Empty,
            trace_id = tracing::field::Empty,
            span_id = tracing::field::Empty,
        );
        let cx = trace::child(&span, ctx.trace.as_ref());
        if !span.is_disabled() {
            cx.record(&span);
        }
        // A disabled span (export off) is not entered: wrapping the exchange
        // would move its whole future once more on every call.
        let result = if span.is_disabled() {
            self.exchange(ctx, token, call, &cx).await
        } else {
            self.exchange(ctx, token, call, &cx)
                .instrument(span.clone())
                .await
        };
        if let Ok(answer) = &result {
            span.record("status", answer.status.as_u16());
        }
        let exchange = Exchange {
            status: result.as_ref().ok().map(|r| r.status.as_u16()),
            latency: started.elapsed(),
        };
        self.up.metrics.observe_upstream(
            &ctx.merchant.msn,
            endpoint,
            exchange.status,
            exchange.latency,
        );
        ctx.observed.set(exchange);
        if let Err(e) = &result {
            tracing::warn!(msn = %ctx.merchant.msn, endpoint, error = %e, "upstream exchange failed");
        }
        result
    }

    async fn exchange(
        &self,
        ctx: &CallContext,
        token: &AccessToken,
        call: &Call<'_>,
        trace_cx: &trace::Context,
    ) -> Result<RawResponse, UpstreamError> {
        let remaining = ctx
            .deadline
            .saturating_duration_since(tokio::time::Instant::now());
        if remaining.is_zero() {
            return Err(UpstreamError::DeadlineExceeded);
        }
        // A timeout that the request's deadline shortened is the deadline's.
        let timed_out = if remaining < self.up.timeout {
            UpstreamError::DeadlineExceeded
        } else {
            UpstreamError::Timeout
        };
        if token.bearer.is_none() {
            return Err(UpstreamError::TokenFailed(
                "credential is not a valid header value".into(),
            ));
        }
        let mut req = Request::new(Full::new(call.body.clone().unwrap_or_default()));
        *req.method_mut() = call.method.clone();
        *req.uri_mut() = self.up.uri(call.path)?;
        // The merchant's headers and `Authorization`, built with the token.
        *req.headers_mut() = token.call_headers.clone();
        let headers = req.headers_mut();
        for (name, value) in call.extra.into_iter().flatten() {
            headers.append(name.clone(), value.clone());
        }
        // The span this attempt is sent from: Vipps continues its trace.
        // The proxy passes on no caller `traceparent` or `tracestate` (its
        // allow-list), and a token's headers hold neither: these are the
        // only ones.
        headers.insert(trace::TRACEPARENT, trace_cx.traceparent().clone());
        if let Some(state) = trace::tracestate(trace_cx) {
            headers.insert(trace::TRACESTATE, state);
        }
        if call.body.is_some() && !headers.contains_key(header::CONTENT_TYPE) {
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
        }
        let sent = self.http.send(req, MAX_RESPONSE_BYTES);
        tokio::time::timeout(self.up.timeout.min(remaining), sent)
            .await
            .map_err(|_| timed_out)?
            .map_err(|e| match e {
                SendError::Connect(c) => UpstreamError::Connect(c),
                SendError::Broken(b) => UpstreamError::Broken(b),
            })
    }

    async fn json_call<T: DeserializeOwned>(
        &self,
        ctx: &CallContext,
        call: Call<'_>,
    ) -> Result<Option<T>, UpstreamError> {
        let path = call.path;
        let resp = self.call(ctx, call).await?;
        if !resp.status.is_success() {
            return Err(status_error(&resp));
        }
        if resp.body.is_empty() {
            return Ok(None);
        }
        serde_json::from_slice(&resp.body).map(Some).map_err(|e| {
            // Where it failed, not the text: an answer is Vipps' data.
            tracing::warn!(
                msn = %ctx.merchant.msn,
                endpoint = endpoint(path),
                line = e.line(),
                column = e.column(),
                "unreadable upstream answer"
            );
            UpstreamError::BadResponse(e.to_string())
        })
    }

    /// `POST /order-management/v1/images`. `retry` is `Safe` for a
    /// content-derived id (a repeat that meets the stored image is the same
    /// image) and `IfNotProcessed` for a caller-named one.
    pub async fn upload_image(
        &self,
        ctx: &CallContext,
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
        self.json_call::<IgnoredAny>(ctx, call).await.map(drop)
    }

    /// `PUT /order-management/v2/{paymentType}/categories/{orderId}`.
    pub async fn put_category(
        &self,
        ctx: &CallContext,
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
        self.json_call::<IgnoredAny>(ctx, call).await.map(drop)
    }

    /// `POST /order-management/v2/{paymentType}/receipts/{orderId}`.
    pub async fn post_receipt(
        &self,
        ctx: &CallContext,
        pt: PaymentType,
        order: &OrderId,
        receipt: &ReceiptJson,
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
            body: Some(Bytes::copy_from_slice(receipt.as_str().as_bytes())),
            retry: Retry::Safe,
            extra: None,
        };
        self.json_call::<IgnoredAny>(ctx, call).await.map(drop)
    }

    /// `GET /order-management/v2/{paymentType}/{orderId}`; `None` on 404.
    pub async fn get_order(
        &self,
        ctx: &CallContext,
        pt: PaymentType,
        order: &OrderId,
    ) -> Result<Option<OrderResponse>, UpstreamError> {
        let path = format!("/order-management/v2/{}/{}", pt.as_str(), order.as_str());
        self.read(ctx, &path, "order").await
    }

    /// A read whose 404 means "there is none": `None` then, the decoded
    /// answer otherwise (an empty one is unreadable).
    async fn read<T: DeserializeOwned>(
        &self,
        ctx: &CallContext,
        path: &str,
        what: &str,
    ) -> Result<Option<T>, UpstreamError> {
        let call = Call {
            method: Method::GET,
            path,
            body: None,
            retry: Retry::Safe,
            extra: None,
        };
        match self.json_call::<T>(ctx, call).await {
            Ok(Some(found)) => Ok(Some(found)),
            Ok(None) => Err(UpstreamError::BadResponse(format!("empty {what} answer"))),
            Err(UpstreamError::Status { status, .. }) if status == StatusCode::NOT_FOUND => {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }
}

/// 2.1's `/v3/categories`: several category links per order.
impl VippsClient {
    /// `POST /order-management/v3/categories`; the new link's id. Not safe
    /// to repeat (a repeat adds a second link), so it is resent only when
    /// Vipps cannot have acted on it: after a connect error or a 429.
    pub async fn add_category_v3(
        &self,
        ctx: &CallContext,
        link: &AddCategoryV3<'_>,
    ) -> Result<String, UpstreamError> {
        let call = Call {
            method: Method::POST,
            path: CATEGORIES_V3,
            body: Some(to_body(link)?),
            retry: Retry::IfNotProcessed,
            extra: None,
        };
        match self.json_call::<AddCategoryV3Response>(ctx, call).await? {
            Some(r) => Ok(r.category_id),
            None => Err(UpstreamError::BadResponse("empty category answer".into())),
        }
    }

    /// `GET /order-management/v3/categories?orderId=`: the order's links.
    pub async fn list_categories_v3(
        &self,
        ctx: &CallContext,
        order: &OrderId,
    ) -> Result<Vec<CategoryV3>, UpstreamError> {
        // An order id holds only unreserved characters: no escaping needed.
        let path = format!("{CATEGORIES_V3}?orderId={}", order.as_str());
        let call = Call {
            method: Method::GET,
            path: &path,
            body: None,
            retry: Retry::Safe,
            extra: None,
        };
        match self.json_call::<CategoriesV3>(ctx, call).await? {
            Some(list) => Ok(list.categories),
            None => Err(UpstreamError::BadResponse("empty categories answer".into())),
        }
    }

    /// `GET /order-management/v3/categories/{categoryId}`; `None` on 404.
    pub async fn get_category_v3(
        &self,
        ctx: &CallContext,
        id: uuid::Uuid,
    ) -> Result<Option<CategoryV3>, UpstreamError> {
        let path = format!("{CATEGORIES_V3}/{}", id.hyphenated());
        self.read(ctx, &path, "category").await
    }

    /// `DELETE /order-management/v3/categories/{categoryId}`. Safe to
    /// repeat: a repeat finds nothing to delete. `false` when Vipps answered
    /// 404 (no such link, or an earlier attempt already deleted it).
    pub async fn delete_category_v3(
        &self,
        ctx: &CallContext,
        id: uuid::Uuid,
    ) -> Result<bool, UpstreamError> {
        let path = format!("{CATEGORIES_V3}/{}", id.hyphenated());
        let call = Call {
            method: Method::DELETE,
            path: &path,
            body: None,
            retry: Retry::Safe,
            extra: None,
        };
        // Whatever the body of a success (the document defines none), it is done.
        let resp = self.call(ctx, call).await?;
        match resp.status {
            s if s.is_success() => Ok(true),
            StatusCode::NOT_FOUND => Ok(false),
            _ => Err(status_error(&resp)),
        }
    }
}

/// The path of 2.1's category links.
const CATEGORIES_V3: &str = "/order-management/v3/categories";

fn to_body<T: serde::Serialize>(value: &T) -> Result<Bytes, UpstreamError> {
    serde_json::to_vec(value)
        .map(Bytes::from)
        .map_err(|e| UpstreamError::Internal(format!("cannot serialize request: {e}")))
}

/// The error for a non-success answer, with the upstream's problem body when readable.
pub fn status_error(resp: &RawResponse) -> UpstreamError {
    UpstreamError::Status {
        status: resp.status,
        problem: serde_json::from_slice(&resp.body).ok().map(Box::new),
        retry_after: retry_after(&resp.headers),
    }
}

/// Fetches a token with the merchant's credentials, unless fetches for it are
/// backing off after failures (then fails at once, without a call).
/// A token fetch, in a span of its own when spans are exported: a request
/// that waited for the token shows it.
async fn fetch_token(
    http: &Transport,
    up: &Upstream,
    m: &Merchant,
    observed: Option<&Observed>,
    parent: Option<&trace::Context>,
) -> Result<Arc<AccessToken>, UpstreamError> {
    let guard = up.guards.get(&m.msn);
    if let Err((wait, rejected)) = guard.token_fetch_allowed() {
        return Err(if rejected {
            UpstreamError::TokenRejected(StatusCode::UNAUTHORIZED)
        } else {
            UpstreamError::TokenUnavailable(wait)
        });
    }
    let span = tracing::info_span!(
        target: SPAN_TARGET,
        "vipps token",
        otel.kind = "client",
        endpoint = "token",
        msn = m.msn.as_str(),
        error = tracing::field::Empty,
        trace_id = tracing::field::Empty,
        span_id = tracing::field::Empty,
    );
    let cx = trace::child(&span, parent);
    if !span.is_disabled() {
        cx.record(&span);
    }
    let result = fetch_token_now(http, up, m, observed, &cx)
        .instrument(span.clone())
        .await;
    if let Err(e) = &result {
        span.record("error", tracing::field::display(e));
    }
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
    http: &Transport,
    up: &Upstream,
    m: &Merchant,
    observed: Option<&Observed>,
    trace_cx: &trace::Context,
) -> Result<Arc<AccessToken>, UpstreamError> {
    let started = tokio::time::Instant::now();
    let plain = |v: &str, what: &str| {
        HeaderValue::from_str(v)
            .map_err(|_| UpstreamError::TokenFailed(format!("{what} is not a valid header value")))
    };
    let mut req = Request::new(Full::new(Bytes::new()));
    *req.method_mut() = Method::POST;
    *req.uri_mut() = up.uri("/accesstoken/get")?;
    let mut merchant_headers = HeaderMap::with_capacity(16);
    up.merchant_headers(&mut merchant_headers, m)?;
    let headers = req.headers_mut();
    *headers = merchant_headers.clone();
    headers.insert(
        HeaderName::from_static("client_id"),
        plain(&m.client_id, "client_id")?,
    );
    headers.insert(
        HeaderName::from_static("client_secret"),
        secret_header(expose(&m.client_secret))?,
    );
    headers.insert(trace::TRACEPARENT, trace_cx.traceparent().clone());
    if let Some(state) = trace::tracestate(trace_cx) {
        headers.insert(trace::TRACESTATE, state);
    }
    let observe = |status: Option<StatusCode>| {
        let exchange = Exchange {
            status: status.map(|s| s.as_u16()),
            latency: started.elapsed(),
        };
        up.metrics
            .observe_upstream(&m.msn, "token", exchange.status, exchange.latency);
        if let Some(o) = observed {
            o.set(exchange);
        }
    };
    let answer = match tokio::time::timeout(up.timeout, http.send(req, MAX_TOKEN_BYTES)).await {
        Ok(Ok(answer)) => answer,
        Ok(Err(SendError::Connect(e) | SendError::Broken(e))) => {
            observe(None);
            tracing::warn!(msn = %m.msn, error = %e, "token fetch failed");
            return Err(UpstreamError::TokenFailed(e));
        }
        Err(_) => {
            observe(None);
            tracing::warn!(msn = %m.msn, "token fetch timed out");
            return Err(UpstreamError::TokenFailed("timeout".into()));
        }
    };
    let status = answer.status;
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
    let parsed: TokenResponse = serde_json::from_slice(&answer.body).map_err(|e| {
        // Only where it failed: serde_json's message may quote a value.
        tracing::warn!(msn = %m.msn, line = e.line(), column = e.column(), "token answer is not the documented JSON");
        UpstreamError::TokenFailed("token answer is not the documented JSON".into())
    })?;
    let secs = parsed.expires_in.0;
    let lifetime = Duration::from_secs(secs);
    tracing::info!(msn = %m.msn, expires_in = secs, "fetched access token");
    // Counted from before the request was sent, so the local expiry is
    // never later than the upstream's.
    Ok(Arc::new(AccessToken::new(
        parsed.access_token,
        started + lifetime,
        lifetime,
        merchant_headers,
    )))
}

#[cfg(test)]
mod tests {
    use super::{endpoint, host_header};

    #[test]
    fn the_host_header_names_the_port_only_when_it_is_not_the_default() {
        assert_eq!(
            host_header("api.vipps.no", None, 443).unwrap(),
            "api.vipps.no"
        );
        assert_eq!(
            host_header("api.vipps.no", Some(443), 443).unwrap(),
            "api.vipps.no"
        );
        assert_eq!(
            host_header("127.0.0.1", Some(8080), 80).unwrap(),
            "127.0.0.1:8080"
        );
        assert_eq!(host_header("[::1]", Some(9000), 443).unwrap(), "[::1]:9000");
    }

    #[test]
    fn endpoint_names_are_fixed_words() {
        for (path, name) in [
            ("/accesstoken/get", "token"),
            ("/order-management/v2/ecom/categories/o-1", "category"),
            ("/order-management/v2/ecom/o-1", "order"),
            ("/order-management/v3/categories", "categories-v3"),
            (
                "/order-management/v3/categories?orderId=o-1",
                "categories-v3",
            ),
            (
                "/order-management/v3/categories/337f5e5d-288b-40d5-be14-901cc3acacc0",
                "category-v3",
            ),
            ("/order-management/v3/categories/a/b", "other"),
            ("/order-management/v3/elsewhere", "other"),
        ] {
            assert_eq!(endpoint(path), name, "{path}");
        }
    }
}
