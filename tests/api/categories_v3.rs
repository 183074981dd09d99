//! Several category links per order (Order Management 2.1's
//! `/v3/categories`) through the façade and the proxy, against the simulator.

use awc::http::Method;
use serde_json::{json, Value};

use crate::helpers::{b64, fast_retries, png, spawn_app, spawn_app_with, TestApp, MSN, MSN2};

fn links(msn: &str, order: &str) -> String {
    format!("/v1/merchants/{msn}/orders/{order}/categories")
}

/// The simulator's stored links, oldest first.
async fn stored(app: &TestApp) -> Vec<Value> {
    app.sim_state().await["categories"]
        .as_array()
        .expect("categories in the simulator's state")
        .clone()
}

fn is_uuid(v: &Value) -> bool {
    v.as_str()
        .is_some_and(|s| s.len() == 36 && uuid::Uuid::try_parse(s).is_ok())
}

#[actix_web::test]
async fn links_are_added_listed_read_and_deleted_and_the_order_read_follows() {
    let app = spawn_app().await;
    let order = "o-v3";
    let mut ids = Vec::new();
    for (category, url, image) in [
        (
            "RECEIPT",
            "https://shop.example/o/1/receipt",
            Some("logo-1"),
        ),
        ("TICKET", "https://shop.example/o/1/ticket", None),
        ("DELIVERY", "https://shop.example/o/1/track", None),
    ] {
        let mut body = json!({"category": category, "url": url});
        if let Some(id) = image {
            body["imageId"] = json!(id);
        }
        let a = app.post_json(&links(MSN, order), &body).await;
        assert_eq!(a.status, 201, "{}", a.body);
        assert!(is_uuid(&a.body["categoryId"]), "{}", a.body);
        assert_eq!(
            a.body,
            json!({"categoryId": a.body["categoryId"], "category": category, "url": url,
                   "imageId": image, "paymentType": "ecom"})
        );
        ids.push(a.body["categoryId"].as_str().unwrap().to_owned());
    }
    // Sent as 2.1 defines it: upper-case payment type, `type`, no null imageId.
    let sent = app.sim_requests_to("v3-category-post").await;
    assert_eq!(sent.len(), 3);
    assert_eq!(sent[0]["path"], "/order-management/v3/categories");
    assert_eq!(
        sent[0]["body"],
        json!({"orderId": order, "paymentType": "ECOM", "type": "RECEIPT",
               "url": "https://shop.example/o/1/receipt", "imageId": "logo-1"})
    );
    assert_eq!(
        sent[1]["body"],
        json!({"orderId": order, "paymentType": "ECOM", "type": "TICKET",
               "url": "https://shop.example/o/1/ticket"})
    );

    let expected = |keep: &[usize]| -> Value {
        let all = [
            json!({"categoryId": ids[0], "category": "RECEIPT",
                   "url": "https://shop.example/o/1/receipt", "imageId": "logo-1"}),
            json!({"categoryId": ids[1], "category": "TICKET",
                   "url": "https://shop.example/o/1/ticket", "imageId": null}),
            json!({"categoryId": ids[2], "category": "DELIVERY",
                   "url": "https://shop.example/o/1/track", "imageId": null}),
        ];
        Value::Array(keep.iter().map(|i| all[*i].clone()).collect())
    };
    let list = app.get(&links(MSN, order)).await;
    assert_eq!(list.status, 200, "{}", list.body);
    assert_eq!(list.body, json!({"categories": expected(&[0, 1, 2])}));
    let listed = app.sim_requests_to("v3-category-list").await;
    assert_eq!(listed[0]["query"], format!("orderId={order}"));

    // An order with only v3 links is found.
    let read = app
        .get(&format!("/v1/merchants/{MSN}/orders/{order}"))
        .await;
    assert_eq!(read.status, 200, "{}", read.body);
    assert_eq!(
        read.body,
        json!({"category": null, "receipt": null, "categories": expected(&[0, 1, 2])})
    );

    // One link read back in the Vipps shape, through the proxy.
    let one = app
        .proxy(Method::GET, &format!("/v3/categories/{}", ids[1]), None)
        .await;
    assert_eq!(one.status, 200, "{}", one.body);
    assert_eq!(
        one.body,
        json!({"categoryId": ids[1], "orderId": order, "paymentType": "ECOM",
               "type": "TICKET", "url": "https://shop.example/o/1/ticket"})
    );

    let gone = app
        .delete(&format!("{}/{}", links(MSN, order), ids[1]))
        .await;
    assert_eq!(gone.status, 204, "{}", gone.body);
    assert!(gone.raw.is_empty());
    assert_eq!(
        app.get(&links(MSN, order)).await.body,
        json!({"categories": expected(&[0, 2])})
    );
    assert_eq!(
        app.get(&format!("/v1/merchants/{MSN}/orders/{order}"))
            .await
            .body["categories"],
        expected(&[0, 2])
    );
    assert_eq!(stored(&app).await.len(), 2);
    // Deleting it again: there is nothing of this order's left to delete.
    app.delete(&format!("{}/{}", links(MSN, order), ids[1]))
        .await
        .problem(404);
}

#[actix_web::test]
async fn the_order_read_shows_links_beside_the_v2_category_and_recurring_apart() {
    let app = spawn_app().await;
    let put = app
        .put_json(
            &format!("/v1/merchants/{MSN}/orders/o-1/category"),
            &json!({"category": "GENERAL", "url": "https://shop.example/o/1"}),
        )
        .await;
    assert_eq!(put.status, 200, "{}", put.body);
    let recurring = app
        .post_json(
            &format!("{}?paymentType=RECURRING", links(MSN, "o-1")),
            &json!({"category": "BOOKING", "url": "https://shop.example/o/1/booking"}),
        )
        .await;
    assert_eq!(recurring.status, 201, "{}", recurring.body);
    assert_eq!(recurring.body["paymentType"], "recurring");
    let sent = app.sim_requests_to("v3-category-post").await;
    assert_eq!(sent[0]["body"]["paymentType"], "RECURRING");

    // The ecom order has the v2 category and no links of its own.
    let ecom = app.get(&format!("/v1/merchants/{MSN}/orders/o-1")).await;
    assert_eq!(ecom.status, 200, "{}", ecom.body);
    assert_eq!(ecom.body["category"]["category"], "GENERAL");
    assert_eq!(ecom.body["categories"], json!([]));
    assert_eq!(
        app.get(&links(MSN, "o-1")).await.body,
        json!({"categories": []})
    );
    // The recurring order has only the link.
    let rec = app
        .get(&format!(
            "/v1/merchants/{MSN}/orders/o-1?paymentType=recurring"
        ))
        .await;
    assert_eq!(rec.status, 200, "{}", rec.body);
    assert_eq!(rec.body["category"], Value::Null);
    assert_eq!(rec.body["categories"][0]["category"], "BOOKING");
    // An order with nothing at all is still 404.
    app.get(&format!("/v1/merchants/{MSN}/orders/o-none"))
        .await
        .problem(404);
}

#[actix_web::test]
async fn an_inline_image_is_uploaded_before_the_link_is_added() {
    let app = spawn_app().await;
    let a = app
        .post_json(
            &links(MSN, "o-img"),
            &json!({"category": "RECEIPT", "url": "https://shop.example/r",
                    "image": {"data": b64(&png(300))}}),
        )
        .await;
    assert_eq!(a.status, 201, "{}", a.body);
    let image_id = a.body["imageId"].as_str().expect("the uploaded image's id");
    assert!(image_id.starts_with("sha256-"), "{image_id}");
    assert_eq!(app.sim_calls("image").await, 1);
    let sent = app.sim_requests_to("v3-category-post").await;
    assert_eq!(sent[0]["body"]["imageId"], image_id);
}

#[actix_web::test]
async fn another_merchants_or_orders_link_is_404_and_never_deleted() {
    let app = spawn_app().await;
    let theirs = app
        .post_json(
            &links(MSN2, "o-1"),
            &json!({"category": "TICKET", "url": "https://other.example/t"}),
        )
        .await;
    assert_eq!(theirs.status, 201, "{}", theirs.body);
    let theirs = theirs.body["categoryId"].as_str().unwrap().to_owned();
    let ours = app
        .post_json(
            &links(MSN, "o-1"),
            &json!({"category": "TICKET", "url": "https://shop.example/t"}),
        )
        .await;
    let ours = ours.body["categoryId"].as_str().unwrap().to_owned();

    for path in [
        // Another merchant's link, under the same order id.
        format!("{}/{theirs}", links(MSN, "o-1")),
        // Our link, under another order or payment type.
        format!("{}/{ours}", links(MSN, "o-2")),
        format!("{}/{ours}?paymentType=recurring", links(MSN, "o-1")),
    ] {
        let a = app.delete(&path).await;
        let p = a.problem(404);
        assert_eq!(p["type"], "/problems/category-not-found", "{path}");
    }
    assert_eq!(app.sim_calls("v3-category-delete").await, 0);
    let kept: Vec<Value> = stored(&app)
        .await
        .iter()
        .map(|c| c["categoryId"].clone())
        .collect();
    assert_eq!(kept, [json!(theirs), json!(ours)]);
    // Lists are per merchant too.
    assert_eq!(
        app.get(&links(MSN2, "o-1")).await.body["categories"][0]["categoryId"],
        theirs.as_str()
    );
    assert_eq!(
        app.get(&links(MSN, "o-1")).await.body["categories"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

#[actix_web::test]
async fn an_add_whose_answer_is_lost_is_settled_by_reading_back_never_sent_twice() {
    let app = spawn_app_with(fast_retries("")).await;
    // Stored, then the connection drops: the outcome is unknown to the gateway.
    app.add_fault(
        json!({"endpoint": "v3-category-post", "drop": true, "afterStore": true, "times": 1}),
    )
    .await;
    let a = app
        .post_json(
            &links(MSN, "o-lost"),
            &json!({"category": "RECEIPT", "url": "https://shop.example/r"}),
        )
        .await;
    assert_eq!(a.status, 201, "{}", a.body);
    assert_eq!(app.sim_statuses("v3-category-post").await, [0]);
    assert_eq!(app.sim_statuses("v3-category-list").await, [200]);
    let links_stored = stored(&app).await;
    assert_eq!(links_stored.len(), 1, "{links_stored:?}");
    assert_eq!(links_stored[0]["categoryId"], a.body["categoryId"]);
    assert_eq!(a.body["category"], "RECEIPT");
}

#[actix_web::test]
async fn an_add_that_failed_before_storing_is_a_problem_and_stores_nothing() {
    let app = spawn_app_with(fast_retries("")).await;
    // A 503 may come after Vipps acted, so it is not resent; the read-back
    // finds no link, so the caller learns it failed.
    app.add_fault(json!({"endpoint": "v3-category-post", "status": 503, "times": 1}))
        .await;
    let a = app
        .post_json(
            &links(MSN, "o-503"),
            &json!({"category": "RECEIPT", "url": "https://shop.example/r"}),
        )
        .await;
    let p = a.problem(502);
    assert_eq!(p["type"], "/problems/upstream-failed");
    // Not a plain "retry": the caller is told to look before adding again.
    let detail = p["detail"].as_str().unwrap();
    assert!(detail.contains("List the order's links"), "{detail}");
    assert_eq!(app.sim_statuses("v3-category-post").await, [503]);
    assert_eq!(app.sim_statuses("v3-category-list").await, [200]);
    assert!(stored(&app).await.is_empty());
    // A 429 was refused before any work: resent, and added once.
    app.add_fault(json!({"endpoint": "v3-category-post", "status": 429, "times": 1}))
        .await;
    let a = app
        .post_json(
            &links(MSN, "o-429"),
            &json!({"category": "RECEIPT", "url": "https://shop.example/r"}),
        )
        .await;
    assert_eq!(a.status, 201, "{}", a.body);
    assert_eq!(app.sim_statuses("v3-category-post").await, [503, 429, 201]);
    assert_eq!(stored(&app).await.len(), 1);
}

#[actix_web::test]
async fn a_delete_whose_first_answer_is_lost_is_a_success() {
    let app = spawn_app_with(fast_retries("")).await;
    let a = app
        .post_json(
            &links(MSN, "o-del"),
            &json!({"category": "TICKET", "url": "https://shop.example/t"}),
        )
        .await;
    let id = a.body["categoryId"].as_str().unwrap().to_owned();
    app.add_fault(
        json!({"endpoint": "v3-category-delete", "drop": true, "afterStore": true, "times": 1}),
    )
    .await;
    let gone = app.delete(&format!("{}/{id}", links(MSN, "o-del"))).await;
    assert_eq!(gone.status, 204, "{}", gone.body);
    // Deleted by the first attempt, whose answer was lost; the retry's 404
    // says it is gone.
    assert_eq!(app.sim_statuses("v3-category-delete").await, [0, 404]);
    assert!(stored(&app).await.is_empty());
}

#[actix_web::test]
async fn bad_input_is_400_before_any_upstream_call() {
    let app = spawn_app().await;
    for bad in [
        "42",
        "not-a-uuid",
        "337f5e5d288b40d5be14901cc3acacc0",
        "337f5e5d-288b-40d5-be14-901cc3acaccz",
    ] {
        let a = app.delete(&format!("{}/{bad}", links(MSN, "o-1"))).await;
        a.problem(400);
        assert_eq!(a.invalid_names(), ["categoryId"], "{bad}");
    }
    for (body, field) in [
        (
            json!({"category": "RECEIPT", "url": "shop.example/r"}),
            "url",
        ),
        (
            json!({"category": "SHOE", "url": "https://shop.example/r"}),
            "category",
        ),
        (json!({"url": "https://shop.example/r"}), "category"),
        (
            json!({"category": "RECEIPT", "url": "https://shop.example/r", "type": "RECEIPT"}),
            "type",
        ),
        (
            json!({"category": "RECEIPT", "url": "https://shop.example/r", "imageId": "a/b"}),
            "imageId",
        ),
        (
            json!({"category": "RECEIPT", "url": "https://shop.example/r", "imageId": "x",
                   "image": {"data": b64(&png(300))}}),
            "image",
        ),
    ] {
        let a = app.post_json(&links(MSN, "o-1"), &body).await;
        a.problem(400);
        assert_eq!(a.invalid_names(), [field], "{body}");
    }
    let a = app
        .post_json(
            &format!("{}?paymentType=pos", links(MSN, "o-1")),
            &json!({"category": "RECEIPT", "url": "https://shop.example/r"}),
        )
        .await;
    a.problem(400);
    assert_eq!(a.invalid_names(), ["paymentType"]);
    let a = app
        .get(&format!("{}?paymentType=pos", links(MSN, "o-1")))
        .await;
    a.problem(400);
    assert_eq!(a.invalid_names(), ["paymentType"]);
    assert_eq!(app.upstream_call_count().await, 0);
}

#[actix_web::test]
async fn other_methods_are_405_with_allow() {
    let app = spawn_app().await;
    let a = crate::helpers::answer(
        app.client
            .request(Method::PUT, app.url(&links(MSN, "o-1")))
            .send()
            .await,
    )
    .await;
    a.problem(405);
    let allow = a.headers.get("allow").unwrap().to_str().unwrap();
    assert_eq!(allow, "POST, GET");
    let a = crate::helpers::answer(
        app.client
            .get(app.url(&format!(
                "{}/337f5e5d-288b-40d5-be14-901cc3acacc0",
                links(MSN, "o-1")
            )))
            .send()
            .await,
    )
    .await;
    a.problem(405);
    assert_eq!(a.headers.get("allow").unwrap(), "DELETE");
    assert_eq!(app.upstream_call_count().await, 0);
}

#[actix_web::test]
async fn the_proxy_forwards_the_four_v3_operations_and_only_the_order_query() {
    let app = spawn_app().await;
    let link = json!({"orderId": "o-p", "paymentType": "ECOM", "type": "DELIVERY",
                      "url": "https://shop.example/track"});
    let added = app.proxy(Method::POST, "/v3/categories", Some(&link)).await;
    assert_eq!(added.status, 201, "{}", added.body);
    let id = added.body["categoryId"].as_str().unwrap().to_owned();
    let list = app
        .proxy(Method::GET, "/v3/categories?orderId=o-p", None)
        .await;
    assert_eq!(list.status, 200, "{}", list.body);
    assert_eq!(list.body["categories"][0]["categoryId"], id.as_str());
    let one = app
        .proxy(Method::GET, &format!("/v3/categories/{id}"), None)
        .await;
    assert_eq!(one.status, 200, "{}", one.body);
    assert_eq!(one.body["type"], "DELIVERY");
    let gone = app
        .proxy(Method::DELETE, &format!("/v3/categories/{id}"), None)
        .await;
    assert_eq!(gone.status, 200, "{}", gone.body);
    let again = app
        .proxy(Method::GET, &format!("/v3/categories/{id}"), None)
        .await;
    assert_eq!(again.status, 404, "{}", again.body);
    // Vipps' own error format, passed back unchanged.
    assert_eq!(again.content_type, "application/json");
    let forwarded = app.sim_requests().await.len();

    for query in [
        "?orderId=o-p&x=1",
        "?x=1",
        "?orderId=..",
        "?orderId=a%2Fb",
        "?orderId=o-p&orderId=o-q",
    ] {
        let a = app
            .proxy(Method::GET, &format!("/v3/categories{query}"), None)
            .await;
        a.problem(400);
        assert_eq!(a.invalid_names(), ["query"], "{query}");
    }
    app.proxy(Method::POST, "/v3/categories?orderId=o-p", Some(&link))
        .await
        .problem(400);
    app.proxy(
        Method::GET,
        &format!("/v3/categories/{id}?orderId=o-p"),
        None,
    )
    .await
    .problem(400);
    app.proxy(Method::GET, "/v3/categories/not-a-uuid", None)
        .await
        .problem(404);
    let a = app
        .proxy(Method::PUT, &format!("/v3/categories/{id}"), None)
        .await;
    a.problem(405);
    assert_eq!(a.headers.get("allow").unwrap(), "GET, DELETE");
    assert_eq!(app.sim_requests().await.len(), forwarded);
}

#[actix_web::test]
async fn v3_calls_have_their_own_metric_labels() {
    let app = spawn_app().await;
    let a = app
        .post_json(
            &links(MSN, "o-m"),
            &json!({"category": "RECEIPT", "url": "https://shop.example/r"}),
        )
        .await;
    let id = a.body["categoryId"].as_str().unwrap().to_owned();
    assert_eq!(
        app.delete(&format!("{}/{id}", links(MSN, "o-m")))
            .await
            .status,
        204
    );
    let metrics = app.get("/metrics").await.raw;
    for needle in [
        "endpoint=\"categories-v3\"",
        "endpoint=\"category-v3\"",
        "operation=\"categories\"",
    ] {
        assert!(metrics.contains(needle), "{needle} missing");
    }
}
