//! A problem's `type` is a relative URI to a page of the gateway itself.

use awc::http::Method;

use crate::helpers::{spawn_app, UNKNOWN_MSN};

#[actix_web::test]
async fn a_known_problem_type_answers_its_description_in_markdown() {
    let app = spawn_app().await;
    let a = app.get("/problems/circuit-open").await;
    assert_eq!(a.status, 200, "{}", a.raw);
    assert_eq!(a.content_type, "text/markdown; charset=utf-8");
    assert!(a.request_id.is_some());
    // The kind's title, its row of docs/problems.md, and nothing of the others.
    assert!(
        a.raw
            .starts_with("# Vipps calls for this merchant are paused\n"),
        "{}",
        a.raw
    );
    assert!(a.raw.contains("| `circuit-open` | 503 |"), "{}", a.raw);
    assert!(a.raw.contains("Vipps failed repeatedly"), "{}", a.raw);
    assert!(!a.raw.contains("`overloaded`"), "{}", a.raw);
    // A row that refers to the note on retrying receipts comes with it.
    let a = app.get("/problems/upstream-failed").await;
    assert_eq!(a.status, 200, "{}", a.raw);
    assert!(a.raw.contains("## Retrying a receipt is always safe"));
    assert_eq!(app.upstream_call_count().await, 0);
}

#[actix_web::test]
async fn an_unknown_problem_type_is_a_not_found_problem() {
    let app = spawn_app().await;
    for path in [
        "/problems/no-such-kind",
        "/problems/CIRCUIT-OPEN",
        "/problems/circuit-open/x",
        "/problems/",
    ] {
        let a = app.get(path).await;
        let p = a.problem(404);
        assert_eq!(p["type"], "/problems/not-found", "{path}");
        assert_eq!(p["instance"], path);
    }
    // Other methods are refused with the one that is served.
    let resp = app
        .client
        .request(Method::POST, app.url("/problems/circuit-open"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 405);
    assert_eq!(resp.headers().get("allow").unwrap(), "GET");
}

#[actix_web::test]
async fn a_real_problems_type_resolves_to_its_page_on_the_gateway() {
    let app = spawn_app().await;
    let a = app
        .get(&format!("/v1/merchants/{UNKNOWN_MSN}/orders/o-1"))
        .await;
    let p = a.problem(404);
    let ty = p["type"].as_str().unwrap();
    assert_eq!(ty, "/problems/merchant-not-found");
    // Relative: resolved against the request URL it is a path on the gateway.
    let page = app.get(ty).await;
    assert_eq!(page.status, 200, "{}", page.raw);
    assert_eq!(page.content_type, "text/markdown; charset=utf-8");
    assert!(page.raw.contains("`merchant-not-found`"), "{}", page.raw);
    assert!(
        page.raw.contains(p["title"].as_str().unwrap()),
        "{}",
        page.raw
    );
    assert_eq!(app.upstream_call_count().await, 0);
}
