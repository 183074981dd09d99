//! Resilience: retries, the exactly-once receipt, budgets, limits, the
//! circuit breaker and tokens under faults, driven by simulator faults.

use std::time::Duration;

use futures_util::future::{join_all, select, Either};
use serde_json::{json, Value};

use crate::helpers::{
    b64, fast_retries, png, poll_until, spawn_app_with, spec_receipt, Answer, Options, TestApp,
    MSN, MSN2,
};

#[actix_web::test]
async fn a_503_is_retried_and_the_caller_sees_success() {
    let app = spawn_app_with(fast_retries("")).await;
    app.add_fault(json!({"endpoint": "receipt", "status": 503, "times": 1}))
        .await;
    let a = app.post_receipt(MSN, "o-1", &spec_receipt()).await;
    assert_eq!(a.status, 201, "{}", a.body);
    assert_eq!(a.body["replayed"], false);
    assert_eq!(app.sim_statuses("receipt").await, [503, 201]);
}

#[actix_web::test]
async fn a_500_is_retried_for_calls_safe_to_repeat_only() {
    let app = spawn_app_with(fast_retries("")).await;
    // A read, a category PUT and a receipt are safe to repeat.
    for endpoint in ["order", "category", "receipt"] {
        app.add_fault(json!({"endpoint": endpoint, "status": 500, "times": 1}))
            .await;
    }
    app.get(&format!("/v1/merchants/{MSN}/orders/o-1"))
        .await
        .problem(404);
    let put = app
        .put_json(
            &format!("/v1/merchants/{MSN}/orders/o-1/category"),
            &json!({"category": "GENERAL", "url": "https://shop.example/o/1"}),
        )
        .await;
    assert_eq!(put.status, 200, "{}", put.body);
    let receipt = app.post_receipt(MSN, "o-1", &spec_receipt()).await;
    assert_eq!(receipt.status, 201, "{}", receipt.body);
    assert_eq!(app.sim_statuses("order").await, [500, 404]);
    assert_eq!(app.sim_statuses("category").await, [500, 200]);
    assert_eq!(app.sim_statuses("receipt").await, [500, 201]);
    // A caller-named image is not: Vipps may have stored it.
    app.add_fault(json!({"endpoint": "image", "status": 500, "times": 1}))
        .await;
    app.post_json(
        &format!("/v1/merchants/{MSN}/images"),
        &json!({"data": b64(&png(200)), "imageId": "logo-500"}),
    )
    .await
    .problem(502);
    assert_eq!(app.sim_statuses("image").await, [500]);
}

#[actix_web::test]
async fn a_receipt_whose_answer_was_lost_is_retried_and_replayed() {
    let app = spawn_app_with(fast_retries("")).await;
    // Stored, then the connection drops: the outcome is unknown to the gateway.
    app.add_fault(json!({"endpoint": "receipt", "drop": true, "afterStore": true, "times": 1}))
        .await;
    let a = app.post_receipt(MSN, "o-1", &spec_receipt()).await;
    assert_eq!(a.status, 201, "{}", a.body);
    assert_eq!(a.body["replayed"], true);
    // Dropped, then 409 on the retry, then the read-back.
    assert_eq!(app.sim_statuses("receipt").await, [0, 409]);
    assert_eq!(app.sim_statuses("order").await, [200]);
    // Exactly one receipt is stored, the one acknowledged.
    let state = app.sim_state().await;
    let stored: Vec<&Value> = state["orders"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|o| o["receipt"].is_object())
        .collect();
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0]["receipt"], a.body["receipt"]);
}

#[actix_web::test]
async fn a_503_after_the_receipt_was_stored_is_replayed() {
    let app = spawn_app_with(fast_retries("")).await;
    app.add_fault(json!({"endpoint": "receipt", "status": 503, "afterStore": true, "times": 1}))
        .await;
    let a = app.post_receipt(MSN, "o-1", &spec_receipt()).await;
    assert_eq!(a.status, 201, "{}", a.body);
    assert_eq!(a.body["replayed"], true);
    assert_eq!(app.sim_statuses("receipt").await, [503, 409]);
}

#[actix_web::test]
async fn a_caller_named_image_is_not_resent_after_an_unknown_outcome() {
    let app = spawn_app_with(fast_retries("")).await;
    let path = format!("/v1/merchants/{MSN}/images");
    app.add_fault(json!({"endpoint": "image", "drop": true, "times": 1}))
        .await;
    let named = app
        .post_json(&path, &json!({"data": b64(&png(200)), "imageId": "logo"}))
        .await;
    named.problem(502);
    assert_eq!(app.sim_statuses("image").await, [0]);
    // A content-derived id is the same image whatever happened: resent.
    app.add_fault(json!({"endpoint": "image", "drop": true, "times": 1}))
        .await;
    let derived = app.post_json(&path, &json!({"data": b64(&png(200))})).await;
    assert_eq!(derived.status, 201, "{}", derived.body);
    assert_eq!(app.sim_statuses("image").await, [0, 0, 200]);
}

#[actix_web::test]
async fn a_caller_named_image_is_not_resent_after_a_5xx() {
    let app = spawn_app_with(fast_retries("")).await;
    // Stored, then a 503: Vipps may have acted, so a named upload is not resent.
    app.add_fault(json!({"endpoint": "image", "status": 503, "afterStore": true, "times": 1}))
        .await;
    let path = format!("/v1/merchants/{MSN}/images");
    let named = app
        .post_json(&path, &json!({"data": b64(&png(200)), "imageId": "logo"}))
        .await;
    named.problem(502);
    assert_eq!(app.sim_statuses("image").await, [503]);
}

#[actix_web::test]
async fn a_timed_out_read_is_retried() {
    let app = spawn_app_with(Options {
        upstream_timeout: "300ms",
        ..fast_retries("")
    })
    .await;
    app.add_fault(json!({"endpoint": "order", "delayMs": 1000, "times": 1}))
        .await;
    // The first call is held for 1 s, past the 300 ms timeout: its answer
    // never reaches the caller, so the 404 can only come from the retry.
    let a = app.get(&format!("/v1/merchants/{MSN}/orders/o-1")).await;
    a.problem(404);
    // The simulator logs the slow call when it finishes.
    let app = &app;
    let orders = poll_until("both order calls in the simulator's log", || async move {
        let n = app.sim_requests_to("order").await.len();
        (n >= 2).then_some(n)
    })
    .await;
    assert_eq!(orders, 2);
}

#[actix_web::test]
async fn retries_stay_within_the_budget_during_an_outage() {
    let app = spawn_app_with(fast_retries(
        "max_attempts = 5\nretry_budget_percent = 10\nretry_budget_min = 1\nbreaker_failures = 0\n",
    ))
    .await;
    app.add_fault(json!({"endpoint": "receipt", "status": 503, "delayMs": 150}))
        .await;
    // Warm the token so all requests are in flight together.
    app.get(&format!("/v1/merchants/{MSN}/orders/warm")).await;
    let paths: Vec<String> = (0..20)
        .map(|i| format!("/v1/merchants/{MSN}/orders/out-{i}/receipt"))
        .collect();
    let body = spec_receipt();
    let answers = join_all(paths.iter().map(|p| app.post_json(p, &body))).await;
    assert!(
        answers.iter().all(|a| a.status == 502),
        "all fail during the outage"
    );
    let calls = app.sim_requests_to("receipt").await.len();
    // Without a budget: 20 × 5 = 100 calls. With it, at most 2 requests
    // (10 % of 20, at least 1) retry at once.
    assert!(
        (20..=40).contains(&calls),
        "{calls} upstream calls for 20 requests"
    );
}

#[actix_web::test]
async fn the_breaker_opens_after_consecutive_failures_and_probes_half_open() {
    let app = spawn_app_with(fast_retries(
        "max_attempts = 1\nbreaker_failures = 3\nbreaker_open = \"1s\"\n",
    ))
    .await;
    app.add_fault(json!({"endpoint": "order", "msn": MSN, "status": 500}))
        .await;
    for _ in 0..3 {
        app.get(&format!("/v1/merchants/{MSN}/orders/o-1"))
            .await
            .problem(502);
    }
    let open = app.get(&format!("/v1/merchants/{MSN}/orders/o-1")).await;
    let p = open.problem(503);
    assert!(
        p["type"].as_str().unwrap().ends_with("/circuit-open"),
        "{p}"
    );
    assert!(open.retry_after.is_some());
    assert_eq!(
        app.sim_requests_to("order").await.len(),
        3,
        "no call while open"
    );
    // Another merchant's circuit is closed.
    app.get(&format!("/v1/merchants/{MSN2}/orders/o-1"))
        .await
        .problem(404);
    // Until the open period passes, every request is refused without a
    // call; then one probe goes out and its success closes the circuit.
    app.clear_faults().await;
    let before = app.sim_requests_to("order").await.len();
    let app = &app;
    let probe = poll_until("a probe after the open period", || async move {
        let a = app.get(&format!("/v1/merchants/{MSN}/orders/o-1")).await;
        if a.status == 503 {
            assert!(circuit_open(&a), "{}", a.body);
            return None;
        }
        Some(a)
    })
    .await;
    probe.problem(404);
    assert_eq!(
        app.sim_requests_to("order").await.len(),
        before + 1,
        "one probe, nothing while open"
    );
    app.get(&format!("/v1/merchants/{MSN}/orders/o-1"))
        .await
        .problem(404);
    assert_eq!(
        app.sim_requests_to("order").await.len(),
        before + 2,
        "closed again"
    );
}

fn circuit_open(a: &Answer) -> bool {
    a.body["type"]
        .as_str()
        .is_some_and(|t| t.ends_with("/circuit-open"))
}

#[actix_web::test]
async fn a_merchant_over_its_rate_gets_429_and_others_do_not() {
    let app = spawn_app_with(fast_retries("rate_per_second = 2\nrate_burst = 3\n")).await;
    for _ in 0..3 {
        app.get(&format!("/v1/merchants/{MSN}/orders/o-1"))
            .await
            .problem(404);
    }
    let calls = app.upstream_call_count().await;
    let limited = app.get(&format!("/v1/merchants/{MSN}/orders/o-1")).await;
    let p = limited.problem(429);
    assert!(
        p["type"].as_str().unwrap().ends_with("/rate-limited"),
        "{p}"
    );
    assert_eq!(limited.retry_after.as_deref(), Some("1"));
    assert_eq!(app.upstream_call_count().await, calls, "no upstream call");
    app.get(&format!("/v1/merchants/{MSN2}/orders/o-1"))
        .await
        .problem(404);
    // Refused requests take nothing from the bucket: once it refills, the
    // merchant is served again.
    let app = &app;
    let served = poll_until("the bucket refills", || async move {
        let a = app.get(&format!("/v1/merchants/{MSN}/orders/o-1")).await;
        if a.status == 429 {
            assert!(
                a.body["type"].as_str().unwrap().ends_with("/rate-limited"),
                "{}",
                a.body
            );
            return None;
        }
        Some(a)
    })
    .await;
    served.problem(404);
}

#[actix_web::test]
async fn a_merchant_with_every_slot_busy_gets_503_and_others_are_not_slowed() {
    let app = spawn_app_with(Options {
        gateway_workers: 2,
        ..fast_retries("max_concurrent = 2\nqueue_timeout = \"200ms\"\nmax_attempts = 1\n")
    })
    .await;
    // Warm both tokens, then make the first merchant's reads slow.
    app.get(&format!("/v1/merchants/{MSN}/orders/w")).await;
    app.get(&format!("/v1/merchants/{MSN2}/orders/w")).await;
    app.add_fault(json!({"endpoint": "order", "msn": MSN, "delayMs": 2000}))
        .await;
    let slow_paths: Vec<String> = (0..5)
        .map(|i| format!("/v1/merchants/{MSN}/orders/s-{i}"))
        .collect();
    let slow = join_all(slow_paths.iter().map(|p| app.get(p)));
    let app = &app;
    let other = async move {
        // Both of the first merchant's slots are taken: its two calls are
        // held at the simulator (after the two warm-up reads).
        poll_until("the slow merchant's calls held upstream", || async move {
            (app.sim_calls("order").await >= 4).then_some(())
        })
        .await;
        app.get(&format!("/v1/merchants/{MSN2}/orders/o-1")).await
    };
    // The other merchant is answered while the slow calls are still held.
    let (other, slow) = match select(Box::pin(slow), Box::pin(other)).await {
        Either::Right((other, slow)) => (other, slow.await),
        Either::Left(_) => panic!("the other merchant was answered only after the slow calls"),
    };
    assert_eq!(other.status, 404, "{}", other.body);
    let busy: Vec<_> = slow.iter().filter(|a| a.status == 503).collect();
    assert_eq!(busy.len(), 3, "two slots, five requests");
    for a in &busy {
        assert!(a.body["type"].as_str().unwrap().ends_with("/overloaded"));
        assert!(a.retry_after.is_some());
    }
    assert_eq!(
        slow.iter().filter(|a| a.status == 404).count(),
        2,
        "the two calls in the slots are answered"
    );
}

#[actix_web::test]
async fn a_request_past_its_deadline_is_a_504() {
    let app = spawn_app_with(fast_retries("request_deadline = \"500ms\"\n")).await;
    // Held for four times the deadline: a 504 can only come from the
    // deadline, not from the upstream's (late) answer.
    app.add_fault(json!({"endpoint": "order", "delayMs": 2000}))
        .await;
    let a = app.get(&format!("/v1/merchants/{MSN}/orders/o-1")).await;
    let p = a.problem(504);
    assert!(
        p["type"].as_str().unwrap().ends_with("/deadline-exceeded"),
        "{p}"
    );
}

#[actix_web::test]
async fn a_401_under_load_refetches_the_token_once() {
    let app = spawn_app_with(Options {
        gateway_workers: 2,
        ..fast_retries("")
    })
    .await;
    app.get(&format!("/v1/merchants/{MSN}/orders/warm")).await;
    app.expire_tokens().await;
    let paths: Vec<String> = (0..50)
        .map(|i| format!("/v1/merchants/{MSN}/orders/o-{i}"))
        .collect();
    let answers = join_all(paths.iter().map(|p| app.get(p))).await;
    assert!(
        answers.iter().all(|a| a.status == 404),
        "every request got through"
    );
    assert_eq!(
        app.token_fetches(MSN).await,
        2,
        "one fetch at start, one after the 401s"
    );
}

/// The seconds of life the gateway's cached token for `msn` has left, as
/// its metrics report them.
async fn token_seconds_left(app: &TestApp, msn: &str) -> Option<f64> {
    let prefix = format!("gateway_token_expiry_seconds{{msn=\"{msn}\"}} ");
    app.get("/metrics")
        .await
        .raw
        .lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .and_then(|v| v.trim().parse().ok())
}

/// Sends reads for `MSN` until the token endpoint has been called `n`
/// times, and returns them all. A 4 s token is due for refresh after
/// 3.2 s and still sent until 3.8 s, so one read falls in between.
async fn read_until_token_calls(app: &TestApp, n: u64) -> Vec<Answer> {
    let mut answers = Vec::new();
    for _ in 0..1000 {
        answers.push(app.get(&format!("/v1/merchants/{MSN}/orders/o-1")).await);
        if app.sim_calls("token").await >= n {
            return answers;
        }
        actix_rt::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the token endpoint was never called {n} times");
}

#[actix_web::test]
async fn tokens_are_refreshed_in_the_background_before_they_expire() {
    // A read that waited for a token answer held for 1.5 s would run past
    // its 1 s deadline and fail with a 504.
    let app = spawn_app_with(Options {
        token_ttl: Duration::from_secs(4),
        ..fast_retries("request_deadline = \"1s\"\n")
    })
    .await;
    app.get(&format!("/v1/merchants/{MSN}/orders/o-1"))
        .await
        .problem(404);
    // Slow token answers from now on: a request must not wait for one.
    app.add_fault(json!({"endpoint": "token", "delayMs": 1500}))
        .await;
    // Reads go on until the refresh has started; every one is answered
    // with the current token, the one that started the refresh included.
    for a in read_until_token_calls(&app, 2).await {
        a.problem(404);
    }
    // The refresh lands in the cache: a token with most of its life left.
    let app = &app;
    poll_until("the refreshed token cached", || async move {
        token_seconds_left(app, MSN)
            .await
            .filter(|left| *left > 2.0)
    })
    .await;
    app.get(&format!("/v1/merchants/{MSN}/orders/o-1"))
        .await
        .problem(404);
    assert_eq!(app.token_fetches(MSN).await, 2);
    // The refreshed token is in use: no 401 at any point.
    assert!(app.sim_statuses("order").await.iter().all(|s| *s == 404));
}

#[actix_web::test]
async fn a_failed_refresh_keeps_the_valid_token_but_never_sends_an_expired_one() {
    let app = spawn_app_with(Options {
        token_ttl: Duration::from_secs(4),
        ..fast_retries("")
    })
    .await;
    app.get(&format!("/v1/merchants/{MSN}/orders/o-1"))
        .await
        .problem(404);
    app.add_fault(json!({"endpoint": "token", "status": 503}))
        .await;
    // Inside the refresh margin: the refresh fails, the valid token serves.
    for a in read_until_token_calls(&app, 2).await {
        a.problem(404);
    }
    for _ in 0..3 {
        app.get(&format!("/v1/merchants/{MSN}/orders/o-1"))
            .await
            .problem(404);
    }
    // Expired: no token is sent; the request fails fast.
    let app = &app;
    let a = poll_until("the token too close to expiry to send", || async move {
        let a = app.get(&format!("/v1/merchants/{MSN}/orders/o-1")).await;
        (a.status != 404).then_some(a)
    })
    .await;
    let p = a.problem(503);
    assert!(
        p["type"].as_str().unwrap().ends_with("/token-unavailable"),
        "{p}"
    );
    assert!(
        app.sim_statuses("order").await.iter().all(|s| *s == 404),
        "never a 401 from an expired token"
    );
    // Fetches backed off: a handful, not one per request.
    let token_calls = app.sim_requests_to("token").await.len();
    assert!((2..=4).contains(&token_calls), "{token_calls} token calls");
}

/// At least 500 receipts with 20 % of receipt calls failing, half before
/// and half after Vipps stored the receipt.
#[actix_web::test]
async fn soak_no_receipt_is_lost_or_duplicated_under_faults() {
    let app = spawn_app_with(Options {
        gateway_workers: 2,
        ..fast_retries("max_attempts = 2\nbreaker_failures = 0\nrate_per_second = 0\n")
    })
    .await;
    app.add_fault(json!({"endpoint": "receipt", "status": 503, "percent": 10}))
        .await;
    app.add_fault(json!({"endpoint": "receipt", "drop": true, "afterStore": true, "percent": 11}))
        .await;
    let orders: Vec<String> = (0..500).map(|i| format!("soak-{i}")).collect();
    let receipt = |i: usize| {
        let mut r = spec_receipt();
        r["receiptNumber"] = json!(format!("R{i}"));
        r
    };
    let mut first = Vec::new();
    let app_ref = &app;
    for chunk in orders.chunks(25).enumerate() {
        let (c, chunk) = chunk;
        let answers = join_all(chunk.iter().enumerate().map(|(j, o)| {
            let body = receipt(c * 25 + j);
            async move {
                let answer = app_ref.post_receipt(MSN, o, &body).await;
                (o.clone(), body, answer)
            }
        }))
        .await;
        first.extend(answers);
    }
    let state = app.sim_state().await;
    let stored = |order: &str| {
        state["orders"]
            .as_array()
            .unwrap()
            .iter()
            .find(|o| o["orderId"] == order)
            .map(|o| o["receipt"].clone())
    };
    let (mut acknowledged, mut failed, mut stored_despite_error) = (0, Vec::new(), 0);
    for (order, body, answer) in &first {
        if answer.status == 201 {
            acknowledged += 1;
            assert_eq!(
                stored(order),
                Some(answer.body["receipt"].clone()),
                "{order}: acknowledged but not stored as sent"
            );
        } else {
            assert!(answer.status.is_server_error(), "{order}: {}", answer.body);
            if stored(order).is_some_and(|r| r.is_object()) {
                stored_despite_error += 1;
            }
            failed.push((order.clone(), body.clone()));
        }
    }
    // Every failed order: the caller retries until it gets a 201.
    app.clear_faults().await;
    for (order, body) in &failed {
        let retry = app.post_receipt(MSN, order, body).await;
        assert_eq!(retry.status, 201, "{order}: {}", retry.body);
        let state = app.sim_state().await;
        let now = state["orders"]
            .as_array()
            .unwrap()
            .iter()
            .find(|o| o["orderId"] == order.as_str())
            .map(|o| o["receipt"].clone());
        assert_eq!(now, Some(retry.body["receipt"].clone()));
    }
    // Exactly one receipt per order: the simulator refuses a second, so
    // duplicates would show as 409s resolved to a different receipt.
    let state = app.sim_state().await;
    let receipts = state["orders"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|o| o["receipt"].is_object())
        .count();
    let missing = 500 - receipts;
    assert_eq!(missing, 0, "missing receipts");
    let calls = app.sim_requests_to("receipt").await.len();
    println!(
        "soak: 500 receipts, {acknowledged} acknowledged first time, {} failed first time ({stored_despite_error} of them stored although the answer was an error), {missing} missing, {calls} receipt calls upstream; a second receipt for an order is refused upstream, and every stored receipt equals the acknowledged one",
        failed.len()
    );
}
