//! Group commit over real sockets: asynchronous receipts sent together
//! share the commits of the outbox's store (a SQLite file, and PostgreSQL
//! from `GATEWAY_TEST_POSTGRES_URL`), each is answered only once stored,
//! and a lone one waits no longer than `outbox.group_commit_wait`. The
//! commits are counted by `gateway_outbox_commit_group_size`.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::helpers::{deliveries, spawn_app_with, spec_receipt, Options, TestApp, MSN};
use crate::metrics::scrape;

/// A gateway whose groups stay open `wait` after their first request, on
/// `store` (`sqlite`: a file of its own; `postgres`: a fresh database).
/// Vipps answers every delivery 503 and the breaker stays shut long, so
/// the worker leaves the entries pending and the listing shows them all.
async fn gateway(store: &str, wait: &str) -> TestApp {
    let url = match store {
        "sqlite" => String::new(),
        _ => format!(
            "url = \"{}\"\n",
            crate::outbox_store::postgres_database().await
        ),
    };
    let app = spawn_app_with(Options {
        extra_toml: format!(
            "[outbox]\n{url}group_commit_wait = \"{wait}\"\nbackoff_base = \"60s\"\nbackoff_max = \"60s\"\n"
        ),
        ..Options::default()
    })
    .await;
    app.add_fault(json!({"endpoint": "receipt", "status": 503}))
        .await;
    app
}

async fn post_async(app: &TestApp, order: &str, body: &Value) -> (u16, Value) {
    let mut resp = app
        .client
        .post(app.url(&format!("/v1/merchants/{MSN}/orders/{order}/receipt")))
        .insert_header(("Prefer", "respond-async"))
        .send_json(body)
        .await
        .expect("the gateway answers");
    let body = resp.json().await.unwrap_or(Value::Null);
    (resp.status().as_u16(), body)
}

/// `(order, body)` posted at once: their statuses and answers, in order.
async fn post_together(app: &TestApp, requests: &[(String, Value)]) -> Vec<(u16, Value)> {
    futures_util::future::join_all(
        requests
            .iter()
            .map(|(order, body)| post_async(app, order, body)),
    )
    .await
}

/// Groups committed and requests they answered, per the metric.
async fn commits(app: &TestApp, store: &str) -> (f64, f64) {
    let m = scrape(app).await;
    let labels = [("store", store)];
    (
        m.value("gateway_outbox_commit_group_size_count", &labels),
        m.value("gateway_outbox_commit_group_size_sum", &labels),
    )
}

/// The merchant's deliveries by order id.
async fn stored(app: &TestApp) -> std::collections::HashMap<String, String> {
    deliveries(app)
        .await
        .iter()
        .map(|d| {
            (
                d["orderId"].as_str().unwrap().to_owned(),
                d["deliveryId"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn another_receipt() -> Value {
    let mut r = spec_receipt();
    r["receiptNumber"] = json!("another-receipt");
    r
}

/// Runs a behaviour on each store, as `NAME::sqlite` and `NAME::postgres`.
macro_rules! on_both {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[actix_rt::test]
            async fn sqlite() {
                super::$name("sqlite").await;
            }
            #[actix_rt::test]
            async fn postgres() {
                super::$name("postgres").await;
            }
        }
    )*};
}

on_both!(
    async_receipts_sent_together_share_commits_and_are_each_stored,
    a_lone_async_receipt_is_answered_after_the_bound_in_a_commit_of_its_own,
    a_conflicting_receipt_in_a_group_is_409_and_the_others_202,
);

async fn async_receipts_sent_together_share_commits_and_are_each_stored(store: &str) {
    // Long enough that requests sent together meet in a group however
    // loaded the machine; a full group (64) would not wait for it.
    let app = gateway(store, "100ms").await;
    let requests: Vec<(String, Value)> = (0..24)
        .map(|i| (format!("together-{i}"), spec_receipt()))
        .collect();
    let answers = post_together(&app, &requests).await;
    let mut ids = std::collections::HashSet::new();
    for (status, body) in &answers {
        assert_eq!(*status, 202, "{body}");
        ids.insert(body["deliveryId"].as_str().unwrap().to_owned());
    }
    assert_eq!(ids.len(), 24, "each its own delivery");
    let (groups, answered) = commits(&app, store).await;
    assert_eq!(answered, 24.0, "every request answered by a commit");
    assert!(groups < 24.0, "24 requests in {groups} commits");
    let stored = stored(&app).await;
    for ((order, _), (_, body)) in requests.iter().zip(&answers) {
        assert_eq!(
            stored.get(order).map(String::as_str),
            body["deliveryId"].as_str(),
            "{order} is stored as answered"
        );
    }
}

async fn a_lone_async_receipt_is_answered_after_the_bound_in_a_commit_of_its_own(store: &str) {
    let app = gateway(store, "100ms").await;
    let started = Instant::now();
    let (status, body) = post_async(&app, "alone", &spec_receipt()).await;
    let took = started.elapsed();
    assert_eq!(status, 202, "{body}");
    assert!(
        took >= Duration::from_millis(100),
        "answered after {took:?}: the group closes at the bound"
    );
    // Only a group that waited to fill would take this long.
    assert!(took < Duration::from_secs(5), "answered after {took:?}");
    assert_eq!(commits(&app, store).await, (1.0, 1.0));
}

async fn a_conflicting_receipt_in_a_group_is_409_and_the_others_202(store: &str) {
    let app = gateway(store, "100ms").await;
    let (status, first) = post_async(&app, "held", &spec_receipt()).await;
    assert_eq!(status, 202, "{first}");
    let answers = post_together(
        &app,
        &[
            ("held".into(), another_receipt()),
            ("fresh-1".into(), spec_receipt()),
            ("held".into(), spec_receipt()),
            ("fresh-2".into(), spec_receipt()),
        ],
    )
    .await;
    let statuses: Vec<u16> = answers.iter().map(|(s, _)| *s).collect();
    assert_eq!(statuses, [409, 202, 202, 202], "{answers:?}");
    assert_eq!(answers[0].1["type"], "/problems/receipt-conflict");
    assert_eq!(
        answers[2].1["deliveryId"], first["deliveryId"],
        "the identical repost answers the stored entry"
    );
    let stored = stored(&app).await;
    assert_eq!(stored.len(), 3, "{stored:?}");
    for (order, (_, body)) in [("fresh-1", &answers[1]), ("fresh-2", &answers[3])] {
        assert_eq!(
            stored.get(order).map(String::as_str),
            body["deliveryId"].as_str()
        );
    }
    let (groups, answered) = commits(&app, store).await;
    assert_eq!(answered, 5.0);
    assert!(groups < 5.0, "5 requests in {groups} commits");
}
