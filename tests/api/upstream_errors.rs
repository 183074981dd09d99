//! Upstream failures map to the problems of SPEC §3.

use serde_json::json;

use crate::helpers::{spawn_app, spawn_app_with, spec_receipt, Options, MSN};

#[actix_web::test]
async fn upstream_5xx_is_a_502() {
    let app = spawn_app().await;
    app.add_fault(json!({"endpoint": "receipt", "status": 500}))
        .await;
    let a = app.post_receipt(MSN, "o-1", &spec_receipt()).await;
    let p = a.problem(502);
    assert!(p["type"].as_str().unwrap().ends_with("/upstream-failed"));
    assert!(p["detail"].as_str().unwrap().contains("500"));
}

#[actix_web::test]
async fn upstream_400_keeps_its_invalid_params_in_facade_terms() {
    let app = spawn_app().await;
    app.add_fault(json!({
        "endpoint": "receipt", "status": 400,
        "body": {"type": "x", "title": "One or more validation errors occurred.", "detail": "BadRequest",
                 "instance": "i", "invalidParams": [
                     {"name": "orderLines[1].taxPercentage", "reason": "not allowed"},
                     {"name": "bottomLine.tipAmount", "reason": "too much"},
                     {"name": "orderLines[0].totalAmountExcludingTax", "reason": "odd"}]}
    }))
    .await;
    let a = app.post_receipt(MSN, "o-1", &spec_receipt()).await;
    let p = a.problem(400);
    assert!(p["type"].as_str().unwrap().ends_with("/upstream-rejected"));
    assert_eq!(
        a.invalid_names(),
        [
            "lines[1].taxPercent",
            "tip",
            "orderLines[0].totalAmountExcludingTax"
        ]
    );
    assert_eq!(p["invalidParams"][0]["reason"], "not allowed");
}

#[actix_web::test]
async fn upstream_429_is_a_503_with_retry_after() {
    let app = spawn_app().await;
    app.add_fault(json!({"endpoint": "category", "status": 429, "retryAfter": "7"}))
        .await;
    let a = app
        .put_json(
            &format!("/v1/merchants/{MSN}/orders/o-1/category"),
            &json!({"category": "GENERAL", "url": "https://shop.example/"}),
        )
        .await;
    a.problem(503);
    assert_eq!(a.retry_after.as_deref(), Some("7"));
}

#[actix_web::test]
async fn a_slow_upstream_is_a_504() {
    let app = spawn_app_with(Options {
        upstream_timeout: "300ms",
        ..Options::default()
    })
    .await;
    app.add_fault(json!({"endpoint": "order", "delayMs": 1500}))
        .await;
    let a = app.get(&format!("/v1/merchants/{MSN}/orders/o-1")).await;
    let p = a.problem(504);
    assert!(p["type"].as_str().unwrap().ends_with("/upstream-timeout"));
}

#[actix_web::test]
async fn a_dropped_connection_is_a_502_that_says_the_outcome_is_unknown() {
    let app = spawn_app_with(Options {
        extra_toml: "[resilience]\nmax_attempts = 1\n".into(),
        ..Options::default()
    })
    .await;
    app.add_fault(json!({"endpoint": "receipt", "drop": true, "afterStore": true, "times": 1}))
        .await;
    let a = app.post_receipt(MSN, "o-1", &spec_receipt()).await;
    let p = a.problem(502);
    assert!(p["detail"].as_str().unwrap().contains("unknown"), "{p}");
    // The receipt was stored although the caller saw an error: its retry
    // finds it identical and is told so.
    let retry = app.post_receipt(MSN, "o-1", &spec_receipt()).await;
    assert_eq!(retry.status, 201, "{}", retry.body);
    assert_eq!(retry.body["replayed"], true);
}

#[actix_web::test]
async fn an_unreachable_upstream_is_a_503_without_a_token() {
    let app = spawn_app().await;
    // Point a second gateway at a port nothing listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let toml = format!("listen = \"127.0.0.1:0\"\nworkers = 1\n[upstream]\nbase_url = \"http://127.0.0.1:{port}\"\ntimeout = \"2s\"\n");
    let mut settings = vipps_order_gateway::config::Settings::from_toml(&toml, []).unwrap();
    settings.merchants = vec![vipps_order_gateway::config::MerchantSettings {
        msn: vipps_order_gateway::domain::Msn::parse(MSN).unwrap(),
        client_id: "id".into(),
        client_secret_file: None,
        client_secret_env: Some("S".into()),
        subscription_key_file: None,
        subscription_key_env: Some("K".into()),
        inline: None,
    }];
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let gw = vipps_order_gateway::Application::build_with_listener(settings, listener, &|k| {
        Some(format!("value-{k}"))
    })
    .unwrap();
    let url = format!(
        "http://127.0.0.1:{}/v1/merchants/{MSN}/orders/o-1",
        gw.port()
    );
    actix_rt::spawn(gw.server());
    let mut resp = app.client.get(url).send().await.unwrap();
    // The token endpoint cannot be reached: no token, fail fast.
    assert_eq!(resp.status(), 503);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert!(
        body["type"]
            .as_str()
            .unwrap()
            .ends_with("/token-unavailable"),
        "{body}"
    );
}

#[actix_web::test]
async fn a_long_retry_after_on_a_5xx_reaches_the_caller() {
    let app = spawn_app().await;
    app.add_fault(json!({"endpoint": "receipt", "status": 503, "retryAfter": "30"}))
        .await;
    let a = app.post_receipt(MSN, "o-1", &spec_receipt()).await;
    a.problem(502);
    assert_eq!(a.retry_after.as_deref(), Some("30"));
    // Longer than the backoff allows: not waited for, not resent.
    assert_eq!(app.sim_requests_to("receipt").await.len(), 1);
}
