//! The outbox's store against real databases: a SQLite file on disk and a
//! PostgreSQL server (`GATEWAY_TEST_POSTGRES_URL`, a throwaway cluster that
//! `scripts/test` starts). Each behaviour runs on both, on a fresh
//! database.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use secrecy::SecretString;
use sqlx::Connection as _;
use vipps_order_gateway::outbox::{
    claim_statement_postgres, Claims, Delivery, Enqueued, Grouping, Kind, NewDelivery, Origin,
    Outcome, PendingStats, State, Store, StoreError, CLAIM_SETTINGS_POSTGRES,
    DUE_MERCHANTS_POSTGRES,
};

use crate::auth::temp_dir;

const MSN: &str = "123456";
/// A fixed "now" (Unix ms); the store takes time from its caller.
const T0: i64 = 1_800_000_000_000;
const LEASE: Duration = Duration::from_secs(30);

async fn sqlite_store() -> Store {
    let file = temp_dir("outbox").join("outbox.db");
    Store::open(&format!("sqlite://{}", file.display()), None)
        .await
        .expect("a SQLite store in a fresh directory opens")
}

/// The test server, without a database: `postgres://USER@HOST:PORT`.
fn postgres_server() -> String {
    std::env::var("GATEWAY_TEST_POSTGRES_URL").expect(
        "GATEWAY_TEST_POSTGRES_URL names the PostgreSQL server of the outbox tests \
         (postgres://USER@HOST:PORT); scripts/test starts one",
    )
}

/// The URL of a fresh database on the test server.
pub async fn postgres_database() -> String {
    let server = postgres_server();
    let admin = sqlx::PgPool::connect(&format!("{server}/postgres"))
        .await
        .expect("the test PostgreSQL server answers");
    let db = format!("vog_{}", uuid::Uuid::new_v4().simple());
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {db}")))
        .execute(&admin)
        .await
        .unwrap();
    admin.close().await;
    format!("{server}/{db}")
}

/// A store in a database of its own on the test server.
async fn postgres_store() -> Store {
    Store::open(&postgres_database().await, None)
        .await
        .expect("a PostgreSQL store in a fresh database opens")
}

/// Runs a behaviour on each store, as `NAME::sqlite` and `NAME::postgres`.
macro_rules! on_both {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[actix_rt::test]
            async fn sqlite() {
                super::$name(super::sqlite_store().await).await;
            }
            #[actix_rt::test]
            async fn postgres() {
                super::$name(super::postgres_store().await).await;
            }
        }
    )*};
}

/// Runs a behaviour on the URL of a fresh store of each kind, as
/// `NAME::sqlite` and `NAME::postgres`: for behaviours that open the store
/// themselves, or reach its database beside it.
macro_rules! on_both_urls {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[actix_rt::test]
            async fn sqlite() {
                super::$name(super::sqlite_url()).await;
            }
            #[actix_rt::test]
            async fn postgres() {
                super::$name(super::postgres_database().await).await;
            }
        }
    )*};
}

on_both!(
    a_receipt_is_stored_once_per_order,
    a_claim_is_one_claimers_until_its_lease_ends,
    a_retry_waits_for_its_time_and_keeps_the_error,
    a_pending_category_is_replaced_until_it_is_claimed,
    listing_is_newest_first_by_state_with_a_cursor,
    finished_entries_are_purged_and_pending_ones_counted,
    concurrent_claimers_take_each_entry_once,
    concurrent_identical_receipts_are_stored_once,
    a_merchants_pending_entries_are_bounded_and_reposts_still_found,
    the_bound_holds_across_groups_and_deliveries_make_room,
    a_postponed_entry_keeps_its_attempts_and_error,
    a_claim_leaves_the_skipped_merchants_entries_alone,
    merchants_take_turns_and_share_each_claim,
    an_entry_keeps_its_origin_and_a_replaced_link_takes_the_new_one,
    attempts_recorded_together_keep_each_claims_owner,
);

fn request(kind: Kind, order: &str, content: &str) -> NewDelivery {
    NewDelivery {
        msn: MSN.into(),
        kind,
        payment_type: "ecom".into(),
        order_id: order.into(),
        fingerprint: format!("fp-{content}"),
        payload: format!("{{\"content\":\"{content}\"}}"),
        origin: Origin::default(),
    }
}

/// The origin of a request sent by `caller` within trace `trace`.
fn origin(caller: &str, trace: &str) -> Origin {
    Origin {
        trace_parent: Some(format!("00-{trace}-00f067aa0ba902b7-01")),
        trace_state: Some("shop=abc".into()),
        created_by: Some(caller.into()),
        created_by_client: Some(format!("{caller}-client")),
    }
}

async fn an_entry_keeps_its_origin_and_a_replaced_link_takes_the_new_one(store: Store) {
    let first = origin("svc-a", "4bf92f3577b34da6a3ce929d0e0e4736");
    let mut new = receipt("o-1", "a");
    new.origin = first.clone();
    let d = created(&store, &new, T0).await;
    assert_eq!(d.origin, first);
    assert_eq!(get(&store, &d.id).await.origin, first);
    // An identical repost is the same entry, from its first sender.
    new.origin = origin("svc-b", "5bf92f3577b34da6a3ce929d0e0e4736");
    match store.enqueue(&new, T0 + 1).await.unwrap() {
        Enqueued::Repost(r) => assert_eq!(r.origin, first),
        other => panic!("{other:?}"),
    }
    let claimed = store.claim("w", T0 + 2, LEASE, 10, &[]).await.unwrap();
    assert_eq!(
        claimed[0].delivery.origin, first,
        "the worker reads it back"
    );
    // A category link that replaces a pending one carries its own request.
    let mut link = request(Kind::Category, "o-2", "x");
    link.origin = first.clone();
    created(&store, &link, T0).await;
    let mut newer = request(Kind::Category, "o-2", "y");
    newer.origin = origin("svc-c", "6bf92f3577b34da6a3ce929d0e0e4736");
    match store.enqueue(&newer, T0 + 3).await.unwrap() {
        Enqueued::Replaced(r) => assert_eq!(r.origin, newer.origin),
        other => panic!("{other:?}"),
    }
    let unknown = created(&store, &receipt("o-3", "z"), T0).await;
    assert_eq!(unknown.origin, Origin::default(), "none: all null");
}

fn receipt(order: &str, content: &str) -> NewDelivery {
    request(Kind::Receipt, order, content)
}

fn category(order: &str, content: &str) -> NewDelivery {
    request(Kind::Category, order, content)
}

async fn created(store: &Store, new: &NewDelivery, now: i64) -> Delivery {
    match store.enqueue(new, now).await.unwrap() {
        Enqueued::Created(d) => d,
        other => panic!("expected a new entry, got {other:?}"),
    }
}

async fn claim_ids(store: &Store, owner: &str, now: i64) -> Vec<String> {
    store
        .claim(owner, now, LEASE, 100, &[])
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.delivery.id)
        .collect()
}

async fn a_merchants_pending_entries_are_bounded_and_reposts_still_found(store: Store) {
    let store = store.with_max_pending(2);
    let first = created(&store, &receipt("o-1", "a"), T0).await;
    created(&store, &category("o-2", "b"), T0).await;
    assert_eq!(
        store.enqueue(&receipt("o-3", "c"), T0).await.unwrap(),
        Enqueued::Full,
        "a third pending entry"
    );
    // A repost creates nothing: found however full.
    match store.enqueue(&receipt("o-1", "a"), T0).await.unwrap() {
        Enqueued::Repost(d) => assert_eq!(d.id, first.id),
        other => panic!("expected the repost, got {other:?}"),
    }
    // Another merchant has a bound of its own.
    let mut other = receipt("o-3", "c");
    other.msn = "654321".into();
    created(&store, &other, T0).await;
    // A finished entry makes room.
    let claimed = store.claim("w", T0, LEASE, 10, &[]).await.unwrap();
    let mine = claimed.iter().find(|c| c.delivery.id == first.id).unwrap();
    assert!(store
        .finish(&mine.delivery.id, "w", &Outcome::Delivered, T0 + 1)
        .await
        .unwrap());
    created(&store, &receipt("o-3", "c"), T0 + 2).await;
}

/// `n` receipts for new orders (`{prefix}-{i}`), enqueued at once, so
/// that they meet in groups: how many were stored, and how many refused as
/// over the bound.
async fn enqueue_at_once(store: &Store, prefix: &str, n: usize, now: i64) -> (usize, usize) {
    let requests: Vec<NewDelivery> = (0..n)
        .map(|i| receipt(&format!("{prefix}-{i}"), &format!("{prefix}-{i}")))
        .collect();
    let answers =
        futures_util::future::join_all(requests.iter().map(|r| store.enqueue(r, now))).await;
    let mut stored = 0;
    let mut full = 0;
    for answer in answers {
        match answer.unwrap() {
            Enqueued::Created(_) => stored += 1,
            Enqueued::Full => full += 1,
            other => panic!("expected a new entry or the bound, got {other:?}"),
        }
    }
    (stored, full)
}

/// The bound is exact however the requests fall into groups: a store that
/// knows a merchant's backlog from an earlier group still refuses what
/// would pass the bound, and still takes what the deliveries since made
/// room for.
async fn the_bound_holds_across_groups_and_deliveries_make_room(store: Store) {
    let store = store.with_max_pending(100);
    assert_eq!(enqueue_at_once(&store, "a", 40, T0).await, (40, 0));
    assert_eq!(enqueue_at_once(&store, "b", 40, T0).await, (40, 0));
    assert_eq!(
        enqueue_at_once(&store, "c", 30, T0).await,
        (20, 10),
        "80 pending, a bound of 100"
    );
    let claimed = store.claim("w", T0, LEASE, 100, &[]).await.unwrap();
    assert_eq!(claimed.len(), 100);
    let attempts: Vec<(&str, &Outcome)> = claimed[..50]
        .iter()
        .map(|c| (c.delivery.id.as_str(), &Outcome::Delivered))
        .collect();
    assert!(store
        .finish_all("w", &attempts, T0 + 1)
        .await
        .unwrap()
        .iter()
        .all(|ours| *ours));
    assert_eq!(
        enqueue_at_once(&store, "d", 60, T0 + 2).await,
        (50, 10),
        "50 delivered of 100: room for 50"
    );
    assert_eq!(
        enqueue_at_once(&store, "e", 1, T0 + 3).await,
        (0, 1),
        "full again"
    );
    // A count stops at its request's bound: a store with a lower bound
    // counts 10 of the 100, and that 10 must not serve the higher bound.
    assert_eq!(
        enqueue_at_once(&store.clone().with_max_pending(10), "f", 1, T0 + 4).await,
        (0, 1)
    );
    let store = store.with_max_pending(130);
    assert_eq!(
        enqueue_at_once(&store, "g", 40, T0 + 5).await,
        (30, 10),
        "100 pending, a bound of 130"
    );
}

async fn a_postponed_entry_keeps_its_attempts_and_error(store: Store) {
    let d = created(&store, &receipt("o-1", "a"), T0).await;
    assert_eq!(
        claim_ids(&store, "w", T0).await,
        std::slice::from_ref(&d.id)
    );
    let retry = Outcome::Retry {
        next_attempt_at: T0 + 10,
        error: "{\"status\":503}".into(),
    };
    assert!(store.finish(&d.id, "w", &retry, T0 + 1).await.unwrap());
    assert_eq!(
        claim_ids(&store, "w", T0 + 10).await,
        std::slice::from_ref(&d.id)
    );
    let postponed = Outcome::Postponed {
        next_attempt_at: T0 + 5_000,
    };
    assert!(store.finish(&d.id, "w", &postponed, T0 + 11).await.unwrap());
    let after = get(&store, &d.id).await;
    assert_eq!(after.state, State::Pending);
    assert_eq!(after.attempts, 1, "nothing was sent: not an attempt");
    assert_eq!(after.last_error.as_deref(), Some("{\"status\":503}"));
    assert_eq!(after.next_attempt_at, Some(T0 + 5_000));
    assert!(
        claim_ids(&store, "w", T0 + 4_999).await.is_empty(),
        "released, due later"
    );
    assert_eq!(claim_ids(&store, "w", T0 + 5_000).await, [d.id]);
}

async fn a_claim_leaves_the_skipped_merchants_entries_alone(store: Store) {
    let mine = created(&store, &receipt("o-1", "a"), T0).await;
    let mut other = receipt("o-1", "a");
    other.msn = "654321".into();
    let theirs = created(&store, &other, T0).await;
    let skipped = store.claim("w", T0, LEASE, 10, &[MSN]).await.unwrap();
    let ids: Vec<&str> = skipped.iter().map(|c| c.delivery.id.as_str()).collect();
    assert_eq!(ids, [theirs.id.as_str()]);
    // Left alone: not leased, so claimed at once when no longer skipped.
    assert_eq!(claim_ids(&store, "w2", T0).await, [mine.id]);
}

/// `n` receipts of merchant `msn`, due one millisecond apart from `due`:
/// their ids, in the order they fall due.
async fn backlog(store: &Store, msn: &str, n: usize, due: i64) -> Vec<String> {
    let mut ids = Vec::with_capacity(n);
    for i in 0..n {
        let mut new = receipt(&format!("{msn}-{i}"), "a");
        new.msn = msn.into();
        ids.push(
            created(store, &new, due + i64::try_from(i).unwrap())
                .await
                .id,
        );
    }
    ids
}

async fn merchants_take_turns_and_share_each_claim(store: Store) {
    // The first merchant's 40 fell due first, the third's 3 after them,
    // the second's one last, and the fourth's are not due yet.
    let first = backlog(&store, MSN, 40, T0).await;
    let third = backlog(&store, "333333", 3, T0 + 50).await;
    let second = backlog(&store, "222222", 1, T0 + 100).await;
    backlog(&store, "444444", 5, T0 + 10_000).await;
    let now = T0 + 1_000;
    let ids = |claims: &Claims| -> Vec<String> {
        claims
            .claimed
            .iter()
            .map(|c| c.delivery.id.clone())
            .collect()
    };

    // Three merchants due: 32 is 11 + 11 + 10, each taking its first
    // entries, whenever they fell due.
    let claims = store.claim_shares("w", now, LEASE, 32, &[]).await.unwrap();
    let mut expected: Vec<String> = first[..11]
        .iter()
        .chain(&third)
        .chain(&second)
        .cloned()
        .collect();
    let mut got = ids(&claims);
    expected.sort();
    got.sort();
    assert_eq!(got, expected);
    assert!(claims.more, "the first merchant took its whole share");

    // The first merchant's next, the others' being claimed already.
    let claims = store.claim_shares("w2", now, LEASE, 32, &[]).await.unwrap();
    assert_eq!(ids(&claims), first[11..40]);
    assert!(!claims.more, "no merchant took its whole share (32)");
    assert!(store
        .claim_shares("w3", now, LEASE, 32, &[])
        .await
        .unwrap()
        .claimed
        .is_empty());

    // Fewer slots than merchants due: the merchants take turns, in MSN
    // order from where the last claim stopped (the first merchant), one
    // entry each.
    let later = now + i64::try_from(LEASE.as_millis()).unwrap() + 1;
    let mut turns = Vec::new();
    for owner in ["w4", "w5", "w6"] {
        let claims = store
            .claim_shares(owner, later, LEASE, 2, &[])
            .await
            .unwrap();
        assert!(claims.more, "each took its whole share");
        let mut merchants: Vec<String> = claims
            .claimed
            .iter()
            .map(|c| c.delivery.msn.clone())
            .collect();
        merchants.sort();
        turns.push(merchants);
    }
    assert_eq!(
        turns,
        [
            ["222222", "333333"],
            // After the last MSN, from the first.
            [MSN, "444444"],
            // The second merchant's one entry is claimed already.
            ["333333", "444444"],
        ]
    );
}

async fn get(store: &Store, id: &str) -> Delivery {
    store.get(MSN, id).await.unwrap().expect("the entry exists")
}

async fn a_receipt_is_stored_once_per_order(store: Store) {
    let d = created(&store, &receipt("o-1", "a"), T0).await;
    assert_eq!(d.state, State::Pending);
    assert_eq!((d.attempts, d.created_at), (0, T0));
    assert_eq!(d.next_attempt_at, Some(T0), "due at once");
    assert_eq!(d.payload, "{\"content\":\"a\"}");

    assert_eq!(
        store.enqueue(&receipt("o-1", "a"), T0 + 1).await.unwrap(),
        Enqueued::Repost(d.clone()),
        "an identical repost is the same entry"
    );
    match store.enqueue(&receipt("o-1", "b"), T0 + 2).await.unwrap() {
        Enqueued::Conflict(c) => assert_eq!(c.id, d.id),
        other => panic!("a different receipt conflicts, got {other:?}"),
    }
    let other = created(&store, &receipt("o-2", "b"), T0 + 3).await;

    assert_eq!(
        claim_ids(&store, "w1", T0 + 10).await,
        [d.id.clone(), other.id.clone()]
    );
    assert!(store
        .finish(&d.id, "w1", &Outcome::Delivered, T0 + 20)
        .await
        .unwrap());
    let done = get(&store, &d.id).await;
    assert_eq!(done.state, State::Delivered);
    assert_eq!(done.attempts, 1);
    assert_eq!(done.delivered_at, Some(T0 + 20));
    assert_eq!(done.next_attempt_at, None);

    match store.enqueue(&receipt("o-1", "a"), T0 + 30).await.unwrap() {
        Enqueued::AlreadyDelivered(x) => assert_eq!(x.id, d.id),
        other => panic!("a delivered order's receipt is not stored again, got {other:?}"),
    }
    assert_eq!(
        store.get("654321", &d.id).await.unwrap(),
        None,
        "another merchant does not see it"
    );
}

async fn attempts_recorded_together_keep_each_claims_owner(store: Store) {
    let mut ids = Vec::new();
    for i in 0..70 {
        ids.push(
            created(&store, &receipt(&format!("o-{i}"), "a"), T0)
                .await
                .id,
        );
    }
    // w1 holds the first three; the first's lease ends and w2 takes it.
    let claimed = |claims: Vec<vipps_order_gateway::outbox::Claimed>| -> Vec<String> {
        claims.into_iter().map(|c| c.delivery.id).collect()
    };
    let short = Duration::from_millis(10);
    assert_eq!(
        claimed(store.claim("w1", T0, short, 1, &[]).await.unwrap()),
        ids[..1]
    );
    assert_eq!(
        claimed(store.claim("w1", T0, LEASE, 2, &[]).await.unwrap()),
        ids[1..3]
    );
    let later = T0 + 10;
    let second = claim_ids(&store, "w2", later).await;
    let mut expected = vec![ids[0].clone()];
    expected.extend_from_slice(&ids[3..]);
    assert_eq!(second, expected);
    let retry = Outcome::Retry {
        next_attempt_at: T0 + 60_000,
        error: r#"{"status":503}"#.into(),
    };
    let outcomes = [
        (ids[0].as_str(), &Outcome::Delivered),
        (ids[1].as_str(), &retry),
        (ids[2].as_str(), &Outcome::Delivered),
    ];
    assert_eq!(
        store.finish_all("w1", &outcomes, later).await.unwrap(),
        [false, true, true],
        "only the claims still w1's are recorded"
    );
    let taken = get(&store, &ids[0]).await;
    assert_eq!(
        (taken.state, taken.attempts),
        (State::Pending, 0),
        "w2's, untouched"
    );
    let retried = get(&store, &ids[1]).await;
    assert_eq!(
        (
            retried.state,
            retried.attempts,
            retried.next_attempt_at,
            retried.last_error.as_deref()
        ),
        (
            State::Pending,
            1,
            Some(T0 + 60_000),
            Some(r#"{"status":503}"#)
        )
    );
    let delivered = get(&store, &ids[2]).await;
    assert_eq!(
        (delivered.state, delivered.attempts, delivered.delivered_at),
        (State::Delivered, 1, Some(later))
    );
    // All w2 claimed (more than one statement holds), delivered together.
    let outcomes: Vec<(&str, &Outcome)> = second
        .iter()
        .map(|id| (id.as_str(), &Outcome::Delivered))
        .collect();
    assert_eq!(
        store.finish_all("w2", &outcomes, later).await.unwrap(),
        vec![true; 68]
    );
    for id in &second {
        let d = get(&store, id).await;
        assert_eq!((d.state, d.attempts), (State::Delivered, 1), "{id}");
    }
}

async fn a_claim_is_one_claimers_until_its_lease_ends(store: Store) {
    let d = created(&store, &receipt("o-1", "a"), T0).await;
    let claimed = store.claim("w1", T0, LEASE, 10, &[]).await.unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].lease_until, T0 + 30_000);

    assert!(claim_ids(&store, "w2", T0 + 29_999).await.is_empty());
    assert_eq!(
        claim_ids(&store, "w2", T0 + 30_000).await,
        std::slice::from_ref(&d.id)
    );
    assert!(
        !store
            .finish(&d.id, "w1", &Outcome::Delivered, T0 + 30_001)
            .await
            .unwrap(),
        "the first claimer's lease was taken over"
    );
    assert_eq!(get(&store, &d.id).await.state, State::Pending);
    assert!(store
        .finish(&d.id, "w2", &Outcome::Delivered, T0 + 30_002)
        .await
        .unwrap());
    let done = get(&store, &d.id).await;
    assert_eq!((done.state, done.attempts), (State::Delivered, 1));
}

async fn a_retry_waits_for_its_time_and_keeps_the_error(store: Store) {
    let d = created(&store, &receipt("o-1", "a"), T0).await;
    assert_eq!(
        claim_ids(&store, "w1", T0).await,
        std::slice::from_ref(&d.id)
    );
    let retry = Outcome::Retry {
        next_attempt_at: T0 + 5_000,
        error: "{\"status\":503}".into(),
    };
    assert!(store.finish(&d.id, "w1", &retry, T0 + 100).await.unwrap());
    let waiting = get(&store, &d.id).await;
    assert_eq!(waiting.state, State::Pending);
    assert_eq!(waiting.attempts, 1);
    assert_eq!(waiting.next_attempt_at, Some(T0 + 5_000));
    assert_eq!(waiting.last_error.as_deref(), Some("{\"status\":503}"));

    assert!(claim_ids(&store, "w1", T0 + 4_999).await.is_empty());
    assert_eq!(
        claim_ids(&store, "w1", T0 + 5_000).await,
        std::slice::from_ref(&d.id)
    );
    let failed = Outcome::Failed {
        error: "{\"status\":400}".into(),
    };
    assert!(store
        .finish(&d.id, "w1", &failed, T0 + 5_100)
        .await
        .unwrap());
    let done = get(&store, &d.id).await;
    assert_eq!((done.state, done.attempts), (State::Failed, 2));
    assert_eq!(done.next_attempt_at, None);
    assert_eq!(done.last_error.as_deref(), Some("{\"status\":400}"));

    let again = created(&store, &receipt("o-1", "b"), T0 + 6_000).await;
    assert_ne!(again.id, d.id, "a failed receipt does not hold the order");
}

async fn a_pending_category_is_replaced_until_it_is_claimed(store: Store) {
    let a = created(&store, &category("o-1", "a"), T0).await;
    assert_eq!(
        store.enqueue(&category("o-1", "a"), T0 + 1).await.unwrap(),
        Enqueued::Repost(a.clone())
    );
    let replaced = match store.enqueue(&category("o-1", "b"), T0 + 2).await.unwrap() {
        Enqueued::Replaced(r) => r,
        other => panic!("a pending link is replaced, got {other:?}"),
    };
    assert_eq!(replaced.id, a.id);
    assert_eq!(replaced.payload, "{\"content\":\"b\"}");
    assert_eq!(replaced.fingerprint, "fp-b");

    assert_eq!(
        claim_ids(&store, "w1", T0 + 3).await,
        std::slice::from_ref(&a.id)
    );
    let c = created(&store, &category("o-1", "c"), T0 + 4).await;
    assert_ne!(c.id, a.id, "a claimed link may be on its way: a new entry");
    assert!(
        claim_ids(&store, "w2", T0 + 5).await.is_empty(),
        "the first entry is w1's, and the order's later one waits for it"
    );
    let retry = Outcome::Retry {
        next_attempt_at: T0 + 50_000,
        error: "{}".into(),
    };
    assert!(store.finish(&a.id, "w1", &retry, T0 + 6).await.unwrap());
    assert!(
        claim_ids(&store, "w2", T0 + 7).await.is_empty(),
        "the first entry is pending, so the later one still waits"
    );
    assert_eq!(
        claim_ids(&store, "w2", T0 + 50_000).await,
        std::slice::from_ref(&a.id)
    );
    assert!(store
        .finish(&a.id, "w2", &Outcome::Delivered, T0 + 50_001)
        .await
        .unwrap());
    assert_eq!(
        claim_ids(&store, "w2", T0 + 50_002).await,
        std::slice::from_ref(&c.id)
    );
}

async fn listing_is_newest_first_by_state_with_a_cursor(store: Store) {
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(
            created(&store, &receipt(&format!("o-{i}"), "a"), T0 + i)
                .await
                .id,
        );
    }
    assert_eq!(claim_ids(&store, "w1", T0 + 10).await, ids);
    for i in [1, 3] {
        let failed = Outcome::Failed { error: "{}".into() };
        assert!(store.finish(&ids[i], "w1", &failed, T0 + 20).await.unwrap());
    }
    let listed = |ds: Vec<Delivery>| ds.into_iter().map(|d| d.id).collect::<Vec<_>>();
    let newest_first: Vec<String> = ids.iter().rev().cloned().collect();
    assert_eq!(
        listed(store.list(MSN, None, None, 10).await.unwrap()),
        newest_first
    );
    let page = store.list(MSN, None, None, 2).await.unwrap();
    let cursor = page.last().map(|d| d.seq);
    assert_eq!(listed(page), newest_first[..2]);
    assert_eq!(
        listed(store.list(MSN, None, cursor, 2).await.unwrap()),
        newest_first[2..4]
    );
    assert_eq!(
        listed(
            store
                .list(MSN, Some(State::Failed), None, 10)
                .await
                .unwrap()
        ),
        [ids[3].clone(), ids[1].clone()]
    );
    assert!(store
        .list("654321", None, None, 10)
        .await
        .unwrap()
        .is_empty());
}

async fn finished_entries_are_purged_and_pending_ones_counted(store: Store) {
    let delivered = created(&store, &receipt("o-1", "a"), T0).await;
    let failed = created(&store, &receipt("o-2", "a"), T0 + 1).await;
    assert_eq!(claim_ids(&store, "w1", T0 + 2).await.len(), 2);
    store
        .finish(&delivered.id, "w1", &Outcome::Delivered, T0 + 10)
        .await
        .unwrap();
    let error = Outcome::Failed { error: "{}".into() };
    store
        .finish(&failed.id, "w1", &error, T0 + 20)
        .await
        .unwrap();
    let pending = created(&store, &receipt("o-3", "a"), T0 + 5).await;
    created(&store, &category("o-4", "a"), T0 + 7).await;
    created(&store, &category("o-5", "a"), T0 + 9).await;

    assert_eq!(
        store.pending_stats().await.unwrap(),
        [
            PendingStats {
                msn: MSN.into(),
                kind: Kind::Category,
                count: 2,
                oldest_created_at: T0 + 7,
            },
            PendingStats {
                msn: MSN.into(),
                kind: Kind::Receipt,
                count: 1,
                oldest_created_at: T0 + 5,
            },
        ]
    );
    assert_eq!(store.purge(T0 + 15).await.unwrap(), 1);
    assert_eq!(store.get(MSN, &delivered.id).await.unwrap(), None);
    assert!(store.get(MSN, &failed.id).await.unwrap().is_some());
    assert_eq!(store.purge(T0 + 1_000_000).await.unwrap(), 1);
    assert_eq!(get(&store, &pending.id).await.state, State::Pending);
}

async fn concurrent_claimers_take_each_entry_once(store: Store) {
    let mut all = HashSet::new();
    for i in 0..200 {
        all.insert(
            created(&store, &receipt(&format!("o-{i}"), "a"), T0)
                .await
                .id,
        );
    }
    let claimers = (0..4).map(|w| {
        let store = store.clone();
        actix_rt::spawn(async move {
            let owner = format!("w{w}");
            let mut mine = Vec::new();
            loop {
                let batch = store.claim(&owner, T0 + 1, LEASE, 7, &[]).await.unwrap();
                if batch.is_empty() {
                    return mine;
                }
                for c in batch {
                    let ours = store
                        .finish(&c.delivery.id, &owner, &Outcome::Delivered, T0 + 2)
                        .await
                        .unwrap();
                    assert!(ours, "a claim is the claimer's until it finishes");
                    mine.push(c.delivery.id);
                }
            }
        })
    });
    let mut seen = Vec::new();
    for claimer in claimers.collect::<Vec<_>>() {
        seen.extend(claimer.await.unwrap());
    }
    let unique: HashSet<String> = seen.iter().cloned().collect();
    assert_eq!(seen.len(), 200, "each entry claimed once");
    assert_eq!(unique, all);
}

async fn concurrent_identical_receipts_are_stored_once(store: Store) {
    let tasks = (0..10)
        .map(|_| {
            let store = store.clone();
            actix_rt::spawn(async move { store.enqueue(&receipt("o-1", "a"), T0).await.unwrap() })
        })
        .collect::<Vec<_>>();
    let mut created = Vec::new();
    let mut reposts = Vec::new();
    for task in tasks {
        match task.await.unwrap() {
            Enqueued::Created(d) => created.push(d.id),
            Enqueued::Repost(d) => reposts.push(d.id),
            other => panic!("identical receipts: {other:?}"),
        }
    }
    assert_eq!(created.len(), 1, "stored once");
    assert!(reposts.iter().all(|id| *id == created[0]));
}

#[actix_rt::test]
async fn a_sqlite_store_is_a_wal_file_created_on_open() {
    let file = temp_dir("outbox").join("outbox.db");
    let store = Store::open(&format!("sqlite://{}", file.display()), None)
        .await
        .unwrap();
    assert!(file.exists());
    assert_eq!(store.name(), format!("sqlite://{}", file.display()));
    store.close().await;
    let mut conn = <sqlx::SqliteConnection as sqlx::Connection>::connect(&format!(
        "sqlite://{}",
        file.display()
    ))
    .await
    .unwrap();
    let (mode,): (String,) = sqlx::query_as("PRAGMA journal_mode")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(mode, "wal");
}

#[actix_rt::test]
async fn a_sqlite_file_is_one_stores_until_it_is_closed() {
    let file = temp_dir("outbox").join("outbox.db");
    let url = format!("sqlite://{}", file.display());
    let first = Store::open(&url, None).await.unwrap();
    match Store::open(&url, None).await.unwrap_err() {
        err @ StoreError::InUse { .. } => {
            let text = err.to_string();
            assert!(text.contains(&url), "{text}");
            assert!(text.contains("another process"), "{text}");
        }
        other => panic!("{other:?}"),
    }
    // The first still works; closed, it lets go of the file.
    first.purge(T0).await.unwrap();
    first.close().await;
    let second = Store::open(&url, None).await.unwrap();
    second.purge(T0).await.unwrap();
    drop(second);
    // Dropped without a close, it lets go too.
    Store::open(&url, None).await.unwrap();
}

#[actix_rt::test]
async fn a_sqlite_store_in_a_missing_directory_is_unavailable_and_named() {
    let file = temp_dir("outbox").join("missing").join("outbox.db");
    let url = format!("sqlite://{}", file.display());
    match Store::open(&url, None).await.unwrap_err() {
        StoreError::Unavailable { store, .. } => assert_eq!(store, url),
        other => panic!("{other:?}"),
    }
}

#[actix_rt::test]
async fn a_url_of_another_database_is_refused() {
    assert!(matches!(
        Store::open("mysql://localhost/outbox", None).await,
        Err(StoreError::Url)
    ));
}

#[actix_rt::test]
async fn an_unreachable_postgres_is_named_without_its_password() {
    let password = "outbox-password-never-shown";
    let err = Store::open(
        "postgres://gateway@127.0.0.1:1/outbox?connect_timeout=2",
        Some(&SecretString::from(password)),
    )
    .await
    .unwrap_err();
    let text = format!("{err} {err:?}");
    assert!(
        text.contains("postgres://gateway@127.0.0.1:1/outbox"),
        "{text}"
    );
    assert!(!text.contains(password), "{text}");
}

#[actix_rt::test]
async fn a_password_in_the_postgres_url_is_not_in_the_stores_name() {
    let password = "url-password-never-shown";
    let err = Store::open(
        &format!("postgres://gateway:{password}@127.0.0.1:1/outbox?connect_timeout=2"),
        None,
    )
    .await
    .unwrap_err();
    let text = format!("{err} {err:?}");
    assert!(
        text.contains("postgres://gateway@127.0.0.1:1/outbox"),
        "{text}"
    );
    assert!(!text.contains(password), "{text}");
}

fn sqlite_url() -> String {
    format!(
        "sqlite://{}",
        temp_dir("outbox").join("outbox.db").display()
    )
}

/// The sizes of the groups a store committed, in order.
type Groups = Arc<Mutex<Vec<usize>>>;

/// A store at `url` whose groups stay open `wait` after their first
/// enqueue, and the sizes of the groups it commits.
async fn grouped(url: &str, wait: Duration) -> (Store, Groups) {
    let groups = Groups::default();
    let seen = groups.clone();
    let grouping = Grouping {
        wait,
        observe: Some(Arc::new(move |store: &'static str, size: usize| {
            assert!(["sqlite", "postgres"].contains(&store), "{store}");
            seen.lock().unwrap().push(size);
        })),
    };
    let store = Store::open_with(url, None, grouping)
        .await
        .expect("the store opens");
    (store, groups)
}

fn sizes(groups: &Groups) -> Vec<usize> {
    groups.lock().unwrap().clone()
}

/// Enqueues `requests` at once: every one is sent to the writer before it
/// runs (the test runtime has one thread), so they meet in one group.
async fn together(store: &Store, requests: &[NewDelivery]) -> Vec<Result<Enqueued, StoreError>> {
    futures_util::future::join_all(requests.iter().map(|r| store.enqueue(r, T0))).await
}

fn created_id(answer: &Result<Enqueued, StoreError>) -> String {
    match answer {
        Ok(Enqueued::Created(d)) => d.id.clone(),
        other => panic!("expected a new entry, got {other:?}"),
    }
}

/// SQL run beside the store, on a connection of its own.
async fn beside(url: &str, sql: &'static str) {
    if url.starts_with("sqlite:") {
        let mut conn = sqlx::SqliteConnection::connect(url).await.unwrap();
        sqlx::raw_sql(sql).execute(&mut conn).await.unwrap();
    } else {
        let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
        sqlx::raw_sql(sql).execute(&mut conn).await.unwrap();
    }
}

on_both_urls!(
    concurrent_enqueues_share_one_commit_and_each_is_answered,
    a_lone_enqueue_waits_for_the_bound_and_commits_alone,
    a_conflict_and_a_repost_in_a_group_are_answered_beside_its_new_entries,
    a_failing_statement_answers_its_own_request_and_not_its_groups,
    a_large_group_answers_each_request_with_what_it_stored,
    requests_for_one_order_in_a_group_see_each_others_writes,
);

async fn concurrent_enqueues_share_one_commit_and_each_is_answered(url: String) {
    let (store, groups) = grouped(&url, Duration::ZERO).await;
    let requests: Vec<NewDelivery> = (0..20).map(|i| receipt(&format!("o-{i}"), "a")).collect();
    let answers = together(&store, &requests).await;
    let ids: HashSet<String> = answers.iter().map(created_id).collect();
    assert_eq!(ids.len(), 20, "each its own entry");
    assert_eq!(sizes(&groups), [20], "one commit for all");
    let stored: HashSet<String> = store
        .list(MSN, None, None, 100)
        .await
        .unwrap()
        .into_iter()
        .map(|d| d.id)
        .collect();
    assert_eq!(stored, ids, "each stored");
}

async fn a_lone_enqueue_waits_for_the_bound_and_commits_alone(url: String) {
    let wait = Duration::from_millis(100);
    let (store, groups) = grouped(&url, wait).await;
    let started = Instant::now();
    created(&store, &receipt("o-1", "a"), T0).await;
    let took = started.elapsed();
    assert!(took >= wait, "answered after {took:?}, before the bound");
    // Only a group that waited to fill would take this long.
    assert!(
        took < wait + Duration::from_secs(5),
        "answered after {took:?}"
    );
    assert_eq!(sizes(&groups), [1]);
}

async fn a_conflict_and_a_repost_in_a_group_are_answered_beside_its_new_entries(url: String) {
    let (store, groups) = grouped(&url, Duration::ZERO).await;
    let first = created(&store, &receipt("o-1", "a"), T0).await;
    let answers = together(
        &store,
        &[
            receipt("o-1", "b"),
            receipt("o-2", "a"),
            receipt("o-1", "a"),
            receipt("o-3", "a"),
            // The same new receipt twice in one group: stored once.
            receipt("o-4", "a"),
            receipt("o-4", "a"),
        ],
    )
    .await;
    assert_eq!(sizes(&groups), [1, 6]);
    match &answers[0] {
        Ok(Enqueued::Conflict(d)) => assert_eq!(d.id, first.id),
        other => panic!("a different receipt conflicts, got {other:?}"),
    }
    assert_eq!(answers[2].as_ref().unwrap(), &Enqueued::Repost(first));
    created_id(&answers[1]);
    created_id(&answers[3]);
    let fourth = created_id(&answers[4]);
    match &answers[5] {
        Ok(Enqueued::Repost(d)) => assert_eq!(d.id, fourth),
        other => panic!("the second is a repost, got {other:?}"),
    }
    assert_eq!(store.list(MSN, None, None, 100).await.unwrap().len(), 4);
}

async fn a_large_group_answers_each_request_with_what_it_stored(url: String) {
    let (store, groups) = grouped(&url, Duration::ZERO).await;
    let first = created(&store, &receipt("o-0", "a"), T0).await;
    // 60 requests: 59 new entries (SQLite stores them 32, 16, 8, 2 and 1
    // at a time) around a repost.
    let mut requests: Vec<NewDelivery> = (1..60).map(|i| receipt(&format!("o-{i}"), "a")).collect();
    requests.insert(30, receipt("o-0", "a"));
    let answers = together(&store, &requests).await;
    assert_eq!(sizes(&groups), [1, 60], "one group");
    assert_eq!(
        answers[30].as_ref().unwrap(),
        &Enqueued::Repost(first.clone())
    );
    let mut ids = vec![first.id.clone()];
    for (answer, request) in answers.iter().zip(&requests) {
        let Ok(Enqueued::Created(d)) = answer else {
            continue;
        };
        assert_eq!(d.order_id, request.order_id);
        assert_eq!(
            &get(&store, &d.id).await,
            d,
            "the answer is what is stored, seq included"
        );
        ids.push(d.id.clone());
    }
    assert_eq!(ids.len(), 60);
    // Ids are UUIDs of version 7, ordered as the requests came, and so is
    // the store's order of arrival.
    for id in &ids {
        let uuid = uuid::Uuid::parse_str(id).unwrap();
        assert_eq!(uuid.get_version_num(), 7, "{id}");
    }
    let mut sorted = ids.clone();
    sorted.sort();
    assert_eq!(sorted, ids, "ids ordered by creation");
    let listed: Vec<String> = store
        .list(MSN, None, None, 100)
        .await
        .unwrap()
        .into_iter()
        .rev()
        .map(|d| d.id)
        .collect();
    assert_eq!(listed, ids, "oldest first, as they came");
}

async fn requests_for_one_order_in_a_group_see_each_others_writes(url: String) {
    let (store, groups) = grouped(&url, Duration::ZERO).await;
    let link = created(&store, &category("o-1", "a"), T0).await;
    let answers = together(
        &store,
        &[
            // A new receipt, then a different one for the same order.
            receipt("o-9", "a"),
            receipt("o-9", "b"),
            // The pending link replaced twice, the second time by what the
            // first wrote.
            category("o-1", "b"),
            receipt("o-10", "a"),
            category("o-1", "c"),
            category("o-1", "c"),
        ],
    )
    .await;
    assert_eq!(sizes(&groups), [1, 6]);
    let receipt_id = created_id(&answers[0]);
    match &answers[1] {
        Ok(Enqueued::Conflict(d)) => assert_eq!(d.id, receipt_id),
        other => panic!("a different receipt conflicts with the group's new one, got {other:?}"),
    }
    for at in [2, 4] {
        match &answers[at] {
            Ok(Enqueued::Replaced(d)) => assert_eq!(d.id, link.id),
            other => panic!("the pending link is replaced, got {other:?}"),
        }
    }
    match &answers[5] {
        Ok(Enqueued::Repost(d)) => assert_eq!(
            (d.id.as_str(), d.fingerprint.as_str()),
            (link.id.as_str(), category("o-1", "c").fingerprint.as_str())
        ),
        other => panic!("the same link again is a repost, got {other:?}"),
    }
    created_id(&answers[3]);
    let stored = get(&store, &link.id).await;
    assert_eq!(stored.payload, category("o-1", "c").payload);
    assert_eq!(store.list(MSN, None, None, 100).await.unwrap().len(), 3);
}

async fn a_failing_statement_answers_its_own_request_and_not_its_groups(url: String) {
    let (store, groups) = grouped(&url, Duration::ZERO).await;
    // A statement that fails for one order only, as a constraint would.
    if url.starts_with("sqlite:") {
        beside(
            &url,
            "CREATE TRIGGER poison BEFORE INSERT ON deliveries WHEN NEW.order_id = 'poison' \
             BEGIN SELECT RAISE(ABORT, 'poisoned order'); END",
        )
        .await;
    } else {
        beside(
            &url,
            "CREATE FUNCTION poison() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN \
               IF NEW.order_id = 'poison' THEN RAISE EXCEPTION 'poisoned order'; END IF; \
               RETURN NEW; END $$; \
             CREATE TRIGGER poison BEFORE INSERT ON deliveries FOR EACH ROW EXECUTE FUNCTION poison()",
        )
        .await;
    }
    let answers = together(
        &store,
        &[
            receipt("o-1", "a"),
            receipt("poison", "a"),
            receipt("o-2", "a"),
        ],
    )
    .await;
    assert_eq!(sizes(&groups), [3], "one group");
    let ids = [created_id(&answers[0]), created_id(&answers[2])];
    match &answers[1] {
        Err(StoreError::Unavailable { reason, .. }) => {
            assert!(reason.contains("poisoned order"), "{reason}");
        }
        other => panic!("the failing request fails, got {other:?}"),
    }
    for id in ids {
        assert_eq!(get(&store, &id).await.state, State::Pending, "stored");
    }
    assert_eq!(store.list(MSN, None, None, 100).await.unwrap().len(), 2);
    // The store goes on.
    created(&store, &receipt("o-3", "a"), T0).await;
}

#[actix_rt::test]
async fn a_receipt_another_replica_stores_meanwhile_is_found_in_the_next_group_on_postgres() {
    let url = postgres_database().await;
    let (store, groups) = grouped(&url, Duration::ZERO).await;
    // Another replica's transaction has stored o-9's receipt, not yet
    // committed: the group's insert of it waits for that transaction.
    let mut other = sqlx::PgConnection::connect(&url).await.unwrap();
    sqlx::raw_sql("BEGIN").execute(&mut other).await.unwrap();
    let theirs = uuid::Uuid::new_v4().to_string();
    sqlx::query(
        "INSERT INTO deliveries (id, msn, kind, payment_type, order_id, fingerprint, payload, \
         state, attempts, created_at, updated_at, next_attempt_at) \
         VALUES ($1, $2, 'receipt', 'ecom', 'o-9', 'fp-a', '{\"content\":\"a\"}', 'pending', 0, $3, $3, $3)",
    )
    .bind(&theirs)
    .bind(MSN)
    .bind(T0)
    .execute(&mut other)
    .await
    .unwrap();
    let group = {
        let store = store.clone();
        actix_rt::spawn(async move {
            together(
                &store,
                &[
                    receipt("o-8", "a"),
                    receipt("o-9", "a"),
                    receipt("o-10", "a"),
                ],
            )
            .await
        })
    };
    let watch = sqlx::PgPool::connect(&url).await.unwrap();
    crate::helpers::poll_until(
        "the group's insert to wait for the other transaction",
        || {
            let watch = watch.clone();
            async move {
                let (waiting,): (i64,) = sqlx::query_as(
                    "SELECT COUNT(*) FROM pg_stat_activity \
                 WHERE datname = current_database() AND wait_event_type = 'Lock'",
                )
                .fetch_one(&watch)
                .await
                .unwrap();
                (waiting > 0).then_some(())
            }
        },
    )
    .await;
    sqlx::raw_sql("COMMIT").execute(&mut other).await.unwrap();
    let answers = group.await.unwrap();
    created_id(&answers[0]);
    created_id(&answers[2]);
    match &answers[1] {
        Ok(Enqueued::Repost(d)) => assert_eq!(d.id, theirs, "the other replica's entry"),
        other => panic!("the identical receipt is a repost, got {other:?}"),
    }
    assert_eq!(
        sizes(&groups),
        [2, 1],
        "its group committed the others; it was looked up again in the next"
    );
}

#[actix_rt::test]
async fn the_bundled_sqlite_plans_without_looking_at_bound_values() {
    // .cargo/config.toml builds it so: otherwise nearly every statement is
    // prepared again at every execution (docs/decisions.md, "Outbox").
    let mut conn = sqlx::SqliteConnection::connect("sqlite::memory:")
        .await
        .unwrap();
    let options: Vec<(String,)> = sqlx::query_as("PRAGMA compile_options")
        .fetch_all(&mut conn)
        .await
        .unwrap();
    assert!(options.iter().any(|(o,)| o == "ENABLE_QPSG"), "{options:?}");
}

/// Rows a plan (EXPLAIN ANALYZE's, as JSON) read from the table or its
/// indexes, those its filters removed included, and the kinds of its scans.
fn rows_read(plan: &serde_json::Value, read: &mut f64, scans: &mut Vec<String>) {
    if let Some(kind) = plan["Node Type"].as_str() {
        if kind.contains("Scan") && plan["Relation Name"] == "deliveries" {
            let loops = plan["Actual Loops"].as_f64().unwrap_or(1.0);
            let rows = plan["Actual Rows"].as_f64().unwrap_or(0.0)
                + plan["Rows Removed by Filter"].as_f64().unwrap_or(0.0)
                + plan["Rows Removed by Index Recheck"]
                    .as_f64()
                    .unwrap_or(0.0);
            *read += rows * loops;
            scans.push(format!(
                "{kind} {}",
                plan["Index Name"].as_str().unwrap_or("")
            ));
        }
        *read += plan["Rows Removed by Join Filter"].as_f64().unwrap_or(0.0)
            * plan["Actual Loops"].as_f64().unwrap_or(1.0);
    }
    for child in plan["Plans"].as_array().into_iter().flatten() {
        rows_read(child, read, scans);
    }
}

/// A claim's statement run under EXPLAIN ANALYZE in a transaction after the
/// claim's settings, and undone: the rows its plan read, and its scans.
async fn claim_plan(
    db: &mut sqlx::PgConnection,
    sql: &str,
    bind: impl FnOnce(
        sqlx::query::QueryScalar<'_, sqlx::Postgres, serde_json::Value, sqlx::postgres::PgArguments>,
    ) -> sqlx::query::QueryScalar<
        '_,
        sqlx::Postgres,
        serde_json::Value,
        sqlx::postgres::PgArguments,
    >,
) -> (f64, Vec<String>) {
    let mut tx = db.begin().await.unwrap();
    sqlx::query(CLAIM_SETTINGS_POSTGRES)
        .execute(&mut *tx)
        .await
        .unwrap();
    let explain = format!("EXPLAIN (ANALYZE, FORMAT JSON) {sql}");
    let plan: serde_json::Value = bind(sqlx::query_scalar(sqlx::AssertSqlSafe(explain)))
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    let (mut read, mut scans) = (0.0, Vec::new());
    rows_read(&plan[0]["Plan"], &mut read, &mut scans);
    (read, scans)
}

/// A PostgreSQL claim reads a few rows for each merchant, and passes a
/// merchant left out with a probe, whatever the table's statistics say.
/// Planned with none (a table of 40,001 pending entries just filled, never
/// analyzed): the claim in due order read every due entry and sorted them
/// all to take 32; the claim by merchants, with `NOT EXISTS` for the first
/// of an order and `seq IN (…)`, read every pending entry of the merchant
/// for each entry it took (1,280,064 rows here for 32), or scanned the
/// whole table for the update (a drain of 790 receipts/s instead of
/// 6,400).
#[actix_rt::test]
async fn a_postgres_claim_reads_a_few_rows_a_merchant_without_statistics() {
    let url = postgres_database().await;
    let store = Store::open(&url, None)
        .await
        .expect("a PostgreSQL store in a fresh database opens");
    let mut db = sqlx::PgConnection::connect(&url).await.unwrap();
    // No statistics for the planner, as right after a bulk load.
    sqlx::query("ALTER TABLE deliveries SET (autovacuum_enabled = false)")
        .execute(&mut db)
        .await
        .unwrap();
    // The merchant's 20,000, one left out of the claim (held) with as
    // many, due as long, and one more with a single entry, due last.
    for (msn, n, due) in [
        (MSN, 20_000, T0),
        ("777777", 20_000, T0),
        ("222222", 1, T0 + 1),
    ] {
        sqlx::query(
            "INSERT INTO deliveries (id, msn, kind, payment_type, order_id, fingerprint, \
             payload, state, attempts, created_at, updated_at, next_attempt_at) \
             SELECT $1 || '-' || i, $1, 'receipt', 'ecom', 'bulk-' || i, 'fp', '{}', \
             'pending', 0, $3, $3, $3 FROM generate_series(1, $2) AS i",
        )
        .bind(msn)
        .bind(n)
        .bind(due)
        .execute(&mut db)
        .await
        .unwrap();
    }
    let analyzed: Option<i64> = sqlx::query_scalar(
        "SELECT analyze_count + autoanalyze_count FROM pg_stat_user_tables \
         WHERE relname = 'deliveries'",
    )
    .fetch_optional(&mut db)
    .await
    .unwrap();
    assert!(
        analyzed.unwrap_or(0) == 0,
        "the table has no statistics yet"
    );
    let now = T0 + 1;
    let held = ",777777,";
    let plans = [
        (
            "the merchants",
            claim_plan(&mut db, DUE_MERCHANTS_POSTGRES, |q| {
                q.bind(now).bind(held).bind(32_i64).bind("")
            })
            .await,
        ),
        (
            "one merchant's 32",
            claim_plan(&mut db, claim_statement_postgres(1), |q| {
                q.bind("w")
                    .bind(now + 30_000)
                    .bind(now)
                    .bind(MSN)
                    .bind(32_i64)
            })
            .await,
        ),
        (
            "two merchants' 16",
            claim_plan(&mut db, claim_statement_postgres(2), |q| {
                q.bind("w")
                    .bind(now + 30_000)
                    .bind(now)
                    .bind(MSN)
                    .bind(16_i64)
                    .bind("222222")
                    .bind(16_i64)
            })
            .await,
        ),
    ];
    for (what, (read, scans)) in &plans {
        println!("{what}: {read} rows read, {scans:?}");
        // A few a merchant and an entry: 128 for 32 as built (the order's
        // probe passes the held merchant's entry of the same order id).
        assert!(*read < 300.0, "{what}: {read} rows read; {scans:?}");
        assert!(
            !scans.iter().any(|s| s.starts_with("Seq Scan")),
            "{what}: {scans:?}"
        );
    }

    // And the claim itself.
    let claimed = store.claim("w", now, LEASE, 32, &["777777"]).await.unwrap();
    let of = |msn: &str| claimed.iter().filter(|c| c.delivery.msn == msn).count();
    assert_eq!((of(MSN), of("222222"), claimed.len()), (16, 1, 17));
}

/// The plan PostgreSQL makes of the claim's walk from merchant to merchant,
/// after the claim's settings or without them (as JSON).
async fn due_merchants_plan(db: &mut sqlx::PgConnection, settings: bool) -> String {
    let mut tx = db.begin().await.unwrap();
    if settings {
        sqlx::query(CLAIM_SETTINGS_POSTGRES)
            .execute(&mut *tx)
            .await
            .unwrap();
    }
    let explain = format!("EXPLAIN (ANALYZE, FORMAT JSON) {DUE_MERCHANTS_POSTGRES}");
    let plan: serde_json::Value = sqlx::query_scalar(sqlx::AssertSqlSafe(explain))
        .bind(T0)
        .bind(",,")
        .bind(32_i64)
        .bind("")
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    plan.to_string()
}

/// The planner cannot tell how far the walk from merchant to merchant
/// recurses, and on a table of 120,000 pending entries estimated it past
/// `jit_above_cost`: a server with JIT compiled it at every claim (235 ms,
/// for a statement that runs in 0.2 ms). The claim turns JIT off for its
/// statements, whatever the estimate.
#[actix_rt::test]
async fn a_postgres_claim_is_not_compiled_at_each_claim() {
    let url = postgres_database().await;
    Store::open(&url, None)
        .await
        .expect("a PostgreSQL store in a fresh database opens");
    let mut db = sqlx::PgConnection::connect(&url).await.unwrap();
    sqlx::query(
        "INSERT INTO deliveries (id, msn, kind, payment_type, order_id, fingerprint, payload, \
         state, attempts, created_at, updated_at, next_attempt_at) \
         SELECT 'jit-' || i, (100000 + i % 50)::text, 'receipt', 'ecom', 'jit-' || i, 'fp', '{}', \
         'pending', 0, $1, $1, $1 FROM generate_series(1, 5000) AS i",
    )
    .bind(T0)
    .execute(&mut db)
    .await
    .unwrap();
    // Whatever the planner estimates, as if past the threshold.
    sqlx::query("SET jit_above_cost = 0")
        .execute(&mut db)
        .await
        .unwrap();
    let claimed = due_merchants_plan(&mut db, true).await;
    assert!(!claimed.contains("\"JIT\""), "{claimed}");
    let jit: bool =
        sqlx::query_scalar("SELECT pg_jit_available() AND current_setting('jit')::bool")
            .fetch_one(&mut db)
            .await
            .unwrap();
    if jit {
        // What the setting prevents, on this server.
        let unset = due_merchants_plan(&mut db, false).await;
        assert!(unset.contains("\"JIT\""), "{unset}");
    } else {
        println!(
            "this PostgreSQL server has no JIT: the claim's plan could not have been compiled"
        );
    }
}
