//! Access tokens: one fetch per merchant however many requests arrive at
//! once, refreshed before expiry, and fetched again after a 401.

use std::cell::Cell;
use std::time::Duration;

use futures_util::future::join_all;
use serde_json::json;

use crate::helpers::{poll_until, spawn_app, spawn_app_with, spec_receipt, Options, MSN, MSN2};

#[actix_web::test]
async fn two_hundred_concurrent_requests_on_a_cold_merchant_fetch_one_token() {
    let app = spawn_app_with(Options {
        gateway_workers: 2,
        ..Options::default()
    })
    .await;
    // Slow token answers widen the window in which requests pile up.
    app.add_fault(json!({"endpoint": "token", "delayMs": 200}))
        .await;
    let body = json!({"category": "GENERAL", "url": "https://shop.example/"});
    let paths: Vec<String> = (0..200)
        .map(|i| format!("/v1/merchants/{MSN}/orders/cold-{i}/category"))
        .collect();
    let requests = paths.iter().map(|p| app.put_json(p, &body));
    let answers = join_all(requests).await;
    let ok = answers.iter().filter(|a| a.status == 200).count();
    assert_eq!(
        ok,
        200,
        "failures: {:?}",
        answers
            .iter()
            .filter(|a| a.status != 200)
            .map(|a| &a.body)
            .collect::<Vec<_>>()
    );
    assert_eq!(app.token_fetches(MSN).await, 1);
    assert_eq!(app.sim_requests_to("token").await.len(), 1);
    assert_eq!(app.sim_requests_to("category").await.len(), 200);
}

#[actix_web::test]
async fn tokens_expiring_under_sustained_traffic_fail_no_request() {
    let app = spawn_app_with(Options {
        token_ttl: Duration::from_secs(2),
        gateway_workers: 2,
        // As fast as the loop goes: no per-merchant rate limit.
        extra_toml: "[resilience]\nrate_per_second = 0\n".into(),
        ..Options::default()
    })
    .await;
    // Traffic runs until the simulator has issued a fourth token, however
    // long that takes: three replacements under load.
    let (sent, stop) = (Cell::new(0usize), Cell::new(false));
    let worker = |w: usize| {
        let (app, sent, stop) = (&app, &sent, &stop);
        async move {
            let (mut i, mut failed) = (0, Vec::new());
            while !stop.get() {
                let a = app
                    .put_json(
                        &format!("/v1/merchants/{MSN}/orders/w{w}-{i}/category"),
                        &json!({"category": "GENERAL", "url": "https://shop.example/"}),
                    )
                    .await;
                if a.status != 200 {
                    failed.push(a.body);
                }
                i += 1;
                sent.set(sent.get() + 1);
            }
            failed
        }
    };
    let watch = async {
        // Requests sent by the time each new token was seen.
        let mut sent_by_token = Vec::new();
        let mut seen = 0;
        for _ in 0..1000 {
            let fetches = app.token_fetches(MSN).await;
            if fetches > seen {
                seen = fetches;
                sent_by_token.push(sent.get());
            }
            if seen >= 4 {
                break;
            }
            actix_rt::time::sleep(Duration::from_millis(20)).await;
        }
        stop.set(true);
        (seen, sent_by_token)
    };
    let (results, (seen, sent_by_token)) = futures_util::join!(join_all((0..4).map(worker)), watch);
    let sent = sent.get();
    let failed: Vec<_> = results.into_iter().flatten().collect();
    assert!(seen >= 4, "only {seen} tokens were issued");
    // Requests went out between every two tokens and after the last: the
    // traffic was sustained across every replacement.
    assert!(
        sent_by_token.windows(2).all(|w| w[0] < w[1]) && sent_by_token.last() < Some(&sent),
        "requests sent by each new token: {sent_by_token:?}, {sent} in all"
    );
    assert!(
        failed.is_empty(),
        "{} of {sent} failed: {:?}",
        failed.len(),
        failed.first()
    );
    // One fetch per replacement, not one per request.
    let fetches = app.token_fetches(MSN).await;
    assert!((4..=6).contains(&fetches), "{fetches} token fetches");
    // Refreshing ahead of expiry means the upstream never saw an expired token.
    let rejected = app
        .sim_requests_to("category")
        .await
        .iter()
        .filter(|r| r["status"] == 401)
        .count();
    assert_eq!(rejected, 0);
}

#[actix_web::test]
async fn an_upstream_401_drops_the_token_and_retries_once() {
    let app = spawn_app().await;
    let first = app.post_receipt(MSN, "o-1", &spec_receipt()).await;
    assert_eq!(first.status, 201);
    app.expire_tokens().await;
    let second = app.post_receipt(MSN, "o-2", &spec_receipt()).await;
    assert_eq!(second.status, 201, "{}", second.body);
    assert_eq!(second.body["replayed"], false);
    assert_eq!(app.token_fetches(MSN).await, 2);
    let calls: Vec<(String, u64)> = app
        .sim_requests()
        .await
        .iter()
        .map(|r| {
            (
                r["endpoint"].as_str().unwrap_or_default().to_owned(),
                r["status"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    let calls: Vec<(&str, u64)> = calls.iter().map(|(e, s)| (e.as_str(), *s)).collect();
    assert_eq!(
        calls,
        [
            ("token", 200),
            ("receipt", 201),
            ("receipt", 401),
            ("token", 200),
            ("receipt", 201)
        ]
    );
    // The retried request carried the new token.
    let receipts = app.sim_requests_to("receipt").await;
    assert_ne!(
        receipts[1]["headers"]["authorization"],
        receipts[2]["headers"]["authorization"]
    );
}

#[actix_web::test]
async fn a_401_after_a_fresh_token_is_a_502_not_a_loop() {
    let app = spawn_app().await;
    app.add_fault(json!({"endpoint": "receipt", "status": 401}))
        .await;
    let a = app.post_receipt(MSN, "o-1", &spec_receipt()).await;
    let p = a.problem(502);
    assert!(
        p["type"].as_str().unwrap().ends_with("/upstream-auth"),
        "{p}"
    );
    // One retry with one new token, then give up.
    assert_eq!(app.sim_requests_to("receipt").await.len(), 2);
    assert_eq!(app.token_fetches(MSN).await, 2);
}

#[actix_web::test]
async fn refused_merchant_credentials_are_a_502_without_the_secret() {
    let app = spawn_app_with(Options {
        msn2_secret: "wrong-secret-value".into(),
        ..Options::default()
    })
    .await;
    let a = app.post_receipt(MSN2, "o-1", &spec_receipt()).await;
    let p = a.problem(502);
    assert!(
        p["type"].as_str().unwrap().ends_with("/upstream-auth"),
        "{p}"
    );
    assert!(!a.body.to_string().contains("wrong-secret-value"));
    assert!(app.sim_requests_to("receipt").await.is_empty());
    // Other merchants are unaffected.
    assert_eq!(
        app.post_receipt(MSN, "o-1", &spec_receipt()).await.status,
        201
    );
}

#[actix_web::test]
async fn a_failing_token_endpoint_fails_fast_with_backoff_and_recovers() {
    let app = spawn_app().await;
    app.add_fault(json!({"endpoint": "token", "status": 503}))
        .await;
    let a = app.post_receipt(MSN, "o-1", &spec_receipt()).await;
    let p = a.problem(503);
    assert!(
        p["type"].as_str().unwrap().ends_with("/token-unavailable"),
        "{p}"
    );
    assert_eq!(a.retry_after.as_deref(), Some("1"));
    // During the backoff, requests fail at once without calling the token endpoint.
    for _ in 0..20 {
        let b = app.post_receipt(MSN, "o-1", &spec_receipt()).await;
        let p = b.problem(503);
        assert!(
            p["type"].as_str().unwrap().ends_with("/token-unavailable"),
            "{p}"
        );
    }
    assert_eq!(app.sim_requests_to("token").await.len(), 1);
    // The endpoint recovers; until the backoff ends requests still fail
    // at once, then the next one succeeds.
    app.clear_faults().await;
    let app = &app;
    let c = poll_until("a request after the backoff", || async move {
        let c = app.post_receipt(MSN, "o-1", &spec_receipt()).await;
        if c.status == 503 {
            assert!(
                c.body["type"]
                    .as_str()
                    .unwrap()
                    .ends_with("/token-unavailable"),
                "{}",
                c.body
            );
            return None;
        }
        Some(c)
    })
    .await;
    assert_eq!(c.status, 201, "{}", c.body);
    assert_eq!(app.token_fetches(MSN).await, 1);
    assert!(
        app.sim_requests_to("receipt").await.len() == 1,
        "no receipt was sent while tokens failed"
    );
}
