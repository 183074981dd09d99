//! The upstream: the typed model of the Vipps API, the client and the token cache.

pub mod client;
pub mod http1;
pub mod model;
mod receipt_json;
pub mod resilience;
pub mod token;

pub use client::{RawResponse, Upstream, UpstreamError, VippsClient};
