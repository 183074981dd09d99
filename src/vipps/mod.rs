//! The upstream: the typed model of the Vipps API, the client, its
//! transport and the token cache. Nothing here knows who calls it.

pub mod client;
pub mod model;
pub mod resilience;
pub mod token;
pub mod transport;

pub use client::{
    CallContext, Exchange, Observed, RawResponse, Retry, Upstream, UpstreamError, VippsClient,
};
