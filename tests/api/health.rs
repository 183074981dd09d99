//! Operational endpoints and the behaviour every response shares.

use crate::helpers::spawn_app;

#[actix_web::test]
async fn health_and_readiness_answer_without_calling_vipps() {
    let app = spawn_app().await;
    let h = app.get("/healthz").await;
    assert_eq!(h.status, 200);
    assert_eq!(h.body["status"], "ok");
    let r = app.get("/readyz").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body["merchants"], 2);
    assert_eq!(app.upstream_call_count().await, 0);
}

#[actix_web::test]
async fn every_response_carries_a_request_id_and_keeps_the_callers() {
    let app = spawn_app().await;
    let generated = app.get("/healthz").await;
    let id = generated.request_id.expect("generated id");
    assert_eq!(id.len(), 36, "a uuid: {id}");
    let resp = app
        .client
        .get(app.url("/nowhere"))
        .insert_header(("x-request-id", "caller-req-42"))
        .send()
        .await
        .expect("answer");
    assert_eq!(
        resp.headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok()),
        Some("caller-req-42")
    );
    // An id that could not go into a header unchanged is replaced.
    let resp = app
        .client
        .get(app.url("/healthz"))
        .insert_header(("x-request-id", "has spaces and {braces}"))
        .send()
        .await
        .expect("answer");
    let got = resp
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert_ne!(got, "has spaces and {braces}");
    assert_eq!(got.len(), 36);
}

#[actix_web::test]
async fn unknown_routes_and_methods_are_problems() {
    let app = spawn_app().await;
    let nf = app.get("/v2/anything").await;
    let p = nf.problem(404);
    assert!(p["type"].as_str().unwrap().ends_with("/not-found"));
    assert_eq!(p["instance"], "/v2/anything");
    assert_eq!(p["requestId"].as_str(), nf.request_id.as_deref());
    let wrong = app.get("/v1/merchants/123456/orders/o-1/receipt").await;
    wrong.problem(405);
    assert_eq!(app.upstream_call_count().await, 0);
}
