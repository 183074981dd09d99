//! Hostile input: oversize, deeply nested or malformed bodies, values that
//! could smuggle a header or a path segment. Each is a problem+json 4xx, the
//! gateway stays up, and nothing reaches Vipps.

use std::io::{Read, Write};

use awc::http::Method;
use serde_json::json;

use crate::helpers::{b64, png, spawn_app, spec_receipt, Answer, TestApp, MSN};

async fn assert_refused(app: &TestApp, a: &Answer, status: u16, names: &[&str], label: &str) {
    assert_eq!(a.status, status, "{label}: {}", a.body);
    a.problem(status);
    if !names.is_empty() {
        assert_eq!(a.invalid_names(), names, "{label}: {}", a.body);
    }
    assert_eq!(
        app.upstream_call_count().await,
        0,
        "{label}: nothing reaches Vipps"
    );
}

fn receipt_path() -> String {
    format!("/v1/merchants/{MSN}/orders/o-1/receipt")
}
fn category_path() -> String {
    format!("/v1/merchants/{MSN}/orders/o-1/category")
}
fn images_path() -> String {
    format!("/v1/merchants/{MSN}/images")
}

#[actix_web::test]
async fn every_route_has_its_own_body_limit() {
    let app = spawn_app().await;
    let image_limit = 2_000_000usize.div_ceil(3) * 4 + 64 * 1024;
    // A category may carry an inline image: the image limit, not the JSON one.
    let mut category = json!({"category": "RECEIPT", "url": "https://shop.example/o/1",
                              "image": {"data": b64(&png(300))}})
    .to_string()
    .into_bytes();
    category.resize(300 * 1024, b' ');
    let a = app
        .send_raw(
            Method::PUT,
            &category_path(),
            "application/json",
            category.clone(),
        )
        .await;
    assert_eq!(
        a.status, 200,
        "a category over the JSON limit but under the image limit"
    );
    category.resize(image_limit + 1, b' ');
    let a = app
        .send_raw(Method::PUT, &category_path(), "application/json", category)
        .await;
    let calls = app.upstream_call_count().await;
    assert_eq!(a.status, 413, "{}", a.body);
    a.problem(413);
    // JSON image uploads and raw ones share the image limit.
    let mut image = json!({"data": b64(&png(300))}).to_string().into_bytes();
    image.resize(image_limit + 1, b' ');
    let a = app
        .send_raw(Method::POST, &images_path(), "application/json", image)
        .await;
    a.problem(413);
    let mut raw = png(300);
    raw.resize(image_limit + 1, 0);
    let a = app
        .send_raw(Method::POST, &images_path(), "image/png", raw)
        .await;
    a.problem(413);
    // A receipt has the JSON limit (256 KiB).
    let mut receipt = spec_receipt().to_string().into_bytes();
    receipt.resize(300 * 1024, b' ');
    let a = app
        .send_raw(Method::POST, &receipt_path(), "application/json", receipt)
        .await;
    a.problem(413);
    assert_eq!(
        app.upstream_call_count().await,
        calls,
        "no call for oversize bodies"
    );
}

#[actix_web::test]
async fn deeply_nested_json_and_huge_arrays_are_400_and_the_gateway_stays_up() {
    let app = spawn_app().await;
    let deep =
        |depth: usize, inner: &str| format!("{}{inner}{}", "[".repeat(depth), "]".repeat(depth));
    let cases = [
        (
            "nested arrays where an amount belongs",
            receipt_path(),
            format!(
                r#"{{"currency":"NOK","lines":[],"tip":{}}}"#,
                deep(100_000, "")
            ),
            // Refused at the first bracket: an amount is never a list.
            "tip",
        ),
        (
            "nested objects",
            receipt_path(),
            format!(
                r#"{{"currency":"NOK","lines":[],"tip":{}1{}}}"#,
                "{\"a\":".repeat(30_000),
                "}".repeat(30_000)
            ),
            "tip",
        ),
        (
            "nested amount",
            receipt_path(),
            format!(
                r#"{{"currency":"NOK","lines":[{{"id":"a","name":"b","taxPercent":"25","unitPrice":{}}}]}}"#,
                deep(200, "1")
            ),
            "lines[0].unitPrice",
        ),
        (
            "nested url",
            category_path(),
            format!(r#"{{"category":"RECEIPT","url":{}}}"#, deep(10_000, "")),
            "url",
        ),
        (
            "nested image data",
            images_path(),
            format!(r#"{{"data":{}}}"#, deep(10_000, "")),
            "data",
        ),
        (
            "a huge array of numbers as lines",
            receipt_path(),
            format!(
                r#"{{"currency":"NOK","lines":[{}0]}}"#,
                "0,".repeat(100_000)
            ),
            "lines[0]",
        ),
    ];
    for (label, path, body, name) in cases {
        let method = if path.ends_with("category") {
            Method::PUT
        } else {
            Method::POST
        };
        let a = app
            .send_raw(method, &path, "application/json", body.into_bytes())
            .await;
        assert_refused(&app, &a, 400, &[name], label).await;
    }
    assert_eq!(app.get("/healthz").await.status, 200, "still serving");
}

#[actix_web::test]
async fn invalid_utf8_is_400_in_bodies_paths_and_queries() {
    let app = spawn_app().await;
    let mut receipt = br#"{"currency":"NOK","lines":[{"id":"a","name":"So"#.to_vec();
    receipt.extend_from_slice(&[0xFF, 0xFE]);
    receipt.extend_from_slice(br#"cks","totalAmount":"1","taxPercent":"25"}]}"#);
    let mut category = br#"{"category":"RECEIPT","url":"https://shop.example/"#.to_vec();
    category.extend_from_slice(&[0xC3, 0x28]);
    category.extend_from_slice(br#""}"#);
    let mut image = br#"{"data":""#.to_vec();
    image.extend_from_slice(&[0x80]);
    image.extend_from_slice(br#""}"#);
    for (label, method, path, body) in [
        ("receipt", Method::POST, receipt_path(), receipt),
        ("category", Method::PUT, category_path(), category),
        ("image", Method::POST, images_path(), image),
    ] {
        let a = app.send_raw(method, &path, "application/json", body).await;
        assert_refused(&app, &a, 400, &["body"], label).await;
    }
    // Percent-encoded bytes that are not UTF-8, in the path and the query.
    let a = app.get(&format!("/v1/merchants/{MSN}/orders/a%FFb")).await;
    assert_refused(&app, &a, 400, &[], "orderId").await;
    let a = app
        .get(&format!("/v1/merchants/{MSN}/orders/o-1?paymentType=%FF"))
        .await;
    assert_refused(&app, &a, 400, &[], "paymentType").await;
    let a = app
        .send_raw(
            Method::POST,
            &format!("{}?imageId=%C3%28", images_path()),
            "image/png",
            png(300),
        )
        .await;
    assert_refused(&app, &a, 400, &[], "imageId").await;
}

#[actix_web::test]
async fn ids_outside_their_patterns_are_400_naming_them() {
    let app = spawn_app().await;
    let orders = [
        "%2e%2e", ".%2E", "%2E", "a%2Fb", "a%5Cb", "a%00b", "a%0D%0Ab", "a%09b", "%C3%B8", "a%3Bb",
        "a%3Fb", "a%23b", "a%25b", "a+b",
    ];
    for id in orders {
        let a = app.get(&format!("/v1/merchants/{MSN}/orders/{id}")).await;
        assert_refused(&app, &a, 400, &["orderId"], id).await;
    }
    for id in [
        "..",
        ".",
        "a%2Fb",
        "a%0D%0Ab",
        "%2E%2E%2F",
        "a%00",
        "%C3%B8",
    ] {
        let a = app
            .send_raw(
                Method::POST,
                &format!("{}?imageId={id}", images_path()),
                "image/png",
                png(300),
            )
            .await;
        assert_refused(&app, &a, 400, &["imageId"], id).await;
    }
    for id in ["..", "../etc", "a\r\nb", "a\u{0}b", "ø"] {
        let a = app
            .post_json(
                &images_path(),
                &json!({"data": b64(&png(300)), "imageId": id}),
            )
            .await;
        assert_refused(&app, &a, 400, &["imageId"], id).await;
        let a = app
            .put_json(
                &category_path(),
                &json!({"category": "RECEIPT", "url": "https://shop.example/", "imageId": id}),
            )
            .await;
        assert_refused(&app, &a, 400, &["imageId"], id).await;
    }
}

#[actix_web::test]
async fn unknown_fields_in_image_bodies_are_named() {
    let app = spawn_app().await;
    let a = app
        .post_json(
            &images_path(),
            &json!({"data": b64(&png(300)), "type": "base64"}),
        )
        .await;
    assert_refused(&app, &a, 400, &["type"], "image").await;
    let a = app
        .put_json(
            &category_path(),
            &json!({"category": "RECEIPT", "url": "https://shop.example/",
                    "image": {"data": b64(&png(300)), "src": "x"}}),
        )
        .await;
    assert_refused(&app, &a, 400, &["image.src"], "inline image").await;
}

#[actix_web::test]
async fn control_characters_never_reach_a_header_or_a_log_line() {
    let app = spawn_app().await;
    // Values HTTP lets through but that are unfit for a header or a log
    // line are replaced with a fresh id, never echoed.
    for id in [
        "a\tb",
        "a b",
        "%0D%0ASet-Cookie:%20x=1",
        "<script>",
        "\"quoted\"",
        &"x".repeat(129),
    ] {
        let a = crate::helpers::answer(
            app.client
                .get(app.url("/healthz"))
                .insert_header(("x-request-id", id))
                .send()
                .await,
        )
        .await;
        let echoed = a.request_id.clone().unwrap_or_default();
        assert_ne!(echoed, id);
        assert!(
            uuid::Uuid::parse_str(&echoed).is_ok(),
            "{id:?} → {echoed:?}"
        );
    }
    let obs_text = awc::http::header::HeaderValue::from_bytes(b"a\xffb").unwrap();
    let a = crate::helpers::answer(
        app.client
            .get(app.url("/healthz"))
            .insert_header(("x-request-id", obs_text))
            .send()
            .await,
    )
    .await;
    assert!(uuid::Uuid::parse_str(a.request_id.as_deref().unwrap_or("")).is_ok());

    // Raw CR, LF or NUL inside a header value: the HTTP layer refuses the
    // request with a 4xx before any handler (and no upstream call).
    let addr = app.address.trim_start_matches("http://").to_owned();
    for value in [&b"a\rb"[..], b"a\x00b", b"a\x7fb"] {
        let mut s = std::net::TcpStream::connect(&addr).unwrap();
        s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        let mut req = format!(
            "POST {} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nX-Request-Id: ",
            receipt_path()
        )
        .into_bytes();
        req.extend_from_slice(value);
        let body = spec_receipt().to_string();
        req.extend_from_slice(
            format!(
                "\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        );
        s.write_all(&req).unwrap();
        let mut resp = Vec::new();
        let _ = s.read_to_end(&mut resp);
        let head = String::from_utf8_lossy(&resp);
        let status: u16 = head
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        assert!((400..500).contains(&status), "{value:?}: {head}");
    }
    assert_eq!(app.upstream_call_count().await, 0);

    // Text fields that end up in the receipt refuse control characters.
    let mut receipt = spec_receipt();
    receipt["lines"][0]["name"] = json!("Socks\r\nX-Evil: 1");
    receipt["posId"] = json!("pos\u{7}");
    let a = app.post_json(&receipt_path(), &receipt).await;
    assert_refused(
        &app,
        &a,
        422,
        &["lines[0].name", "posId"],
        "control characters",
    )
    .await;
}

#[actix_web::test]
async fn line_arithmetic_that_would_overflow_is_422() {
    let app = spawn_app().await;
    let line = |q: &str, p: &str| json!({"id": "a", "name": "b", "quantity": q, "unitPrice": p, "taxPercent": "25"});
    for (label, l, name) in [
        (
            "largest quantity × largest price",
            line("9999999999", "999999999999.999999"),
            "lines[0].unitPrice",
        ),
        (
            "quantity × price past i64 minor units",
            line("99999.9999", "999999999999"),
            "lines[0].unitPrice",
        ),
        (
            "amount past the maximum",
            json!({"id": "a", "name": "b", "totalAmount": "1000000000000.01", "taxPercent": "25"}),
            "lines[0].totalAmount",
        ),
        (
            "29 significant digits",
            line("1", "1234567890123.123456789012345"),
            "lines[0].unitPrice",
        ),
        (
            "discount past the maximum",
            json!({"id": "a", "name": "b", "unitPrice": "1", "discount": "99999999999999999999", "taxPercent": "25"}),
            "lines[0].discount",
        ),
    ] {
        let a = app
            .post_json(&receipt_path(), &json!({"currency": "NOK", "lines": [l]}))
            .await;
        assert!(a.status == 422 || a.status == 400, "{label}: {}", a.body);
        assert_refused(&app, &a, a.status.as_u16(), &[name], label).await;
    }
    // The largest accepted lines still add up without overflow.
    let max = json!({"id": "a", "name": "b", "totalAmount": "1000000000000", "taxPercent": "25"});
    let lines = vec![max; 1000];
    let a = app
        .post_json(
            &receipt_path(),
            &json!({"currency": "NOK", "lines": lines, "tip": "1000000000000",
                    "expectedTotal": "1"}),
        )
        .await;
    assert_refused(
        &app,
        &a,
        422,
        &["expectedTotal"],
        "sum of the largest lines",
    )
    .await;
}
