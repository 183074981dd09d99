//! What is known of the request being served, for every layer that needs
//! it without the request in hand: its id, path and deadline, kept in a
//! task-local by the request middleware. An error body names the request
//! from here, so this module depends on nothing that builds responses.

use std::cell::Cell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use actix_web::http::header::HeaderName;
use actix_web::HttpMessage as _;

use crate::config::Merchant;
use crate::vipps::{CallContext, Observed};

pub const HEADER: &str = "x-request-id";
/// [`HEADER`] as a header name, for lookups without parsing the name.
pub const HEADER_NAME: HeaderName = HeaderName::from_static(HEADER);

/// What an error body and a handler need to know about the request being
/// served.
#[derive(Debug, Clone)]
pub struct RequestContext {
    pub id: Arc<str>,
    pub path: String,
    /// When the request must be answered; upstream calls and retries stop
    /// before it.
    pub deadline: tokio::time::Instant,
    /// Where the Vipps client leaves the last exchange, for the log.
    pub(crate) observed: Observed,
    /// Set once a resource has recorded the route.
    pub(crate) routed: Routed,
    /// The request span's trace context: its upstream calls and the
    /// deliveries it stores continue it.
    pub trace: crate::trace::Context,
    /// The configured merchant of the request's MSN (the path's, or the
    /// proxy's header), as the middleware found it.
    pub merchant: Option<Arc<Merchant>>,
}

/// How requests are served, as app data: the most time one may take
/// (`resilience.request_deadline`).
#[derive(Debug, Clone, Copy)]
pub struct RequestSettings {
    pub deadline: Duration,
}

tokio::task_local! {
    static CONTEXT: RequestContext;
}

/// The context of the request being served, if any.
pub fn current() -> Option<RequestContext> {
    CONTEXT.try_with(Clone::clone).ok()
}

/// The deadline of the request being served, if any.
pub fn current_deadline() -> Option<tokio::time::Instant> {
    CONTEXT.try_with(|c| c.deadline).ok()
}

/// Serves `work` as the request `ctx`: [`current`] answers it meanwhile.
pub async fn serve<F: std::future::Future>(ctx: RequestContext, work: F) -> F::Output {
    CONTEXT.scope(ctx, work).await
}

/// The operation of a request that reached a resource, set by [`routed`]
/// once it has recorded the route on the span; shared with the request
/// middleware, which records the route itself otherwise.
#[derive(Debug, Clone, Default)]
pub(crate) struct Routed(pub(crate) Rc<Cell<Option<&'static str>>>);

/// The context of a request's upstream calls for `merchant`: its deadline
/// and where the client leaves what the last exchange showed.
pub fn call_context(req: &actix_web::HttpRequest, merchant: Arc<Merchant>) -> CallContext {
    let extensions = req.extensions();
    let ctx = extensions.get::<RequestContext>();
    let deadline = ctx.map_or_else(
        || tokio::time::Instant::now() + DEFAULT_DEADLINE,
        |c| c.deadline,
    );
    let observed = ctx.map(|c| c.observed.clone()).unwrap_or_default();
    CallContext {
        merchant,
        deadline,
        observed,
        trace: ctx.map(|c| c.trace.clone()),
    }
}

/// The deadline of a request served without [`RequestSettings`].
pub(crate) const DEFAULT_DEADLINE: Duration = Duration::from_secs(20);
