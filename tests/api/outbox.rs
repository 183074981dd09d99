//! Asynchronous receipts (`Prefer: respond-async`): accepted with `202`,
//! stored in the outbox (a SQLite file per test gateway) and delivered to
//! the simulator by the gateway's worker.

use serde_json::{json, Value};

use crate::helpers::{
    poll_until, spawn_app_with, spec_receipt, Answer, Options, TestApp, MSN, MSN2,
};
use crate::metrics::scrape;

/// Short backoffs, so that a retried delivery comes within a test.
fn fast_outbox(extra: &str) -> Options {
    Options {
        extra_toml: format!(
            "[outbox]\nbackoff_base = \"50ms\"\nbackoff_max = \"200ms\"\n{extra}\n"
        ),
        ..Options::default()
    }
}

async fn post_async(app: &TestApp, order: &str, body: &Value) -> Answer {
    crate::helpers::answer(
        app.client
            .post(app.url(&format!("/v1/merchants/{MSN}/orders/{order}/receipt")))
            .insert_header(("Prefer", "respond-async"))
            .send_json(body)
            .await,
    )
    .await
}

fn header<'a>(a: &'a Answer, name: &str) -> Option<&'a str> {
    a.headers.get(name).and_then(|v| v.to_str().ok())
}

/// The delivery at `location` once it is no longer pending.
async fn finished(app: &TestApp, location: &str) -> Value {
    poll_until("the delivery to finish", || async {
        let a = app.get(location).await;
        assert_eq!(a.status, 200, "{}", a.body);
        (a.body["state"] != "pending").then_some(a.body)
    })
    .await
}

fn other_receipt() -> Value {
    let mut r = spec_receipt();
    r["receiptNumber"] = json!("another-receipt");
    r
}

#[actix_rt::test]
async fn an_async_receipt_is_stored_answered_202_and_delivered() {
    let app = spawn_app_with(fast_outbox("")).await;
    let a = post_async(&app, "async-1", &spec_receipt()).await;
    assert_eq!(a.status, 202, "{}", a.body);
    assert_eq!(header(&a, "preference-applied"), Some("respond-async"));
    let id = a.body["deliveryId"].as_str().unwrap().to_owned();
    let location = format!("/v1/merchants/{MSN}/deliveries/{id}");
    assert_eq!(header(&a, "location"), Some(location.as_str()));
    assert_eq!(a.body["kind"], "receipt");
    assert_eq!(a.body["orderId"], "async-1");
    assert_eq!(a.body["paymentType"], "ecom");
    assert_eq!(a.body["totals"]["total"], "447.00");
    assert_eq!(a.body["receipt"]["orderLines"][0]["totalAmount"], 39800);
    assert!(a.body["lastError"].is_null());

    let done = finished(&app, &location).await;
    assert_eq!(done["state"], "delivered", "{done}");
    assert_eq!(done["attempts"], 1);
    assert!(done["deliveredAt"].is_string() && done["nextAttemptAt"].is_null());
    // Vipps has the very receipt the 202 showed.
    let order = app
        .get(&format!("/v1/merchants/{MSN}/orders/async-1"))
        .await;
    assert_eq!(order.status, 200);
    assert_eq!(order.body["receipt"], a.body["receipt"]);
    assert_eq!(app.sim_requests_to("receipt").await.len(), 1);

    // Delivered: the same request is answered as a synchronous one.
    let again = post_async(&app, "async-1", &spec_receipt()).await;
    assert_eq!(again.status, 201, "{}", again.body);
    assert_eq!(again.body["replayed"], true);
    assert_eq!(header(&again, "preference-applied"), None);
}

#[actix_rt::test]
async fn during_an_outage_a_repost_is_the_same_delivery_and_a_different_receipt_conflicts() {
    let app = spawn_app_with(fast_outbox("")).await;
    app.add_fault(json!({"endpoint": "receipt", "status": 503}))
        .await;
    let first = post_async(&app, "outage-1", &spec_receipt()).await;
    assert_eq!(first.status, 202, "{}", first.body);
    let location = header(&first, "location").unwrap().to_owned();

    let retried = poll_until("an attempt to fail", || async {
        let d = app.get(&location).await.body;
        (d["attempts"].as_u64() >= Some(1)).then_some(d)
    })
    .await;
    assert_eq!(retried["state"], "pending");
    assert_eq!(retried["lastError"]["type"], "/problems/upstream-failed");
    assert!(retried["nextAttemptAt"].is_string());

    let repost = post_async(&app, "outage-1", &spec_receipt()).await;
    assert_eq!(repost.status, 202);
    assert_eq!(repost.body["deliveryId"], first.body["deliveryId"]);
    let conflict = post_async(&app, "outage-1", &other_receipt()).await;
    conflict.problem(409);
    assert_eq!(conflict.body["type"], "/problems/receipt-conflict");

    app.clear_faults().await;
    let done = finished(&app, &location).await;
    assert_eq!(done["state"], "delivered", "{done}");
    assert!(done["attempts"].as_u64() >= Some(2));
    let stored: Vec<u64> = app.sim_statuses("receipt").await;
    assert_eq!(
        stored.iter().filter(|s| **s == 201).count(),
        1,
        "stored at Vipps once: {stored:?}"
    );
}

#[actix_rt::test]
async fn a_vipps_400_leaves_a_failed_delivery_with_vipps_invalid_params() {
    let app = spawn_app_with(fast_outbox("")).await;
    app.add_fault(json!({
        "endpoint": "receipt",
        "status": 400,
        "body": {"title": "Bad Request", "detail": "Invalid receipt",
                 "invalidParams": [{"name": "orderLines[0].taxRate", "reason": "not allowed"}]}
    }))
    .await;
    let a = post_async(&app, "refused-1", &spec_receipt()).await;
    assert_eq!(a.status, 202, "{}", a.body);
    let done = finished(&app, header(&a, "location").unwrap()).await;
    assert_eq!(done["state"], "failed", "{done}");
    assert_eq!(done["attempts"], 1, "a refusal is not retried");
    let error = &done["lastError"];
    assert_eq!(error["type"], "/problems/upstream-rejected");
    assert_eq!(error["status"], 400);
    assert_eq!(error["invalidParams"][0]["name"], "lines[0].taxPercent");
    assert_eq!(error["invalidParams"][0]["reason"], "not allowed");

    let failed = app
        .get(&format!("/v1/merchants/{MSN}/deliveries?state=failed"))
        .await;
    assert_eq!(failed.status, 200);
    assert_eq!(
        failed.body["deliveries"][0]["deliveryId"],
        a.body["deliveryId"]
    );
    assert!(failed.body["nextCursor"].is_null());
}

#[actix_rt::test]
async fn a_different_receipt_already_at_vipps_fails_the_delivery_with_a_conflict() {
    let app = spawn_app_with(fast_outbox("")).await;
    let stored = app.post_receipt(MSN, "taken-1", &other_receipt()).await;
    assert_eq!(stored.status, 201);
    // The outbox does not know the order: it learns it from Vipps' 409.
    let a = post_async(&app, "taken-1", &spec_receipt()).await;
    assert_eq!(a.status, 202, "{}", a.body);
    let done = finished(&app, header(&a, "location").unwrap()).await;
    assert_eq!(done["state"], "failed", "{done}");
    assert_eq!(done["lastError"]["type"], "/problems/receipt-conflict");
}

#[actix_rt::test]
async fn with_the_store_unavailable_async_requests_are_503_and_synchronous_ones_work() {
    let missing = crate::auth::temp_dir("outbox")
        .join("missing")
        .join("outbox.db");
    let app = spawn_app_with(Options {
        extra_toml: format!("[outbox]\nurl = \"sqlite://{}\"\n", missing.display()),
        ..Options::default()
    })
    .await;
    let a = post_async(&app, "down-1", &spec_receipt()).await;
    a.problem(503);
    assert_eq!(a.body["type"], "/problems/outbox-unavailable");
    assert!(a.retry_after.is_some());
    assert_eq!(
        app.sim_requests_to("receipt").await.len(),
        0,
        "nothing sent"
    );
    let listing = app.get(&format!("/v1/merchants/{MSN}/deliveries")).await;
    listing.problem(503);

    assert_eq!(
        app.get("/readyz").await.status,
        200,
        "readiness does not depend on the store"
    );
    let sync = app.post_receipt(MSN, "down-1", &spec_receipt()).await;
    assert_eq!(sync.status, 201, "{}", sync.body);
    assert!(
        scrape(&app)
            .await
            .value("gateway_outbox_store_errors_total", &[])
            >= 1.0
    );
}

#[actix_rt::test]
async fn the_backlog_its_age_and_each_attempt_are_in_the_metrics() {
    let app = spawn_app_with(fast_outbox("")).await;
    app.add_fault(json!({"endpoint": "receipt", "status": 503}))
        .await;
    let a = post_async(&app, "metrics-1", &spec_receipt()).await;
    assert_eq!(a.status, 202);
    let pending = [("msn", MSN), ("kind", "receipt")];
    let location = header(&a, "location").unwrap().to_owned();
    poll_until("an attempt to fail", || async {
        let d = app.get(&location).await.body;
        (d["attempts"].as_u64() >= Some(1)).then_some(())
    })
    .await;
    // The worker counts the backlog every 5 s.
    poll_until("the backlog counted", || async {
        let m = scrape(&app).await;
        (m.value("gateway_outbox_pending", &pending) == 1.0
            && m.value("gateway_outbox_oldest_pending_seconds", &[("msn", MSN)]) > 0.0)
            .then_some(())
    })
    .await;
    let m = scrape(&app).await;
    assert_eq!(
        m.value(
            "gateway_outbox_pending",
            &[("msn", MSN2), ("kind", "receipt")]
        ),
        0.0,
        "every configured merchant has its gauge"
    );
    app.clear_faults().await;
    finished(&app, &location).await;
    let m = scrape(&app).await;
    let attempts = |result| {
        m.value(
            "gateway_outbox_deliveries_total",
            &[("msn", MSN), ("kind", "receipt"), ("result", result)],
        )
    };
    assert_eq!(attempts("delivered"), 1.0);
    assert!(attempts("retried") >= 1.0);
    assert_eq!(m.value("gateway_outbox_store_errors_total", &[]), 0.0);
}

async fn put_async(app: &TestApp, order: &str, body: &Value) -> Answer {
    crate::helpers::answer(
        app.client
            .put(app.url(&format!("/v1/merchants/{MSN}/orders/{order}/category")))
            .insert_header(("Prefer", "respond-async"))
            .send_json(body)
            .await,
    )
    .await
}

#[actix_rt::test]
async fn an_async_category_link_uploads_its_image_first_and_the_latest_link_wins() {
    let app = spawn_app_with(fast_outbox("")).await;
    app.add_fault(json!({"endpoint": "category", "status": 503}))
        .await;
    let first = put_async(
        &app,
        "link-1",
        &json!({"category": "RECEIPT", "url": "https://shop.example/first"}),
    )
    .await;
    assert_eq!(first.status, 202, "{}", first.body);
    assert_eq!(first.body["kind"], "category");
    assert!(first.body.get("receipt").is_none());
    let image = crate::helpers::b64(&crate::helpers::png(300));
    let second = put_async(
        &app,
        "link-1",
        &json!({"category": "RECEIPT", "url": "https://shop.example/second",
                "image": {"data": image}}),
    )
    .await;
    assert_eq!(second.status, 202, "{}", second.body);
    let location = header(&second, "location").unwrap().to_owned();

    app.clear_faults().await;
    let done = finished(&app, &location).await;
    assert_eq!(done["state"], "delivered", "{done}");
    let first_done = finished(&app, header(&first, "location").unwrap()).await;
    assert_eq!(first_done["state"], "delivered");
    let order = app.get(&format!("/v1/merchants/{MSN}/orders/link-1")).await;
    assert_eq!(order.status, 200, "{}", order.body);
    assert_eq!(
        order.body["category"]["orderDetailsUrl"],
        "https://shop.example/second"
    );
    let image_id = order.body["category"]["imageId"].as_str().unwrap();
    assert_eq!(
        app.sim_requests_to("image").await.len(),
        1,
        "the image was uploaded once, before the link"
    );
    assert!(!image_id.is_empty());
}

#[actix_rt::test]
async fn a_pending_category_link_is_replaced_before_it_is_claimed() {
    // After a failed attempt the entry waits, unclaimed, a random time of up
    // to an hour for its next one.
    let app = spawn_app_with(Options {
        extra_toml: "[outbox]\nbackoff_base = \"1h\"\nbackoff_max = \"1h\"\n".into(),
        ..Options::default()
    })
    .await;
    app.add_fault(json!({"endpoint": "category", "status": 503}))
        .await;
    let first = put_async(
        &app,
        "link-2",
        &json!({"category": "GENERAL", "url": "https://shop.example/a"}),
    )
    .await;
    assert_eq!(first.status, 202);
    let location = header(&first, "location").unwrap().to_owned();
    let waiting = poll_until("an attempt to fail", || async {
        let d = app.get(&location).await.body;
        (d["attempts"].as_u64() >= Some(1)).then_some(d)
    })
    .await;
    assert_eq!(waiting["state"], "pending", "{waiting}");
    let again = put_async(
        &app,
        "link-2",
        &json!({"category": "GENERAL", "url": "https://shop.example/b"}),
    )
    .await;
    assert_eq!(again.status, 202);
    assert_eq!(
        again.body["deliveryId"], first.body["deliveryId"],
        "a pending, unclaimed link is replaced in place"
    );
    let listed = app
        .get(&format!("/v1/merchants/{MSN}/deliveries?state=pending"))
        .await;
    assert_eq!(listed.body["deliveries"].as_array().unwrap().len(), 1);
}

#[actix_rt::test]
async fn a_store_that_could_not_be_opened_is_opened_once_it_can_be() {
    let dir = crate::auth::temp_dir("outbox").join("later");
    let app = spawn_app_with(fast_outbox(&format!(
        "url = \"sqlite://{}\"",
        dir.join("outbox.db").display()
    )))
    .await;
    post_async(&app, "later-1", &spec_receipt())
        .await
        .problem(503);
    // The volume is mounted late: the gateway, trying again, opens it.
    std::fs::create_dir_all(&dir).unwrap();
    let a = poll_until("the store to open", || async {
        let a = post_async(&app, "later-1", &spec_receipt()).await;
        (a.status == 202).then_some(a)
    })
    .await;
    let done = finished(&app, header(&a, "location").unwrap()).await;
    assert_eq!(done["state"], "delivered", "{done}");
}

#[actix_rt::test]
async fn with_the_outbox_off_the_preference_is_ignored() {
    let app = spawn_app_with(fast_outbox("enabled = false")).await;
    let a = post_async(&app, "off-1", &spec_receipt()).await;
    assert_eq!(a.status, 201, "{}", a.body);
    assert_eq!(header(&a, "preference-applied"), None);
}

#[actix_rt::test]
async fn bad_input_is_refused_before_anything_is_stored() {
    let app = spawn_app_with(fast_outbox("")).await;
    let mut bad = spec_receipt();
    bad["expectedTotal"] = json!("1.00");
    let a = post_async(&app, "bad-1", &bad).await;
    a.problem(422);
    let listing = app.get(&format!("/v1/merchants/{MSN}/deliveries")).await;
    assert_eq!(listing.status, 200);
    assert_eq!(listing.body["deliveries"], json!([]));
}

#[actix_rt::test]
async fn deliveries_are_listed_newest_first_page_by_page_and_only_the_merchants_own() {
    let app = spawn_app_with(fast_outbox("")).await;
    let mut ids = Vec::new();
    for i in 0..3 {
        let a = post_async(&app, &format!("list-{i}"), &spec_receipt()).await;
        assert_eq!(a.status, 202);
        ids.push(a.body["deliveryId"].as_str().unwrap().to_owned());
    }
    let page = |cursor: Option<&str>| {
        let path = match cursor {
            Some(c) => format!("/v1/merchants/{MSN}/deliveries?limit=2&cursor={c}"),
            None => format!("/v1/merchants/{MSN}/deliveries?limit=2"),
        };
        let app = &app;
        async move { app.get(&path).await }
    };
    let first = page(None).await;
    assert_eq!(first.status, 200, "{}", first.body);
    let listed = |a: &Answer| -> Vec<String> {
        a.body["deliveries"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["deliveryId"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(listed(&first), [ids[2].clone(), ids[1].clone()]);
    let cursor = first.body["nextCursor"].as_str().unwrap().to_owned();
    let second = page(Some(&cursor)).await;
    assert_eq!(listed(&second), [ids[0].clone()]);
    assert!(second.body["nextCursor"].is_null());

    // Another merchant sees none of them.
    let theirs = app
        .get(&format!("/v1/merchants/{MSN2}/deliveries/{}", ids[0]))
        .await;
    theirs.problem(404);
    assert_eq!(theirs.body["type"], "/problems/delivery-not-found");
    assert_eq!(
        app.get(&format!("/v1/merchants/{MSN2}/deliveries"))
            .await
            .body["deliveries"],
        json!([])
    );
    let unknown = app
        .get(&format!("/v1/merchants/{MSN}/deliveries/not-a-uuid"))
        .await;
    assert_eq!(unknown.body["type"], "/problems/delivery-not-found");

    for (query, name) in [
        ("state=lost", "state"),
        ("limit=0", "limit"),
        ("limit=101", "limit"),
        ("cursor=x", "cursor"),
        // Another parameter, or one given twice, is named by its name.
        ("sort=newest", "sort"),
        ("limit=2&stat=failed", "stat"),
        ("state=failed&state=pending", "state"),
        ("limit=2&limit=2", "limit"),
        ("cursor=1&limit=2&cursor=1", "cursor"),
    ] {
        let a = app
            .get(&format!("/v1/merchants/{MSN}/deliveries?{query}"))
            .await;
        a.problem(400);
        assert_eq!(a.invalid_names(), [name], "{query}");
    }
}

#[actix_rt::test]
async fn a_last_page_that_is_exactly_full_has_no_next_cursor() {
    let app = spawn_app_with(fast_outbox("")).await;
    for i in 0..4 {
        let a = post_async(&app, &format!("full-{i}"), &spec_receipt()).await;
        assert_eq!(a.status, 202);
    }
    let page = |query: String| {
        let app = &app;
        async move {
            let a = app
                .get(&format!("/v1/merchants/{MSN}/deliveries?{query}"))
                .await;
            assert_eq!(a.status, 200, "{}", a.body);
            let n = a.body["deliveries"].as_array().unwrap().len();
            (n, a.body["nextCursor"].as_str().map(str::to_owned))
        }
    };
    let (n, cursor) = page("limit=2".into()).await;
    assert_eq!(n, 2);
    let cursor = cursor.expect("two more to come");
    assert_eq!(
        page(format!("limit=2&cursor={cursor}")).await,
        (2, None),
        "the second page holds the last two"
    );
    assert_eq!(
        page("limit=4".into()).await,
        (4, None),
        "one page holds all"
    );
    assert_eq!(page("limit=5".into()).await, (4, None));
    let (n, cursor) = page("limit=3".into()).await;
    assert_eq!(n, 3);
    assert_eq!(
        page(format!("limit=3&cursor={}", cursor.unwrap())).await,
        (1, None)
    );
}
