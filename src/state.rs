//! What every actix-web worker of the gateway shares: the merchants, the
//! settings handlers read, the per-merchant guards and the outbox. Lives
//! outside the façade so the proxy, the operational routes and the request
//! middleware use it without depending on the façade.

use std::sync::Arc;

use actix_web::{HttpMessage as _, HttpRequest};

use crate::auth::Grant;
use crate::config::{Limits, Merchant, MerchantRegistry};
use crate::domain::ApiVersion;
use crate::error::{ApiError, Kind};
use crate::outbox::Outbox;
use crate::request::RequestContext;
use crate::vipps::resilience::{retry_after_secs, Guards};

/// State shared by every worker.
pub struct AppState {
    pub merchants: Arc<MerchantRegistry>,
    /// The Order Management version receipts are built for.
    pub api_version: ApiVersion,
    pub limits: Limits,
    pub guards: Arc<Guards>,
    /// Asynchronous receipts (`Prefer: respond-async`).
    pub outbox: Arc<Outbox>,
}

impl AppState {
    /// The merchant a request acts for: the caller's grant first (403), then
    /// that it is configured (404). The request middleware has looked the
    /// request's MSN up already, for its metrics: that merchant is used when
    /// it is the one asked for, so the registry is read once per request.
    pub fn merchant(
        &self,
        req: &HttpRequest,
        grant: &Grant,
        msn: &str,
    ) -> Result<Arc<Merchant>, ApiError> {
        grant.check(msn)?;
        let known = req
            .extensions()
            .get::<RequestContext>()
            .and_then(|c| c.merchant.clone())
            .filter(|m| m.msn.as_str() == msn);
        known.or_else(|| self.merchants.get(msn)).ok_or_else(|| {
            ApiError::new(
                Kind::MerchantNotFound,
                "No merchant with this MSN is configured.",
            )
        })
    }

    /// Takes one request from the merchant's rate (`429` past it). Only
    /// requests that call Vipps take one: the limit protects Vipps, and a
    /// request answered from the gateway's own store does not reach it.
    pub fn admit(&self, merchant: &Merchant) -> Result<(), ApiError> {
        self.guards
            .get(&merchant.msn)
            .admit(self.guards.config())
            .map_err(|wait| {
                ApiError::new(
                    Kind::RateLimited,
                    "This merchant's request rate is exceeded; retry later.",
                )
                .with_retry_after(retry_after_secs(wait))
            })
    }
}
