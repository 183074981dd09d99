//! The one integration-test binary: gateway and simulator over real HTTP
//! on loopback.

// A failed expectation in a test should stop it with its message.
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod architecture;
mod auth;
mod bad_input;
mod categories_v3;
mod cli;
mod facade;
mod health;
mod helpers;
mod hostile_input;
mod lifecycle;
mod logs;
mod metrics;
mod openapi;
mod outbox;
mod outbox_crash;
mod outbox_group_commit;
mod outbox_limits;
mod outbox_store;
mod outbox_store_down;
mod preview;
mod problems;
mod properties;
mod proxy;
mod receipts;
mod resilience;
mod secrets;
mod simulator;
mod tax_rates;
mod tokens;
mod traces;
mod upstream_errors;
mod upstream_http;
