//! The reverse-proxy surface: `/vipps/order-management/...` forwarded with
//! the gateway's credentials, checked at the simulator.

use std::io::{Read, Write};

use awc::http::Method;
use serde_json::{json, Value};

use crate::helpers::{b64, png, spawn_app, spawn_app_with, Options, TestApp, MSN, UNKNOWN_MSN};

const P: &str = "/vipps/order-management";

/// A Vipps-format receipt whose lines add up.
fn vipps_receipt() -> Value {
    json!({
        "orderLines": [{
            "name": "Socks", "id": "sku-1", "totalAmount": 39800,
            "totalAmountExcludingTax": 31840, "totalTaxAmount": 7960,
            "taxPercentage": 25
        }],
        "bottomLine": {"currency": "NOK"}
    })
}

fn vipps_category() -> Value {
    json!({"category": "RECEIPT", "orderDetailsUrl": "https://shop.example/o/1"})
}

/// An answer read from a raw socket: nothing between the test and the
/// gateway rewrites the request target.
struct RawAnswer {
    status: u16,
    head: String,
    body: Value,
}

impl RawAnswer {
    fn header(&self, name: &str) -> Option<String> {
        self.head.lines().find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_owned())
        })
    }
}

/// Sends `request` (a complete HTTP/1.1 message; it should say
/// `Connection: close`) byte for byte and reads the whole answer.
async fn raw(app: &TestApp, request: Vec<u8>) -> RawAnswer {
    let addr = app.address.trim_start_matches("http://").to_owned();
    let bytes = actix_rt::task::spawn_blocking(move || {
        let mut s = std::net::TcpStream::connect(addr).expect("connect");
        s.set_read_timeout(Some(std::time::Duration::from_secs(20)))
            .expect("timeout");
        s.write_all(&request).expect("write");
        let mut out = Vec::new();
        s.read_to_end(&mut out).expect("read");
        out
    })
    .await
    .expect("join");
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {head:?}"));
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_owned()
    };
    RawAnswer {
        status,
        head: head.to_owned(),
        body: serde_json::from_str(&body).unwrap_or(Value::String(body)),
    }
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.push_str(&rest[..n]);
        s = &rest[n + 2..];
    }
    out
}

/// A GET with the demo merchant's header, for a raw request target.
fn raw_get(target: &str) -> Vec<u8> {
    format!(
        "GET {target} HTTP/1.1\r\nHost: gateway\r\nMerchant-Serial-Number: {MSN}\r\nConnection: close\r\n\r\n"
    )
    .into_bytes()
}

#[actix_rt::test]
async fn every_allow_listed_pair_is_forwarded_to_the_same_vipps_path() {
    let app = spawn_app().await;
    let image = json!({"imageId": "logo-1", "src": b64(&png(300)), "type": "base64"});
    // (method, path below the prefix, body, status Vipps answers, simulator endpoint)
    let calls: [(Method, &str, Option<Value>, u16, &str); 8] = [
        (Method::POST, "/v1/images", Some(image), 200, "image"),
        (
            Method::PUT,
            "/v2/ecom/categories/o-1",
            Some(vipps_category()),
            200,
            "category",
        ),
        (
            Method::POST,
            "/v2/recurring/receipts/o-1",
            Some(vipps_receipt()),
            201,
            "receipt",
        ),
        (Method::GET, "/v2/ecom/o-1", None, 200, "order"),
        (
            Method::PUT,
            "/v1/orders/4711",
            Some(vipps_category()),
            200,
            "v1-order-put",
        ),
        (Method::GET, "/v1/orders/4711", None, 200, "v1-order-get"),
        (
            Method::POST,
            "/v1/receipts/4711",
            Some(vipps_receipt()),
            200,
            "v1-receipt-post",
        ),
        (
            Method::GET,
            "/v1/receipts/4711",
            None,
            200,
            "v1-receipt-get",
        ),
    ];
    for (i, (method, path, body, status, endpoint)) in calls.iter().enumerate() {
        let a = app.proxy(method.clone(), path, body.as_ref()).await;
        assert_eq!(a.status.as_u16(), *status, "{method} {path}: {}", a.body);
        let log = app.sim_requests().await;
        assert_eq!(log.len(), i + 2, "one token call, then one call each");
        let seen = log.last().unwrap();
        assert_eq!(seen["endpoint"], *endpoint);
        assert_eq!(seen["method"], method.as_str());
        assert_eq!(seen["path"], format!("/order-management{path}"));
        assert_eq!(seen["body"], body.clone().unwrap_or(Value::Null));
    }

    // Bodies come back as Vipps sent them.
    let order = app.proxy(Method::GET, "/v2/ecom/o-1", None).await;
    assert_eq!(order.content_type, "application/json");
    assert_eq!(
        order.body,
        json!({"category": {"category": "RECEIPT",
                            "orderDetailsUrl": "https://shop.example/o/1", "imageId": null}})
    );
    let v1 = app.proxy(Method::GET, "/v1/receipts/4711", None).await;
    assert_eq!(v1.body, vipps_receipt());
    let state = app.sim_state().await;
    assert_eq!(state["orders"].as_array().unwrap().len(), 3);
}

#[actix_rt::test]
async fn the_v2_payment_type_is_forwarded_in_either_documented_case() {
    let app = spawn_app().await;
    // 2.1's document spells it ECOM/RECURRING, 2.0's ecom/recurring; the
    // path reaches Vipps exactly as the caller wrote it.
    let calls = [
        (
            Method::PUT,
            "/v2/ECOM/categories/o-u",
            Some(vipps_category()),
            200,
        ),
        (
            Method::POST,
            "/v2/RECURRING/receipts/o-u",
            Some(vipps_receipt()),
            201,
        ),
        (Method::GET, "/v2/ECOM/o-u", None, 200),
        (Method::GET, "/v2/RECURRING/o-u", None, 200),
        (Method::GET, "/v2/ecom/o-u", None, 200),
    ];
    for (method, path, body, status) in calls {
        let a = app.proxy(method.clone(), path, body.as_ref()).await;
        assert_eq!(a.status.as_u16(), status, "{method} {path}: {}", a.body);
        let log = app.sim_requests().await;
        let seen = log.last().unwrap();
        assert_eq!(seen["path"], format!("/order-management{path}"));
    }
    // The simulator takes both spellings for one order.
    let order = app.proxy(Method::GET, "/v2/ecom/o-u", None).await;
    assert_eq!(order.body["category"]["category"], "RECEIPT");
    let order = app.proxy(Method::GET, "/v2/recurring/o-u", None).await;
    assert_eq!(order.body["receipt"], vipps_receipt());

    // Any other spelling is no route, and never reaches Vipps.
    let forwarded = app.sim_requests().await.len();
    for path in [
        "/v2/Ecom/o-u",
        "/v2/eCOM/categories/o-u",
        "/v2/Recurring/o-u",
    ] {
        let method = if path.contains("categories") {
            Method::PUT
        } else {
            Method::GET
        };
        let a = app.proxy(method, path, None).await;
        a.problem(404);
    }
    assert_eq!(app.sim_requests().await.len(), forwarded);
}

#[actix_rt::test]
async fn a_refused_query_says_what_the_operation_takes() {
    let app = spawn_app().await;
    // The list of an order's links takes one query, and says which.
    for query in ["?orderId=o-p&x=1", "?x=1", "?orderId=a%2Fb", "?orderId="] {
        let a = app
            .proxy(Method::GET, &format!("/v3/categories{query}"), None)
            .await;
        a.problem(400);
        assert_eq!(a.invalid_names(), ["query"], "{query}");
        let reason = a.body["invalidParams"][0]["reason"].as_str().unwrap();
        assert!(
            reason.contains("exactly one query parameter, once: orderId=<order id>"),
            "{query}: {reason}"
        );
        assert!(!reason.contains("no query"), "{query}: {reason}");
    }
    // Every other operation takes none.
    for (method, path) in [
        (Method::GET, "/v2/ecom/o-1?orderId=o-1"),
        (Method::POST, "/v3/categories?orderId=o-1"),
    ] {
        let a = app.proxy(method.clone(), path, None).await;
        a.problem(400);
        let reason = a.body["invalidParams"][0]["reason"].as_str().unwrap();
        assert!(
            reason.starts_with("this operation takes no query parameters"),
            "{method} {path}: {reason}"
        );
    }
    assert_eq!(app.upstream_call_count().await, 0);
}

#[actix_rt::test]
async fn caller_credentials_and_hop_by_hop_headers_are_replaced() {
    let app = spawn_app().await;
    let body = serde_json::to_string(&vipps_receipt()).unwrap();
    // Sent raw so every header reaches the gateway exactly as written.
    let request = format!(
        "POST {P}/v2/ecom/receipts/o-h HTTP/1.1\r\n\
         Host: gateway\r\n\
         Merchant-Serial-Number: {MSN}\r\n\
         Authorization: Bearer caller-token\r\n\
         Ocp-Apim-Subscription-Key: caller-key\r\n\
         client_id: caller-client\r\n\
         client_secret: caller-secret\r\n\
         Vipps-System-Name: caller-system\r\n\
         Keep-Alive: timeout=5\r\n\
         Proxy-Authorization: Basic caller-proxy\r\n\
         Proxy-Connection: keep-alive\r\n\
         TE: trailers\r\n\
         Trailer: X-Caller-Trailer\r\n\
         Upgrade: caller-protocol\r\n\
         X-Caller-Hop: caller-hop\r\n\
         Accept-Language: nb\r\n\
         Cookie: session=caller-cookie\r\n\
         X-Request-Id: trace-req-1\r\n\
         Connection: close, X-Caller-Hop, Accept-Language\r\n\
         Content-Type: application/json\r\n\
         Accept: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let a = raw(&app, request.into_bytes()).await;
    assert_eq!(a.status, 201, "{}", a.body);
    assert_eq!(a.header("x-request-id").as_deref(), Some("trace-req-1"));

    let seen = app.sim_requests_to("receipt").await;
    assert_eq!(seen.len(), 1);
    let h = seen[0]["headers"].as_object().unwrap();
    assert!(
        h["authorization"]
            .as_str()
            .unwrap()
            .starts_with("Bearer sim."),
        "{h:?}"
    );
    assert_eq!(h["ocp-apim-subscription-key"], "demo-subscription-key");
    assert_eq!(h["merchant-serial-number"], MSN);
    assert_eq!(h["vipps-system-name"], "vipps-order-gateway");
    assert_eq!(h["x-request-id"], "trace-req-1");
    assert_eq!(h["content-type"], "application/json");
    assert_eq!(h["accept"], "application/json");
    for gone in [
        "client_id",
        "client_secret",
        "keep-alive",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "upgrade",
        "x-caller-hop",
        "accept-language",
        "cookie",
    ] {
        assert!(!h.contains_key(gone), "{gone} reached Vipps: {h:?}");
    }
    for (name, value) in h {
        assert!(
            !value.as_str().unwrap_or("").contains("caller-"),
            "{name}: {value} came from the caller"
        );
    }
    assert_eq!(seen[0]["body"], vipps_receipt());
}

#[actix_rt::test]
async fn a_chunked_body_arrives_whole_without_the_callers_framing() {
    let app = spawn_app().await;
    let body = serde_json::to_string(&vipps_category()).unwrap();
    let (first, second) = body.split_at(10);
    let request = format!(
        "PUT {P}/v2/ecom/categories/o-c HTTP/1.1\r\nHost: gateway\r\n\
         Merchant-Serial-Number: {MSN}\r\nContent-Type: application/json\r\n\
         Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n\
         {:x}\r\n{first}\r\n{:x}\r\n{second}\r\n0\r\n\r\n",
        first.len(),
        second.len()
    );
    let a = raw(&app, request.into_bytes()).await;
    assert_eq!(a.status, 200, "{}", a.body);
    let seen = app.sim_requests_to("category").await;
    assert_eq!(seen[0]["body"], vipps_category());
    let h = seen[0]["headers"].as_object().unwrap();
    assert!(!h.contains_key("transfer-encoding"), "{h:?}");
    assert_eq!(h["content-length"], body.len().to_string());
}

#[actix_rt::test]
async fn traversal_and_encoding_tricks_never_reach_vipps() {
    let app = spawn_app().await;
    let targets = [
        "/vipps/order-management/v2/ecom/%2e%2e",
        "/vipps/order-management/v2/ecom/%2E%2E/categories/o-1",
        "/vipps/order-management/v2/ecom/..",
        "/vipps/order-management/v2/ecom/.",
        "/vipps/order-management/v2/ecom/o-1/..",
        "/vipps/order-management/v2/ecom/..%2F..%2Faccesstoken%2Fget",
        "/vipps/order-management/v2/ecom/a%2Fb",
        "/vipps/order-management/v2/ecom/%6F-1",
        "/vipps/order-management/v2/ecom//o-1",
        "/vipps/order-management//v2/ecom/o-1",
        "/vipps/order-management/v2/./ecom/o-1",
        "/vipps/order-management/./v2/ecom/o-1",
        "/vipps/order-management/../order-management/v2/ecom/o-1",
        "/vipps/order-management/v2/ecom/a\\b",
        "/vipps/order-management/v2/ecom\\o-1",
        "/vipps/order-management/v2/ecom/o-1/",
        "/vipps/order-management/v2/Ecom/o-1",
        "/vipps/order-management/v2/ecom/o-1;x=1",
        "/vipps/order-management/v2/ecom/@evil.example",
        "/vipps/order-management/v2/ecom/http:%2F%2Fevil.example",
        "/vipps/order-management/v1/orders/..%2F..%2Faccesstoken%2Fget",
        "/vipps/order-management/v1/images/..",
        "/vipps/order-management/accesstoken/get",
        "/vipps/order-management",
        "/vipps/order-management/",
        "/vipps/order-management%2Fv2/ecom/o-1",
        "http://evil.example/vipps/order-management/v2/ecom/o-1",
        "http://127.0.0.1/vipps/order-management/v2/ecom/o-1",
    ];
    for target in targets {
        let a = raw(&app, raw_get(target)).await;
        assert_eq!(a.status, 404, "{target}: {}", a.body);
        assert_eq!(
            a.header("content-type").as_deref(),
            Some("application/problem+json"),
            "{target}"
        );
    }
    // A query would ride along to Vipps; the operations take none.
    for target in [
        "/vipps/order-management/v2/ecom/o-1?x=1",
        "/vipps/order-management/v2/ecom/o-1?/../../accesstoken/get",
        "/vipps/order-management/v2/ecom/o-1?",
    ] {
        let a = raw(&app, raw_get(target)).await;
        assert_eq!(a.status, 400, "{target}: {}", a.body);
        assert_eq!(a.body["invalidParams"][0]["name"], "query", "{target}");
    }
    assert_eq!(
        app.upstream_call_count().await,
        0,
        "something reached Vipps"
    );

    // The same request without a trick is forwarded (the order is unknown).
    let a = raw(&app, raw_get("/vipps/order-management/v2/ecom/o-1")).await;
    assert_eq!(a.status, 404);
    assert_eq!(
        a.header("content-type").as_deref(),
        Some("application/json")
    );
    assert_eq!(app.sim_requests_to("order").await.len(), 1);
}

#[actix_rt::test]
async fn other_methods_on_an_allowed_path_are_405_and_never_forwarded() {
    let app = spawn_app().await;
    for (method, path, allow) in [
        (Method::DELETE, "/v2/ecom/o-1", "GET"),
        (Method::POST, "/v2/ecom/o-1", "GET"),
        (Method::GET, "/v2/ecom/categories/o-1", "PUT"),
        (Method::PUT, "/v2/ecom/receipts/o-1", "POST"),
        (Method::GET, "/v1/images", "POST"),
        (Method::DELETE, "/v1/orders/1", "PUT, GET"),
        (Method::PATCH, "/v1/receipts/1", "GET, POST"),
    ] {
        let a = app.proxy(method.clone(), path, None).await;
        assert_eq!(a.status.as_u16(), 405, "{method} {path}");
        assert_eq!(a.headers.get("allow").unwrap(), allow);
    }
    assert_eq!(app.upstream_call_count().await, 0);
}

#[actix_rt::test]
async fn the_merchant_header_is_checked_like_the_facades_msn() {
    let app = spawn_app().await;
    let url = app.url(&format!("{P}/v2/ecom/o-1"));
    let missing = crate::helpers::answer(app.client.get(&url).send().await).await;
    missing.problem(400);
    assert_eq!(missing.invalid_names(), ["Merchant-Serial-Number"]);
    for msn in [UNKNOWN_MSN, "12ab", ""] {
        let a = crate::helpers::answer(
            app.client
                .get(&url)
                .insert_header(("Merchant-Serial-Number", msn))
                .send()
                .await,
        )
        .await;
        let p = a.problem(404);
        assert!(p["type"].as_str().unwrap().ends_with("/merchant-not-found"));
    }
    assert_eq!(app.upstream_call_count().await, 0);
}

#[actix_rt::test]
async fn bodies_over_the_proxy_limit_are_413_before_any_vipps_call() {
    let app = spawn_app_with(Options {
        extra_toml: "[proxy]\nbody_limit = 1000\n".into(),
        ..Options::default()
    })
    .await;
    let url = app.url(&format!("{P}/v2/ecom/receipts/o-big"));
    let a = crate::helpers::answer(
        app.client
            .post(&url)
            .insert_header(("Merchant-Serial-Number", MSN))
            .insert_header(("content-type", "application/json"))
            .send_body(vec![b' '; 1001])
            .await,
    )
    .await;
    a.problem(413);
    // Chunked, so the limit is found while reading, not from Content-Length.
    let chunks = futures_util::stream::iter(
        (0..11).map(|_| Ok::<_, std::io::Error>(actix_web::web::Bytes::from(vec![b' '; 100]))),
    );
    let resp = app
        .client
        .post(&url)
        .insert_header(("Merchant-Serial-Number", MSN))
        .insert_header(("content-type", "application/json"))
        .send_stream(chunks)
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 413);
    assert_eq!(app.upstream_call_count().await, 0);

    // At the limit the body is forwarded (and Vipps judges it).
    let mut body = serde_json::to_vec(&vipps_receipt()).unwrap();
    body.resize(1000, b' ');
    let at_limit = app
        .client
        .post(&url)
        .insert_header(("Merchant-Serial-Number", MSN))
        .insert_header(("content-type", "application/json"))
        .send_body(body)
        .await
        .unwrap();
    assert_eq!(at_limit.status().as_u16(), 201);
    assert_eq!(app.sim_requests_to("receipt").await.len(), 1);
}

#[actix_rt::test]
async fn a_401_from_vipps_refetches_the_token_and_resends_the_body() {
    let app = spawn_app().await;
    let a = app.proxy(Method::GET, "/v2/ecom/o-1", None).await;
    assert_eq!(a.status.as_u16(), 404);
    app.expire_tokens().await;
    let a = app
        .proxy(
            Method::POST,
            "/v2/ecom/receipts/o-401",
            Some(&vipps_receipt()),
        )
        .await;
    assert_eq!(a.status.as_u16(), 201, "{}", a.body);
    assert_eq!(app.token_fetches(MSN).await, 2);
    let sent = app.sim_requests_to("receipt").await;
    assert_eq!(sent.len(), 2);
    assert_eq!(sent[0]["status"], 401);
    assert_eq!(sent[1]["status"], 201);
    assert_eq!(sent[1]["body"], vipps_receipt());
}

#[actix_rt::test]
async fn vipps_answers_come_back_unchanged() {
    let app = spawn_app().await;
    let first = app
        .proxy(
            Method::POST,
            "/v2/ecom/receipts/o-u",
            Some(&vipps_receipt()),
        )
        .await;
    assert_eq!(first.status.as_u16(), 201);
    // A second receipt is Vipps' 409, not the façade's read-back.
    let again = app
        .proxy(
            Method::POST,
            "/v2/ecom/receipts/o-u",
            Some(&vipps_receipt()),
        )
        .await;
    assert_eq!(again.status.as_u16(), 409);
    assert_eq!(again.content_type, "application/json");
    assert_eq!(again.body["title"], "Conflict");
    // A 400 keeps Vipps' own invalidParams names.
    let mut bad = vipps_receipt();
    bad["orderLines"][0]["totalTaxAmount"] = json!(1);
    let rejected = app
        .proxy(Method::POST, "/v2/ecom/receipts/o-v", Some(&bad))
        .await;
    assert_eq!(rejected.status.as_u16(), 400);
    assert_eq!(
        rejected.invalid_names(),
        ["orderLines[0].totalTaxAmount"],
        "{}",
        rejected.body
    );
    // Status, Retry-After and body of a fault pass through.
    app.add_fault(
        json!({"endpoint": "order", "status": 503, "retryAfter": "7",
                         "body": {"detail": "busy"}, "times": 1}),
    )
    .await;
    let busy = app.proxy(Method::GET, "/v2/ecom/o-u", None).await;
    assert_eq!(busy.status.as_u16(), 503);
    assert_eq!(busy.retry_after.as_deref(), Some("7"));
    assert_eq!(busy.body, json!({"detail": "busy"}));
    assert!(busy.request_id.is_some());
}

#[actix_rt::test]
async fn refused_gateway_credentials_are_502_not_the_callers_401() {
    let app = spawn_app().await;
    app.add_fault(json!({"endpoint": "order", "status": 401}))
        .await;
    let a = app.proxy(Method::GET, "/v2/ecom/o-1", None).await;
    let p = a.problem(502);
    assert!(p["type"].as_str().unwrap().ends_with("/upstream-auth"));
    assert_eq!(app.sim_requests_to("order").await.len(), 2);

    // A 403 refusing the gateway's subscription key is the operator's to fix too.
    app.clear_faults().await;
    app.add_fault(json!({"endpoint": "order", "status": 403, "times": 1}))
        .await;
    let a = app.proxy(Method::GET, "/v2/ecom/o-2", None).await;
    let p = a.problem(502);
    assert!(p["type"].as_str().unwrap().ends_with("/upstream-auth"));

    app.add_fault(json!({"endpoint": "token", "status": 500}))
        .await;
    app.expire_tokens().await;
    let a = app.proxy(Method::GET, "/v1/orders/1", None).await;
    let p = a.problem(503);
    assert!(p["type"].as_str().unwrap().ends_with("/token-unavailable"));
}

#[actix_rt::test]
async fn proxied_calls_take_from_the_merchants_rate_and_a_refused_one_never_reaches_vipps() {
    let app = spawn_app_with(Options {
        extra_toml: "[resilience]\nrate_per_second = 1\nrate_burst = 3\n".into(),
        ..Options::default()
    })
    .await;
    // Ten at once against a bucket of three refilled once a second: only
    // as many go through as the bucket held, give or take one a second.
    let started = std::time::Instant::now();
    let calls = (0..10).map(|i| {
        let app = &app;
        async move {
            app.proxy(Method::GET, &format!("/v2/ecom/rate-{i}"), None)
                .await
        }
    });
    let answers = futures_util::future::join_all(calls).await;
    let seconds = started.elapsed().as_secs();
    let limited: Vec<_> = answers.iter().filter(|a| a.status == 429).collect();
    let passed = answers.iter().filter(|a| a.status == 404).count();
    assert_eq!(limited.len() + passed, 10, "404 from Vipps or 429");
    assert!(passed >= 3, "the burst goes through");
    assert!(
        u64::try_from(passed).unwrap() <= 3 + seconds + 1,
        "{passed} passed in {seconds} s"
    );
    let p = limited[0].problem(429);
    assert_eq!(p["type"], "/problems/rate-limited", "{p}");
    assert!(limited[0].retry_after.is_some());
    // A refused call never reached Vipps.
    assert_eq!(app.sim_calls("order").await, u64::try_from(passed).unwrap());
}
