//! The four façade operations against the simulator, for both payment
//! types, with the upstream request checked field by field.

use awc::http::Method;
use serde_json::{json, Value};
use vipps_order_gateway::simulator::{DEMO_CLIENT_ID, DEMO_CLIENT_SECRET, DEMO_SUBSCRIPTION_KEY};

use crate::helpers::{b64, jpeg, png, spawn_app, spec_receipt, MSN, MSN2};

const PAYMENT_TYPES: [(&str, &str); 3] = [
    ("", "ecom"),
    ("?paymentType=RECURRING", "recurring"),
    ("?paymentType=Ecom", "ecom"),
];

/// The headers SPEC §2 requires on every Order Management call.
fn assert_upstream_headers(req: &Value, msn: &str, key: &str) {
    let h = &req["headers"];
    let auth = h["authorization"].as_str().unwrap_or_default();
    assert!(
        auth.starts_with("Bearer ") && auth.len() > 10,
        "authorization: {auth}"
    );
    assert_eq!(h["ocp-apim-subscription-key"], key);
    assert_eq!(h["merchant-serial-number"], msn);
    assert_eq!(h["vipps-system-name"], "vipps-order-gateway");
    assert_eq!(h["vipps-system-version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(h["vipps-system-plugin-name"], "vipps-order-gateway");
    assert_eq!(h["vipps-system-plugin-version"], env!("CARGO_PKG_VERSION"));
    // The caller's view never includes the merchant's client secret.
    assert!(h.get("client_secret").is_none());
}

#[actix_web::test]
async fn receipt_is_translated_and_sent_for_each_payment_type() {
    let app = spawn_app().await;
    for (i, (query, pt)) in PAYMENT_TYPES.iter().enumerate() {
        let order = format!("order-{i}");
        let a = app
            .post_json(
                &format!("/v1/merchants/{MSN}/orders/{order}/receipt{query}"),
                &spec_receipt(),
            )
            .await;
        assert_eq!(a.status, 201, "{}", a.body);
        assert_eq!(a.body["replayed"], false);
        let sent = app.sim_requests_to("receipt").await;
        let req = sent.last().expect("a receipt call");
        assert_eq!(req["method"], "POST");
        assert_eq!(
            req["path"],
            format!("/order-management/v2/{pt}/receipts/{order}")
        );
        assert_eq!(req["status"], 201);
        assert_eq!(req["headers"]["content-type"], "application/json");
        assert_upstream_headers(req, MSN, DEMO_SUBSCRIPTION_KEY);
        let expected = json!({
            "orderLines": [
                {"name": "Socks", "id": "sku-1", "totalAmount": 39800, "totalAmountExcludingTax": 31840,
                 "totalTaxAmount": 7960, "taxRate": 2500,
                 "unitInfo": {"unitPrice": 19900, "quantity": "2", "quantityUnit": "PCS"},
                 "discount": 0, "productUrl": "https://shop.example/socks", "isReturn": false, "isShipping": false},
                {"name": "Home delivery", "id": "ship", "totalAmount": 4900, "totalAmountExcludingTax": 3920,
                 "totalTaxAmount": 980, "taxRate": 2500, "discount": 0, "isReturn": false, "isShipping": true}
            ],
            "bottomLine": {"currency": "NOK", "tipAmount": 0, "posId": "pos-7",
                           "paymentSources": {"card": 44700},
                           "barcode": {"format": "EAN-13", "data": "7040512345678"},
                           "receiptNumber": "0527013501"}
        });
        assert_eq!(req["body"], expected);
        // The response shows exactly what was sent.
        assert_eq!(a.body["receipt"], expected);
        assert_eq!(a.body["totals"]["total"], "447.00");
        assert_eq!(a.body["totals"]["tax"], "89.40");
    }
    // One token served all three calls.
    assert_eq!(app.token_fetches(MSN).await, 1);
    let token_call = &app.sim_requests_to("token").await[0];
    assert_eq!(token_call["method"], "POST");
    assert_eq!(token_call["path"], "/accesstoken/get");
    assert_eq!(token_call["headers"]["client_id"], DEMO_CLIENT_ID);
    assert_eq!(token_call["headers"]["client_secret"], DEMO_CLIENT_SECRET);
    assert_eq!(
        token_call["headers"]["ocp-apim-subscription-key"],
        DEMO_SUBSCRIPTION_KEY
    );
    assert_eq!(token_call["headers"]["merchant-serial-number"], MSN);
    assert_eq!(
        token_call["headers"]["vipps-system-name"],
        "vipps-order-gateway"
    );
}

#[actix_web::test]
async fn each_merchant_uses_its_own_credentials() {
    let app = spawn_app().await;
    let a = app.post_receipt(MSN2, "o-2", &spec_receipt()).await;
    assert_eq!(a.status, 201, "{}", a.body);
    let req = &app.sim_requests_to("receipt").await[0];
    assert_upstream_headers(req, MSN2, "second-key");
    assert_eq!(app.token_fetches(MSN2).await, 1);
    assert_eq!(app.token_fetches(MSN).await, 0);
}

#[actix_web::test]
async fn category_is_set_for_each_payment_type_and_overwritten() {
    let app = spawn_app().await;
    for (query, pt) in PAYMENT_TYPES {
        let a = app
            .put_json(
                &format!("/v1/merchants/{MSN}/orders/o-1/category{query}"),
                &json!({"category": "RECEIPT", "url": "https://shop.example/o/1", "imageId": "logo-1"}),
            )
            .await;
        assert_eq!(a.status, 200, "{}", a.body);
        assert_eq!(
            a.body,
            json!({"category": "RECEIPT", "url": "https://shop.example/o/1", "imageId": "logo-1", "paymentType": pt})
        );
        let req = app
            .sim_requests_to("category")
            .await
            .pop()
            .expect("category call");
        assert_eq!(req["method"], "PUT");
        assert_eq!(
            req["path"],
            format!("/order-management/v2/{pt}/categories/o-1")
        );
        assert_upstream_headers(&req, MSN, DEMO_SUBSCRIPTION_KEY);
        assert_eq!(
            req["body"],
            json!({"category": "RECEIPT", "orderDetailsUrl": "https://shop.example/o/1", "imageId": "logo-1"})
        );
    }
    // A later PUT overwrites; no image means imageId null.
    let a = app
        .put_json(
            &format!("/v1/merchants/{MSN}/orders/o-1/category"),
            &json!({"category": "TICKET", "url": "https://shop.example/t/1"}),
        )
        .await;
    assert_eq!(a.status, 200);
    assert_eq!(a.body["imageId"], Value::Null);
    let order = app.get(&format!("/v1/merchants/{MSN}/orders/o-1")).await;
    assert_eq!(order.status, 200);
    assert_eq!(
        order.body["category"],
        json!({"category": "TICKET", "orderDetailsUrl": "https://shop.example/t/1", "imageId": null})
    );
    assert_eq!(order.body["receipt"], Value::Null);
    assert!(order.body.get("totals").is_none());
}

#[actix_web::test]
async fn category_with_inline_image_uploads_it_first() {
    let app = spawn_app().await;
    let image = png(200);
    let a = app
        .put_json(
            &format!("/v1/merchants/{MSN}/orders/o-9/category?paymentType=recurring"),
            &json!({"category": "BOOKING", "url": "https://shop.example/b/9", "image": {"data": b64(&image)}}),
        )
        .await;
    assert_eq!(a.status, 200, "{}", a.body);
    let id = a.body["imageId"].as_str().expect("derived id").to_owned();
    assert!(id.starts_with("sha256-") && id.len() == 71, "{id}");
    let calls = app.sim_requests().await;
    let endpoints: Vec<&str> = calls
        .iter()
        .filter_map(|c| c["endpoint"].as_str())
        .collect();
    assert_eq!(endpoints, ["token", "image", "category"]);
    assert_eq!(calls[1]["body"]["imageId"], id.as_str());
    assert_eq!(calls[1]["body"]["type"], "base64");
    assert_eq!(calls[1]["body"]["src"], b64(&image));
    assert_eq!(calls[2]["body"]["imageId"], id.as_str());
    // Setting the same inline image again is harmless: the image exists.
    let again = app
        .put_json(
            &format!("/v1/merchants/{MSN}/orders/o-10/category"),
            &json!({"category": "BOOKING", "url": "https://shop.example/b/10", "image": {"data": b64(&image)}}),
        )
        .await;
    assert_eq!(again.status, 200, "{}", again.body);
    assert_eq!(again.body["imageId"], id.as_str());
}

#[actix_web::test]
async fn images_upload_raw_or_json_and_twice_is_harmless() {
    let app = spawn_app().await;
    let path = format!("/v1/merchants/{MSN}/images");
    let raw = app
        .send_raw(Method::POST, &path, "image/png", png(167))
        .await;
    assert_eq!(raw.status, 201, "{}", raw.body);
    let id = raw.body["imageId"].as_str().expect("id").to_owned();
    let req = app
        .sim_requests_to("image")
        .await
        .pop()
        .expect("image call");
    assert_eq!(req["method"], "POST");
    assert_eq!(req["path"], "/order-management/v1/images");
    assert_upstream_headers(&req, MSN, DEMO_SUBSCRIPTION_KEY);
    assert_eq!(
        req["body"],
        json!({"imageId": id, "src": b64(&png(167)), "type": "base64"})
    );

    // The same bytes again, this time as JSON: same id, 200.
    let again = app.post_json(&path, &json!({"data": b64(&png(167))})).await;
    assert_eq!(again.status, 200, "{}", again.body);
    assert_eq!(again.body["imageId"], id.as_str());

    // The format comes from the bytes: a JPEG sent as image/png is a JPEG.
    let j = app
        .send_raw(Method::POST, &path, "image/png", jpeg(400))
        .await;
    assert_eq!(j.status, 201, "{}", j.body);
    assert_ne!(j.body["imageId"], id.as_str());
}

#[actix_web::test]
async fn caller_named_image_ids_cannot_be_overwritten() {
    let app = spawn_app().await;
    let path = format!("/v1/merchants/{MSN}/images");
    let first = app
        .post_json(
            &path,
            &json!({"data": b64(&jpeg(300)), "imageId": "shop-logo"}),
        )
        .await;
    assert_eq!(first.status, 201, "{}", first.body);
    assert_eq!(first.body, json!({"imageId": "shop-logo"}));
    let raw = app
        .send_raw(
            Method::POST,
            &format!("{path}?imageId=shop-logo"),
            "image/jpeg",
            jpeg(300),
        )
        .await;
    let p = raw.problem(409);
    assert!(
        p["type"].as_str().unwrap().ends_with("/image-id-taken"),
        "{p}"
    );
    assert_eq!(raw.invalid_names(), ["imageId"]);
}

#[actix_web::test]
async fn order_shows_category_receipt_and_totals() {
    let app = spawn_app().await;
    for (query, _) in PAYMENT_TYPES {
        let missing = app
            .get(&format!("/v1/merchants/{MSN}/orders/nothing-here{query}"))
            .await;
        let p = missing.problem(404);
        assert!(p["type"].as_str().unwrap().ends_with("/order-not-found"));
    }
    let r = app
        .post_json(
            &format!("/v1/merchants/{MSN}/orders/o-5/receipt?paymentType=recurring"),
            &spec_receipt(),
        )
        .await;
    assert_eq!(r.status, 201);
    // The receipt is stored under recurring only.
    let ecom = app.get(&format!("/v1/merchants/{MSN}/orders/o-5")).await;
    ecom.problem(404);
    let got = app
        .get(&format!(
            "/v1/merchants/{MSN}/orders/o-5?paymentType=recurring"
        ))
        .await;
    assert_eq!(got.status, 200, "{}", got.body);
    assert_eq!(got.body["category"], Value::Null);
    assert_eq!(got.body["receipt"], r.body["receipt"]);
    assert_eq!(got.body["totals"], r.body["totals"]);
    let req = app
        .sim_requests_to("order")
        .await
        .pop()
        .expect("order call");
    assert_eq!(req["method"], "GET");
    assert_eq!(req["path"], "/order-management/v2/recurring/o-5");
    assert_upstream_headers(&req, MSN, DEMO_SUBSCRIPTION_KEY);
}

#[actix_web::test]
async fn a_repeated_identical_receipt_is_replayed_and_a_different_one_conflicts() {
    let app = spawn_app().await;
    let first = app.post_receipt(MSN, "o-7", &spec_receipt()).await;
    assert_eq!(first.status, 201);
    // A caller retry after a timeout: same receipt → 201 replayed.
    let again = app.post_receipt(MSN, "o-7", &spec_receipt()).await;
    assert_eq!(again.status, 201, "{}", again.body);
    assert_eq!(again.body["replayed"], true);
    assert_eq!(again.body["receipt"], first.body["receipt"]);
    // A different receipt for the same order is a conflict.
    let mut other = spec_receipt();
    other["posId"] = json!("pos-8");
    let conflict = app.post_receipt(MSN, "o-7", &other).await;
    let p = conflict.problem(409);
    assert!(p["type"].as_str().unwrap().ends_with("/receipt-conflict"));
    // The stored receipt is still the first one.
    let state = app.sim_state().await;
    let stored = state["orders"]
        .as_array()
        .and_then(|o| o.iter().find(|o| o["orderId"] == "o-7"))
        .expect("stored order");
    assert_eq!(stored["receipt"], first.body["receipt"]);
}
