//! What limits the outbox, and what does not: a `202` takes nothing from
//! the merchant's rate (it touches only the store), the store is bounded
//! per merchant, deliveries reach Vipps at no more than the merchant's rate,
//! an open breaker holds them back without counting attempts, a merchant
//! whose token fetches back off is not claimed meanwhile, and one
//! merchant's backlog does not hold back the deliveries of another.

use std::time::Duration;

use serde_json::{json, Value};

use crate::helpers::{
    deliveries, poll_until, spawn_app_with, spec_receipt, Options, TestApp, MSN, MSN2,
};

/// The limits every test here relies on, set explicitly: the merchant's
/// rate (200/s, burst 400, as by default), and short outbox backoffs.
fn limits(resilience: &str, outbox: &str) -> Options {
    Options {
        extra_toml: format!(
            "[resilience]\nbackoff_base = \"10ms\"\nrate_per_second = 200\nrate_burst = 400\n{resilience}\n\
             [outbox]\nbackoff_base = \"50ms\"\nbackoff_max = \"200ms\"\n{outbox}\n"
        ),
        ..Options::default()
    }
}

async fn post_async(app: &TestApp, msn: &str, order: &str) -> (u16, Value, Option<String>) {
    let mut resp = app
        .client
        .post(app.url(&format!("/v1/merchants/{msn}/orders/{order}/receipt")))
        .insert_header(("Prefer", "respond-async"))
        .send_json(&spec_receipt())
        .await
        .expect("the gateway answers");
    let retry_after = resp
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body: Value = resp.json().limit(1 << 20).await.unwrap_or(Value::Null);
    (resp.status().as_u16(), body, retry_after)
}

/// Posts a receipt for each of `orders`, `concurrent` at a time; the
/// statuses, in the order of `orders`.
async fn burst(app: &TestApp, orders: &[String], concurrent: usize) -> Vec<u16> {
    let mut statuses = Vec::with_capacity(orders.len());
    for chunk in orders.chunks(concurrent) {
        let posts = chunk.iter().map(|o| post_async(app, MSN, o));
        for (status, body, _) in futures_util::future::join_all(posts).await {
            assert!(status == 202 || status >= 400, "{status} {body}");
            statuses.push(status);
        }
    }
    statuses
}

fn count(statuses: &[u16], status: u16) -> usize {
    statuses.iter().filter(|s| **s == status).count()
}

/// Arrival times (Unix ms) of the receipts the simulator stored, sorted.
async fn stored_receipts_at(app: &TestApp) -> Vec<u64> {
    let mut at: Vec<u64> = app
        .sim_requests_to("receipt")
        .await
        .iter()
        .filter(|r| r["status"] == 201)
        .map(|r| r["atMs"].as_u64().expect("the log says when"))
        .collect();
    at.sort_unstable();
    at
}

/// The most arrivals within any `window_ms` of `at` (sorted).
fn most_within(at: &[u64], window_ms: u64) -> usize {
    let mut most = 0;
    let mut start = 0;
    for end in 0..at.len() {
        while at[end] - at[start] >= window_ms {
            start += 1;
        }
        most = most.max(end - start + 1);
    }
    most
}

#[test]
fn the_window_count_sees_a_burst() {
    assert_eq!(most_within(&[0, 10, 20, 1000, 1001], 1000), 4);
    assert_eq!(most_within(&[0, 999, 1000, 1500, 1999], 1000), 3);
    assert_eq!(most_within(&[], 1000), 0);
}

#[actix_rt::test]
async fn a_burst_of_async_receipts_is_accepted_whole_and_reaches_vipps_at_the_merchants_rate() {
    let app = spawn_app_with(limits("", "")).await;
    let orders: Vec<String> = (0..1000).map(|i| format!("burst-{i}")).collect();
    let statuses = burst(&app, &orders, 50).await;
    println!(
        "burst with Vipps up: {} × 202, {} × 429, {} others",
        count(&statuses, 202),
        count(&statuses, 429),
        statuses.len() - count(&statuses, 202) - count(&statuses, 429)
    );
    assert_eq!(count(&statuses, 202), 1000, "every one is stored");

    let at = poll_until("every receipt at Vipps", || async {
        let at = stored_receipts_at(&app).await;
        (at.len() >= 1000).then_some(at)
    })
    .await;
    assert_eq!(at.len(), 1000, "each receipt once");
    // Paced at 200/s without a burst: at most 201 in any second, give or
    // take those a busy machine bunched up on the way (unpaced, 540-600
    // arrived within a second).
    let most = most_within(&at, 1000);
    let span = at[at.len() - 1] - at[0];
    println!("delivered 1000 in {span} ms, at most {most} in any second (rate 200/s)");
    assert!(
        most <= 250,
        "{most} receipts reached Vipps within one second"
    );
    assert!(
        span >= 4_500,
        "1000 at 200/s take at least 5 s, not {span} ms"
    );
}

#[actix_rt::test]
async fn a_burst_of_async_receipts_is_accepted_whole_while_vipps_is_down() {
    // No breaker: the merchant's other calls still reach Vipps.
    let app = spawn_app_with(limits("breaker_failures = 0", "")).await;
    app.add_fault(json!({"endpoint": "receipt", "status": 503}))
        .await;
    let orders: Vec<String> = (0..1000).map(|i| format!("down-{i}")).collect();
    let statuses = burst(&app, &orders, 50).await;
    println!(
        "burst with Vipps down: {} × 202, {} × 429",
        count(&statuses, 202),
        count(&statuses, 429)
    );
    assert_eq!(count(&statuses, 202), 1000, "every one is stored");
    // Had the 202s taken from the rate, its bucket (400, refilled at
    // 200/s) would be empty now: a synchronous request still gets through.
    let order = app.get(&format!("/v1/merchants/{MSN}/orders/down-0")).await;
    assert_eq!(order.status, 404, "Vipps has no such order: {}", order.body);
}

/// The worker keeps two batches in flight: while Vipps holds one batch's
/// calls, the next batch is already on its way. One batch at a time would
/// let at most 32 calls (a batch) arrive within the time Vipps holds each.
#[actix_rt::test]
async fn while_vipps_holds_a_batch_the_next_batch_is_on_its_way() {
    const HELD_MS: u64 = 2_000;
    // No rate and room for both batches: only the worker shapes the calls.
    let app = spawn_app_with(Options {
        extra_toml: "[resilience]\nrate_per_second = 0\nmax_concurrent = 1000\n\
                     [outbox]\nbackoff_base = \"50ms\"\nbackoff_max = \"200ms\"\n"
            .to_owned(),
        ..Options::default()
    })
    .await;
    app.add_fault(json!({"endpoint": "receipt", "delayMs": HELD_MS}))
        .await;
    let orders: Vec<String> = (0..96).map(|i| format!("lanes-{i}")).collect();
    let statuses = burst(&app, &orders, 96).await;
    assert_eq!(count(&statuses, 202), 96, "every one is stored");

    let at = poll_until("every receipt at Vipps", || async {
        let at = stored_receipts_at(&app).await;
        (at.len() >= 96).then_some(at)
    })
    .await;
    assert_eq!(at.len(), 96, "each receipt once");
    let most = most_within(&at, HELD_MS);
    println!("at most {most} receipts arrived within {HELD_MS} ms (a batch is 32)");
    assert!(
        most > 32,
        "{most} receipts arrived within the {HELD_MS} ms Vipps held each: one batch at a time"
    );
}

/// A merchant's backlog takes its share of each claim, and another
/// merchant's receipt that came after it is delivered beside it rather
/// than after it. Claimed in the order they fell due, across merchants,
/// the second merchant's receipt waited for all 600 (about 5 s, two
/// batches of 32 each half a second).
#[actix_rt::test]
async fn a_merchants_backlog_does_not_hold_back_another_merchants_receipt() {
    const HELD_MS: u64 = 500;
    // No rate: the merchant is never held. Vipps holds each call, so that
    // the backlog takes a while.
    let app = spawn_app_with(Options {
        extra_toml: "[resilience]\nrate_per_second = 0\n".to_owned(),
        ..Options::default()
    })
    .await;
    app.add_fault(json!({"endpoint": "receipt", "delayMs": HELD_MS}))
        .await;
    let orders: Vec<String> = (0..600).map(|i| format!("backlog-{i}")).collect();
    let statuses = burst(&app, &orders, 50).await;
    assert_eq!(count(&statuses, 202), orders.len(), "{statuses:?}");
    let (status, body, _) = post_async(&app, MSN2, "after-the-backlog").await;
    assert_eq!(status, 202, "{body}");

    let delivered = poll_until("the second merchant's receipt delivered", || async {
        let page = app.get(&format!("/v1/merchants/{MSN2}/deliveries")).await;
        assert_eq!(page.status, 200, "{}", page.body);
        (page.body["deliveries"][0]["state"] == "delivered").then_some(page.body)
    })
    .await;
    // By then the first merchant has delivered little of its backlog: the
    // batches in flight when the receipt came, and the one beside it.
    let pending = app
        .get(&format!(
            "/v1/merchants/{MSN}/deliveries?state=pending&limit=100"
        ))
        .await;
    assert_eq!(pending.status, 200, "{}", pending.body);
    let left = pending.body["deliveries"].as_array().unwrap().len();
    println!("the second merchant's receipt delivered with {left}+ of the first's 600 pending");
    assert_eq!(
        left, 100,
        "the second merchant's receipt ({delivered}) waited for the first merchant's backlog"
    );
}

#[actix_rt::test]
async fn past_its_bound_the_outbox_answers_503_outbox_full_and_a_repost_is_still_accepted() {
    let app = spawn_app_with(limits("", "max_pending_per_merchant = 3")).await;
    app.add_fault(json!({"endpoint": "receipt", "status": 503}))
        .await;
    let mut ids = Vec::new();
    for i in 0..3 {
        let (status, body, _) = post_async(&app, MSN, &format!("full-{i}")).await;
        assert_eq!(status, 202, "{body}");
        ids.push(body["deliveryId"].clone());
    }
    let (status, body, retry_after) = post_async(&app, MSN, "full-3").await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["type"], "/problems/outbox-full");
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("max_pending_per_merchant"),
        "{body}"
    );
    assert_eq!(retry_after.as_deref(), Some("30"));
    // A repost of a pending receipt stores nothing new: still its delivery.
    let (status, body, _) = post_async(&app, MSN, "full-0").await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["deliveryId"], ids[0]);
    // The bound is per merchant.
    let (status, body, _) = post_async(&app, MSN2, "full-0").await;
    assert_eq!(status, 202, "{body}");
    // Once delivered, there is room again.
    app.clear_faults().await;
    poll_until("room in the outbox", || async {
        let (status, _, _) = post_async(&app, MSN, "full-3").await;
        (status == 202).then_some(())
    })
    .await;
}

fn attempts(deliveries: &[Value]) -> u64 {
    deliveries
        .iter()
        .map(|d| d["attempts"].as_u64().unwrap())
        .sum()
}

#[actix_rt::test]
async fn while_the_breaker_is_open_deliveries_wait_untouched_and_attempts_equal_calls_to_vipps() {
    let app = spawn_app_with(limits(
        "max_attempts = 1\nbreaker_failures = 2\nbreaker_open = \"10s\"",
        "",
    ))
    .await;
    app.add_fault(json!({"endpoint": "receipt", "status": 503}))
        .await;
    for i in 0..20 {
        let (status, body, _) = post_async(&app, MSN, &format!("breaker-{i}")).await;
        assert_eq!(status, 202, "{body}");
    }
    // The first attempts fail until the breaker opens.
    poll_until("the breaker to open", || async {
        let at_vipps = app.sim_calls("receipt").await;
        (at_vipps >= 2 && attempts(&deliveries(&app).await) == at_vipps).then_some(())
    })
    .await;
    // The breaker opened on the last failed call: wait until 8 s into its
    // 10 s open period, measured from that call's arrival.
    let last_call = app
        .sim_requests_to("receipt")
        .await
        .iter()
        .filter_map(|r| r["atMs"].as_u64())
        .max()
        .unwrap();
    let before = deliveries(&app).await;
    let calls_before = app.sim_calls("receipt").await;
    let now_ms = u64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap();
    let open_for = Duration::from_millis((last_call + 8_000).saturating_sub(now_ms));
    assert!(
        open_for > Duration::from_secs(3),
        "the test saw the breaker open late"
    );
    actix_rt::time::sleep(open_for).await;
    // Open: nothing went to Vipps, and the entries were not rewritten
    // (their attempts, next attempt and last error stayed).
    let during = deliveries(&app).await;
    assert_eq!(app.sim_calls("receipt").await, calls_before);
    assert_eq!(during, before, "entries waited without a write");
    for d in &during {
        assert_ne!(d["lastError"]["type"], "/problems/circuit-open", "{d}");
    }
    // After the open period one probe goes out, fails, and opens it again.
    poll_until("the probe", || async {
        (app.sim_calls("receipt").await > calls_before).then_some(())
    })
    .await;
    let (sent, counted) = poll_until("every call counted as an attempt", || async {
        let sent = app.sim_calls("receipt").await;
        let counted = attempts(&deliveries(&app).await);
        (sent == counted).then_some((sent, counted))
    })
    .await;
    println!(
        "breaker open 10 s over 20 pending receipts: {sent} calls reached Vipps, {counted} attempts recorded"
    );
    assert!(sent <= calls_before + 1, "one probe after the open period");
    // Vipps back: every receipt is delivered.
    app.clear_faults().await;
    poll_until("every receipt delivered", || async {
        let all = deliveries(&app).await;
        all.iter().all(|d| d["state"] == "delivered").then_some(())
    })
    .await;
}

/// Whether the worker has taken `d` at least once: its next attempt moved
/// from the time it was stored.
fn taken(d: &Value) -> bool {
    d["nextAttemptAt"] != d["createdAt"]
}

/// Every entry of [`MSN`], a page of 100 at a time.
async fn all_deliveries(app: &TestApp) -> Vec<Value> {
    let mut all = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/merchants/{MSN}/deliveries?limit=100&cursor={c}"),
            None => format!("/v1/merchants/{MSN}/deliveries?limit=100"),
        };
        let page = app.get(&path).await;
        assert_eq!(page.status, 200, "{}", page.body);
        all.extend(page.body["deliveries"].as_array().unwrap().iter().cloned());
        match page.body["nextCursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => return all,
        }
    }
}

#[actix_rt::test]
async fn while_token_fetches_back_off_a_merchants_other_entries_wait_untouched() {
    // Token fetches back off 8 s after a failure; the window looked at
    // below ends well before.
    let app = spawn_app_with(limits(
        "token_backoff = \"8s\"\ntoken_backoff_max = \"8s\"",
        "",
    ))
    .await;
    app.add_fault(json!({"endpoint": "token", "status": 503}))
        .await;
    let orders: Vec<String> = (0..160).map(|i| format!("token-down-{i}")).collect();
    let statuses = burst(&app, &orders, 16).await;
    assert_eq!(count(&statuses, 202), orders.len(), "{statuses:?}");
    poll_until("the worker to take a first entry", || async {
        all_deliveries(&app).await.iter().any(taken).then_some(())
    })
    .await;
    // Every attempt now meets the failed fetch or its backoff and sends
    // nothing: the merchant is held, and its other entries are neither
    // claimed nor written back. Taken at most: the two lanes' first
    // batches (32 each), and one more once the hold of the attempts that
    // met the failure (1 s) ends and before the backoff's (7 s) begins.
    // Claimed batch after batch, all 160 were within a second.
    actix_rt::time::sleep(Duration::from_secs(3)).await;
    let during = all_deliveries(&app).await;
    assert_eq!(during.len(), orders.len());
    let taken_during = during.iter().filter(|d| taken(d)).count();
    println!("token fetches backing off, 160 pending receipts: {taken_during} taken in 3 s");
    assert!(
        taken_during <= 96,
        "{taken_during} of {} entries were taken while the merchant was held",
        orders.len()
    );
    // The token endpoint back: once the backoff and the hold end, every
    // receipt is delivered.
    app.clear_faults().await;
    poll_until("every receipt delivered", || async {
        let all = all_deliveries(&app).await;
        all.iter().all(|d| d["state"] == "delivered").then_some(())
    })
    .await;
}
