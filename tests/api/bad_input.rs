//! Bad input is refused with a problem+json 4xx before anything is sent to
//! Vipps: no upstream call, not even a token fetch.

use actix_web::web;
use awc::http::Method;
use serde_json::{json, Value};

use crate::helpers::{b64, jpeg, png, spawn_app, spec_receipt, Answer, TestApp, MSN, UNKNOWN_MSN};

fn category_body() -> Value {
    json!({"category": "RECEIPT", "url": "https://shop.example/orders/1"})
}

/// Asserts the problem, that it ends with `slug` and names exactly `names`.
#[track_caller]
fn assert_problem(resp: &Answer, status: u16, slug: &str, names: &[&str]) {
    let p = resp.problem(status);
    let ty = p["type"].as_str().unwrap();
    assert!(ty.ends_with(&format!("/{slug}")), "type {ty}, want /{slug}");
    assert_eq!(resp.invalid_names(), names, "body: {}", resp.body);
}

async fn assert_no_upstream_call(app: &TestApp, what: &str) {
    assert_eq!(
        app.upstream_call_count().await,
        0,
        "{what}: nothing may reach Vipps"
    );
}

/// Calls one façade route with a valid body for it.
async fn call(app: &TestApp, route: &str, msn: &str, order: &str, query: &str) -> Answer {
    match route {
        "receipt" => {
            app.post_json(
                &format!("/v1/merchants/{msn}/orders/{order}/receipt{query}"),
                &spec_receipt(),
            )
            .await
        }
        "category" => {
            app.put_json(
                &format!("/v1/merchants/{msn}/orders/{order}/category{query}"),
                &category_body(),
            )
            .await
        }
        "order" => {
            app.get(&format!("/v1/merchants/{msn}/orders/{order}{query}"))
                .await
        }
        "image" => {
            app.send_raw(
                Method::POST,
                &format!("/v1/merchants/{msn}/images{query}"),
                "image/png",
                png(300),
            )
            .await
        }
        other => unreachable!("no route {other}"),
    }
}

const ROUTES: [&str; 4] = ["receipt", "category", "order", "image"];

#[actix_web::test]
async fn unknown_and_malformed_merchants_are_404_on_every_route() {
    let app = spawn_app().await;
    for msn in [UNKNOWN_MSN, "12ab"] {
        for route in ROUTES {
            let resp = call(&app, route, msn, "o-1", "").await;
            assert_problem(&resp, 404, "merchant-not-found", &[]);
            assert_no_upstream_call(&app, &format!("{route} for MSN {msn}")).await;
        }
    }
}

#[actix_web::test]
async fn bad_order_ids_are_400_naming_the_order_id() {
    let app = spawn_app().await;
    let long = "a".repeat(300);
    // Dot segments, an encoded slash or space, encoded dots, and an id
    // longer than the gateway's 256-character bound: every one reaches the
    // handler (no 404 from the router) and is refused there.
    for order in ["..", "a%2Fb", "a%20b", "%2E%2E", long.as_str()] {
        for route in ["receipt", "category", "order"] {
            let resp = call(&app, route, MSN, order, "").await;
            let label = format!("{route} for order id {order:?}");
            assert!(!resp.status.is_success(), "{label}: {}", resp.body);
            assert_eq!(resp.status, 400, "{label}: {}", resp.body);
            assert_problem(&resp, 400, "invalid-request", &["orderId"]);
            assert_no_upstream_call(&app, &label).await;
        }
    }
}

#[actix_web::test]
async fn an_unknown_payment_type_is_400_naming_it() {
    let app = spawn_app().await;
    for route in ["receipt", "category", "order"] {
        let resp = call(&app, route, MSN, "o-1", "?paymentType=pos").await;
        assert_problem(&resp, 400, "invalid-request", &["paymentType"]);
        assert_no_upstream_call(&app, route).await;
    }
}

#[actix_web::test]
async fn a_repeated_payment_type_or_image_id_is_400_naming_it() {
    let app = spawn_app().await;
    for route in ["receipt", "category", "order"] {
        let resp = call(
            &app,
            route,
            MSN,
            "o-1",
            "?paymentType=ecom&paymentType=recurring",
        )
        .await;
        assert_problem(&resp, 400, "invalid-request", &["paymentType"]);
        assert_no_upstream_call(&app, route).await;
    }
    let resp = app
        .send_raw(
            Method::POST,
            &format!("/v1/merchants/{MSN}/images?imageId=a&imageId=b"),
            "image/png",
            png(300),
        )
        .await;
    assert_problem(&resp, 400, "invalid-request", &["imageId"]);
    assert_no_upstream_call(&app, "repeated imageId").await;
}

#[actix_web::test]
async fn bad_category_requests_are_400_naming_the_field() {
    let app = spawn_app().await;
    let path = format!("/v1/merchants/{MSN}/orders/o-1/category");
    let cases = [
        (
            "unknown category",
            json!({"category": "INVOICE", "url": "https://shop.example/o/1"}),
            "category",
        ),
        (
            "non-http url",
            json!({"category": "RECEIPT", "url": "ftp://shop.example/o/1"}),
            "url",
        ),
        (
            "bracketed host",
            json!({"category": "RECEIPT", "url": "http://["}),
            "url",
        ),
        (
            "user info in the url",
            json!({"category": "RECEIPT", "url": "https://u:p@shop.example/o/1"}),
            "url",
        ),
        (
            "port out of range",
            json!({"category": "RECEIPT", "url": "https://shop.example:65536/o/1"}),
            "url",
        ),
        (
            "relative url",
            json!({"category": "RECEIPT", "url": "/orders/1"}),
            "url",
        ),
        (
            "imageId and image both",
            json!({"category": "RECEIPT", "url": "https://shop.example/o/1",
                   "imageId": "logo", "image": {"data": b64(&png(300))}}),
            "image",
        ),
        (
            "bad imageId",
            json!({"category": "RECEIPT", "url": "https://shop.example/o/1", "imageId": "a b"}),
            "imageId",
        ),
        (
            "unknown field",
            json!({"category": "RECEIPT", "url": "https://shop.example/o/1", "colour": "red"}),
            "colour",
        ),
        ("missing url", json!({"category": "RECEIPT"}), "url"),
    ];
    for (label, body, field) in &cases {
        let resp = app.put_json(&path, body).await;
        assert_eq!(resp.status, 400, "{label}: {}", resp.body);
        assert_problem(&resp, 400, "invalid-request", &[field]);
        assert_no_upstream_call(&app, label).await;
    }
    // An inline image is checked like an uploaded one, before any call.
    let resp = app
        .put_json(
            &path,
            &json!({"category": "RECEIPT", "url": "https://shop.example/o/1",
                    "image": {"data": b64(&png(166))}}),
        )
        .await;
    assert_problem(&resp, 422, "unprocessable", &["image.data"]);
    assert_no_upstream_call(&app, "inline image too small").await;
}

#[actix_web::test]
async fn malformed_receipt_bodies_are_400_naming_the_field() {
    let app = spawn_app().await;
    let path = format!("/v1/merchants/{MSN}/orders/o-1/receipt");
    let raw = [
        (
            "malformed JSON",
            r#"{"currency": "NOK", "lines": ["#.to_owned(),
        ),
        ("trailing garbage", format!("{} x", spec_receipt())),
        ("two documents", format!("{} {{}}", spec_receipt())),
        ("empty body", String::new()),
    ];
    for (label, body) in raw {
        let resp = app
            .send_raw(Method::POST, &path, "application/json", body.into_bytes())
            .await;
        assert_eq!(resp.status, 400, "{label}: {}", resp.body);
        assert_problem(&resp, 400, "invalid-request", &["body"]);
        assert_no_upstream_call(&app, label).await;
    }

    let mut line_colour = spec_receipt();
    line_colour["lines"][0]["colour"] = json!("blue");
    let mut second_line = spec_receipt();
    second_line["lines"][1]["taxRate"] = json!(2500);
    let mut top = spec_receipt();
    top["colour"] = json!("blue");
    let mut wrong_type = spec_receipt();
    wrong_type["lines"] = json!("x");
    let mut missing_name = spec_receipt();
    missing_name["lines"][0]
        .as_object_mut()
        .unwrap()
        .remove("name");
    let mut bad_unit = spec_receipt();
    bad_unit["lines"][0]["unit"] = json!("BARREL");
    let mut bad_currency = spec_receipt();
    bad_currency["currency"] = json!("SEK");
    let mut exponent = spec_receipt();
    exponent["lines"][0]["unitPrice"] = json!("1.99e2");
    let mut barcode = spec_receipt();
    barcode["barcode"]["format"] = json!("QR");
    let mut bool_quantity = spec_receipt();
    bool_quantity["lines"][0]["quantity"] = json!(true);
    let mut comma = spec_receipt();
    comma["lines"][0]["unitPrice"] = json!("199,00");
    let cases = [
        ("unknown field in a line", line_colour, "lines[0].colour"),
        ("unknown barcode format", barcode, "barcode.format"),
        ("boolean quantity", bool_quantity, "lines[0].quantity"),
        ("decimal comma", comma, "lines[0].unitPrice"),
        (
            "unknown field in the second line",
            second_line,
            "lines[1].taxRate",
        ),
        ("unknown top-level field", top, "colour"),
        ("lines not an array", wrong_type, "lines"),
        ("missing line name", missing_name, "lines[0].name"),
        ("unknown unit", bad_unit, "lines[0].unit"),
        ("unsupported currency", bad_currency, "currency"),
        ("exponent notation", exponent, "lines[0].unitPrice"),
    ];
    for (label, body, field) in &cases {
        let resp = app.post_json(&path, body).await;
        assert_eq!(resp.status, 400, "{label}: {}", resp.body);
        assert_problem(&resp, 400, "invalid-request", &[field]);
        assert_no_upstream_call(&app, label).await;
    }
}

#[actix_web::test]
async fn receipts_must_be_json_and_at_most_256_kib() {
    let app = spawn_app().await;
    let path = format!("/v1/merchants/{MSN}/orders/o-1/receipt");
    let resp = app
        .send_raw(
            Method::POST,
            &path,
            "text/plain",
            spec_receipt().to_string().into_bytes(),
        )
        .await;
    assert_problem(&resp, 415, "unsupported-media-type", &[]);
    assert_no_upstream_call(&app, "text/plain").await;

    // Valid JSON, padded past the limit with whitespace.
    let mut big = spec_receipt().to_string().into_bytes();
    big.resize(256 * 1024 + 1, b' ');
    let resp = app
        .send_raw(Method::POST, &path, "application/json", big)
        .await;
    assert_problem(&resp, 413, "payload-too-large", &[]);
    assert_no_upstream_call(&app, "oversize receipt").await;

    // The same without a Content-Length: a chunked body is cut off too.
    let chunk = web::Bytes::from(vec![b' '; 64 * 1024]);
    let chunks = std::iter::once(web::Bytes::from(spec_receipt().to_string()))
        .chain(std::iter::repeat_n(chunk, 5))
        .map(Ok::<_, actix_web::Error>);
    let resp = app
        .client
        .post(app.url(&path))
        .insert_header(("content-type", "application/json"))
        .send_stream(futures_util::stream::iter(chunks))
        .await
        .expect("gateway answers");
    assert_eq!(resp.status(), 413);
    assert_no_upstream_call(&app, "oversize chunked receipt").await;
}

fn gif() -> Vec<u8> {
    let mut v = b"GIF89a".to_vec();
    v.extend_from_slice(&[0x2C, 0x01, 0xC8, 0x00, 0x80, 0x00, 0x00]);
    v
}

#[actix_web::test]
async fn images_are_checked_before_upload() {
    let app = spawn_app().await;
    let path = format!("/v1/merchants/{MSN}/images");
    let raw = |ct: &'static str, bytes: Vec<u8>| {
        let app = &app;
        let path = path.clone();
        async move { app.send_raw(Method::POST, &path, ct, bytes).await }
    };

    // The format is judged from the bytes, whatever the header says.
    let resp = raw("image/png", gif()).await;
    assert_problem(&resp, 415, "unsupported-media-type", &["body"]);
    assert_no_upstream_call(&app, "raw GIF").await;
    let resp = app.post_json(&path, &json!({"data": b64(&gif())})).await;
    assert_problem(&resp, 415, "unsupported-media-type", &["data"]);
    assert_no_upstream_call(&app, "GIF in JSON").await;

    // Too small: under 167 px high.
    let resp = raw("image/png", png(166)).await;
    assert_problem(&resp, 422, "unprocessable", &["body"]);
    let reason = resp.body["invalidParams"][0]["reason"].as_str().unwrap();
    assert!(reason.contains("167"), "{reason}");
    assert!(reason.contains("166"), "{reason}");
    let resp = raw("image/jpeg", jpeg(100)).await;
    assert_problem(&resp, 422, "unprocessable", &["body"]);
    let resp = app
        .post_json(&path, &json!({"data": b64(&jpeg(100))}))
        .await;
    assert_problem(&resp, 422, "unprocessable", &["data"]);
    assert!(resp.body["invalidParams"][0]["reason"]
        .as_str()
        .unwrap()
        .contains("167"));
    assert_no_upstream_call(&app, "too small").await;

    // Not base64.
    let resp = app.post_json(&path, &json!({"data": "not*base64!"})).await;
    assert_problem(&resp, 400, "invalid-request", &["data"]);
    assert_no_upstream_call(&app, "invalid base64").await;

    // Over 2,000,000 bytes of image data.
    let mut big = png(300);
    big.resize(2_000_001, 0);
    let resp = raw("image/png", big).await;
    assert_problem(&resp, 413, "payload-too-large", &["body"]);
    assert_no_upstream_call(&app, "oversize image").await;

    // A caller-named id with a character the upstream does not allow.
    let resp = app
        .send_raw(
            Method::POST,
            &format!("{path}?imageId=a%2Fb"),
            "image/png",
            png(300),
        )
        .await;
    assert_problem(&resp, 400, "invalid-request", &["imageId"]);
    let resp = app
        .post_json(&path, &json!({"data": b64(&png(300)), "imageId": "a b"}))
        .await;
    assert_problem(&resp, 400, "invalid-request", &["imageId"]);
    let resp = app
        .post_json(
            &path,
            &json!({"data": b64(&png(300)), "imageId": "a".repeat(129)}),
        )
        .await;
    assert_problem(&resp, 400, "invalid-request", &["imageId"]);
    let resp = app
        .send_raw(
            Method::POST,
            &format!("{path}?imageId=.."),
            "image/png",
            png(300),
        )
        .await;
    assert_problem(&resp, 400, "invalid-request", &["imageId"]);
    assert_no_upstream_call(&app, "bad image ids").await;

    // Neither an image nor JSON.
    let resp = raw("image/gif", gif()).await;
    assert_problem(&resp, 415, "unsupported-media-type", &[]);
    assert_no_upstream_call(&app, "image/gif").await;
}

#[actix_web::test]
async fn the_size_and_height_limits_are_inclusive() {
    let app = spawn_app().await;
    let path = format!("/v1/merchants/{MSN}/images");
    let mut exact = png(167);
    exact.resize(2_000_000, 0);
    let resp = app.send_raw(Method::POST, &path, "image/png", exact).await;
    assert_eq!(resp.status, 201, "{}", resp.body);
    let resp = app
        .post_json(
            &path,
            &json!({"data": b64(&jpeg(167)), "imageId": "jpeg-167"}),
        )
        .await;
    assert_eq!(resp.status, 201, "{}", resp.body);
    assert_eq!(resp.body["imageId"], "jpeg-167");
    assert_eq!(app.sim_requests_to("image").await.len(), 2);
}
