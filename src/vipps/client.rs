//! The upstream client: sends Vipps calls with the merchant's credentials
//! and a cached token, and retries once with a new token on a 401.
//! It knows nothing of the façade.

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::http::header::{HeaderMap, HeaderName, HeaderValue};
use actix_web::http::{Method, StatusCode};
use actix_web::web::Bytes;
use serde::de::DeserializeOwned;

use super::model::{
    ImageUpload, OrderCategory, OrderResponse, Receipt, TokenResponse, VippsProblem,
};
use super::token::{AccessToken, TokenCache};
use crate::config::{expose, Merchant, Settings};
use crate::domain::{ImageId, OrderId, PaymentType};

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
    base_url: String,
    timeout: Duration,
    system_headers: Vec<(HeaderName, HeaderValue)>,
    pub tokens: TokenCache,
}

impl Upstream {
    pub fn new(settings: &Settings) -> Result<Self, String> {
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
            base_url: settings.upstream.base_url.trim_end_matches('/').to_owned(),
            timeout: settings.upstream.timeout,
            system_headers,
            tokens: TokenCache::new(settings.upstream.token_margin),
        })
    }
}

/// One worker's client. `awc::Client` is not `Send`, so each worker builds its own.
pub struct VippsClient {
    http: awc::Client,
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
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
}

impl VippsClient {
    pub fn new(up: Arc<Upstream>) -> Self {
        let http = awc::Client::builder()
            .timeout(up.timeout)
            .disable_redirects()
            .finish();
        Self { http, up }
    }

    pub fn upstream(&self) -> &Arc<Upstream> {
        &self.up
    }

    /// A fresh token for the merchant, fetched once for concurrent callers.
    pub async fn token(&self, merchant: &Merchant) -> Result<Arc<AccessToken>, UpstreamError> {
        self.up
            .tokens
            .get(&merchant.msn, || self.fetch_token(merchant))
            .await
            .map_err(|e| (*e).clone())
    }

    async fn fetch_token(&self, m: &Merchant) -> Result<Arc<AccessToken>, UpstreamError> {
        let started = Instant::now();
        let mut req = self
            .http
            .post(format!("{}/accesstoken/get", self.up.base_url))
            .insert_header(("client_id", m.client_id.as_str()))
            .insert_header(("client_secret", secret_header(expose(&m.client_secret))?))
            .insert_header((
                "ocp-apim-subscription-key",
                secret_header(expose(&m.subscription_key))?,
            ))
            .insert_header(("merchant-serial-number", m.msn.as_str()));
        for (name, value) in &self.up.system_headers {
            req = req.insert_header((name.clone(), value.clone()));
        }
        let mut resp = req.send_body("").await.map_err(|e| {
            tracing::warn!(msn = %m.msn, error = %e, "token fetch failed");
            UpstreamError::TokenFailed(send_error_kind(&e))
        })?;
        let status = resp.status();
        let body = resp
            .body()
            .limit(64 * 1024)
            .await
            .map_err(|e| UpstreamError::TokenFailed(format!("unreadable token answer: {e}")))?;
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
        Ok(Arc::new(AccessToken {
            value: parsed.access_token,
            // Counted from before the request was sent, so the local expiry
            // is never later than the upstream's.
            expires_at: started + lifetime,
            lifetime,
        }))
    }

    /// Sends one call with the merchant's credentials; on a 401 drops the
    /// token (if still the one used), fetches a new one and sends once more.
    /// Any complete answer is returned, whatever its status.
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
        let token = self.token(merchant).await?;
        let first = self
            .send_once(merchant, &token, method.clone(), path, body.clone(), extra)
            .await?;
        if first.status != StatusCode::UNAUTHORIZED {
            return Ok(first);
        }
        tracing::info!(msn = %merchant.msn, "upstream answered 401; fetching a new token");
        self.up
            .tokens
            .invalidate_if_same(&merchant.msn, &token)
            .await;
        let token = self.token(merchant).await?;
        self.send_once(merchant, &token, method, path, body, extra)
            .await
    }

    async fn send_once(
        &self,
        m: &Merchant,
        token: &AccessToken,
        method: Method,
        path: &str,
        body: Option<Bytes>,
        extra: &HeaderMap,
    ) -> Result<RawResponse, UpstreamError> {
        let mut req = self
            .http
            .request(method, format!("{}{}", self.up.base_url, path));
        for (name, value) in extra {
            req = req.append_header((name.clone(), value.clone()));
        }
        req = req
            .insert_header((
                "authorization",
                secret_header(&format!("Bearer {}", expose(&token.value)))?,
            ))
            .insert_header((
                "ocp-apim-subscription-key",
                secret_header(expose(&m.subscription_key))?,
            ))
            .insert_header(("merchant-serial-number", m.msn.as_str()));
        for (name, value) in &self.up.system_headers {
            req = req.insert_header((name.clone(), value.clone()));
        }
        let sent = match body {
            Some(b) if extra.contains_key(actix_web::http::header::CONTENT_TYPE) => {
                req.send_body(b).await
            }
            Some(b) => req.content_type("application/json").send_body(b).await,
            None => req.send().await,
        };
        let mut resp = sent.map_err(|e| match e {
            awc::error::SendRequestError::Timeout => UpstreamError::Timeout,
            // A connection that closes without an answer surfaces as
            // `Connect(Disconnected)`, but the request may have arrived:
            // that outcome is unknown, not "never sent".
            awc::error::SendRequestError::Connect(awc::error::ConnectError::Disconnected) => {
                UpstreamError::Broken("connection closed without an answer".into())
            }
            awc::error::SendRequestError::Connect(c) => UpstreamError::Connect(c.to_string()),
            other => UpstreamError::Broken(send_error_kind(&other)),
        })?;
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = resp
            .body()
            .limit(MAX_RESPONSE_BYTES)
            .await
            .map_err(|e| match e {
                awc::error::PayloadError::Io(ref io)
                    if io.kind() == std::io::ErrorKind::TimedOut =>
                {
                    UpstreamError::Timeout
                }
                other => UpstreamError::Broken(other.to_string()),
            })?;
        Ok(RawResponse {
            status,
            headers,
            body,
        })
    }

    async fn json_call<T: DeserializeOwned>(
        &self,
        merchant: &Merchant,
        method: Method,
        path: &str,
        body: Option<Bytes>,
    ) -> Result<Option<T>, UpstreamError> {
        let resp = self.send(merchant, method, path, body).await?;
        if !resp.status.is_success() {
            return Err(status_error(&resp));
        }
        if resp.body.is_empty() {
            return Ok(None);
        }
        serde_json::from_slice(&resp.body)
            .map(Some)
            .map_err(|e| UpstreamError::BadResponse(e.to_string()))
    }

    /// `POST /order-management/v1/images`.
    pub async fn upload_image(
        &self,
        m: &Merchant,
        id: &ImageId,
        base64: String,
    ) -> Result<(), UpstreamError> {
        let body = to_body(&ImageUpload {
            image_id: id.as_str(),
            src: base64,
            type_: "base64",
        })?;
        self.json_call::<serde_json::Value>(
            m,
            Method::POST,
            "/order-management/v1/images",
            Some(body),
        )
        .await
        .map(drop)
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
        self.json_call::<serde_json::Value>(m, Method::PUT, &path, Some(to_body(category)?))
            .await
            .map(drop)
    }

    /// `POST /order-management/v2/{paymentType}/receipts/{orderId}`.
    pub async fn post_receipt(
        &self,
        m: &Merchant,
        pt: PaymentType,
        order: &OrderId,
        receipt: &Receipt,
    ) -> Result<(), UpstreamError> {
        let path = format!(
            "/order-management/v2/{}/receipts/{}",
            pt.as_str(),
            order.as_str()
        );
        self.json_call::<serde_json::Value>(m, Method::POST, &path, Some(to_body(receipt)?))
            .await
            .map(drop)
    }

    /// `GET /order-management/v2/{paymentType}/{orderId}`; `None` on 404.
    pub async fn get_order(
        &self,
        m: &Merchant,
        pt: PaymentType,
        order: &OrderId,
    ) -> Result<Option<OrderResponse>, UpstreamError> {
        let path = format!("/order-management/v2/{}/{}", pt.as_str(), order.as_str());
        match self
            .json_call::<OrderResponse>(m, Method::GET, &path, None)
            .await
        {
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

/// A short description of a send error that never includes header values.
fn send_error_kind(e: &awc::error::SendRequestError) -> String {
    use awc::error::SendRequestError as E;
    match e {
        E::Timeout => "timeout".into(),
        E::Connect(c) => format!("connect: {c}"),
        E::Send(_) => "send failed".into(),
        E::Response(_) => "bad response".into(),
        E::Http(_) => "invalid request".into(),
        E::H2(_) => "http/2 error".into(),
        E::Url(_) => "invalid URL".into(),
        E::TunnelNotSupported => "tunnel not supported".into(),
        E::Body(_) => "body error".into(),
        E::Custom(..) => "error".into(),
        _ => "error".into(),
    }
}
