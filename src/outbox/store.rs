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
use std::sync::Arc;
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
            "INSERT INTO deliveries (id, msn, kind, payment_type, order_id, fingerprint, payload, \
             state, attempts, created_at, updated_at, next_attempt_at, \
             trace_parent, trace_state, created_by, created_by_client) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, 'pending', 0, $8, $8, $8, $9, $10, $11, $12)",
            $returning
        )
    };
}

/// Without `RETURNING`: SQLite prepares a statement with a `RETURNING`
/// clause again at every execution, which cost more than the insert.
const INSERT_SQLITE: &str = insert!("");
const INSERT_POSTGRES: &str = insert!(" RETURNING seq");

/// The claim, but for the row locks (see [`Store::claim`]).
macro_rules! claim {
    ($lock:literal) => {
        concat!(
            "UPDATE deliveries SET lease_owner = $1, lease_until = $2 WHERE seq IN (\
               SELECT d.seq FROM deliveries d \
               WHERE d.state = 'pending' AND d.next_attempt_at <= $3 \
               AND (d.lease_owner IS NULL OR d.lease_until <= $3) \
               AND $5 NOT LIKE '%,' || d.msn || ',%' \
               AND NOT EXISTS (SELECT 1 FROM deliveries e \
                 WHERE e.msn = d.msn AND e.payment_type = d.payment_type \
                 AND e.order_id = d.order_id AND e.state = 'pending' AND e.seq < d.seq) \
               ORDER BY d.next_attempt_at, d.seq LIMIT $4 ",
            $lock,
            ") RETURNING ",
            columns!()
        )
    };
}

/// SQLite has one writer: a claim never meets another's.
const CLAIM_SQLITE: &str = claim!("");
/// Rows another replica is claiming are skipped, not waited for.
const CLAIM_POSTGRES: &str = claim!("FOR UPDATE SKIP LOCKED");

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
            let pending = existing
                .iter()
                .position(|r| r.state == State::Pending.as_str());
            let answer = match (new.kind, pending) {
                (Kind::Receipt, Some(i)) => {
                    let row = existing
                        .into_iter()
                        .nth(i)
                        .ok_or(sqlx::Error::RowNotFound)?;
                    let same = row.fingerprint == new.fingerprint;
                    Some(row.delivery().map(|d| {
                        if same {
                            Enqueued::Repost(d)
                        } else {
                            Enqueued::Conflict(d)
                        }
                    }))
                }
                (Kind::Receipt, None) if !existing.is_empty() => existing
                    .into_iter()
                    .next()
                    .map(|r| r.delivery().map(Enqueued::AlreadyDelivered)),
                (Kind::Category, Some(i)) if !existing[i].leased(now) => {
                    if existing[i].fingerprint == new.fingerprint {
                        existing
                            .into_iter()
                            .nth(i)
                            .map(|r| r.delivery().map(Enqueued::Repost))
                    } else {
                        let replaced: Option<Row> = sqlx::query_as(REPLACE)
                            .bind(&new.payload)
                            .bind(&new.fingerprint)
                            .bind(now)
                            .bind(existing[i].seq)
                            .bind(&new.origin.trace_parent)
                            .bind(&new.origin.trace_state)
                            .bind(&new.origin.created_by)
                            .bind(&new.origin.created_by_client)
                            .fetch_optional(&mut **tx)
                            .await?;
                        replaced.map(|r| r.delivery().map(Enqueued::Replaced))
                    }
                }
                _ => None,
            };
            let answer = match answer {
                Some(answer) => answer,
                None => 'insert: {
                    let pending = match counted.get(&new.msn) {
                        Some(pending) => *pending,
                        None => {
                            let (pending,): (i64,) = sqlx::query_as(COUNT_PENDING)
                                .bind(&new.msn)
                                .bind(max_pending)
                                .fetch_one(&mut **tx)
                                .await?;
                            counted.insert(new.msn.clone(), pending);
                            pending
                        }
                    };
                    if pending >= max_pending {
                        break 'insert Ok(Enqueued::Full);
                    }
                    let id = uuid::Uuid::new_v4().to_string();
                    let seq = $insert(&mut **tx, new, &id, now).await?;
                    if let Some(pending) = counted.get_mut(&new.msn) {
                        *pending += 1;
                    }
                    Ok(Enqueued::Created(Delivery {
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
                    }))
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
    let until = tokio::time::Instant::now() + wait;
    while group.len() < max {
        match jobs.try_recv() {
            Ok(job) => group.push(job),
            Err(TryRecvError::Disconnected) => break,
            Err(TryRecvError::Empty) if wait.is_zero() => break,
            Err(TryRecvError::Empty) => match tokio::time::timeout_at(until, jobs.recv()).await {
                Ok(Some(job)) => group.push(job),
                Ok(None) | Err(_) => break,
            },
        }
    }
    true
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

/// Runs a group's enqueues in one transaction of `$pool` and commits it:
/// each enqueue's [`Tried`], or where the transaction failed ([`Stage`]).
///
/// A statement that fails answers its own request only. PostgreSQL aborts
/// the whole transaction at a failed statement, so there each enqueue runs
/// in a savepoint of its own (`$savepoints`), rolled back alone when it
/// fails. SQLite undoes a failed constraint alone and keeps the transaction;
/// any other failure there fails the group.
macro_rules! run_group {
    ($pool:expr, $group:expr, $name:expr, $savepoints:expr, $insert:path) => {
        async {
            let group: &[Job] = $group;
            let name: &str = $name;
            let mut tx = $pool.begin().await.map_err(Stage::Before)?;
            let mut counted = std::collections::HashMap::new();
            let mut tried = Vec::with_capacity(group.len());
            for job in group {
                let result = if $savepoints {
                    let mut savepoint = sqlx::Connection::begin(&mut *tx)
                        .await
                        .map_err(Stage::Before)?;
                    let result = enqueue_in!(
                        &mut savepoint,
                        &job.new,
                        job.now,
                        job.max_pending,
                        &mut counted,
                        $insert
                    )
                    .await;
                    match result {
                        Ok(answer) => {
                            savepoint.commit().await.map_err(Stage::Before)?;
                            Ok(answer)
                        }
                        Err(e @ sqlx::Error::Database(_)) => {
                            savepoint.rollback().await.map_err(Stage::Before)?;
                            Err(Ok(e))
                        }
                        Err(e) => Err(Err(Stage::Before(e))),
                    }
                } else {
                    enqueue_in!(
                        &mut tx,
                        &job.new,
                        job.now,
                        job.max_pending,
                        &mut counted,
                        $insert
                    )
                    .await
                    .map_err(|e| {
                        if sqlite_statement_undone(&e) {
                            Ok(e)
                        } else {
                            Err(Stage::Before(e))
                        }
                    })
                };
                tried.push(match result {
                    Ok(answer) => Tried::Answer(Box::new(answer)),
                    Err(Ok(e)) if met_another(&e) => Tried::Again(e),
                    Err(Ok(e)) => Tried::Answer(Box::new(Err(unavailable(name, &e)))),
                    Err(Err(stage)) => return Err(stage),
                });
            }
            tx.commit().await.map_err(Stage::Commit)?;
            Ok::<_, Stage>(tried)
        }
    };
}

/// The enqueues waiting for the store's writers: one receiver, shared; the
/// writer holding it gathers the next group (and waits there for its first
/// request while the store is idle).
type Jobs = Arc<tokio::sync::Mutex<tokio::sync::mpsc::Receiver<Job>>>;

/// One of the store's writers: gathers a group ([`gather`]), commits it
/// ([`run_group!`]) and answers each request, until every sender is gone.
/// Nothing is answered before its group's commit: a `202` still means
/// stored. A failed commit answers every request of the group with the
/// failure (the outcome unknown where the commit broke).
async fn writer(pool: Pool, name: String, jobs: Jobs, grouping: Grouping) {
    let store = match pool {
        Pool::Sqlite(_) => "sqlite",
        Pool::Postgres(_) => "postgres",
    };
    let mut group: Vec<Job> = Vec::with_capacity(GROUP_MAX);
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
            Pool::Sqlite(pool) => run_group!(pool, &group, &name, false, insert_sqlite).await,
            Pool::Postgres(pool) => run_group!(pool, &group, &name, true, insert_postgres).await,
        };
        let tried = match committed {
            Ok(tried) => tried,
            Err(e) => {
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
            // never waits on another's lock.
            let pool = SqlitePoolOptions::new()
                .max_connections(1)
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
    /// untouched).
    pub async fn claim(
        &self,
        owner: &str,
        now: i64,
        lease: Duration,
        limit: i64,
        skip: &[&str],
    ) -> Result<Vec<Claimed>, StoreError> {
        // MSNs are digits: a comma-delimited list matched with LIKE, the
        // same statement on both databases.
        let skip = format!(",{},", skip.join(","));
        let lease_until = now.saturating_add(i64::try_from(lease.as_millis()).unwrap_or(i64::MAX));
        let claim = match self.pool {
            Pool::Sqlite(_) => CLAIM_SQLITE,
            Pool::Postgres(_) => CLAIM_POSTGRES,
        };
        let rows: Vec<Row> = with_pool!(self, pool => {
            sqlx::query_as(claim)
                .bind(owner)
                .bind(lease_until)
                .bind(now)
                .bind(limit)
                .bind(&skip)
                .fetch_all(pool)
                .await
        })
        .map_err(|e| self.unavailable(&e))?;
        let mut claimed = deliveries(rows)?
            .into_iter()
            .map(|delivery| Claimed {
                delivery,
                lease_until,
            })
            .collect::<Vec<_>>();
        claimed.sort_by_key(|c| c.delivery.seq);
        Ok(claimed)
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
    /// whether the claim was still `owner`'s.
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
        let result: Result<Vec<bool>, sqlx::Error> = with_pool!(self, pool => async {
            let mut tx = pool.begin().await?;
            let mut done = Vec::with_capacity(attempts.len());
            for (id, outcome) in attempts {
                let (state, next_attempt_at, error, delivered_at) = match outcome {
                    Outcome::Delivered => (State::Delivered, None, None, Some(now)),
                    Outcome::Retry {
                        next_attempt_at,
                        error,
                    } => (State::Pending, Some(*next_attempt_at), Some(error), None),
                    Outcome::Failed { error } => (State::Failed, None, Some(error), None),
                    Outcome::Postponed { next_attempt_at } => {
                        (State::Pending, Some(*next_attempt_at), None, None)
                    }
                };
                let sent = i64::from(!matches!(outcome, Outcome::Postponed { .. }));
                let affected = sqlx::query(finish)
                    .bind(state.as_str())
                    .bind(next_attempt_at)
                    .bind(error)
                    .bind(delivered_at)
                    .bind(now)
                    .bind(*id)
                    .bind(owner)
                    .bind(sent)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                done.push(affected == 1);
            }
            tx.commit().await?;
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
        let stats = "SELECT msn, kind, COUNT(*), MIN(created_at) FROM deliveries \
             WHERE state = 'pending' GROUP BY msn, kind ORDER BY msn, kind";
        let rows: Vec<(String, String, i64, i64)> = with_pool!(self, pool => {
            sqlx::query_as(stats).fetch_all(pool).await
        })
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

    #[tokio::test(start_paused = true)]
    async fn a_group_takes_what_comes_within_the_wait_after_its_first() {
        let (tx, mut rx) = channel();
        let sender = tokio::spawn(async move {
            tx.send(0).await.unwrap();
            tokio::time::sleep(Duration::from_millis(1)).await;
            tx.send(1).await.unwrap();
            tokio::time::sleep(Duration::from_millis(2)).await;
            // 3 ms after the first: the next group's.
            tx.send(2).await.unwrap();
        });
        let mut group = Vec::new();
        let started = Instant::now();
        assert!(gather(&mut group, &mut rx, WAIT, GROUP_MAX).await);
        assert_eq!(group, [0, 1]);
        assert_eq!(started.elapsed(), WAIT, "closed at the bound");
        sender.await.unwrap();
        group.clear();
        assert!(gather(&mut group, &mut rx, WAIT, GROUP_MAX).await);
        assert_eq!(group, [2]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_group_goes_without_waiting_for_the_bound() {
        let (tx, mut rx) = channel();
        for i in 0..u32::try_from(GROUP_MAX).unwrap() + 5 {
            tx.send(i).await.unwrap();
        }
        let started = Instant::now();
        let mut group = Vec::new();
        assert!(gather(&mut group, &mut rx, Duration::from_secs(1), GROUP_MAX).await);
        assert_eq!(group.len(), GROUP_MAX);
        assert_eq!(started.elapsed(), Duration::ZERO);
        group.clear();
        assert!(gather(&mut group, &mut rx, WAIT, GROUP_MAX).await);
        assert_eq!(group, [64, 65, 66, 67, 68], "the rest, in order");
    }

    #[tokio::test(start_paused = true)]
    async fn a_carried_group_does_not_wait_again() {
        let (tx, mut rx) = channel();
        tx.send(1).await.unwrap();
        let started = Instant::now();
        let mut group = vec![0];
        assert!(gather(&mut group, &mut rx, Duration::from_secs(1), GROUP_MAX).await);
        assert_eq!(group, [0, 1]);
        assert_eq!(started.elapsed(), Duration::ZERO);
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
