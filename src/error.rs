//! One error type for the whole gateway, serialized as RFC 9457
//! `application/problem+json`. Every kind has one row in [`Kind::row`]:
//! status, slug (the end of the `type` URI) and title. `docs/problems.md`
//! documents the same table for callers, and the gateway serves each kind's
//! row of it at its `type` URI (see [`problem_page`]).

use std::fmt;

use actix_web::http::{header, StatusCode};
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;

use crate::vipps::resilience::retry_after_secs;
use crate::vipps::UpstreamError;

/// Prefix of every problem `type` URI. Relative (RFC 9457 §3.1.1): it
/// resolves against the request URI to this gateway, which answers
/// `GET /problems/{slug}` with the kind's description.
pub const PROBLEM_TYPE_BASE: &str = "/problems/";

/// The callers' description of every kind, served piecewise by [`problem_page`].
const PROBLEMS_MD: &str = include_str!("../docs/problems.md");

/// The kinds of error the gateway answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Malformed JSON, a missing or mistyped field, a bad path or query parameter.
    InvalidRequest,
    /// Well-formed, but the gateway cannot compute a valid Vipps request from it.
    Unprocessable,
    /// The body is larger than the route accepts.
    PayloadTooLarge,
    /// The body's media type (or an image's real format) is not accepted.
    UnsupportedMediaType,
    /// Missing or invalid caller credentials.
    Unauthorized,
    /// The caller may not act for this merchant.
    Forbidden,
    /// The merchant is not configured on this gateway.
    MerchantNotFound,
    /// Vipps has neither a category nor a receipt for the order.
    OrderNotFound,
    /// No v3 category link with this id belongs to the order (or merchant).
    CategoryNotFound,
    /// No such route.
    NotFound,
    /// The route exists but not with this method.
    MethodNotAllowed,
    /// A receipt different from the one sent is already stored.
    ReceiptConflict,
    /// A caller-named image id already exists upstream.
    ImageIdTaken,
    /// Vipps reported a conflict the gateway cannot resolve.
    UpstreamConflict,
    /// Vipps rejected the request as invalid.
    UpstreamRejected,
    /// Vipps refused the gateway's own credentials; the caller cannot fix it.
    UpstreamAuth,
    /// Vipps failed, or answered something the gateway could not read.
    UpstreamFailed,
    /// Vipps did not answer in time.
    UpstreamTimeout,
    /// Vipps asked the gateway to slow down.
    UpstreamBusy,
    /// Token fetches for the merchant are failing and backing off.
    TokenUnavailable,
    /// The merchant's circuit is open after consecutive Vipps failures.
    CircuitOpen,
    /// Every upstream call slot of the merchant is busy.
    Overloaded,
    /// The caller sent more requests for the merchant than its rate allows.
    RateLimited,
    /// The request took longer than the gateway's deadline.
    DeadlineExceeded,
    /// The outbox's store cannot be used (not open, or a statement failed).
    OutboxUnavailable,
    /// The merchant has `outbox.max_pending_per_merchant` entries waiting.
    OutboxFull,
    /// The merchant has no delivery with this id.
    DeliveryNotFound,
    /// A fault inside the gateway; details are in its log, never in the body.
    Internal,
}

impl Kind {
    /// Every kind, in the order of the enum.
    pub const ALL: [Kind; 28] = [
        Kind::InvalidRequest,
        Kind::Unprocessable,
        Kind::PayloadTooLarge,
        Kind::UnsupportedMediaType,
        Kind::Unauthorized,
        Kind::Forbidden,
        Kind::MerchantNotFound,
        Kind::OrderNotFound,
        Kind::CategoryNotFound,
        Kind::NotFound,
        Kind::MethodNotAllowed,
        Kind::ReceiptConflict,
        Kind::ImageIdTaken,
        Kind::UpstreamConflict,
        Kind::UpstreamRejected,
        Kind::UpstreamAuth,
        Kind::UpstreamFailed,
        Kind::UpstreamTimeout,
        Kind::UpstreamBusy,
        Kind::TokenUnavailable,
        Kind::CircuitOpen,
        Kind::Overloaded,
        Kind::RateLimited,
        Kind::DeadlineExceeded,
        Kind::OutboxUnavailable,
        Kind::OutboxFull,
        Kind::DeliveryNotFound,
        Kind::Internal,
    ];

    /// The one table of error kinds: status, slug, title.
    pub const fn row(self) -> (StatusCode, &'static str, &'static str) {
        use Kind::*;
        match self {
            InvalidRequest => (
                StatusCode::BAD_REQUEST,
                "invalid-request",
                "Invalid request",
            ),
            Unprocessable => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "unprocessable",
                "Request cannot be translated",
            ),
            PayloadTooLarge => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload-too-large",
                "Payload too large",
            ),
            UnsupportedMediaType => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported-media-type",
                "Unsupported media type",
            ),
            Unauthorized => (
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "Authentication required",
            ),
            Forbidden => (StatusCode::FORBIDDEN, "forbidden", "Merchant not granted"),
            MerchantNotFound => (
                StatusCode::NOT_FOUND,
                "merchant-not-found",
                "Merchant not found",
            ),
            OrderNotFound => (StatusCode::NOT_FOUND, "order-not-found", "Order not found"),
            CategoryNotFound => (
                StatusCode::NOT_FOUND,
                "category-not-found",
                "Category link not found",
            ),
            NotFound => (StatusCode::NOT_FOUND, "not-found", "Not found"),
            MethodNotAllowed => (
                StatusCode::METHOD_NOT_ALLOWED,
                "method-not-allowed",
                "Method not allowed",
            ),
            ReceiptConflict => (
                StatusCode::CONFLICT,
                "receipt-conflict",
                "A different receipt is already stored",
            ),
            ImageIdTaken => (
                StatusCode::CONFLICT,
                "image-id-taken",
                "Image id already exists",
            ),
            UpstreamConflict => (
                StatusCode::CONFLICT,
                "upstream-conflict",
                "Conflict reported by Vipps",
            ),
            UpstreamRejected => (
                StatusCode::BAD_REQUEST,
                "upstream-rejected",
                "Rejected by Vipps",
            ),
            UpstreamAuth => (
                StatusCode::BAD_GATEWAY,
                "upstream-auth",
                "Vipps refused the gateway's credentials",
            ),
            UpstreamFailed => (
                StatusCode::BAD_GATEWAY,
                "upstream-failed",
                "Vipps request failed",
            ),
            UpstreamTimeout => (
                StatusCode::GATEWAY_TIMEOUT,
                "upstream-timeout",
                "Vipps did not answer in time",
            ),
            UpstreamBusy => (
                StatusCode::SERVICE_UNAVAILABLE,
                "upstream-busy",
                "Vipps is rate limiting",
            ),
            TokenUnavailable => (
                StatusCode::SERVICE_UNAVAILABLE,
                "token-unavailable",
                "No Vipps access token can be obtained",
            ),
            CircuitOpen => (
                StatusCode::SERVICE_UNAVAILABLE,
                "circuit-open",
                "Vipps calls for this merchant are paused",
            ),
            Overloaded => (
                StatusCode::SERVICE_UNAVAILABLE,
                "overloaded",
                "Too many Vipps calls in flight for this merchant",
            ),
            RateLimited => (
                StatusCode::TOO_MANY_REQUESTS,
                "rate-limited",
                "Too many requests for this merchant",
            ),
            DeadlineExceeded => (
                StatusCode::GATEWAY_TIMEOUT,
                "deadline-exceeded",
                "The request took too long",
            ),
            OutboxUnavailable => (
                StatusCode::SERVICE_UNAVAILABLE,
                "outbox-unavailable",
                "Outbox unavailable",
            ),
            OutboxFull => (
                StatusCode::SERVICE_UNAVAILABLE,
                "outbox-full",
                "Outbox full for this merchant",
            ),
            DeliveryNotFound => (
                StatusCode::NOT_FOUND,
                "delivery-not-found",
                "Delivery not found",
            ),
            Internal => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "Internal error",
            ),
        }
    }

    pub fn status(self) -> StatusCode {
        self.row().0
    }

    /// The kind whose slug this is.
    pub fn from_slug(slug: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.row().1 == slug)
    }
}

/// The page at a problem's `type` URI, `/problems/{slug}`, in Markdown: the
/// kind's row of the table in `docs/problems.md` under the table's header,
/// and the note on retrying receipts when the row refers to it. `None` for
/// an unknown slug.
pub fn problem_page(slug: &str) -> Option<String> {
    let (status, slug, title) = Kind::from_slug(slug)?.row();
    let mut lines = PROBLEMS_MD.lines();
    let header = lines.by_ref().find(|l| l.starts_with("| slug |"))?;
    let rule = lines.next()?;
    let cell = format!("| `{slug}` |");
    let row = lines
        .take_while(|l| l.starts_with('|'))
        .find(|l| l.starts_with(&cell))?;
    let mut page = format!(
        "# {title}\n\n\
         `type` `{PROBLEM_TYPE_BASE}{slug}`, status {status}, as \
         `application/problem+json` (RFC 9457). Match on `type`, not on \
         `title` or `detail`.\n\n{header}\n{rule}\n{row}\n",
        status = status.as_u16()
    );
    if row.contains("(see below)") {
        page.push('\n');
        page.push_str(&doc_section(RETRY_NOTE)?);
    }
    Some(page)
}

/// The heading of the note some rows point to with "(see below)".
const RETRY_NOTE: &str = "## Retrying a receipt is always safe";

/// A `## ` section of `docs/problems.md`, its heading included.
fn doc_section(heading: &str) -> Option<String> {
    let (_, after) = PROBLEMS_MD.split_once(&format!("\n{heading}\n"))?;
    let body = after.split("\n## ").next().unwrap_or(after);
    Some(format!("{heading}\n{body}"))
}

/// One bad field, named in the caller's terms (`lines[1].taxPercent`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct InvalidParam {
    pub name: String,
    pub reason: String,
}

impl InvalidParam {
    pub fn new(name: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            reason: reason.into(),
        }
    }
}

/// The gateway's error: a kind, a detail for the caller, and the bad fields.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub kind: Kind,
    pub detail: String,
    pub invalid_params: Vec<InvalidParam>,
    /// Seconds for a `Retry-After` header.
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(kind: Kind, detail: impl Into<String>) -> Self {
        Self {
            kind,
            detail: detail.into(),
            invalid_params: Vec::new(),
            retry_after: None,
        }
    }

    /// Vipps refused the gateway's own credentials for the merchant (a 401
    /// after a fresh token, a 403, a refused token request): the operator's
    /// to fix, never the caller's.
    pub fn upstream_auth() -> Self {
        Self::new(
            Kind::UpstreamAuth,
            "Vipps refused the gateway's credentials for this merchant; the operator must fix them.",
        )
    }

    /// A request error naming the fields at fault.
    pub fn invalid(kind: Kind, detail: impl Into<String>, params: Vec<InvalidParam>) -> Self {
        Self {
            invalid_params: params,
            ..Self::new(kind, detail)
        }
    }

    /// One bad field.
    pub fn field(kind: Kind, name: &str, reason: impl Into<String>) -> Self {
        let reason = reason.into();
        Self::invalid(
            kind,
            format!("{name}: {reason}"),
            vec![InvalidParam::new(name, reason)],
        )
    }

    /// An internal fault: the cause goes to the log, never to the caller.
    pub fn internal(cause: &dyn fmt::Display) -> Self {
        tracing::error!(error = %cause, "internal error");
        Self::new(
            Kind::Internal,
            "The gateway failed to handle the request; see its log.",
        )
    }

    pub fn with_retry_after(mut self, seconds: u64) -> Self {
        self.retry_after = Some(seconds);
        self
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind.row().1, self.detail)
    }
}

impl ApiError {
    /// Maps an upstream failure to the caller's problem (SPEC §3, Errors).
    /// `field` names a Vipps field in the caller's terms.
    pub fn upstream(e: UpstreamError, field: &dyn Fn(&str) -> String) -> ApiError {
        match e {
        UpstreamError::Status {
            status,
            problem,
            retry_after,
        } => match status.as_u16() {
            400 => {
                let problem = problem.map(|p| *p).unwrap_or_default();
                let params = problem
                    .invalid_params
                    .iter()
                    .map(|p| InvalidParam::new(field(&p.name), p.reason.clone()))
                    .collect();
                let detail = problem
                    .detail
                    .or(problem.title)
                    .unwrap_or_else(|| "Vipps rejected the request.".into());
                ApiError::invalid(Kind::UpstreamRejected, format!("Vipps: {detail}"), params)
            }
            404 => ApiError::new(Kind::OrderNotFound, "Vipps has no such order."),
            409 => ApiError::new(
                Kind::UpstreamConflict,
                problem
                    .and_then(|p| p.detail)
                    .map_or_else(|| "Vipps reported a conflict.".into(), |d| format!("Vipps: {d}")),
            ),
            401 | 403 => ApiError::upstream_auth(),
            429 => ApiError::new(Kind::UpstreamBusy, "Vipps is rate limiting this merchant; retry later.")
                .with_retry_after(retry_after.unwrap_or(1)),
            _ => {
                let e = ApiError::new(
                    Kind::UpstreamFailed,
                    format!("Vipps answered {}.", status.as_u16()),
                );
                // Vipps' own hint of when to come back is the caller's to keep.
                match retry_after {
                    Some(secs) => e.with_retry_after(secs),
                    None => e,
                }
            }
        },
        UpstreamError::TokenRejected(_) => ApiError::upstream_auth(),
        UpstreamError::TokenFailed(_) => {
            ApiError::new(Kind::TokenUnavailable, "No Vipps access token could be obtained; retry later.").with_retry_after(1)
        }
        UpstreamError::TokenUnavailable(wait) => ApiError::new(
            Kind::TokenUnavailable,
            "Fetching a Vipps access token for this merchant failed recently; the gateway is backing off.",
        )
        .with_retry_after(retry_after_secs(wait)),
        UpstreamError::DeadlineExceeded => ApiError::new(
            Kind::DeadlineExceeded,
            "The request took longer than the gateway's deadline; its outcome at Vipps is unknown, retry it.",
        ),
        UpstreamError::CircuitOpen(wait) => ApiError::new(
            Kind::CircuitOpen,
            "Vipps failed repeatedly for this merchant; calls are paused.",
        )
        .with_retry_after(retry_after_secs(wait)),
        UpstreamError::Overloaded(wait) => ApiError::new(
            Kind::Overloaded,
            "Too many Vipps calls are in flight for this merchant.",
        )
        .with_retry_after(retry_after_secs(wait)),
        UpstreamError::Timeout => ApiError::new(Kind::UpstreamTimeout, "Vipps did not answer in time."),
        UpstreamError::Connect(_) => ApiError::new(Kind::UpstreamFailed, "Vipps could not be reached."),
        UpstreamError::Broken(_) => ApiError::new(
            Kind::UpstreamFailed,
            "The exchange with Vipps broke off; the outcome is unknown, retry the request.",
        ),
        UpstreamError::Internal(cause) => ApiError::internal(&cause),
        UpstreamError::BadResponse(_) => ApiError::new(Kind::UpstreamFailed, "Vipps answered something the gateway could not read."),
    }
    }
}

/// The RFC 9457 body.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Problem<'a> {
    #[serde(rename = "type")]
    type_: String,
    title: &'a str,
    status: u16,
    detail: &'a str,
    instance: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    request_id: Option<&'a str>,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    invalid_params: &'a [InvalidParam],
}

impl ApiError {
    /// The problem's RFC 9457 body for a request to `instance`.
    pub fn problem_json(&self, instance: &str, request_id: Option<&str>) -> Option<String> {
        let (status, slug, title) = self.kind.row();
        let problem = Problem {
            type_: format!("{PROBLEM_TYPE_BASE}{slug}"),
            title,
            status: status.as_u16(),
            detail: &self.detail,
            instance: instance.to_owned(),
            request_id,
            invalid_params: &self.invalid_params,
        };
        serde_json::to_string(&problem).ok()
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.kind.status()
    }

    fn error_response(&self) -> HttpResponse {
        let status = self.kind.status();
        let ctx = crate::request::current();
        let body = self.problem_json(
            &ctx.as_ref()
                .map_or_else(|| "/".to_owned(), |c| c.path.clone()),
            ctx.as_ref().map(|c| &*c.id),
        );
        let mut resp = HttpResponse::build(status);
        resp.insert_header((header::CONTENT_TYPE, "application/problem+json"));
        if let Some(secs) = self.retry_after {
            resp.insert_header((header::RETRY_AFTER, secs.to_string()));
        }
        if self.kind == Kind::Unauthorized {
            resp.insert_header((header::WWW_AUTHENTICATE, "Bearer"));
        }
        match body {
            Some(body) => resp.body(body),
            None => resp.finish(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A new variant fails to compile here until it is handled; add it to
    /// [`Kind::ALL`] too, which this test then checks.
    fn listed(kind: Kind) -> bool {
        use Kind::*;
        match kind {
            InvalidRequest | Unprocessable | PayloadTooLarge | UnsupportedMediaType
            | Unauthorized | Forbidden | MerchantNotFound | OrderNotFound | CategoryNotFound
            | NotFound | MethodNotAllowed | ReceiptConflict | ImageIdTaken | UpstreamConflict
            | UpstreamRejected | UpstreamAuth | UpstreamFailed | UpstreamTimeout | UpstreamBusy
            | TokenUnavailable | CircuitOpen | Overloaded | RateLimited | DeadlineExceeded
            | OutboxUnavailable | OutboxFull | DeliveryNotFound | Internal => {
                Kind::ALL.contains(&kind)
            }
        }
    }

    #[test]
    fn every_kind_is_listed_once_with_its_own_slug() {
        for kind in Kind::ALL {
            assert!(listed(kind));
            let slug = kind.row().1;
            assert_eq!(Kind::from_slug(slug), Some(kind), "{slug}");
        }
        assert_eq!(Kind::from_slug("no-such-kind"), None);
        assert_eq!(Kind::from_slug(""), None);
    }

    #[test]
    fn every_slug_has_a_row_in_docs_problems_md_and_the_table_no_other() {
        for kind in Kind::ALL {
            let (status, slug, title) = kind.row();
            let page = problem_page(slug)
                .unwrap_or_else(|| panic!("docs/problems.md has no row for `{slug}`"));
            assert!(page.starts_with(&format!("# {title}\n")), "{page}");
            assert!(page.contains(&format!("`/problems/{slug}`")), "{page}");
            assert!(page.contains("| slug | status |"), "{page}");
            let row = page
                .lines()
                .find(|l| l.starts_with(&format!("| `{slug}` |")))
                .unwrap_or_else(|| panic!("{page}"));
            // The table's status is the one the gateway answers with.
            let doc_status = row.split('|').nth(2).map(str::trim);
            assert_eq!(doc_status, Some(status.as_str()), "{slug}: {row}");
            if row.contains("(see below)") {
                assert!(page.contains("## Retrying a receipt"), "{page}");
                assert!(!page.contains("## The reverse proxy"), "{page}");
            }
        }
        // Every row of the table is a kind the gateway has.
        let rows = PROBLEMS_MD
            .lines()
            .skip_while(|l| !l.starts_with("| slug |"))
            .skip(2)
            .take_while(|l| l.starts_with('|'));
        let mut n = 0;
        for row in rows {
            let slug = row.split('`').nth(1).unwrap_or_default();
            assert!(Kind::from_slug(slug).is_some(), "unknown slug in {row}");
            n += 1;
        }
        assert_eq!(n, Kind::ALL.len());
    }

    #[test]
    fn an_unknown_slug_has_no_page() {
        for slug in ["", "nope", "circuit-open/", "CIRCUIT-OPEN", "slug |", "`"] {
            assert_eq!(problem_page(slug), None, "{slug:?}");
        }
    }
}
