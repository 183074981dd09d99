//! The outbox: receipts and category links accepted with
//! `Prefer: respond-async`, held until Vipps has them.
//!
//! [`store`] keeps them durably in SQLite (one replica, the default) or
//! PostgreSQL (several replicas). A request is committed to the store
//! before the caller is answered `202`, and a worker claims due entries
//! under a lease, so an entry is delivered by one replica at a time, and
//! one left by a replica that died is taken over once its lease ends.

pub mod store;

pub use store::{
    Claimed, Delivery, Enqueued, Kind, NewDelivery, Outcome, PendingStats, State, Store, StoreError,
};
