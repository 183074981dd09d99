//! The outbox's durable store, through sqlx: an embedded SQLite file (WAL,
//! full sync; one replica) or PostgreSQL (several replicas). Both have the
//! same table (`migrations/sqlite`, `migrations/postgres`, embedded in the
//! binary) and, but for the claim's row locks and how an insert reports its
//! `seq`, the same statements.
//!
//! Times are Unix milliseconds, passed in by the caller, so a test decides
//! what "now" is and replicas compare the same clock (the wall clock).
//!
//! What the store guarantees (docs/decisions.md, "Outbox"):
//! - [`Store::enqueue`] returns once the entry is committed (SQLite with
//!   `synchronous = FULL`, PostgreSQL's commit), in a group with the
//!   enqueues that came with it (see [`Grouping`]);
//! - at most one pending receipt per order, enforced by a unique index, so
//!   two replicas taking the same receipt at once store it once;
//! - [`Store::claim`] hands an entry to one claimer at a time, under a lease
//!   that another claimer takes over only once it has ended; PostgreSQL
//!   claims with `FOR UPDATE SKIP LOCKED`, SQLite has one writer;
//! - an entry is claimed only when no earlier pending entry of its order
//!   exists, so one order's entries are delivered in the order they came;
//! - [`Store::finish`] records an attempt only while the claim is still the
//!   caller's: a claimer whose lease was taken over changes nothing;
//! - a SQLite file is one process's: a store holds an exclusive lock on
//!   `<file>-lock` while it is open, and another process's open is refused
//!   ([`StoreError::InUse`]) rather than sharing the file's write lock.

use std::path::{Path, PathBuf};
use std::str::FromStr as _;
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use secrecy::{ExposeSecret as _, SecretString};
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("migrations/sqlite");
static POSTGRES_MIGRATIONS: Migrator = sqlx::migrate!("migrations/postgres");

/// How long a SQLite statement waits for the one connection (held by a
/// group commit) or the file's lock before the store counts as unavailable.
/// The file is local: a wait means load, not an outage.
const SQLITE_ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a PostgreSQL statement waits for a connection (connecting
/// included) before the store counts as unavailable: a database that is
/// down or unreachable costs a caller at most this, and its `503` comes
/// within a second (SPEC §3).
const POSTGRES_ACQUIRE_TIMEOUT: Duration = Duration::from_millis(500);

/// PostgreSQL connections per replica: the writers (one each while it
/// commits a group), the worker and the delivery reads share them.
const POSTGRES_CONNECTIONS: u32 = 8;

/// Most enqueues committed together. On PostgreSQL each runs in a
/// savepoint of its own, which takes a subtransaction id once it writes:
/// a backend keeps 64 of them at hand, and a transaction with more makes
/// every snapshot in the cluster look them up on disk.
const GROUP_MAX: usize = 64;

/// PostgreSQL writers per replica, each committing its own group: while one
/// waits for its statements and its commit, the next gathers and runs the
/// next group. SQLite has one writer (the store has one connection).
const POSTGRES_WRITERS: usize = 4;

/// Tries of an enqueue whose statement met another transaction's work: the
/// same order's pending receipt, stored by another writer or replica since
/// the enqueue looked (a unique violation), or a deadlock between two
/// groups. Each try after the first runs in the next group, whose
/// statements see what the other committed.
const ENQUEUE_TRIES: u8 = 3;

/// Every column of `deliveries`, in [`Row`]'s order (a macro, so that
/// statements stay `&'static str`).
macro_rules! columns {
    () => {
        "seq, id, msn, kind, payment_type, order_id, fingerprint, payload, state, attempts, \
         created_at, updated_at, delivered_at, next_attempt_at, last_error, lease_owner, lease_until, \
         trace_parent, trace_state, created_by, created_by_client"
    };
}

const SELECT_ORDER: &str = concat!(
    "SELECT ",
    columns!(),
    " FROM deliveries WHERE msn = $1 AND payment_type = $2 AND order_id = $3 AND kind = $4 \
     AND state IN ('pending', 'delivered') ORDER BY seq DESC"
);

// Only while no claimer holds it: one that does may be sending the old
// link right now.
const REPLACE: &str = concat!(
    "UPDATE deliveries SET payload = $1, fingerprint = $2, updated_at = $3, \
     trace_parent = $5, trace_state = $6, created_by = $7, created_by_client = $8 \
     WHERE seq = $4 AND state = 'pending' AND (lease_owner IS NULL OR lease_until <= $3) \
     RETURNING ",
    columns!()
);

/// The merchant's pending entries, counted up to `$2` (an index-only walk
/// that stops there, however long the backlog).
const COUNT_PENDING: &str = "SELECT COUNT(*) FROM (SELECT 1 FROM deliveries \
     WHERE msn = $1 AND state = 'pending' LIMIT $2) AS p";

/// A new entry; what it stores is known but for its `seq`, which SQLite
/// reports as the last rowid and PostgreSQL returns ([`INSERT_POSTGRES`]).
macro_rules! insert {
    ($returning:literal) => {
        concat!(
            insert_columns!(),
            " VALUES ($1, $2, $3, $4, $5, $6, $7, 'pending', 0, $8, $9, $10, $11, $12, $13, $14)",
            $returning
        )
    };
}

/// The columns a new entry's insert sets, in [`bind_insert!`]'s order but
/// for the literals (`'pending'`, `0`).
macro_rules! insert_columns {
    () => {
        "INSERT INTO deliveries (id, msn, kind, payment_type, order_id, fingerprint, payload, \
         state, attempts, created_at, updated_at, next_attempt_at, \
         trace_parent, trace_state, created_by, created_by_client)"
    };
}

/// Without `RETURNING`: SQLite prepares a statement with a `RETURNING`
/// clause again at every execution, which cost more than the insert.
const INSERT_SQLITE: &str = insert!("");
const INSERT_POSTGRES: &str = insert!(" RETURNING seq");

/// The merchants with due entries at `$1` that no claimer holds, at most
/// `$3`, taken in turn: in MSN order from the first after `$4` (where the
/// last claim stopped), then from the first MSN on up to `$4`; but for
/// those left out (`$2`: MSNs are digits, a comma-delimited list matched
/// with LIKE). A walk from merchant to merchant on
/// `deliveries_pending_merchant` (two recursive queries, one for each
/// part of the turn), which stops once it has found `$3`: for each
/// merchant it passes, however long its backlog, an index probe and the
/// rows of its first due entries up to the first one no claimer holds
/// (the held ones are at most the claimers' batches in flight). Ordered
/// by the MSN and then the time an entry is due, so that only this index
/// serves it without a sort (`enable_sort` is off in a PostgreSQL claim):
/// `deliveries_listing` also holds the finished entries, and a probe for
/// a merchant's first pending entry on it walks past them. SQLite is told
/// the index, having no statistics.
macro_rules! due_merchants {
    ($indexed:literal) => {
        concat!(
            "WITH RECURSIVE after(msn) AS (\
               SELECT * FROM (SELECT msn FROM deliveries ",
            $indexed,
            " WHERE state = 'pending' AND msn > $4 ORDER BY msn, next_attempt_at LIMIT 1) AS first \
               UNION ALL \
               SELECT (SELECT d.msn FROM deliveries d ",
            $indexed,
            " WHERE d.state = 'pending' AND d.msn > after.msn ORDER BY d.msn, d.next_attempt_at \
               LIMIT 1) FROM after WHERE after.msn IS NOT NULL), \
             from_start(msn) AS (\
               SELECT * FROM (SELECT msn FROM deliveries ",
            $indexed,
            " WHERE state = 'pending' AND msn <= $4 ORDER BY msn, next_attempt_at LIMIT 1) AS first \
               UNION ALL \
               SELECT (SELECT d.msn FROM deliveries d ",
            $indexed,
            " WHERE d.state = 'pending' AND d.msn > from_start.msn AND d.msn <= $4 \
               ORDER BY d.msn, d.next_attempt_at LIMIT 1) \
               FROM from_start WHERE from_start.msn IS NOT NULL) \
             SELECT msn FROM (SELECT msn FROM after UNION ALL SELECT msn FROM from_start) AS w \
             WHERE msn IS NOT NULL AND $2 NOT LIKE '%,' || msn || ',%' \
             AND (SELECT d.next_attempt_at FROM deliveries d ",
            $indexed,
            " WHERE d.state = 'pending' AND d.msn = w.msn \
               AND (d.lease_owner IS NULL OR d.lease_until <= $1) \
               ORDER BY d.next_attempt_at LIMIT 1) <= $1 \
             LIMIT $3"
        )
    };
}

const DUE_MERCHANTS_SQLITE: &str = due_merchants!("INDEXED BY deliveries_pending_merchant");
/// Public for a test of the plan a server makes of it.
#[doc(hidden)]
pub const DUE_MERCHANTS_POSTGRES: &str = due_merchants!("");

/// Merchants in one claim at most: each takes a slot of the claim's
/// statement ([`claim_shares`]), which comes in the sizes of a group's
/// statements ([`by_size`]).
const CLAIM_MERCHANTS_MAX: usize = GROUP_MAX;

/// The claim of the due entries of `n` merchants, each up to its share:
/// for each, its first due entries in order that no claimer holds and that
/// are the first pending entry of their order. `param(i)` names parameter
/// `i`: the claim's owner (1), its lease's end (2) and now (3), then each
/// merchant's MSN and share (4 and 5 for the first). `lock` is the row
/// locks, `rows(slots)` how the update finds the rows the slots take
/// (PostgreSQL's and SQLite's differ, below).
///
/// Both forms plan the same with statistics or without (a table just
/// filled, never analyzed, whose indexes a planner takes for empty and
/// all alike):
/// - The first of an order is found by a probe of
///   `deliveries_pending_order` (led by the order) for the order's lowest
///   `seq`, a subquery a planner cannot turn into a join. Its merchant is
///   compared as `msn || ''` and the lowest `seq` taken as `MIN(seq + 0)`,
///   so that no index led by the merchant, and not the key's order, can
///   serve it: without statistics, a `NOT EXISTS` of an earlier entry was
///   planned as a scan of every pending entry of the merchant for each
///   entry taken (a drain of 790 receipts/s instead of 6,400).
/// - On PostgreSQL the rows taken are an array of `seq`s that the update
///   looks up by its key: `seq IN (…)` was planned as a scan of the whole
///   table.
fn claim_shares(
    n: usize,
    lock: &str,
    param: fn(usize) -> String,
    rows: fn(&str) -> String,
) -> String {
    let now = param(3);
    let slots = (0..n)
        .map(|i| {
            format!(
                "SELECT seq FROM (SELECT d.seq FROM deliveries d \
                 WHERE d.state = 'pending' AND d.msn = {msn} AND d.next_attempt_at <= {now} \
                 AND (d.lease_owner IS NULL OR d.lease_until <= {now}) \
                 AND d.seq = (SELECT MIN(e.seq + 0) FROM deliveries e \
                   WHERE e.state = 'pending' AND e.order_id = d.order_id \
                   AND e.payment_type = d.payment_type AND e.msn || '' = d.msn) \
                 ORDER BY d.next_attempt_at, d.seq LIMIT {share} {lock}) AS s{i}",
                msn = param(4 + 2 * i),
                share = param(5 + 2 * i),
            )
        })
        .collect::<Vec<_>>()
        .join(" UNION ALL ");
    format!(
        "UPDATE deliveries SET lease_owner = {}, lease_until = {} WHERE {} RETURNING {}",
        param(1),
        param(2),
        rows(&slots),
        columns!()
    )
}

/// [`claim_shares`] for 1, 2, 4, … [`CLAIM_MERCHANTS_MAX`] merchants, at
/// `[log2 of the number]`; the slots a claim does not fill take no MSN.
/// SQLite's parameters are numbered (`?NNN`): found by number, not by name.
/// SQLite has one writer: a claim never meets another's.
static CLAIM_SQLITE: BySize = BySize::new(|| {
    by_size(|n| {
        claim_shares(
            n,
            "",
            |i| format!("?{i}"),
            |slots| format!("seq IN ({slots})"),
        )
    })
});
/// The PostgreSQL claim of `merchants` merchants' shares (at most
/// [`CLAIM_MERCHANTS_MAX`]): public for a test of the plan a server makes
/// of it. Its parameters are described at [`claim_shares`].
#[doc(hidden)]
pub fn claim_statement_postgres(merchants: usize) -> &'static str {
    &CLAIM_POSTGRES[claim_size(merchants)]
}

/// Where the statement with a slot for each of `merchants` merchants is in
/// [`CLAIM_SQLITE`] and [`CLAIM_POSTGRES`].
fn claim_size(merchants: usize) -> usize {
    merchants
        .clamp(1, CLAIM_MERCHANTS_MAX)
        .next_power_of_two()
        .ilog2() as usize
}

/// Rows another replica is claiming are skipped, not waited for.
static CLAIM_POSTGRES: BySize = BySize::new(|| {
    by_size(|n| {
        claim_shares(
            n,
            "FOR UPDATE SKIP LOCKED",
            |i| format!("${i}"),
            |slots| format!("seq = ANY (ARRAY({slots}))"),
        )
    })
});

/// Run first in a claim's transaction, for its statements alone
/// ([`DUE_MERCHANTS_POSTGRES`], [`CLAIM_POSTGRES`]):
/// - No sort: each merchant's due entries are read in the order of
///   `deliveries_pending_merchant` up to its share, whatever the table's
///   statistics say. Planned with statistics that count few pending
///   entries (a table just filled, or not analyzed since the backlog
///   grew), the claim in due order read every due entry, checked each
///   one's order and sorted them all to take 32: 67 ms a claim at 20,000
///   pending, against 2 ms in order.
/// - No JIT compilation: the planner cannot tell how far the walk from
///   merchant to merchant recurses, estimates it past `jit_above_cost`, and
///   a server with JIT compiles the statement at every claim: 235 ms for a
///   statement that runs in 0.2 ms.
#[doc(hidden)]
pub const CLAIM_SETTINGS_POSTGRES: &str =
    "SELECT set_config('enable_sort', 'off', true), set_config('jit', 'off', true)";

const GET: &str = concat!(
    "SELECT ",
    columns!(),
    " FROM deliveries WHERE id = $1 AND msn = $2"
);

const LIST: &str = concat!(
    "SELECT ",
    columns!(),
    " FROM deliveries WHERE msn = $1 AND ($2 IS NULL OR state = $2) AND seq < $3 \
     ORDER BY seq DESC LIMIT $4"
);

/// The pending entries per merchant and kind, and when the oldest (the
/// first stored: the lowest `seq`) was created. On SQLite the counts read
/// `deliveries_pending_merchant` alone (told so: with no statistics SQLite
/// may take an index on the state and read every pending row), one row is
/// read per merchant and kind: reading every pending row
/// (`MIN(created_at)`) took 157–199 ms during a Vipps outage (20,000 to
/// 100,000 pending), while the store's one connection waited. On
/// PostgreSQL, with replicas whose clocks differ, the entry with the lowest
/// `seq` may be a little younger than the oldest; the gauge is an age in
/// seconds.
macro_rules! pending_stats {
    ($indexed:literal) => {
        concat!(
            "SELECT g.msn, g.kind, g.n, d.created_at FROM (\
               SELECT msn, kind, COUNT(*) AS n, MIN(seq) AS oldest FROM deliveries ",
            $indexed,
            " WHERE state = 'pending' GROUP BY msn, kind) g \
             JOIN deliveries d ON d.seq = g.oldest ORDER BY g.msn, g.kind"
        )
    };
}

const PENDING_STATS_SQLITE: &str = pending_stats!("INDEXED BY deliveries_pending_merchant");
const PENDING_STATS_POSTGRES: &str = pending_stats!("");

/// What an entry asks of Vipps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Receipt,
    Category,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Receipt => "receipt",
            Kind::Category => "category",
        }
    }

    fn parse(s: &str) -> Result<Self, StoreError> {
        match s {
            "receipt" => Ok(Kind::Receipt),
            "category" => Ok(Kind::Category),
            _ => Err(StoreError::Corrupt(format!("unknown kind {s:?}"))),
        }
    }
}

/// Where an entry stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum State {
    /// Not yet at Vipps: due now or at `next_attempt_at`.
    Pending,
    /// Vipps has it.
    Delivered,
    /// Given up: Vipps refused it, or `outbox.max_age` passed.
    Failed,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Pending => "pending",
            State::Delivered => "delivered",
            State::Failed => "failed",
        }
    }

    /// The state a caller names (`?state=failed`).
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "pending" => Some(State::Pending),
            "delivered" => Some(State::Delivered),
            "failed" => Some(State::Failed),
            _ => None,
        }
    }
}

/// A request to store.
#[derive(Debug, Clone)]
pub struct NewDelivery {
    pub msn: String,
    pub kind: Kind,
    pub payment_type: String,
    pub order_id: String,
    /// Identifies the request's content: an identical repost has the same.
    pub fingerprint: String,
    /// What the worker sends and what the delivery resource shows (JSON).
    pub payload: String,
    pub origin: Origin,
}

/// Where an entry came from: the accepting request's trace context, which
/// its delivery attempts continue, and the caller that sent it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Origin {
    /// The accepting request span's `traceparent`.
    pub trace_parent: Option<String>,
    /// The caller's `tracestate`, passed on.
    pub trace_state: Option<String>,
    /// The caller's JWT `sub`; `None` without JWT authentication.
    pub created_by: Option<String>,
    /// The caller's client id (`azp` or `client_id`), when its token had one.
    pub created_by_client: Option<String>,
}

/// A stored entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// The store's order of arrival (the listing's cursor).
    pub seq: i64,
    pub id: String,
    pub msn: String,
    pub kind: Kind,
    pub payment_type: String,
    pub order_id: String,
    pub fingerprint: String,
    pub payload: String,
    pub state: State,
    pub attempts: i64,
    pub created_at: i64,
    pub updated_at: i64,
    pub delivered_at: Option<i64>,
    /// When a pending entry is due next; `None` once it is finished.
    pub next_attempt_at: Option<i64>,
    /// The last attempt's problem (JSON), if an attempt failed.
    pub last_error: Option<String>,
    pub origin: Origin,
}

/// What [`Store::enqueue`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Enqueued {
    /// Stored as a new entry.
    Created(Delivery),
    /// The same request is already pending: this is its entry.
    Repost(Delivery),
    /// A different receipt for the order is pending; nothing was stored.
    Conflict(Delivery),
    /// A pending category link of the order, not yet claimed, now carries
    /// this request instead.
    Replaced(Delivery),
    /// A receipt for the order was delivered already; nothing was stored
    /// (the caller answers as for a synchronous request).
    AlreadyDelivered(Delivery),
    /// The merchant has its most pending entries already
    /// (`outbox.max_pending_per_merchant`); nothing was stored.
    Full,
}

/// An entry handed to a claimer, until its lease ends.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub delivery: Delivery,
    pub lease_until: i64,
}

/// What a claim took ([`Store::claim_shares`]).
#[derive(Debug)]
pub struct Claims {
    /// In `seq` order.
    pub claimed: Vec<Claimed>,
    /// Some merchant took its whole share: more of its entries may be due.
    pub more: bool,
}

/// The result of one delivery attempt.
#[derive(Debug, Clone)]
pub enum Outcome {
    Delivered,
    /// Try again at `next_attempt_at`; `error` is the attempt's problem.
    Retry {
        next_attempt_at: i64,
        error: String,
    },
    /// Give up; `error` is the problem that ended it.
    Failed {
        error: String,
    },
    /// Nothing was sent (the merchant's breaker, rate or call slots held it
    /// back): due again at `next_attempt_at`, its attempts and last error
    /// unchanged.
    Postponed {
        next_attempt_at: i64,
    },
}

/// Pending entries of one merchant and kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingStats {
    pub msn: String,
    pub kind: Kind,
    pub count: i64,
    pub oldest_created_at: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("outbox.url must be a sqlite:// or postgres:// URL")]
    Url,
    /// The store cannot be reached or refused the statement. `reason`
    /// never holds the password.
    #[error("outbox store {store} is unavailable: {reason}")]
    Unavailable { store: String, reason: String },
    #[error("outbox store holds an unreadable entry: {0}")]
    Corrupt(String),
    /// The connection broke while the transaction committed: the entry may
    /// or may not be stored.
    #[error("outbox store {store}: the commit's outcome is unknown ({reason})")]
    CommitUnknown { store: String, reason: String },
    /// Another process has the SQLite store open: one file serves one
    /// gateway.
    #[error(
        "outbox store {store} is held by another process (its lock file {} is locked); \
         a SQLite store serves one gateway: stop the other process or give this one \
         another file",
        lock.display()
    )]
    InUse {
        store: String,
        lock: std::path::PathBuf,
    },
}

#[derive(Clone)]
enum Pool {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// The outbox's store. Cheap to clone (a connection pool).
#[derive(Clone)]
pub struct Store {
    pool: Pool,
    /// The store's URL without its password, for logs and errors.
    name: String,
    /// The enqueues' way to the writers, which commit them in groups.
    writer: tokio::sync::mpsc::Sender<Job>,
    /// Most pending entries per merchant (`outbox.max_pending_per_merchant`).
    max_pending: i64,
    /// A SQLite store's hold on its file, until it is closed.
    lock: Option<Arc<FileLock>>,
    /// The last merchant of the last claim: the next takes merchants in
    /// turn from the one after it ([`Store::claim_shares`]).
    turn: Arc<std::sync::Mutex<String>>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("name", &self.name).finish()
    }
}

/// Runs `$body` with `$pool` bound to the store's pool, whichever database
/// it is: the statements are the same, the types differ.
macro_rules! with_pool {
    ($store:expr, $pool:ident => $body:expr) => {
        match &$store.pool {
            Pool::Sqlite($pool) => $body,
            Pool::Postgres($pool) => $body,
        }
    };
}

/// What a request comes to, given its order's entries as [`SELECT_ORDER`]
/// reads them (newest first), before anything is written.
enum Decision {
    /// Answered by what is stored; nothing to write.
    Answer(Box<Result<Enqueued, StoreError>>),
    /// The pending category link `seq`, not yet claimed, takes this request
    /// ([`REPLACE`]).
    Replace(i64),
    /// A new entry, if the merchant has room.
    Insert,
}

fn decide(new: &NewDelivery, mut existing: Vec<Row>, now: i64) -> Decision {
    let pending = existing
        .iter()
        .position(|r| r.state == State::Pending.as_str());
    match (new.kind, pending) {
        (Kind::Receipt, Some(i)) => {
            let row = existing.swap_remove(i);
            let same = row.fingerprint == new.fingerprint;
            Decision::Answer(Box::new(row.delivery().map(|d| {
                if same {
                    Enqueued::Repost(d)
                } else {
                    Enqueued::Conflict(d)
                }
            })))
        }
        (Kind::Receipt, None) if !existing.is_empty() => Decision::Answer(Box::new(
            existing
                .swap_remove(0)
                .delivery()
                .map(Enqueued::AlreadyDelivered),
        )),
        (Kind::Category, Some(i)) if !existing[i].leased(now) => {
            if existing[i].fingerprint == new.fingerprint {
                Decision::Answer(Box::new(
                    existing.swap_remove(i).delivery().map(Enqueued::Repost),
                ))
            } else {
                Decision::Replace(existing[i].seq)
            }
        }
        _ => Decision::Insert,
    }
}

/// A new entry's id: a UUID version 7, ordered by time (and within a
/// millisecond, by a counter), so that the unique index on ids takes a
/// group's new entries on its last pages. Random ids (version 4) put each
/// on a page of its own, and every page a commit changes is written to the
/// log and again to the file. Its 74 random bits keep it unguessable;
/// the time it tells is the entry's `createdAt`, shown anyway.
fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// The entry a new request became, stored as `id` and `seq` at `now`.
fn created(new: &NewDelivery, id: String, seq: i64, now: i64) -> Delivery {
    Delivery {
        seq,
        id,
        msn: new.msn.clone(),
        kind: new.kind,
        payment_type: new.payment_type.clone(),
        order_id: new.order_id.clone(),
        fingerprint: new.fingerprint.clone(),
        payload: new.payload.clone(),
        state: State::Pending,
        attempts: 0,
        created_at: now,
        updated_at: now,
        delivered_at: None,
        next_attempt_at: Some(now),
        last_error: None,
        origin: new.origin.clone(),
    }
}

/// The merchant `$msn`'s pending entries in `$conn`, counted up to `$max`
/// ([`COUNT_PENDING`]).
macro_rules! count_pending {
    ($conn:expr, $msn:expr, $max:expr) => {
        async {
            let (pending,): (i64,) = sqlx::query_as(COUNT_PENDING)
                .bind($msn)
                .bind($max)
                .fetch_one($conn)
                .await?;
            Ok::<i64, sqlx::Error>(pending)
        }
    };
}

/// One request's enqueue in the open transaction `$tx` (`&mut
/// Transaction`), which the caller commits: what [`Store::enqueue`] answers,
/// and at most one statement that writes. `$insert` stores a new entry
/// ([`insert_sqlite`], [`insert_postgres`]). `$pending` holds the pending
/// entries of each merchant the group has counted so far, its own creations
/// included: a merchant's backlog is counted once per group, not once per
/// request (the count walks up to `outbox.max_pending_per_merchant` index
/// entries, so per request it grew with the backlog).
macro_rules! enqueue_in {
    ($tx:expr, $new:expr, $now:expr, $max_pending:expr, $pending:expr, $insert:path) => {
        async {
            let tx = $tx;
            let new: &NewDelivery = $new;
            let now: i64 = $now;
            let max_pending: i64 = $max_pending;
            let counted: &mut std::collections::HashMap<String, i64> = $pending;
            let existing: Vec<Row> = sqlx::query_as(SELECT_ORDER)
                .bind(&new.msn)
                .bind(&new.payment_type)
                .bind(&new.order_id)
                .bind(new.kind.as_str())
                .fetch_all(&mut **tx)
                .await?;
            let mut decision = decide(new, existing, now);
            if let Decision::Replace(seq) = decision {
                let replaced: Option<Row> = sqlx::query_as(REPLACE)
                    .bind(&new.payload)
                    .bind(&new.fingerprint)
                    .bind(now)
                    .bind(seq)
                    .bind(&new.origin.trace_parent)
                    .bind(&new.origin.trace_state)
                    .bind(&new.origin.created_by)
                    .bind(&new.origin.created_by_client)
                    .fetch_optional(&mut **tx)
                    .await?;
                decision = match replaced {
                    Some(row) => Decision::Answer(Box::new(row.delivery().map(Enqueued::Replaced))),
                    None => Decision::Insert,
                };
            }
            let answer = match decision {
                Decision::Answer(answer) => *answer,
                Decision::Replace(_) | Decision::Insert => 'insert: {
                    let pending = match counted.get(&new.msn) {
                        Some(pending) => *pending,
                        None => {
                            let pending = count_pending!(&mut **tx, &new.msn, max_pending).await?;
                            counted.insert(new.msn.clone(), pending);
                            pending
                        }
                    };
                    if pending >= max_pending {
                        break 'insert Ok(Enqueued::Full);
                    }
                    let id = new_id();
                    let seq = $insert(&mut **tx, new, &id, now).await?;
                    if let Some(pending) = counted.get_mut(&new.msn) {
                        *pending += 1;
                    }
                    Ok(Enqueued::Created(created(new, id, seq, now)))
                }
            };
            Ok::<_, sqlx::Error>(answer)
        }
    };
}

/// Binds a new entry's values to `INSERT_*`.
macro_rules! bind_insert {
    ($statement:expr, $new:expr, $id:expr, $now:expr) => {
        $statement
            .bind($id)
            .bind(&$new.msn)
            .bind($new.kind.as_str())
            .bind(&$new.payment_type)
            .bind(&$new.order_id)
            .bind(&$new.fingerprint)
            .bind(&$new.payload)
            .bind($now)
            .bind($now)
            .bind($now)
            .bind(&$new.origin.trace_parent)
            .bind(&$new.origin.trace_state)
            .bind(&$new.origin.created_by)
            .bind(&$new.origin.created_by_client)
    };
}

/// Stores a new entry on SQLite: its `seq`.
async fn insert_sqlite(
    conn: &mut sqlx::SqliteConnection,
    new: &NewDelivery,
    id: &str,
    now: i64,
) -> Result<i64, sqlx::Error> {
    Ok(bind_insert!(sqlx::query(INSERT_SQLITE), new, id, now)
        .execute(conn)
        .await?
        .last_insert_rowid())
}

/// Stores a new entry on PostgreSQL: its `seq`.
async fn insert_postgres(
    conn: &mut sqlx::PgConnection,
    new: &NewDelivery,
    id: &str,
    now: i64,
) -> Result<i64, sqlx::Error> {
    let (seq,): (i64,) = bind_insert!(sqlx::query_as(INSERT_POSTGRES), new, id, now)
        .fetch_one(conn)
        .await?;
    Ok(seq)
}

/// An enqueue waiting for a writer.
struct Job {
    new: NewDelivery,
    now: i64,
    max_pending: i64,
    /// Tries so far (see [`ENQUEUE_TRIES`]).
    tries: u8,
    done: tokio::sync::oneshot::Sender<Result<Enqueued, StoreError>>,
}

/// Called with the store (`sqlite`, `postgres`) and the number of requests
/// each committed group answered.
pub type GroupObserver = Arc<dyn Fn(&'static str, usize) + Send + Sync>;

/// How a store commits enqueues (`outbox.group_commit_wait`).
///
/// Every enqueue goes to a writer, which commits enqueues in groups: one
/// transaction and one commit (one sync to disk) for all of them, each
/// answered only once that commit is done. A group is the first enqueue, every
/// one already waiting, and every one that comes within `wait` of the first,
/// up to 64. The wait is what lets requests that arrive a little apart
/// share a commit; a group that is full goes at once.
#[derive(Clone, Default)]
pub struct Grouping {
    /// How long a group stays open after its first enqueue; zero: it takes
    /// only the enqueues already waiting.
    pub wait: Duration,
    /// Told the size of every committed group (a metric).
    pub observe: Option<GroupObserver>,
}

impl std::fmt::Debug for Grouping {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Grouping")
            .field("wait", &self.wait)
            .finish_non_exhaustive()
    }
}

/// Adds the next enqueues to `group`: when it is empty, the first to come
/// (`false`: none will, every sender is gone); then every one already
/// waiting and, until `wait` after the first, every one that comes, up to
/// `max`. A non-empty `group` (carried over from the last) has waited once:
/// it takes only what is waiting.
async fn gather<T>(
    group: &mut Vec<T>,
    jobs: &mut tokio::sync::mpsc::Receiver<T>,
    wait: Duration,
    max: usize,
) -> bool {
    use tokio::sync::mpsc::error::TryRecvError;
    let wait = if group.is_empty() {
        match jobs.recv().await {
            Some(first) => group.push(first),
            None => return false,
        }
        wait
    } else {
        Duration::ZERO
    };
    let until = std::time::Instant::now() + wait;
    let mut deadline = None;
    while group.len() < max {
        match jobs.try_recv() {
            Ok(job) => group.push(job),
            Err(TryRecvError::Disconnected) => break,
            Err(TryRecvError::Empty) if wait.is_zero() => break,
            Err(TryRecvError::Empty) => {
                let deadline = deadline.get_or_insert_with(|| Box::pin(sleep_until(until)));
                tokio::select! {
                    biased;
                    () = deadline.as_mut() => break,
                    job = jobs.recv() => match job {
                        Some(job) => group.push(job),
                        None => break,
                    },
                }
            }
        }
    }
    true
}

/// Ends at `until`, within about a tenth of a millisecond: a group's wait
/// is a few milliseconds, and tokio's timer counts whole ones. Measured on
/// the 2-CPU machine, its `timeout_at` ended a wait of 1 ms after 2.09 ms
/// and one of 2 ms after 3.09 ms (medians of 300); a thread of the
/// runtime's blocking pool, waiting with a timeout, after 1.09 and 2.09 ms.
/// Dropped before then (the group filled), it frees the thread at once.
async fn sleep_until(until: std::time::Instant) {
    let (cancel, cancelled) = std::sync::mpsc::channel::<()>();
    let sleep = tokio::task::spawn_blocking(move || {
        // Ends at the timeout, or once `cancel` is dropped.
        let _ = cancelled.recv_timeout(until.saturating_duration_since(std::time::Instant::now()));
    });
    // The thread fails to come only if the runtime is shutting down (the
    // wait is over then too), or comes late if the blocking pool is busy
    // to its bound: tokio's timer, a millisecond past, ends the wait then.
    let backstop = tokio::time::Instant::from_std(until) + Duration::from_millis(1);
    tokio::select! {
        _ = sleep => {}
        () = tokio::time::sleep_until(backstop) => {}
    }
    drop(cancel);
}

/// What one enqueue of a group came to.
enum Tried {
    /// Its answer, sent once the group is committed.
    Answer(Box<Result<Enqueued, StoreError>>),
    /// It met another transaction's work: try it again in the next group.
    Again(sqlx::Error),
}

/// Whether a failed statement met another transaction's work (see
/// [`ENQUEUE_TRIES`]): the unique index of pending receipts, or a deadlock.
fn met_another(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(db) => {
            db.is_unique_violation() || db.code().is_some_and(|c| c == "40P01")
        }
        _ => false,
    }
}

/// Whether a failed statement on SQLite was undone alone, leaving the
/// transaction open: a constraint failure (SQLite's result code 19 and its
/// extended codes). Others (a full disk, an I/O error) may have rolled
/// the whole transaction back.
fn sqlite_statement_undone(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(db) => db
            .code()
            .and_then(|c| c.parse::<i32>().ok())
            .is_some_and(|c| c & 0xff == 19),
        _ => false,
    }
}

/// A group's orders, each once, in the order they came.
fn distinct_keys(keys: &[OrderKey]) -> Vec<&OrderKey> {
    let mut seen = std::collections::HashSet::new();
    keys.iter().filter(|key| seen.insert(*key)).collect()
}

/// The pending entries of each merchant of `$group` (`&[Job]`), in the
/// open transaction `$tx`: the figure `$carried` ([`Carried`]) holds when
/// the whole group could not reach the bound from it, counted otherwise.
macro_rules! count_group {
    ($tx:expr, $group:expr, $carried:expr) => {
        async {
            let group: &[Job] = $group;
            let carried: &Carried = $carried;
            let room = i64::try_from(group.len()).unwrap_or(i64::MAX);
            let mut counted: std::collections::HashMap<String, i64> =
                std::collections::HashMap::new();
            for job in group {
                if !counted.contains_key(&job.new.msn) {
                    let pending = match carried.get(&job.new.msn) {
                        Some(&most) if most.saturating_add(room) < job.max_pending => most,
                        _ => count_pending!(&mut *$tx, &job.new.msn, job.max_pending).await?,
                    };
                    counted.insert(job.new.msn.clone(), pending);
                }
            }
            Ok::<_, sqlx::Error>(counted)
        }
    };
}

/// Where a request of a group goes ([`place`]).
enum Placed {
    /// Answered from the entries read; nothing to write.
    Answer(Box<Result<Enqueued, StoreError>>),
    /// A new entry, added to the group's insert.
    Queued,
    /// To run alone ([`enqueue_in!`]), once the new entries so far are
    /// stored: it writes an order an earlier request of the group wrote, or
    /// replaces a category link.
    Alone,
}

/// Where request `at` of a group (`job`, of order `key`) goes, given the
/// entries the group read (`orders`, taken as each order is first met;
/// `read`, the orders met so far) and each merchant's pending entries
/// (`counted`, which a new entry adds to). A new entry's row goes to
/// `rows` as `(at, id)`.
fn place<'k>(
    at: usize,
    job: &Job,
    key: &'k OrderKey,
    read: &mut std::collections::HashSet<&'k OrderKey>,
    orders: &mut std::collections::HashMap<OrderKey, Vec<Row>>,
    counted: &mut std::collections::HashMap<String, i64>,
    rows: &mut Vec<(usize, String)>,
) -> Placed {
    if !read.insert(key) {
        // An earlier request of the group read this order: what it wrote
        // is not in the entries read.
        return Placed::Alone;
    }
    match decide(&job.new, orders.remove(key).unwrap_or_default(), job.now) {
        Decision::Answer(answer) => Placed::Answer(answer),
        Decision::Replace(_) => Placed::Alone,
        Decision::Insert => {
            let pending = counted.entry(job.new.msn.clone()).or_default();
            if *pending >= job.max_pending {
                Placed::Answer(Box::new(Ok(Enqueued::Full)))
            } else {
                *pending += 1;
                rows.push((at, new_id()));
                Placed::Queued
            }
        }
    }
}

/// Runs a group's enqueues in one PostgreSQL transaction and commits it:
/// each enqueue's [`Tried`], or where the transaction failed ([`Stage`]).
///
/// In the shape of [`run_group_sqlite`]: one read of all its orders' entries
/// ([`ORDERS_POSTGRES`]), one count of each merchant's backlog, and one
/// insert of its new entries ([`insert_all_postgres`]), each a round trip
/// to the server: a few per group, whatever its size. A request whose
/// order an earlier request of the group has written, or that replaces a
/// category link, runs alone after the new entries so far are stored.
/// PostgreSQL aborts a transaction at its first failed statement, so what
/// may fail runs in a savepoint (sqlx's nested `begin`), rolled back alone
/// when it fails: one request's failure answers that request only.
async fn run_group_postgres(pool: &PgPool, group: &[Job], name: &str) -> Result<Vec<Tried>, Stage> {
    let mut tx = pool.begin().await.map_err(Stage::Before)?;
    let keys: Vec<OrderKey> = group.iter().map(|job| order_key(&job.new)).collect();
    let mut orders = orders_postgres(&mut tx, &distinct_keys(&keys))
        .await
        .map_err(Stage::Before)?;
    // Other writers and replicas insert too: nothing is carried.
    let mut counted = count_group!(tx, group, &Carried::new())
        .await
        .map_err(Stage::Before)?;
    let mut tried: Vec<Option<Tried>> = group.iter().map(|_| None).collect();
    let mut rows: Vec<(usize, String)> = Vec::new();
    let mut read = std::collections::HashSet::new();
    for (at, (job, key)) in group.iter().zip(&keys).enumerate() {
        let answer = match place(
            at,
            job,
            key,
            &mut read,
            &mut orders,
            &mut counted,
            &mut rows,
        ) {
            Placed::Answer(answer) => *answer,
            Placed::Queued => continue,
            Placed::Alone => {
                insert_all_postgres(&mut tx, group, &mut rows, &mut tried, &mut counted, name)
                    .await?;
                let mut savepoint = sqlx::Connection::begin(&mut *tx)
                    .await
                    .map_err(Stage::Before)?;
                let alone = enqueue_in!(
                    &mut savepoint,
                    &job.new,
                    job.now,
                    job.max_pending,
                    &mut counted,
                    insert_postgres
                )
                .await;
                match alone {
                    Ok(answer) => {
                        savepoint.commit().await.map_err(Stage::Before)?;
                        answer
                    }
                    Err(e @ sqlx::Error::Database(_)) => {
                        savepoint.rollback().await.map_err(Stage::Before)?;
                        tried[at] = Some(failed_alone(name, e));
                        continue;
                    }
                    Err(e) => return Err(Stage::Before(e)),
                }
            }
        };
        tried[at] = Some(Tried::Answer(Box::new(answer)));
    }
    insert_all_postgres(&mut tx, group, &mut rows, &mut tried, &mut counted, name).await?;
    tx.commit().await.map_err(Stage::Commit)?;
    answered(tried)
}

/// Each request's [`Tried`], once every request of the group has one.
fn answered(tried: Vec<Option<Tried>>) -> Result<Vec<Tried>, Stage> {
    tried
        .into_iter()
        .map(|t| t.ok_or(Stage::Before(sqlx::Error::RowNotFound)))
        .collect()
}

/// Stores the new entries `rows` (`(job, id)`) of `group` on PostgreSQL in
/// one insert ([`INSERT_ROWS_POSTGRES`]), answering each in `tried`, in a
/// savepoint; in the order the requests came, which their `seq` keeps. An
/// entry the insert skipped met another writer's pending receipt for its
/// order: it is tried again in the next group, which sees that receipt.
/// If the insert fails (a deadlock with another group), the savepoint is
/// rolled back and each entry is stored alone, in a savepoint of its own,
/// so that a failure answers its own request only.
async fn insert_all_postgres(
    conn: &mut sqlx::PgConnection,
    group: &[Job],
    rows: &mut Vec<(usize, String)>,
    tried: &mut [Option<Tried>],
    counted: &mut std::collections::HashMap<String, i64>,
    name: &str,
) -> Result<(), Stage> {
    if rows.is_empty() {
        return Ok(());
    }
    let column = |pick: fn(&NewDelivery) -> &str| {
        rows.iter()
            .map(|(job, _)| pick(&group[*job].new))
            .collect::<Vec<_>>()
    };
    let optional = |pick: fn(&Origin) -> &Option<String>| {
        rows.iter()
            .map(|(job, _)| pick(&group[*job].new.origin).as_deref())
            .collect::<Vec<_>>()
    };
    let query = sqlx::query_as::<_, (String, i64)>(INSERT_ROWS_POSTGRES)
        .bind(rows.iter().map(|(_, id)| id.as_str()).collect::<Vec<_>>())
        .bind(column(|n| &n.msn))
        .bind(column(|n| n.kind.as_str()))
        .bind(column(|n| &n.payment_type))
        .bind(column(|n| &n.order_id))
        .bind(column(|n| &n.fingerprint))
        .bind(column(|n| &n.payload))
        .bind(
            rows.iter()
                .map(|(job, _)| group[*job].now)
                .collect::<Vec<_>>(),
        )
        .bind(optional(|o| &o.trace_parent))
        .bind(optional(|o| &o.trace_state))
        .bind(optional(|o| &o.created_by))
        .bind(optional(|o| &o.created_by_client));
    let mut savepoint = sqlx::Connection::begin(&mut *conn)
        .await
        .map_err(Stage::Before)?;
    match query.fetch_all(&mut *savepoint).await {
        Ok(stored) => {
            savepoint.commit().await.map_err(Stage::Before)?;
            let seqs: std::collections::HashMap<String, i64> = stored.into_iter().collect();
            for (at, id) in rows.drain(..) {
                let job = &group[at];
                tried[at] = Some(match seqs.get(&id) {
                    Some(&seq) => Tried::Answer(Box::new(Ok(Enqueued::Created(created(
                        &job.new, id, seq, job.now,
                    ))))),
                    None => {
                        if let Some(pending) = counted.get_mut(&job.new.msn) {
                            *pending -= 1;
                        }
                        Tried::Again(sqlx::Error::Protocol(
                            "another writer stored a pending receipt of the order first".into(),
                        ))
                    }
                });
            }
        }
        Err(sqlx::Error::Database(_)) => {
            savepoint.rollback().await.map_err(Stage::Before)?;
            for (at, id) in rows.drain(..) {
                let job = &group[at];
                let mut alone = sqlx::Connection::begin(&mut *conn)
                    .await
                    .map_err(Stage::Before)?;
                tried[at] = Some(
                    match insert_postgres(&mut alone, &job.new, &id, job.now).await {
                        Ok(seq) => {
                            alone.commit().await.map_err(Stage::Before)?;
                            Tried::Answer(Box::new(Ok(Enqueued::Created(created(
                                &job.new, id, seq, job.now,
                            )))))
                        }
                        Err(e @ sqlx::Error::Database(_)) => {
                            alone.rollback().await.map_err(Stage::Before)?;
                            if let Some(pending) = counted.get_mut(&job.new.msn) {
                                *pending -= 1;
                            }
                            failed_alone(name, e)
                        }
                        Err(e) => return Err(Stage::Before(e)),
                    },
                );
            }
        }
        Err(e) => return Err(Stage::Before(e)),
    }
    Ok(())
}

/// A statement that failed and was undone alone: tried again in the next
/// group when it met another transaction's work, answered with the failure
/// otherwise.
fn failed_alone(name: &str, e: sqlx::Error) -> Tried {
    if met_another(&e) {
        Tried::Again(e)
    } else {
        Tried::Answer(Box::new(Err(unavailable(name, &e))))
    }
}

/// An order, as [`SELECT_ORDER`] finds its entries.
type OrderKey = (String, String, String, Kind);

fn order_key(new: &NewDelivery) -> OrderKey {
    (
        new.msn.clone(),
        new.payment_type.clone(),
        new.order_id.clone(),
        new.kind,
    )
}

/// The entries of `keys`' orders, as [`SELECT_ORDER`] reads each, in one
/// statement ([`ORDERS_SQLITE`]), the keys padded to a power of two (the
/// last repeated).
async fn orders_sqlite(
    conn: &mut sqlx::SqliteConnection,
    keys: &[&OrderKey],
) -> Result<std::collections::HashMap<OrderKey, Vec<Row>>, sqlx::Error> {
    let orders: std::collections::HashMap<OrderKey, Vec<Row>> =
        std::collections::HashMap::with_capacity(keys.len());
    let Some(last) = keys.last() else {
        return Ok(orders);
    };
    let padded = keys.len().next_power_of_two();
    let sql: &'static str = &ORDERS_SQLITE[padded.ilog2() as usize];
    let mut query = sqlx::query_as::<_, Row>(sql);
    for key in keys
        .iter()
        .chain(std::iter::repeat_n(last, padded - keys.len()))
    {
        query = query
            .bind(&key.0)
            .bind(&key.1)
            .bind(&key.2)
            .bind(key.3.as_str());
    }
    by_order(query.fetch_all(conn).await?, orders)
}

/// `rows` (newest first) added to `orders`, each under its order, each
/// once (a key repeated to pad a statement reads its rows again).
fn by_order(
    rows: Vec<Row>,
    mut orders: std::collections::HashMap<OrderKey, Vec<Row>>,
) -> Result<std::collections::HashMap<OrderKey, Vec<Row>>, sqlx::Error> {
    let mut seen = std::collections::HashSet::new();
    for row in rows {
        if !seen.insert(row.seq) {
            continue;
        }
        let key = (
            row.msn.clone(),
            row.payment_type.clone(),
            row.order_id.clone(),
            Kind::parse(&row.kind).map_err(|e| sqlx::Error::Decode(Box::new(e)))?,
        );
        orders.entry(key).or_default().push(row);
    }
    Ok(orders)
}

/// The entries of `keys`' orders on PostgreSQL, as [`SELECT_ORDER`] reads
/// each, in one statement whatever their number: the keys go as arrays.
const ORDERS_POSTGRES: &str = concat!(
    "SELECT ",
    columns!(),
    " FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[]) \
     AS k(k_msn, k_payment_type, k_order_id, k_kind) \
     JOIN deliveries ON msn = k_msn AND payment_type = k_payment_type \
     AND order_id = k_order_id AND kind = k_kind \
     AND state IN ('pending', 'delivered') ORDER BY seq DESC"
);

async fn orders_postgres(
    conn: &mut sqlx::PgConnection,
    keys: &[&OrderKey],
) -> Result<std::collections::HashMap<OrderKey, Vec<Row>>, sqlx::Error> {
    let column = |pick: fn(&OrderKey) -> &str| keys.iter().map(|k| pick(k)).collect::<Vec<_>>();
    let rows = sqlx::query_as::<_, Row>(ORDERS_POSTGRES)
        .bind(column(|k| &k.0))
        .bind(column(|k| &k.1))
        .bind(column(|k| &k.2))
        .bind(column(|k| k.3.as_str()))
        .fetch_all(conn)
        .await?;
    by_order(rows, std::collections::HashMap::with_capacity(keys.len()))
}

/// New entries on PostgreSQL in one insert, the values as arrays ([`bind_insert!`]'s
/// order, `now` once), stored in the arrays' order (`WITH ORDINALITY`, so
/// that their `seq` follows it): the stored `id` and `seq` of each. An entry whose
/// order's pending receipt another writer or replica stored since the
/// group read it is skipped (`ON CONFLICT DO NOTHING`) rather than failing
/// the statement.
const INSERT_ROWS_POSTGRES: &str = concat!(
    insert_columns!(),
    " SELECT id, msn, kind, payment_type, order_id, fingerprint, payload, 'pending', 0, \
     now, now, now, trace_parent, trace_state, created_by, created_by_client \
     FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], \
     $7::text[], $8::bigint[], $9::text[], $10::text[], $11::text[], $12::text[]) \
     WITH ORDINALITY AS r(id, msn, kind, payment_type, order_id, fingerprint, payload, now, \
     trace_parent, trace_state, created_by, created_by_client, at) \
     ORDER BY at ON CONFLICT DO NOTHING RETURNING id, seq"
);

/// Statements for 1, 2, 4, … [`GROUP_MAX`] rows, at `[log2 of the
/// size]`: a group's statements come in these sizes, so that a few
/// statements, prepared once on the connection, serve every group. The
/// SQLite ones take anonymous parameters (`?`): binding looks up every
/// parameter's name, which SQLite finds by walking its list of named ones,
/// so hundreds of named parameters take quadratic time to bind.
type BySize = std::sync::LazyLock<Vec<String>>;

fn by_size(build: fn(usize) -> String) -> Vec<String> {
    (0..=GROUP_MAX.ilog2()).map(|k| build(1 << k)).collect()
}

/// The entries of `n` orders ([`orders_sqlite`]). The keys drive the join
/// (CROSS JOIN keeps them outside), each a probe of `deliveries_order`.
static ORDERS_SQLITE: BySize = BySize::new(|| {
    by_size(|n| {
        let values = vec!["(?, ?, ?, ?)"; n].join(", ");
        format!(
            "WITH k(k_msn, k_payment_type, k_order_id, k_kind) AS (VALUES {values}) \
             SELECT {} FROM k CROSS JOIN deliveries ON msn = k_msn \
             AND payment_type = k_payment_type AND order_id = k_order_id AND kind = k_kind \
             AND state IN ('pending', 'delivered') ORDER BY seq DESC",
            columns!()
        )
    })
});

/// `n` claimed entries delivered at `$1`, while `$2`'s claim
/// ([`Store::finish_all`]): the ids of those recorded. The ids come from
/// `$3` on, the last repeated up to `n`. `state` is tested with `$state`:
/// SQLite, with no statistics, would otherwise walk every pending entry
/// through an index on the state rather than probe each id (`+state` there).
fn finish_delivered(n: usize, state: &str) -> String {
    let ids = (0..n)
        .map(|i| format!("${}", i + 3))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "UPDATE deliveries SET state = 'delivered', attempts = attempts + 1, \
         next_attempt_at = NULL, delivered_at = $1, updated_at = $1, \
         lease_owner = NULL, lease_until = NULL \
         WHERE id IN ({ids}) AND lease_owner = $2 AND {state} = 'pending' RETURNING id"
    )
}

static FINISH_DELIVERED_SQLITE: BySize = BySize::new(|| by_size(|n| finish_delivered(n, "+state")));
static FINISH_DELIVERED_POSTGRES: BySize =
    BySize::new(|| by_size(|n| finish_delivered(n, "state")));

/// `n` new entries in one insert ([`insert_all_sqlite`]), each bound as
/// [`bind_insert!`] binds one; the stored `id` and `seq` of each, in no
/// particular order.
static INSERT_ROWS_SQLITE: BySize = BySize::new(|| {
    by_size(|n| {
        let row = "(?, ?, ?, ?, ?, ?, ?, 'pending', 0, ?, ?, ?, ?, ?, ?, ?)";
        format!(
            "{} VALUES {} RETURNING id, seq",
            insert_columns!(),
            vec![row; n].join(", ")
        )
    })
});

/// Stores the new entries `rows` (`(job, id)`) of `group` on SQLite in
/// multi-row inserts ([`INSERT_ROWS_SQLITE`], in chunks of powers of
/// two), answering each in `tried`. A chunk whose insert
/// fails on a constraint (undone alone) is stored row by row, so that the
/// failure answers its own request only.
async fn insert_all_sqlite(
    conn: &mut sqlx::SqliteConnection,
    group: &[Job],
    rows: &mut Vec<(usize, String)>,
    tried: &mut [Option<Tried>],
    counted: &mut std::collections::HashMap<String, i64>,
    name: &str,
) -> Result<(), Stage> {
    let mut rest: &[(usize, String)] = rows;
    while !rest.is_empty() {
        let size = GROUP_MAX.min(1 << rest.len().ilog2());
        let (chunk, later) = rest.split_at(size);
        rest = later;
        let sql: &'static str = &INSERT_ROWS_SQLITE[size.ilog2() as usize];
        let mut query = sqlx::query_as::<_, (String, i64)>(sql);
        for (job, id) in chunk {
            query = bind_insert!(query, group[*job].new, id, group[*job].now);
        }
        match query.fetch_all(&mut *conn).await {
            Ok(stored) => {
                let seqs: std::collections::HashMap<String, i64> = stored.into_iter().collect();
                for (job, id) in chunk {
                    let job_at = *job;
                    let job = &group[job_at];
                    let seq = *seqs
                        .get(id)
                        .ok_or(Stage::Before(sqlx::Error::RowNotFound))?;
                    tried[job_at] = Some(Tried::Answer(Box::new(Ok(Enqueued::Created(created(
                        &job.new,
                        id.clone(),
                        seq,
                        job.now,
                    ))))));
                }
            }
            Err(e) if sqlite_statement_undone(&e) => {
                for (job_at, id) in chunk {
                    let job = &group[*job_at];
                    tried[*job_at] = Some(
                        match insert_sqlite(&mut *conn, &job.new, id, job.now).await {
                            Ok(seq) => Tried::Answer(Box::new(Ok(Enqueued::Created(created(
                                &job.new,
                                id.clone(),
                                seq,
                                job.now,
                            ))))),
                            Err(e) if sqlite_statement_undone(&e) => {
                                if let Some(pending) = counted.get_mut(&job.new.msn) {
                                    *pending -= 1;
                                }
                                failed_alone(name, e)
                            }
                            Err(e) => return Err(Stage::Before(e)),
                        },
                    );
                }
            }
            Err(e) => return Err(Stage::Before(e)),
        }
    }
    rows.clear();
    Ok(())
}

/// Runs a group's enqueues in one SQLite transaction and commits it: each
/// enqueue's [`Tried`], or where the transaction failed ([`Stage`]).
///
/// The group's statements are few whatever its size: one read of all its
/// orders' entries, one count of each merchant's backlog, and multi-row
/// inserts of its new entries ([`insert_all_sqlite`]); each statement is a
/// round trip to the connection's thread. A request whose order an earlier
/// request of the group has written, or that replaces a category link,
/// runs alone ([`enqueue_in!`]), after the new entries so far are stored,
/// so that it sees them. SQLite undoes a failed constraint alone and keeps
/// the transaction; any other failure fails the group.
///
/// A merchant's backlog is counted only when its bound may be near:
/// `carried` holds, for each merchant the writer has counted, at least its
/// pending entries ([`Carried`]). Once the group commits, it holds the
/// group's counts and creations.
async fn run_group_sqlite(
    pool: &SqlitePool,
    group: &[Job],
    name: &str,
    carried: &mut Carried,
) -> Result<Vec<Tried>, Stage> {
    let mut tx = pool.begin().await.map_err(Stage::Before)?;
    let keys: Vec<OrderKey> = group.iter().map(|job| order_key(&job.new)).collect();
    let mut orders = orders_sqlite(&mut tx, &distinct_keys(&keys))
        .await
        .map_err(Stage::Before)?;
    let mut counted = count_group!(tx, group, carried)
        .await
        .map_err(Stage::Before)?;
    let mut tried: Vec<Option<Tried>> = group.iter().map(|_| None).collect();
    let mut rows: Vec<(usize, String)> = Vec::new();
    let mut read = std::collections::HashSet::new();
    for (at, (job, key)) in group.iter().zip(&keys).enumerate() {
        let answer = match place(
            at,
            job,
            key,
            &mut read,
            &mut orders,
            &mut counted,
            &mut rows,
        ) {
            Placed::Answer(answer) => *answer,
            Placed::Queued => continue,
            Placed::Alone => {
                insert_all_sqlite(&mut tx, group, &mut rows, &mut tried, &mut counted, name)
                    .await?;
                let alone = enqueue_in!(
                    &mut tx,
                    &job.new,
                    job.now,
                    job.max_pending,
                    &mut counted,
                    insert_sqlite
                )
                .await;
                match alone {
                    Ok(answer) => answer,
                    Err(e) if sqlite_statement_undone(&e) => {
                        tried[at] = Some(failed_alone(name, e));
                        continue;
                    }
                    Err(e) => return Err(Stage::Before(e)),
                }
            }
        };
        tried[at] = Some(Tried::Answer(Box::new(answer)));
    }
    insert_all_sqlite(&mut tx, group, &mut rows, &mut tried, &mut counted, name).await?;
    tx.commit().await.map_err(Stage::Commit)?;
    // A count stops at the bound of the request that took it: a figure
    // there may be short of the truth, and is counted again next time.
    let bound = group.iter().map(|job| job.max_pending).min().unwrap_or(0);
    for (msn, pending) in counted {
        if pending < bound {
            carried.insert(msn, pending);
        } else {
            carried.remove(&msn);
        }
    }
    answered(tried)
}

/// A SQLite writer's upper bound of each merchant's pending entries, kept
/// from group to group so that a group counts a merchant's backlog only
/// near its bound (the count walks up to `outbox.max_pending_per_merchant`
/// index entries: a cost that grew with the backlog, at every group).
///
/// It never falls below the truth: entries become pending only by an insert,
/// and on SQLite every insert is this writer's (the store keeps one
/// connection, and its file is one process's: [`FileLock`]). It starts
/// from a count below the bound (a count stops at the bound, so one that
/// reached it is not kept), grows with each committed creation, and is
/// counted again once the next group could reach the bound; deliveries do
/// not lower it in between. A group that fails forgets it all: its commit
/// may or may not have stored its entries. PostgreSQL's writers and replicas insert
/// side by side, so there a group counts every merchant it serves.
type Carried = std::collections::HashMap<String, i64>;

/// The enqueues waiting for the store's writers: one receiver, shared; the
/// writer holding it gathers the next group (and waits there for its first
/// request while the store is idle).
type Jobs = Arc<tokio::sync::Mutex<tokio::sync::mpsc::Receiver<Job>>>;

/// One of the store's writers: gathers a group ([`gather`]), commits it
/// ([`run_group_sqlite`], [`run_group_postgres`]) and answers each request, until every sender is gone.
/// Nothing is answered before its group's commit: a `202` still means
/// stored. A failed commit answers every request of the group with the
/// failure (the outcome unknown where the commit broke).
async fn writer(pool: Pool, name: String, jobs: Jobs, grouping: Grouping) {
    let store = match pool {
        Pool::Sqlite(_) => "sqlite",
        Pool::Postgres(_) => "postgres",
    };
    let mut group: Vec<Job> = Vec::with_capacity(GROUP_MAX);
    let mut carried = Carried::new();
    loop {
        if group.is_empty() {
            let mut jobs = jobs.lock().await;
            if !gather(&mut group, &mut jobs, grouping.wait, GROUP_MAX).await {
                return;
            }
        } else if let Ok(mut jobs) = jobs.try_lock() {
            // Carried over: with what is waiting, if no other writer is
            // gathering (it may be waiting for a first request that never
            // comes); alone otherwise.
            gather(&mut group, &mut jobs, grouping.wait, GROUP_MAX).await;
        }
        let committed = match &pool {
            Pool::Sqlite(pool) => run_group_sqlite(pool, &group, &name, &mut carried).await,
            Pool::Postgres(pool) => run_group_postgres(pool, &group, &name).await,
        };
        let tried = match committed {
            Ok(tried) => tried,
            Err(e) => {
                carried.clear();
                for job in group.drain(..) {
                    let _ = job.done.send(Err(e.error(&name)));
                }
                continue;
            }
        };
        let mut answered = 0;
        let mut again = Vec::new();
        for (mut job, tried) in group.drain(..).zip(tried) {
            match tried {
                Tried::Again(_) if job.tries + 1 < ENQUEUE_TRIES => {
                    job.tries += 1;
                    again.push(job);
                }
                Tried::Again(e) => {
                    answered += 1;
                    let _ = job.done.send(Err(unavailable(&name, &e)));
                }
                Tried::Answer(answer) => {
                    answered += 1;
                    let _ = job.done.send(*answer);
                }
            }
        }
        if let Some(observe) = &grouping.observe {
            observe(store, answered);
        }
        group = again;
    }
}

#[derive(sqlx::FromRow)]
struct Row {
    seq: i64,
    id: String,
    msn: String,
    kind: String,
    payment_type: String,
    order_id: String,
    fingerprint: String,
    payload: String,
    state: String,
    attempts: i64,
    created_at: i64,
    updated_at: i64,
    delivered_at: Option<i64>,
    next_attempt_at: Option<i64>,
    last_error: Option<String>,
    lease_owner: Option<String>,
    lease_until: Option<i64>,
    trace_parent: Option<String>,
    trace_state: Option<String>,
    created_by: Option<String>,
    created_by_client: Option<String>,
}

impl Row {
    fn delivery(self) -> Result<Delivery, StoreError> {
        Ok(Delivery {
            seq: self.seq,
            kind: Kind::parse(&self.kind)?,
            state: State::parse(&self.state)
                .ok_or_else(|| StoreError::Corrupt(format!("unknown state {:?}", self.state)))?,
            id: self.id,
            msn: self.msn,
            payment_type: self.payment_type,
            order_id: self.order_id,
            fingerprint: self.fingerprint,
            payload: self.payload,
            attempts: self.attempts,
            created_at: self.created_at,
            updated_at: self.updated_at,
            delivered_at: self.delivered_at,
            next_attempt_at: self.next_attempt_at,
            last_error: self.last_error,
            origin: Origin {
                trace_parent: self.trace_parent,
                trace_state: self.trace_state,
                created_by: self.created_by,
                created_by_client: self.created_by_client,
            },
        })
    }

    /// Whether a claimer holds it at `now`.
    fn leased(&self, now: i64) -> bool {
        self.lease_owner.is_some() && self.lease_until.is_some_and(|until| until > now)
    }
}

fn deliveries(rows: Vec<Row>) -> Result<Vec<Delivery>, StoreError> {
    rows.into_iter().map(Row::delivery).collect()
}

impl Store {
    /// Opens the store at `url` (`sqlite://PATH` or `postgres://…`, with
    /// `password` for PostgreSQL) and brings its table up to date. The
    /// SQLite file is created when missing, not its directory. Its groups
    /// take only the enqueues already waiting ([`Store::open_with`] sets a
    /// wait).
    pub async fn open(url: &str, password: Option<&SecretString>) -> Result<Store, StoreError> {
        Self::open_with(url, password, Grouping::default()).await
    }

    /// [`Store::open`], committing enqueues in groups as `grouping` says.
    pub async fn open_with(
        url: &str,
        password: Option<&SecretString>,
        grouping: Grouping,
    ) -> Result<Store, StoreError> {
        let (writer, jobs) = tokio::sync::mpsc::channel(GROUP_MAX * 4);
        let jobs: Jobs = Arc::new(tokio::sync::Mutex::new(jobs));
        if url.starts_with("sqlite:") {
            let options = SqliteConnectOptions::from_str(url)
                .map_err(|_| StoreError::Url)?
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Full)
                .busy_timeout(SQLITE_ACQUIRE_TIMEOUT);
            // A statement's undo record (its statement journal) in memory,
            // not in a temporary file: every insert in a group transaction
            // writes one.
            let options = options.pragma("temp_store", "memory");
            let name = format!("sqlite://{}", options.get_filename().display());
            // Taken before the first connection: a refused process neither
            // migrates nor recovers the file another one is writing.
            let in_memory = sqlx::ConnectOptions::to_url_lossy(&options)
                .query_pairs()
                .any(|(key, value)| key == "mode" && value == "memory");
            let lock = if in_memory {
                None
            } else {
                Some(Arc::new(FileLock::take(options.get_filename(), &name)?))
            };
            let unavailable = |e: &sqlx::Error| unavailable(&name, e);
            // One connection: SQLite has one writer, and a single connection
            // never waits on another's lock. It is not pinged when taken:
            // sqlx pings it as it comes back to the pool, and a connection
            // in this process has no peer to lose in between; each ping is
            // a round trip to its thread, before every group, claim and
            // record.
            let pool = SqlitePoolOptions::new()
                .max_connections(1)
                .test_before_acquire(false)
                .acquire_timeout(SQLITE_ACQUIRE_TIMEOUT)
                .connect_with(options)
                .await
                .map_err(|e| unavailable(&e))?;
            SQLITE_MIGRATIONS
                .run(&pool)
                .await
                .map_err(|e| unavailable(&e.into()))?;
            let pool = Pool::Sqlite(pool);
            tokio::spawn(self::writer(pool.clone(), name.clone(), jobs, grouping));
            Ok(Store {
                pool,
                name,
                writer,
                max_pending: i64::MAX,
                lock,
                turn: Arc::default(),
            })
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            let mut options = PgConnectOptions::from_str(url).map_err(|_| StoreError::Url)?;
            if let Some(password) = password {
                options = options.password(password.expose_secret());
            }
            let name = format!(
                "postgres://{}@{}:{}/{}",
                options.get_username(),
                options.get_host(),
                options.get_port(),
                options.get_database().unwrap_or_default()
            );
            let unavailable = |e: &sqlx::Error| unavailable(&name, e);
            let pool = PgPoolOptions::new()
                .max_connections(POSTGRES_CONNECTIONS)
                .acquire_timeout(POSTGRES_ACQUIRE_TIMEOUT)
                .connect_with(options)
                .await
                .map_err(|e| unavailable(&e))?;
            // sqlx holds an advisory lock while it migrates, so replicas
            // starting together migrate once.
            POSTGRES_MIGRATIONS
                .run(&pool)
                .await
                .map_err(|e| unavailable(&e.into()))?;
            let pool = Pool::Postgres(pool);
            for _ in 0..POSTGRES_WRITERS {
                tokio::spawn(self::writer(
                    pool.clone(),
                    name.clone(),
                    jobs.clone(),
                    grouping.clone(),
                ));
            }
            Ok(Store {
                pool,
                name,
                writer,
                max_pending: i64::MAX,
                lock: None,
                turn: Arc::default(),
            })
        } else {
            Err(StoreError::Url)
        }
    }

    /// The store with at most `max` pending entries per merchant: an
    /// enqueue past it is [`Enqueued::Full`].
    pub fn with_max_pending(mut self, max: u32) -> Self {
        self.max_pending = i64::from(max);
        self
    }

    /// The store's URL without its password.
    pub fn name(&self) -> &str {
        &self.name
    }

    fn unavailable(&self, e: &sqlx::Error) -> StoreError {
        unavailable(&self.name, e)
    }

    /// Stores `new` at `now`, committed before it returns, unless the order
    /// already has a pending entry this request repeats, conflicts with or
    /// replaces (see [`Enqueued`]). Committed in a group with the enqueues
    /// that came with it ([`Grouping`]).
    pub async fn enqueue(&self, new: &NewDelivery, now: i64) -> Result<Enqueued, StoreError> {
        let (done, answer) = tokio::sync::oneshot::channel();
        let job = Job {
            new: new.clone(),
            now,
            max_pending: self.max_pending,
            tries: 0,
            done,
        };
        let gone = || StoreError::Unavailable {
            store: self.name.clone(),
            reason: "the store is closed".into(),
        };
        self.writer.send(job).await.map_err(|_| gone())?;
        answer.await.map_err(|_| gone())?
    }

    /// Claims up to `limit` entries due at `now` for `owner` until
    /// `now + lease`: pending, not held by another claimer's unexpired
    /// lease, the oldest pending entry of their order, and of none of the
    /// merchants in `skip` (whose breaker is open: their entries wait
    /// untouched). In `seq` order.
    pub async fn claim(
        &self,
        owner: &str,
        now: i64,
        lease: Duration,
        limit: i64,
        skip: &[&str],
    ) -> Result<Vec<Claimed>, StoreError> {
        Ok(self
            .claim_shares(owner, now, lease, limit, skip)
            .await?
            .claimed)
    }

    /// [`Store::claim`], the batch shared between merchants: the merchants
    /// with due entries (at most `limit`, and [`CLAIM_MERCHANTS_MAX`]),
    /// taken in turn by MSN from where the last claim stopped, each take
    /// an equal share of `limit` (the first ones one more when it does not
    /// divide), filled with their entries in the order they fell due. One
    /// merchant's backlog takes its share, and the entries of the others
    /// are claimed beside it rather than after it.
    pub async fn claim_shares(
        &self,
        owner: &str,
        now: i64,
        lease: Duration,
        limit: i64,
        skip: &[&str],
    ) -> Result<Claims, StoreError> {
        let skip = format!(",{},", skip.join(","));
        let lease_until = now.saturating_add(i64::try_from(lease.as_millis()).unwrap_or(i64::MAX));
        let most = limit.clamp(0, i64::try_from(CLAIM_MERCHANTS_MAX).unwrap_or(i64::MAX));
        let after = self
            .turn
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        macro_rules! merchants {
            ($sql:expr, $on:expr) => {
                sqlx::query_scalar::<_, String>($sql)
                    .bind(now)
                    .bind(&skip)
                    .bind(most)
                    .bind(&after)
                    .fetch_all($on)
                    .await
            };
        }
        // Each merchant's share, and the statement with a slot for each.
        let shares = |merchants: &[String]| -> (Vec<i64>, usize) {
            let n = i64::try_from(merchants.len()).unwrap_or(i64::MAX).max(1);
            let shares = (0..n)
                .map(|i| limit / n + i64::from(i < limit % n))
                .collect();
            (shares, claim_size(merchants.len()))
        };
        macro_rules! claim {
            ($statements:expr, $merchants:expr, $shares:expr, $at:expr, $on:expr) => {{
                let sql: &'static str = &$statements[$at];
                let mut query = sqlx::query_as::<_, Row>(sql)
                    .bind(owner)
                    .bind(lease_until)
                    .bind(now);
                for slot in 0..(1_usize << $at) {
                    // The slots past the merchants match nothing.
                    query = query
                        .bind($merchants.get(slot).map(String::as_str))
                        .bind($shares.get(slot).copied().unwrap_or(0));
                }
                query.fetch_all($on).await
            }};
        }
        let (merchants, shares, rows): (Vec<String>, Vec<i64>, Vec<Row>) = match &self.pool {
            Pool::Sqlite(pool) => {
                async {
                    let found = merchants!(DUE_MERCHANTS_SQLITE, pool)?;
                    if found.is_empty() {
                        return Ok((found, Vec::new(), Vec::new()));
                    }
                    let (shares, at) = shares(&found);
                    let rows = claim!(CLAIM_SQLITE, found, shares, at, pool)?;
                    Ok((found, shares, rows))
                }
                .await
            }
            Pool::Postgres(pool) => {
                async {
                    let mut tx = pool.begin().await?;
                    sqlx::query(CLAIM_SETTINGS_POSTGRES)
                        .execute(&mut *tx)
                        .await?;
                    let found = merchants!(DUE_MERCHANTS_POSTGRES, &mut *tx)?;
                    if found.is_empty() {
                        tx.commit().await?;
                        return Ok((found, Vec::new(), Vec::new()));
                    }
                    let (shares, at) = shares(&found);
                    let rows = claim!(CLAIM_POSTGRES, found, shares, at, &mut *tx)?;
                    tx.commit().await?;
                    Ok((found, shares, rows))
                }
                .await
            }
        }
        .map_err(|e: sqlx::Error| self.unavailable(&e))?;
        // The last merchant taken, in the order of the turn: the next claim
        // starts after it.
        let wrapped = merchants.iter().filter(|m| **m <= after).max();
        if let Some(last) = wrapped.or_else(|| merchants.iter().max()) {
            last.clone_into(&mut self.turn.lock().unwrap_or_else(PoisonError::into_inner));
        }
        let mut claimed = deliveries(rows)?
            .into_iter()
            .map(|delivery| Claimed {
                delivery,
                lease_until,
            })
            .collect::<Vec<_>>();
        claimed.sort_by_key(|c| c.delivery.seq);
        // A merchant that took its whole share may have more due.
        let more = merchants.iter().zip(&shares).any(|(msn, share)| {
            let took = claimed.iter().filter(|c| &c.delivery.msn == msn).count();
            *share > 0 && i64::try_from(took).unwrap_or(i64::MAX) >= *share
        });
        Ok(Claims { claimed, more })
    }

    /// Records one attempt on a claimed entry at `now`. `false`: the claim
    /// was no longer `owner`'s (its lease ended and another claimer took the
    /// entry), and nothing changed.
    pub async fn finish(
        &self,
        id: &str,
        owner: &str,
        outcome: &Outcome,
        now: i64,
    ) -> Result<bool, StoreError> {
        let done = self.finish_all(owner, &[(id, outcome)], now).await?;
        Ok(done.first().copied().unwrap_or(false))
    }

    /// Records the attempts on several claimed entries at `now`, in one
    /// transaction (one commit, so one sync to disk for all): for each,
    /// whether the claim was still `owner`'s. The deliveries, the common
    /// outcome, are recorded together in one statement per
    /// [`GROUP_MAX`] ([`finish_delivered`]); with nothing else, that
    /// statement is the transaction.
    pub async fn finish_all(
        &self,
        owner: &str,
        attempts: &[(&str, &Outcome)],
        now: i64,
    ) -> Result<Vec<bool>, StoreError> {
        let finish = "UPDATE deliveries SET state = $1, attempts = attempts + $8, \
             next_attempt_at = $2, last_error = COALESCE($3, last_error), \
             delivered_at = $4, updated_at = $5, lease_owner = NULL, lease_until = NULL \
             WHERE id = $6 AND lease_owner = $7 AND state = 'pending'";
        let delivered: Vec<&str> = attempts
            .iter()
            .filter(|(_, outcome)| matches!(outcome, Outcome::Delivered))
            .map(|(id, _)| *id)
            .collect();
        let alone = delivered.len() == attempts.len() && delivered.len() <= GROUP_MAX;
        let finish_delivered = match self.pool {
            Pool::Sqlite(_) => &FINISH_DELIVERED_SQLITE,
            Pool::Postgres(_) => &FINISH_DELIVERED_POSTGRES,
        };
        let result: Result<Vec<bool>, sqlx::Error> = with_pool!(self, pool => async {
            let mut finished = std::collections::HashSet::new();
            let mut tx = if alone { None } else { Some(pool.begin().await?) };
            for chunk in delivered.chunks(GROUP_MAX) {
                let padded = chunk.len().next_power_of_two();
                let sql: &'static str = &finish_delivered[padded.ilog2() as usize];
                let mut query = sqlx::query_scalar::<_, String>(sql).bind(now).bind(owner);
                for id in chunk.iter().chain(std::iter::repeat_n(&chunk[chunk.len() - 1], padded - chunk.len())) {
                    query = query.bind(*id);
                }
                let ids = match tx.as_mut() {
                    Some(tx) => query.fetch_all(&mut **tx).await?,
                    None => query.fetch_all(pool).await?,
                };
                finished.extend(ids);
            }
            let mut done = Vec::with_capacity(attempts.len());
            for (id, outcome) in attempts {
                let (state, next_attempt_at, error) = match outcome {
                    Outcome::Delivered => {
                        done.push(finished.contains(*id));
                        continue;
                    }
                    Outcome::Retry {
                        next_attempt_at,
                        error,
                    } => (State::Pending, Some(*next_attempt_at), Some(error)),
                    Outcome::Failed { error } => (State::Failed, None, Some(error)),
                    Outcome::Postponed { next_attempt_at } => {
                        (State::Pending, Some(*next_attempt_at), None)
                    }
                };
                let sent = i64::from(!matches!(outcome, Outcome::Postponed { .. }));
                let Some(tx) = tx.as_mut() else {
                    return Err(sqlx::Error::RowNotFound);
                };
                let affected = sqlx::query(finish)
                    .bind(state.as_str())
                    .bind(next_attempt_at)
                    .bind(error)
                    // Only the deliveries above are delivered.
                    .bind(None::<i64>)
                    .bind(now)
                    .bind(*id)
                    .bind(owner)
                    .bind(sent)
                    .execute(&mut **tx)
                    .await?
                    .rows_affected();
                done.push(affected == 1);
            }
            if let Some(tx) = tx {
                tx.commit().await?;
            }
            Ok(done)
        }
        .await);
        result.map_err(|e| self.unavailable(&e))
    }

    /// The merchant's entry `id`.
    pub async fn get(&self, msn: &str, id: &str) -> Result<Option<Delivery>, StoreError> {
        let row: Option<Row> = with_pool!(self, pool => {
            sqlx::query_as(GET).bind(id).bind(msn).fetch_optional(pool).await
        })
        .map_err(|e| self.unavailable(&e))?;
        row.map(Row::delivery).transpose()
    }

    /// The merchant's entries, newest first, in `state` when given, that
    /// arrived before the entry `before` (a [`Delivery::seq`]): up to
    /// `limit`.
    pub async fn list(
        &self,
        msn: &str,
        state: Option<State>,
        before: Option<i64>,
        limit: i64,
    ) -> Result<Vec<Delivery>, StoreError> {
        let rows: Vec<Row> = with_pool!(self, pool => {
            sqlx::query_as(LIST)
                .bind(msn)
                .bind(state.map(State::as_str))
                .bind(before.unwrap_or(i64::MAX))
                .bind(limit)
                .fetch_all(pool)
                .await
        })
        .map_err(|e| self.unavailable(&e))?;
        deliveries(rows)
    }

    /// Deletes delivered and failed entries last changed before `before`;
    /// how many it deleted.
    pub async fn purge(&self, before: i64) -> Result<u64, StoreError> {
        let purge =
            "DELETE FROM deliveries WHERE state IN ('delivered', 'failed') AND updated_at < $1";
        with_pool!(self, pool => {
            sqlx::query(purge).bind(before).execute(pool).await.map(|r| r.rows_affected())
        })
        .map_err(|e| self.unavailable(&e))
    }

    /// The pending entries per merchant and kind, with the oldest's age.
    pub async fn pending_stats(&self) -> Result<Vec<PendingStats>, StoreError> {
        let rows: Vec<(String, String, i64, i64)> = match &self.pool {
            Pool::Sqlite(pool) => sqlx::query_as(PENDING_STATS_SQLITE).fetch_all(pool).await,
            Pool::Postgres(pool) => sqlx::query_as(PENDING_STATS_POSTGRES).fetch_all(pool).await,
        }
        .map_err(|e| self.unavailable(&e))?;
        rows.into_iter()
            .map(|(msn, kind, count, oldest_created_at)| {
                Ok(PendingStats {
                    msn,
                    kind: Kind::parse(&kind)?,
                    count,
                    oldest_created_at,
                })
            })
            .collect()
    }

    /// Closes the pool's connections, then lets go of a SQLite file, so
    /// that it can be opened again, by this process or another.
    pub async fn close(&self) {
        with_pool!(self, pool => pool.close().await);
        if let Some(lock) = &self.lock {
            lock.release();
        }
    }
}

/// An exclusive advisory lock (`flock(2)`) on the sidecar file
/// `<database>-lock`, beside SQLite's own `-wal` and `-shm`. The kernel
/// drops it with the process, however that ends, and it belongs to this
/// open file: a second open, even in this process, is refused. A sidecar
/// rather than the database itself, because SQLite's own locks on the
/// database are POSIX record locks, which some file systems (NFS) emulate
/// `flock` with, and which SQLite releases range by range.
struct FileLock {
    file: std::fs::File,
}

impl FileLock {
    fn take(database: &Path, store: &str) -> Result<Self, StoreError> {
        let mut path = database.as_os_str().to_owned();
        path.push("-lock");
        let path = PathBuf::from(path);
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| StoreError::Unavailable {
                store: store.to_owned(),
                reason: format!("lock file {}: {}", path.display(), e.kind()),
            })?;
        match file.try_lock() {
            Ok(()) => Ok(Self { file }),
            Err(std::fs::TryLockError::WouldBlock) => Err(StoreError::InUse {
                store: store.to_owned(),
                lock: path,
            }),
            Err(std::fs::TryLockError::Error(e)) => Err(StoreError::Unavailable {
                store: store.to_owned(),
                reason: format!("lock file {}: {}", path.display(), e.kind()),
            }),
        }
    }

    fn release(&self) {
        // A failed unlock leaves the lock to go with the file's last
        // handle (or the process): nothing else to do about it.
        let _ = self.file.unlock();
    }
}

/// Where an enqueue's transaction failed.
enum Stage {
    /// Before its commit: nothing was stored.
    Before(sqlx::Error),
    /// During its commit: whether it was stored is unknown, unless the
    /// database said it refused the commit.
    Commit(sqlx::Error),
}

impl Stage {
    fn error(&self, store: &str) -> StoreError {
        match self {
            Stage::Before(e) => unavailable(store, e),
            // The database refused the commit: nothing stored. But a
            // connection failure (SQLSTATE class 08) or a server shutting
            // down (57P01–57P03) may come after a durable commit.
            Stage::Commit(e @ sqlx::Error::Database(db))
                if !db
                    .code()
                    .is_some_and(|c| c.starts_with("08") || c.starts_with("57P0")) =>
            {
                unavailable(store, e)
            }
            Stage::Commit(e) => {
                let StoreError::Unavailable { reason, .. } = unavailable(store, e) else {
                    return unavailable(store, e);
                };
                StoreError::CommitUnknown {
                    store: store.to_owned(),
                    reason,
                }
            }
        }
    }
}

/// The store's failure, named by `store` (no password) and the kind of
/// error: a database's own message names no credentials, but a connection
/// error's text is not relied on.
fn unavailable(store: &str, e: &sqlx::Error) -> StoreError {
    let reason = match e {
        sqlx::Error::Database(db) => match db.code() {
            Some(code) => format!("{} ({code})", db.message()),
            None => db.message().to_owned(),
        },
        sqlx::Error::Io(io) => format!("I/O error: {}", io.kind()),
        sqlx::Error::PoolTimedOut => "no connection within the timeout".into(),
        sqlx::Error::PoolClosed => "the store is closed".into(),
        sqlx::Error::Tls(_) => "TLS error".into(),
        sqlx::Error::Migrate(m) => format!("migration failed: {m}"),
        sqlx::Error::Configuration(_) => "invalid configuration".into(),
        _ => "database error".into(),
    };
    StoreError::Unavailable {
        store: store.to_owned(),
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::Instant;

    const WAIT: Duration = Duration::from_millis(2);

    fn channel() -> (
        tokio::sync::mpsc::Sender<u32>,
        tokio::sync::mpsc::Receiver<u32>,
    ) {
        tokio::sync::mpsc::channel(GROUP_MAX * 4)
    }

    /// How the bundled SQLite runs `sql` on the store's table and indexes
    /// (EXPLAIN QUERY PLAN's details), with no statistics, as in a new file.
    async fn sqlite_plan(sql: &str) -> Vec<String> {
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .connect("sqlite::memory:")
            .await
            .unwrap();
        SQLITE_MIGRATIONS.run(&pool).await.unwrap();
        let explain = format!("EXPLAIN QUERY PLAN {sql}");
        let rows: Vec<(i64, i64, i64, String)> = sqlx::query_as(sqlx::AssertSqlSafe(explain))
            .fetch_all(&pool)
            .await
            .unwrap();
        rows.into_iter().map(|(.., detail)| detail).collect()
    }

    #[tokio::test]
    async fn a_claim_probes_each_merchant_and_reads_its_share_in_order_on_sqlite() {
        // From merchant to merchant: index probes, never a walk of the rows
        // or of the finished entries.
        let merchants = sqlite_plan(DUE_MERCHANTS_SQLITE).await;
        let reads: Vec<&String> = merchants
            .iter()
            .filter(|d| d.starts_with("SEARCH") || d.starts_with("SCAN deliveries"))
            .collect();
        assert!(
            reads.iter().any(|d| d.contains("(msn>?)"))
                && reads.iter().any(|d| d.contains("(msn=?)")),
            "{merchants:?}"
        );
        assert!(
            reads
                .iter()
                .all(|d| d.contains(" INDEX deliveries_pending_merchant")),
            "{merchants:?}"
        );
        for n in [1_usize, CLAIM_MERCHANTS_MAX] {
            let claim = sqlite_plan(&CLAIM_SQLITE[n.ilog2() as usize]).await;
            let shares = claim
                .iter()
                .filter(|d| {
                    *d == "SEARCH d USING INDEX deliveries_pending_merchant (msn=? AND next_attempt_at<?)"
                })
                .count();
            assert_eq!(
                shares, n,
                "each merchant's due entries on the index: {claim:?}"
            );
            let firsts = claim
                .iter()
                .filter(|d| {
                    *d == "SEARCH e USING COVERING INDEX deliveries_pending_order \
                           (order_id=? AND payment_type=?)"
                })
                .count();
            assert_eq!(firsts, n, "the first of each order probed: {claim:?}");
            assert!(
                !claim
                    .iter()
                    .any(|d| d.contains("TEMP B-TREE") || d.starts_with("SCAN d ")),
                "read in order, not sorted: {claim:?}"
            );
        }
    }

    #[tokio::test]
    async fn the_backlog_is_counted_on_an_index_on_sqlite() {
        let plan = sqlite_plan(PENDING_STATS_SQLITE).await;
        assert!(
            plan.iter()
                .any(|d| d == "SCAN deliveries USING COVERING INDEX deliveries_pending_merchant"),
            "{plan:?}"
        );
        assert!(
            plan.iter()
                .any(|d| d.contains("USING INTEGER PRIMARY KEY (rowid=?)")),
            "the oldest entry's row, by its seq: {plan:?}"
        );
    }

    #[tokio::test]
    async fn a_groups_statements_probe_an_index_per_order_or_id_on_sqlite() {
        for n in [1_usize, GROUP_MAX] {
            let orders = sqlite_plan(&ORDERS_SQLITE[n.ilog2() as usize]).await;
            assert!(
                orders.iter().any(|d| d.contains("USING INDEX deliveries_order (msn=? AND payment_type=? AND order_id=? AND kind=?)")),
                "{orders:?}"
            );
            assert!(
                !orders.iter().any(|d| d.contains("SCAN deliveries")),
                "{orders:?}"
            );
            let finish = sqlite_plan(&FINISH_DELIVERED_SQLITE[n.ilog2() as usize]).await;
            assert_eq!(
                finish,
                ["SEARCH deliveries USING INDEX sqlite_autoindex_deliveries_1 (id=?)"],
                "each id probed, not every pending entry walked"
            );
        }
        // Without the `+`, SQLite walks every pending entry through an
        // index on the state: what the test above would catch.
        let walk = sqlite_plan(&finish_delivered(4, "state")).await;
        assert!(walk.iter().any(|d| d.contains("(state=?)")), "{walk:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn without_a_wait_a_group_is_what_is_already_waiting() {
        let (tx, mut rx) = channel();
        for i in 0..3 {
            tx.send(i).await.unwrap();
        }
        let started = Instant::now();
        let mut group = Vec::new();
        assert!(gather(&mut group, &mut rx, Duration::ZERO, GROUP_MAX).await);
        assert_eq!(group, [0, 1, 2]);
        assert_eq!(started.elapsed(), Duration::ZERO, "no wait");
    }

    // The wait is a thread's timed wait, in real time: tokio's paused clock
    // does not move it.
    #[tokio::test]
    async fn alone_a_group_closes_once_its_wait_is_over() {
        let (tx, mut rx) = channel();
        let mut group = Vec::new();
        tx.send(0).await.unwrap();
        let started = std::time::Instant::now();
        assert!(gather(&mut group, &mut rx, Duration::from_millis(20), GROUP_MAX).await);
        assert!(
            started.elapsed() >= Duration::from_millis(20),
            "not before the wait"
        );
        assert_eq!(group, [0]);
        // What comes after the wait is the next group's.
        tx.send(1).await.unwrap();
        group.clear();
        assert!(gather(&mut group, &mut rx, WAIT, GROUP_MAX).await);
        assert_eq!(group, [1]);
    }

    /// Far longer than any test's run on the slowest machine: a group that
    /// waited it out would fail the test, never pass it by luck.
    const LONG: Duration = Duration::from_secs(60);

    #[tokio::test]
    async fn a_full_group_goes_without_waiting_for_the_bound() {
        let (tx, mut rx) = channel();
        for i in 0..u32::try_from(GROUP_MAX).unwrap() + 5 {
            tx.send(i).await.unwrap();
        }
        let started = std::time::Instant::now();
        let mut group = Vec::new();
        assert!(gather(&mut group, &mut rx, LONG, GROUP_MAX).await);
        assert_eq!(group.len(), GROUP_MAX);
        assert!(started.elapsed() < LONG / 2, "it went at once");
        group.clear();
        assert!(gather(&mut group, &mut rx, WAIT, GROUP_MAX).await);
        assert_eq!(group, [64, 65, 66, 67, 68], "the rest, in order");
    }

    #[tokio::test]
    async fn a_carried_group_does_not_wait_again() {
        let (tx, mut rx) = channel();
        tx.send(1).await.unwrap();
        let started = std::time::Instant::now();
        let mut group = vec![0];
        assert!(gather(&mut group, &mut rx, LONG, GROUP_MAX).await);
        assert_eq!(group, [0, 1]);
        assert!(started.elapsed() < LONG / 2, "it went at once");
    }

    /// A group takes what comes during its wait; once full, it goes and
    /// frees the thread its wait was on (the runtime's blocking pool,
    /// dropped, waits for its threads).
    #[test]
    fn a_group_takes_what_comes_within_the_wait_and_frees_its_thread() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let group = runtime.block_on(async {
            let (tx, mut rx) = channel();
            tx.send(0).await.unwrap();
            let mut group = Vec::new();
            {
                let gathering = gather(&mut group, &mut rx, LONG, 2);
                tokio::pin!(gathering);
                tokio::select! {
                    _ = &mut gathering => panic!("a group of one closed long before its wait"),
                    () = tokio::time::sleep(Duration::from_millis(50)) => {}
                }
                tx.send(1).await.unwrap();
                assert!(gathering.await);
            }
            group
        });
        assert_eq!(
            group,
            [0, 1],
            "one that came during the wait, and full at two"
        );
        let (dropped, done) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            drop(runtime);
            let _ = dropped.send(());
        });
        assert!(
            done.recv_timeout(LONG / 2).is_ok(),
            "the runtime's drop waited for the group's thread"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn gathering_ends_when_every_sender_is_gone() {
        let (tx, mut rx) = channel();
        tx.send(0).await.unwrap();
        drop(tx);
        let mut group = Vec::new();
        assert!(gather(&mut group, &mut rx, WAIT, GROUP_MAX).await);
        assert_eq!(group, [0]);
        group.clear();
        assert!(!gather(&mut group, &mut rx, WAIT, GROUP_MAX).await);
    }
}
