//! Access tokens: one fetch per merchant however many requests arrive at
//! once, refreshed before expiry, and fetched again after a 401.

use std::time::{Duration, Instant};

use futures_util::future::join_all;
use serde_json::json;

use crate::helpers::{spawn_app, spawn_app_with, spec_receipt, Options, MSN, MSN2};

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
    let deadline = Instant::now() + Duration::from_millis(5500);
    let worker = |w: usize| {
        let app = &app;
        async move {
            let (mut sent, mut failed) = (0, Vec::new());
            while Instant::now() < deadline {
                let a = app
                    .put_json(
                        &format!("/v1/merchants/{MSN}/orders/w{w}-{sent}/category"),
                        &json!({"category": "GENERAL", "url": "https://shop.example/"}),
                    )
                    .await;
                if a.status != 200 {
                    failed.push(a.body);
                }
                sent += 1;
            }
            (sent, failed)
        }
    };
    let results = join_all((0..4).map(worker)).await;
    let sent: usize = results.iter().map(|r| r.0).sum();
    let failed: Vec<_> = results.into_iter().flat_map(|r| r.1).collect();
    assert!(sent > 100, "only {sent} requests were sent");
    assert!(
        failed.is_empty(),
        "{} of {sent} failed: {:?}",
        failed.len(),
        failed.first()
    );
    // 5.5 s of 2 s tokens: at least three were needed.
    let fetches = app.token_fetches(MSN).await;
    assert!((3..=6).contains(&fetches), "{fetches} token fetches");
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
    // The endpoint recovers; after the backoff the next request succeeds.
    app.clear_faults().await;
    actix_rt::time::sleep(Duration::from_millis(1100)).await;
    let c = app.post_receipt(MSN, "o-1", &spec_receipt()).await;
    assert_eq!(c.status, 201, "{}", c.body);
    assert_eq!(app.token_fetches(MSN).await, 1);
    assert!(
        app.sim_requests_to("receipt").await.len() == 1,
        "no receipt was sent while tokens failed"
    );
}
