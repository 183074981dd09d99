//! The simulator over real HTTP: what the gateway's tests rely on it for.

// A failed expectation in a test should stop it with its message.

use std::net::TcpListener;
use std::time::Duration;

use awc::http::StatusCode;
use base64::Engine as _;
use futures_util::future::{select, Either};
use serde_json::{json, Value};
use vipps_order_gateway::simulator::{
    SimMerchant, Simulator, SimulatorSettings, DEMO_CLIENT_ID, DEMO_CLIENT_SECRET, DEMO_MSN,
    DEMO_SUBSCRIPTION_KEY,
};

use crate::helpers::poll_until;

struct Sim {
    base: String,
    client: awc::Client,
}

fn spawn_with(settings: SimulatorSettings) -> Sim {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    let sim = Simulator::build(listener, settings).expect("build the simulator");
    let base = format!("http://127.0.0.1:{}", sim.port());
    actix_rt::spawn(sim.run());
    Sim {
        base,
        client: awc::Client::builder()
            .timeout(Duration::from_secs(10))
            .finish(),
    }
}

fn spawn() -> Sim {
    spawn_with(SimulatorSettings::demo())
}

fn second_merchant() -> SimMerchant {
    SimMerchant {
        msn: "654321".to_owned(),
        client_id: "other-client".to_owned(),
        client_secret: "other-secret".to_owned(),
        subscription_key: "other-key".to_owned(),
    }
}

fn png(height: u32) -> Vec<u8> {
    let mut bytes = vec![0x89, b'P', b'N', b'G', 0x0D, 0x0A, 0x1A, 0x0A];
    bytes.extend_from_slice(&13u32.to_be_bytes());
    bytes.extend_from_slice(b"IHDR");
    bytes.extend_from_slice(&200u32.to_be_bytes());
    bytes.extend_from_slice(&height.to_be_bytes());
    bytes.extend_from_slice(&[8, 6, 0, 0, 0, 0, 0, 0, 0]);
    bytes
}

fn jpeg(height: u16) -> Vec<u8> {
    let mut bytes = vec![0xFF, 0xD8, 0xFF, 0xC0, 0x00, 0x11, 0x08];
    bytes.extend_from_slice(&height.to_be_bytes());
    bytes.extend_from_slice(&200u16.to_be_bytes());
    bytes.extend_from_slice(&[3, 1, 0x22, 0, 2, 0x11, 1, 3, 0x11, 1, 0xFF, 0xD9]);
    bytes
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// A receipt whose lines add up (unlike the example in the 2.0 document).
fn receipt() -> Value {
    json!({
        "orderLines": [
            {"name": "Socks", "id": "sku-1", "totalAmount": 39800,
             "totalAmountExcludingTax": 31840, "totalTaxAmount": 7960, "taxPercentage": 25,
             "unitInfo": {"unitPrice": 19900, "quantity": "2", "quantityUnit": "PCS"},
             "discount": 0, "productUrl": "https://shop.example/socks",
             "isReturn": false, "isShipping": false},
            {"name": "Home delivery", "id": "ship", "totalAmount": 4900,
             "totalAmountExcludingTax": 3920, "totalTaxAmount": 980, "taxPercentage": 25,
             "isShipping": true}
        ],
        "bottomLine": {
            "currency": "NOK", "tipAmount": 0, "posId": "pos-7",
            "paymentSources": {"card": 44700},
            "barcode": {"format": "EAN-13", "data": "7040512345678"},
            "receiptNumber": "0527013501"
        }
    })
}

impl Sim {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn token_request(
        &self,
        client_id: &str,
        secret: &str,
        key: &str,
        msn: &str,
    ) -> awc::ClientRequest {
        self.client
            .post(self.url("/accesstoken/get"))
            .insert_header(("client_id", client_id))
            .insert_header(("client_secret", secret))
            .insert_header(("Ocp-Apim-Subscription-Key", key))
            .insert_header(("Merchant-Serial-Number", msn))
    }

    async fn token_for(&self, m: &SimMerchant) -> String {
        let mut resp = self
            .token_request(&m.client_id, &m.client_secret, &m.subscription_key, &m.msn)
            .send()
            .await
            .expect("token request");
        assert_eq!(resp.status(), StatusCode::OK);
        let body: Value = resp.json().await.expect("token body");
        body["access_token"]
            .as_str()
            .expect("access_token")
            .to_owned()
    }

    async fn token(&self) -> String {
        self.token_for(&SimMerchant::demo()).await
    }

    /// An Order Management request with the demo merchant's headers.
    fn om(&self, method: awc::http::Method, path: &str, token: &str) -> awc::ClientRequest {
        self.client
            .request(method, self.url(&format!("/order-management{path}")))
            .insert_header(("Authorization", format!("Bearer {token}")))
            .insert_header(("Ocp-Apim-Subscription-Key", DEMO_SUBSCRIPTION_KEY))
            .insert_header(("Merchant-Serial-Number", DEMO_MSN))
            .insert_header(("Vipps-System-Name", "vipps-order-gateway"))
    }

    async fn send(&self, req: awc::ClientRequest, body: Option<&Value>) -> (StatusCode, Value) {
        let mut resp = match body {
            Some(b) => req.send_json(b).await,
            None => req.send().await,
        }
        .expect("request reaches the simulator");
        let status = resp.status();
        let bytes = resp.body().limit(16 * 1024 * 1024).await.expect("body");
        let value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).expect("JSON body")
        };
        (status, value)
    }

    async fn post_receipt(&self, token: &str, order: &str, body: &Value) -> (StatusCode, Value) {
        let req = self.om(
            awc::http::Method::POST,
            &format!("/v2/ecom/receipts/{order}"),
            token,
        );
        self.send(req, Some(body)).await
    }

    async fn post_image(&self, token: &str, id: &str, bytes: &[u8]) -> (StatusCode, Value) {
        let body = json!({"imageId": id, "src": b64(bytes), "type": "base64"});
        let req = self.om(awc::http::Method::POST, "/v1/images", token);
        self.send(req, Some(&body)).await
    }

    async fn control(
        &self,
        method: awc::http::Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let req = self
            .client
            .request(method, self.url(&format!("/_simulator{path}")));
        self.send(req, body.as_ref()).await
    }

    async fn get_control(&self, path: &str) -> Value {
        let (status, body) = self.control(awc::http::Method::GET, path, None).await;
        assert_eq!(status, StatusCode::OK);
        body
    }
}

fn param_names(body: &Value) -> Vec<String> {
    body["invalidParams"]
        .as_array()
        .map(|params| {
            params
                .iter()
                .filter_map(|p| p["name"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

use awc::http::Method;

#[actix_web::test]
async fn issues_a_bearer_token_with_string_lifetimes() {
    let sim = spawn();
    let mut resp = sim
        .token_request(
            DEMO_CLIENT_ID,
            DEMO_CLIENT_SECRET,
            DEMO_SUBSCRIPTION_KEY,
            DEMO_MSN,
        )
        .send()
        .await
        .expect("token request");
    assert_eq!(resp.status(), StatusCode::OK);
    let content_type = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert_eq!(content_type, "application/json;charset=UTF-8");
    let body: Value = resp.json().await.expect("token body");
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], "3600");
    assert_eq!(body["ext_expires_in"], "3600");
    assert_eq!(body["resource"], "00000002-0000-0000-c000-000000000000");
    let not_before: u64 = body["not_before"]
        .as_str()
        .expect("string")
        .parse()
        .expect("secs");
    let expires_on: u64 = body["expires_on"]
        .as_str()
        .expect("string")
        .parse()
        .expect("secs");
    assert_eq!(expires_on - not_before, 3600);
    assert!(body["access_token"].as_str().is_some_and(|t| t.len() > 20));
    let counters = sim.get_control("/counters").await;
    assert_eq!(counters["tokenFetches"][DEMO_MSN], 1);
    assert_eq!(counters["calls"]["token"], 1);
}

#[actix_web::test]
async fn rejects_wrong_credentials_with_401() {
    let sim = spawn();
    let cases = [
        (DEMO_CLIENT_ID, "wrong", DEMO_SUBSCRIPTION_KEY, DEMO_MSN),
        (DEMO_CLIENT_ID, DEMO_CLIENT_SECRET, "wrong", DEMO_MSN),
        (
            "nobody",
            DEMO_CLIENT_SECRET,
            DEMO_SUBSCRIPTION_KEY,
            DEMO_MSN,
        ),
        (
            DEMO_CLIENT_ID,
            DEMO_CLIENT_SECRET,
            DEMO_SUBSCRIPTION_KEY,
            "999999",
        ),
    ];
    for (id, secret, key, msn) in cases {
        let req = sim.token_request(id, secret, key, msn);
        let (status, body) = sim.send(req, None).await;
        assert_eq!(
            status,
            StatusCode::UNAUTHORIZED,
            "{id} {secret} {key} {msn}"
        );
        assert!(
            body["title"].is_string() && body["detail"].is_string() && body["instance"].is_string()
        );
    }
    let counters = sim.get_control("/counters").await;
    assert_eq!(counters["tokenFetches"][DEMO_MSN], 0);
    assert_eq!(counters["tokenRejections"][DEMO_MSN], 3);
    assert_eq!(counters["tokenRejections"]["unknown"], 1);
}

#[actix_web::test]
async fn token_endpoint_limits_system_headers_to_30_characters() {
    let sim = spawn();
    let ok = sim
        .token_request(
            DEMO_CLIENT_ID,
            DEMO_CLIENT_SECRET,
            DEMO_SUBSCRIPTION_KEY,
            DEMO_MSN,
        )
        .insert_header(("Vipps-System-Plugin-Version", "x".repeat(30)));
    assert_eq!(sim.send(ok, None).await.0, StatusCode::OK);
    let long = sim
        .token_request(
            DEMO_CLIENT_ID,
            DEMO_CLIENT_SECRET,
            DEMO_SUBSCRIPTION_KEY,
            DEMO_MSN,
        )
        .insert_header(("Vipps-System-Plugin-Version", "x".repeat(31)));
    let (status, body) = sim.send(long, None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(param_names(&body), ["Vipps-System-Plugin-Version"]);
}

#[actix_web::test]
async fn order_management_limits_system_headers_to_100_characters() {
    let sim = spawn();
    let token = sim.token().await;
    let req = sim
        .om(Method::GET, "/v2/ecom/o-1", &token)
        .insert_header(("Vipps-System-Version", "1".repeat(100)));
    assert_eq!(sim.send(req, None).await.0, StatusCode::NOT_FOUND);
    let req = sim
        .om(Method::GET, "/v2/ecom/o-1", &token)
        .insert_header(("Vipps-System-Version", "1".repeat(101)));
    let (status, body) = sim.send(req, None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(param_names(&body), ["Vipps-System-Version"]);
}

#[actix_web::test]
async fn expired_tokens_are_rejected_after_the_expire_call() {
    let sim = spawn();
    let token = sim.token().await;
    assert_eq!(
        sim.send(sim.om(Method::GET, "/v2/ecom/o-1", &token), None)
            .await
            .0,
        StatusCode::NOT_FOUND
    );
    let (status, body) = sim.control(Method::POST, "/tokens/expire", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["expired"], 1);
    let (status, body) = sim
        .send(sim.om(Method::GET, "/v2/ecom/o-1", &token), None)
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["detail"], "Expired access token");
    let fresh = sim.token().await;
    assert_eq!(
        sim.send(sim.om(Method::GET, "/v2/ecom/o-1", &fresh), None)
            .await
            .0,
        StatusCode::NOT_FOUND
    );
    let counters = sim.get_control("/counters").await;
    assert_eq!(counters["tokenFetches"][DEMO_MSN], 2);
    assert_eq!(counters["tokenRejections"][DEMO_MSN], 1);
}

#[actix_web::test]
async fn tokens_expire_after_their_lifetime() {
    let sim = spawn_with(SimulatorSettings {
        token_ttl: Duration::from_secs(1),
        ..SimulatorSettings::demo()
    });
    let mut resp = sim
        .token_request(
            DEMO_CLIENT_ID,
            DEMO_CLIENT_SECRET,
            DEMO_SUBSCRIPTION_KEY,
            DEMO_MSN,
        )
        .send()
        .await
        .expect("token");
    let body: Value = resp.json().await.expect("body");
    assert_eq!(body["expires_in"], "1");
    let token = body["access_token"].as_str().expect("token").to_owned();
    assert_eq!(
        sim.send(sim.om(Method::GET, "/v2/ecom/o-1", &token), None)
            .await
            .0,
        StatusCode::NOT_FOUND
    );
    // Accepted until its lifetime has passed, then refused.
    let (sim_ref, token_ref) = (&sim, token.as_str());
    let status = poll_until("the token refused once expired", || async move {
        let (status, _) = sim_ref
            .send(sim_ref.om(Method::GET, "/v2/ecom/o-1", token_ref), None)
            .await;
        (status != StatusCode::NOT_FOUND).then_some(status)
    })
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // The lifetime can be changed at run time for tokens issued afterwards.
    let (status, _) = sim
        .control(
            Method::PUT,
            "/settings",
            Some(json!({"tokenTtlSeconds": 7200})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let mut resp = sim
        .token_request(
            DEMO_CLIENT_ID,
            DEMO_CLIENT_SECRET,
            DEMO_SUBSCRIPTION_KEY,
            DEMO_MSN,
        )
        .send()
        .await
        .expect("token");
    let body: Value = resp.json().await.expect("body");
    assert_eq!(body["expires_in"], "7200");
}

#[actix_web::test]
async fn a_token_is_only_good_for_its_own_merchant() {
    let sim = spawn_with(SimulatorSettings {
        merchants: vec![SimMerchant::demo(), second_merchant()],
        ..SimulatorSettings::demo()
    });
    let other = second_merchant();
    let demo_token = sim.token().await;
    let req = sim
        .client
        .get(sim.url("/order-management/v2/ecom/o-1"))
        .insert_header(("Authorization", format!("Bearer {demo_token}")))
        .insert_header(("Ocp-Apim-Subscription-Key", other.subscription_key.as_str()))
        .insert_header(("Merchant-Serial-Number", other.msn.as_str()));
    assert_eq!(sim.send(req, None).await.0, StatusCode::UNAUTHORIZED);

    let other_token = sim.token_for(&other).await;
    let req = sim
        .client
        .get(sim.url("/order-management/v2/ecom/o-1"))
        .insert_header(("Authorization", format!("Bearer {other_token}")))
        .insert_header(("Ocp-Apim-Subscription-Key", other.subscription_key.as_str()))
        .insert_header(("Merchant-Serial-Number", other.msn.as_str()));
    assert_eq!(sim.send(req, None).await.0, StatusCode::NOT_FOUND);

    // The right token with another merchant's subscription key is refused too.
    let req = sim
        .client
        .get(sim.url("/order-management/v2/ecom/o-1"))
        .insert_header(("Authorization", format!("Bearer {other_token}")))
        .insert_header(("Ocp-Apim-Subscription-Key", DEMO_SUBSCRIPTION_KEY))
        .insert_header(("Merchant-Serial-Number", other.msn.as_str()));
    assert_eq!(sim.send(req, None).await.0, StatusCode::UNAUTHORIZED);
}

#[actix_web::test]
async fn order_management_needs_a_token_and_an_msn() {
    let sim = spawn();
    let token = sim.token().await;
    let no_msn = sim
        .client
        .get(sim.url("/order-management/v2/ecom/o-1"))
        .insert_header(("Authorization", format!("Bearer {token}")))
        .insert_header(("Ocp-Apim-Subscription-Key", DEMO_SUBSCRIPTION_KEY));
    let (status, body) = sim.send(no_msn, None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(param_names(&body), ["Merchant-Serial-Number"]);
    let no_token = sim
        .client
        .get(sim.url("/order-management/v2/ecom/o-1"))
        .insert_header(("Ocp-Apim-Subscription-Key", DEMO_SUBSCRIPTION_KEY))
        .insert_header(("Merchant-Serial-Number", DEMO_MSN));
    assert_eq!(sim.send(no_token, None).await.0, StatusCode::UNAUTHORIZED);
    // Without a token, a missing MSN is not looked at: authentication first.
    let neither = sim
        .client
        .delete(sim.url("/order-management/v3/categories/81e0eba4-5763-4bd6-b64c-2c640fc09cb8"))
        .insert_header(("Ocp-Apim-Subscription-Key", DEMO_SUBSCRIPTION_KEY));
    assert_eq!(sim.send(neither, None).await.0, StatusCode::UNAUTHORIZED);
    let forged = sim.om(Method::GET, "/v2/ecom/o-1", "not-a-token");
    assert_eq!(sim.send(forged, None).await.0, StatusCode::UNAUTHORIZED);
}

#[actix_web::test]
async fn a_receipt_is_stored_once_and_then_conflicts() {
    let sim = spawn();
    let token = sim.token().await;
    let (status, body) = sim.post_receipt(&token, "order-1", &receipt()).await;
    assert_eq!(status, StatusCode::CREATED);
    assert!(
        body.as_str()
            .is_some_and(|s| uuid::Uuid::parse_str(s).is_ok()),
        "{body}"
    );

    let (status, body) = sim.post_receipt(&token, "order-1", &receipt()).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert!(body["detail"]
        .as_str()
        .is_some_and(|d| d.contains("receipt")));
    // Whatever the body: immutability is checked first.
    let (status, _) = sim
        .post_receipt(&token, "order-1", &json!({"nonsense": 1}))
        .await;
    assert_eq!(status, StatusCode::CONFLICT);

    // The same order id under the other payment type is another order.
    let req = sim.om(Method::POST, "/v2/recurring/receipts/order-1", &token);
    assert_eq!(sim.send(req, Some(&receipt())).await.0, StatusCode::CREATED);

    let (status, body) = sim
        .send(sim.om(Method::GET, "/v2/ecom/order-1", &token), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["receipt"], receipt());
    assert_eq!(body["category"], Value::Null);
}

#[actix_web::test]
async fn receipt_lines_must_add_up() {
    let sim = spawn();
    let token = sim.token().await;
    let mut bad = receipt();
    bad["orderLines"][1]["totalTaxAmount"] = json!(981);
    let (status, body) = sim.post_receipt(&token, "order-1", &bad).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(param_names(&body), ["orderLines[1].totalTaxAmount"]);
    assert_eq!(body["title"], "One or more validation errors occurred.");
    // A rejected receipt is not stored, so a corrected one is accepted.
    assert_eq!(
        sim.post_receipt(&token, "order-1", &receipt()).await.0,
        StatusCode::CREATED
    );
}

#[actix_web::test]
async fn receipt_fields_are_checked_by_json_path() {
    let sim = spawn();
    let token = sim.token().await;
    // (expected invalidParams name, JSON pointer to change, new value or None to remove it)
    let cases: Vec<(&str, &str, Option<Value>)> = vec![
        (
            "orderLines[0].taxRate",
            "/orderLines/0/taxRate",
            Some(json!(25)),
        ),
        ("bottomLine.tip", "/bottomLine/tip", Some(json!(0))),
        (
            "orderLines[0].unitInfo.quantity",
            "/orderLines/0/unitInfo/quantity",
            Some(json!("1.5.0")),
        ),
        (
            "orderLines[0].unitInfo.quantity",
            "/orderLines/0/unitInfo/quantity",
            Some(json!("1.123456789")),
        ),
        (
            "orderLines[0].unitInfo.quantity",
            "/orderLines/0/unitInfo/quantity",
            Some(json!("12345678.01")),
        ),
        (
            "orderLines[0].unitInfo.quantityUnit",
            "/orderLines/0/unitInfo/quantityUnit",
            Some(json!("STK")),
        ),
        (
            "orderLines[0].unitInfo.unitPrice",
            "/orderLines/0/unitInfo/unitPrice",
            None,
        ),
        (
            "bottomLine.currency",
            "/bottomLine/currency",
            Some(json!("SEK")),
        ),
        ("bottomLine.currency", "/bottomLine/currency", None),
        (
            "orderLines[1].taxPercentage",
            "/orderLines/1/taxPercentage",
            Some(json!(101)),
        ),
        (
            "orderLines[0].totalAmount",
            "/orderLines/0/totalAmount",
            Some(json!(398.5)),
        ),
        (
            "orderLines[0].totalAmount",
            "/orderLines/0/totalAmount",
            Some(json!("39800")),
        ),
        (
            "orderLines[0].discount",
            "/orderLines/0/discount",
            Some(json!(-1)),
        ),
        ("orderLines[1].name", "/orderLines/1/name", None),
        (
            "bottomLine.tipAmount",
            "/bottomLine/tipAmount",
            Some(json!(-5)),
        ),
        (
            "bottomLine.barcode.format",
            "/bottomLine/barcode/format",
            Some(json!("QR")),
        ),
        (
            "bottomLine.paymentSources.card",
            "/bottomLine/paymentSources/card",
            Some(json!("447")),
        ),
        ("orderLines", "/orderLines", Some(json!([]))),
    ];
    for (i, (name, pointer, value)) in cases.iter().enumerate() {
        let mut body = receipt();
        match value {
            Some(v) => {
                let (parent, key) = pointer.rsplit_once('/').expect("a pointer");
                let target = body.pointer_mut(parent).expect("parent exists");
                match target {
                    Value::Array(items) => items[key.parse::<usize>().expect("index")] = v.clone(),
                    Value::Object(map) => {
                        map.insert(key.to_owned(), v.clone());
                    }
                    _ => panic!("{pointer} has no container"),
                }
            }
            None => {
                let (parent, key) = pointer.rsplit_once('/').expect("a pointer");
                body.pointer_mut(parent)
                    .and_then(Value::as_object_mut)
                    .expect("parent object")
                    .remove(key)
                    .expect("field existed");
            }
        }
        let (status, problem) = sim.post_receipt(&token, &format!("order-{i}"), &body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{name}: {problem}");
        assert!(
            param_names(&problem).iter().any(|n| n == name),
            "{name}: {problem}"
        );
    }
    // Malformed JSON is a 400 too.
    let req = sim
        .om(Method::POST, "/v2/ecom/receipts/order-x", &token)
        .content_type("application/json");
    let resp = req.send_body("{\"orderLines\": [").await.expect("sent");
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let state = sim.get_control("/state").await;
    assert_eq!(state["orders"], json!([]));
}

#[actix_web::test]
async fn a_category_is_overwritten_by_a_later_put() {
    let sim = spawn();
    let token = sim.token().await;
    let first = json!({"category": "RECEIPT", "orderDetailsUrl": "https://shop.example/o/1", "imageId": "logo-1"});
    let req = sim.om(Method::PUT, "/v2/ecom/categories/order-1", &token);
    let (status, body) = sim.send(req, Some(&first)).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body
        .as_str()
        .is_some_and(|s| uuid::Uuid::parse_str(s).is_ok()));
    let second = json!({"category": "DELIVERY", "orderDetailsUrl": "http://shop.example/track"});
    let req = sim.om(Method::PUT, "/v2/ecom/categories/order-1", &token);
    assert_eq!(sim.send(req, Some(&second)).await.0, StatusCode::OK);
    let (status, body) = sim
        .send(sim.om(Method::GET, "/v2/ecom/order-1", &token), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body,
        json!({"category": {"category": "DELIVERY", "orderDetailsUrl": "http://shop.example/track", "imageId": null}})
    );

    for (bad, name) in [
        (
            json!({"category": "SHOPPING", "orderDetailsUrl": "https://a.example"}),
            "category",
        ),
        (
            json!({"category": "GENERAL", "orderDetailsUrl": "shop.example"}),
            "orderDetailsUrl",
        ),
        (json!({"category": "GENERAL"}), "orderDetailsUrl"),
        (
            json!({"category": "GENERAL", "orderDetailsUrl": "https://a.example", "imageId": "a b"}),
            "imageId",
        ),
        (
            json!({"category": "GENERAL", "url": "https://a.example", "orderDetailsUrl": "https://a.example"}),
            "url",
        ),
    ] {
        let req = sim.om(Method::PUT, "/v2/ecom/categories/order-1", &token);
        let (status, problem) = sim.send(req, Some(&bad)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}");
        assert_eq!(param_names(&problem), [name], "{bad}");
    }
}

#[actix_web::test]
async fn get_order_is_404_until_something_is_stored() {
    let sim = spawn();
    let token = sim.token().await;
    let (status, body) = sim
        .send(sim.om(Method::GET, "/v2/ecom/order-1", &token), None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(body["title"].is_string());
    let category = json!({"category": "GENERAL", "orderDetailsUrl": "https://shop.example"});
    let req = sim.om(Method::PUT, "/v2/ecom/categories/order-1", &token);
    assert_eq!(sim.send(req, Some(&category)).await.0, StatusCode::OK);
    let (status, body) = sim
        .send(sim.om(Method::GET, "/v2/ecom/order-1", &token), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["category"]["category"], "GENERAL");
    // 2.1 makes neither field nullable: the missing one is left out.
    assert_eq!(body.get("receipt"), None, "{body}");
    let req = sim.om(Method::POST, "/v2/ecom/receipts/order-2", &token);
    assert_eq!(sim.send(req, Some(&receipt())).await.0, StatusCode::CREATED);
    let (status, body) = sim
        .send(sim.om(Method::GET, "/v2/ecom/order-2", &token), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, json!({"receipt": receipt()}));
}

#[actix_web::test]
async fn the_payment_type_in_either_documented_case_names_the_same_order() {
    let sim = spawn();
    let token = sim.token().await;
    // 2.1's document spells it ECOM/RECURRING, 2.0's ecom/recurring.
    let category = json!({"category": "GENERAL", "orderDetailsUrl": "https://shop.example"});
    let req = sim.om(Method::PUT, "/v2/ECOM/categories/order-1", &token);
    assert_eq!(sim.send(req, Some(&category)).await.0, StatusCode::OK);
    let req = sim.om(Method::POST, "/v2/RECURRING/receipts/order-2", &token);
    assert_eq!(sim.send(req, Some(&receipt())).await.0, StatusCode::CREATED);
    for path in ["/v2/ecom/order-1", "/v2/ECOM/order-1"] {
        let (status, body) = sim.send(sim.om(Method::GET, path, &token), None).await;
        assert_eq!(status, StatusCode::OK, "{path}: {body}");
        assert_eq!(body["category"]["category"], "GENERAL", "{path}");
    }
    // The v1 endpoints read the ecom order, whichever spelling stored it.
    let (status, _) = sim
        .send(sim.om(Method::GET, "/v1/orders/order-1", &token), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    // One order: its receipt cannot be added again in the other spelling.
    let req = sim.om(Method::POST, "/v2/recurring/receipts/order-2", &token);
    assert_eq!(
        sim.send(req, Some(&receipt())).await.0,
        StatusCode::CONFLICT
    );
    let (status, _) = sim
        .send(sim.om(Method::GET, "/v2/ECOM/order-2", &token), None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "ecom and recurring differ");
    let state = sim.get_control("/state").await;
    let kinds: Vec<&Value> = state["orders"]
        .as_array()
        .expect("orders")
        .iter()
        .map(|o| &o["paymentType"])
        .collect();
    assert_eq!(kinds, [&json!("ecom"), &json!("recurring")]);
}

#[actix_web::test]
async fn null_for_a_non_nullable_receipt_object_is_refused() {
    let sim = spawn();
    let token = sim.token().await;
    // 2.1 refers to these objects without `nullable`; stored, a `null`
    // would make the order read break the document.
    for (i, field) in ["barcode", "paymentSources", "shippingInfo"]
        .into_iter()
        .enumerate()
    {
        let mut body = receipt();
        body["bottomLine"][field] = Value::Null;
        let order = format!("order-{i}");
        let (status, problem) = sim.post_receipt(&token, &order, &body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{field}: {problem}");
        assert_eq!(
            param_names(&problem),
            [format!("bottomLine.{field}")],
            "{problem}"
        );
        assert_eq!(problem["invalidParams"][0]["reason"], "must not be null");
    }
    let mut body = receipt();
    body["orderLines"][0]["unitInfo"] = Value::Null;
    let (status, problem) = sim.post_receipt(&token, "order-u", &body).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(param_names(&problem), ["orderLines[0].unitInfo"]);
    let state = sim.get_control("/state").await;
    assert_eq!(state["orders"], json!([]), "nothing was stored");
}

#[actix_web::test]
async fn path_parameters_are_checked() {
    let sim = spawn();
    let token = sim.token().await;
    for (path, name) in [
        ("/v2/Ecom/order-1", "paymentType"),
        ("/v2/pos/order-1", "paymentType"),
        ("/v2/ecom/order%20one", "orderId"),
        ("/v2/ecom/order+1", "orderId"),
    ] {
        let (status, body) = sim.send(sim.om(Method::GET, path, &token), None).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path}");
        assert_eq!(param_names(&body), [name], "{path}");
    }
    let req = sim.om(Method::POST, "/v2/Recurring/receipts/o-1", &token);
    let (status, body) = sim.send(req, Some(&receipt())).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(param_names(&body), ["paymentType"]);
    // An unlisted method on a known path.
    let (status, _) = sim
        .send(sim.om(Method::DELETE, "/v2/ecom/order-1", &token), None)
        .await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
}

#[actix_web::test]
async fn images_must_be_png_or_jpeg_high_enough_and_new() {
    let sim = spawn();
    let token = sim.token().await;
    let (status, body) = sim.post_image(&token, "logo.png", &png(167)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, json!({"imageId": "logo.png"}));
    let (status, _) = sim.post_image(&token, "logo-jpeg", &jpeg(400)).await;
    assert_eq!(status, StatusCode::OK);

    let (status, body) = sim.post_image(&token, "logo.png", &png(500)).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");

    let gif = b"GIF89a\xc8\x00\xc8\x00\x00\x00\x00;".to_vec();
    let mut too_big = png(300);
    too_big.resize(2_000_001, 0);
    let mut just_fits = png(300);
    just_fits.resize(2_000_000, 0);
    for (id, bytes, expected) in [
        ("gif", gif, StatusCode::BAD_REQUEST),
        ("short-png", png(166), StatusCode::BAD_REQUEST),
        ("short-jpeg", jpeg(100), StatusCode::BAD_REQUEST),
        ("too-big", too_big, StatusCode::BAD_REQUEST),
        ("just-fits", just_fits, StatusCode::OK),
    ] {
        let (status, body) = sim.post_image(&token, id, &bytes).await;
        assert_eq!(status, expected, "{id}: {body}");
        if expected == StatusCode::BAD_REQUEST {
            assert_eq!(param_names(&body), ["src"], "{id}");
        }
    }
    for bad in [
        json!({"imageId": "x", "src": "not base64!", "type": "base64"}),
        json!({"imageId": "x", "src": b64(&png(200)), "type": "url"}),
        json!({"imageId": "", "src": b64(&png(200)), "type": "base64"}),
        json!({"imageId": "x".repeat(129), "src": b64(&png(200)), "type": "base64"}),
        json!({"src": b64(&png(200)), "type": "base64"}),
    ] {
        let req = sim.om(Method::POST, "/v1/images", &token);
        assert_eq!(
            sim.send(req, Some(&bad)).await.0,
            StatusCode::BAD_REQUEST,
            "{bad}"
        );
    }

    let state = sim.get_control("/state").await;
    assert_eq!(
        state["images"],
        json!([
            {"msn": DEMO_MSN, "imageId": "just-fits", "format": "png", "bytes": 2_000_000, "height": 300},
            {"msn": DEMO_MSN, "imageId": "logo-jpeg", "format": "jpeg", "bytes": jpeg(400).len(), "height": 400},
            {"msn": DEMO_MSN, "imageId": "logo.png", "format": "png", "bytes": png(167).len(), "height": 167},
        ])
    );
    // Three images are far within the images the simulator knows.
    assert_eq!(sim.get_control("/counters").await["imagesForgotten"], 0);
}

#[actix_web::test]
async fn deprecated_v1_endpoints_share_the_ecom_order() {
    let sim = spawn();
    let token = sim.token().await;
    let (status, _) = sim
        .send(sim.om(Method::GET, "/v1/orders/tx-1", &token), None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let order =
        json!({"category": "TICKET", "orderDetailsUrl": "https://shop.example", "imageId": "logo"});
    let (status, body) = sim
        .send(sim.om(Method::PUT, "/v1/orders/tx-1", &token), Some(&order))
        .await;
    assert_eq!((status, body), (StatusCode::OK, Value::Null));
    let (status, body) = sim
        .send(sim.om(Method::GET, "/v1/orders/tx-1", &token), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body,
        json!({"category": "TICKET", "orderDetailsUrl": "https://shop.example", "imageIds": [{"id": "logo", "sortOrder": 1}]})
    );
    assert_eq!(
        sim.send(sim.om(Method::GET, "/v1/receipts/tx-1", &token), None)
            .await
            .0,
        StatusCode::NOT_FOUND
    );
    let (status, body) = sim
        .send(
            sim.om(Method::POST, "/v1/receipts/tx-1", &token),
            Some(&receipt()),
        )
        .await;
    assert_eq!((status, body), (StatusCode::OK, Value::Null));
    assert_eq!(
        sim.send(
            sim.om(Method::POST, "/v1/receipts/tx-1", &token),
            Some(&receipt())
        )
        .await
        .0,
        StatusCode::CONFLICT
    );
    let (status, body) = sim
        .send(sim.om(Method::GET, "/v1/receipts/tx-1", &token), None)
        .await;
    assert_eq!((status, body), (StatusCode::OK, receipt()));
    let (status, body) = sim
        .send(sim.om(Method::GET, "/v2/ecom/tx-1", &token), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["category"]["category"], "TICKET");
    assert_eq!(body["receipt"], receipt());
}

#[actix_web::test]
async fn a_status_fault_applies_the_given_number_of_times() {
    let sim = spawn();
    let token = sim.token().await;
    let fault = json!({"endpoint": "receipt", "status": 503, "retryAfter": "2", "times": 2});
    let (status, body) = sim.control(Method::POST, "/faults", Some(fault)).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(body["id"], 1);
    for _ in 0..2 {
        let resp = sim
            .om(Method::POST, "/v2/ecom/receipts/order-1", &token)
            .send_json(&receipt())
            .await
            .expect("answered");
        assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            resp.headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok()),
            Some("2")
        );
    }
    assert_eq!(
        sim.post_receipt(&token, "order-1", &receipt()).await.0,
        StatusCode::CREATED
    );
    let faults = sim.get_control("/faults").await;
    assert_eq!(faults[0]["remaining"], 0);

    // A fault with its own body answers that body; an msn filter limits it.
    let fault =
        json!({"endpoint": "token", "msn": DEMO_MSN, "status": 500, "body": {"error": "down"}});
    assert_eq!(
        sim.control(Method::POST, "/faults", Some(fault)).await.0,
        StatusCode::CREATED
    );
    let req = sim.token_request(
        DEMO_CLIENT_ID,
        DEMO_CLIENT_SECRET,
        DEMO_SUBSCRIPTION_KEY,
        DEMO_MSN,
    );
    assert_eq!(
        sim.send(req, None).await,
        (StatusCode::INTERNAL_SERVER_ERROR, json!({"error": "down"}))
    );
    let req = sim.token_request("nobody", "x", "y", "999999");
    assert_eq!(sim.send(req, None).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(
        sim.control(Method::DELETE, "/faults", None).await.0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(sim.get_control("/faults").await, json!([]));
    let req = sim.token_request(
        DEMO_CLIENT_ID,
        DEMO_CLIENT_SECRET,
        DEMO_SUBSCRIPTION_KEY,
        DEMO_MSN,
    );
    assert_eq!(sim.send(req, None).await.0, StatusCode::OK);

    let (status, _) = sim
        .control(
            Method::POST,
            "/faults",
            Some(json!({"endpoint": "nope", "status": 500})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

#[actix_web::test]
async fn a_delay_fault_delays_then_answers_normally() {
    let sim = spawn();
    let token = sim.token().await;
    let fault = json!({"endpoint": "order", "delayMs": 2000, "times": 1});
    assert_eq!(
        sim.control(Method::POST, "/faults", Some(fault)).await.0,
        StatusCode::CREATED
    );
    let mut delayed = Box::pin(sim.send(sim.om(Method::GET, "/v2/ecom/o-1", &token), None));
    // The first call has arrived (and taken the fault) while its answer is
    // still held.
    let sim_ref = &sim;
    let arrived = Box::pin(poll_until(
        "the delayed call at the simulator",
        || async move {
            let calls = sim_ref.get_control("/counters").await["calls"]["order"].as_u64();
            (calls == Some(1)).then_some(())
        },
    ));
    if let Either::Left(_) = select(delayed.as_mut(), arrived).await {
        panic!("the delayed call was answered before it was counted");
    }
    // The fault is used up: a second call, sent after the first, is
    // answered normally while the first is still held.
    let second = Box::pin(sim.send(sim.om(Method::GET, "/v2/ecom/o-1", &token), None));
    let ((status, _), delayed) = match select(second, delayed).await {
        Either::Left(done) => done,
        Either::Right(_) => panic!("the delayed call was answered before the undelayed one"),
    };
    assert_eq!(status, StatusCode::NOT_FOUND);
    // Then the delayed one is answered, normally.
    assert_eq!(delayed.await.0, StatusCode::NOT_FOUND);
    // The log says when each arrived, not when it was answered: the
    // delayed call first, though it was answered last.
    let log = sim.get_control("/requests").await;
    let at: Vec<u64> = log
        .as_array()
        .expect("the log is a list")
        .iter()
        .filter(|r| r["endpoint"] == "order")
        .map(|r| r["atMs"].as_u64().expect("the log says when"))
        .collect();
    assert_eq!(at.len(), 2, "{log}");
    // Logged as answered: the undelayed call first.
    let (second_at, delayed_at) = (at[0], at[1]);
    assert!(
        delayed_at <= second_at,
        "the delayed call arrived at {delayed_at}, the second at {second_at}"
    );
}

#[actix_web::test]
async fn a_drop_fault_breaks_the_response_without_storing() {
    let sim = spawn();
    let token = sim.token().await;
    let fault = json!({"endpoint": "receipt", "drop": true, "times": 1});
    assert_eq!(
        sim.control(Method::POST, "/faults", Some(fault)).await.0,
        StatusCode::CREATED
    );
    let outcome = match sim
        .om(Method::POST, "/v2/ecom/receipts/order-1", &token)
        .send_json(&receipt())
        .await
    {
        Err(e) => Err(format!("send: {e:?}")),
        Ok(mut resp) => match resp.body().await {
            Err(e) => Err(format!("body: {e:?}")),
            Ok(bytes) => Ok(bytes),
        },
    };
    assert!(
        outcome.is_err(),
        "the client must not get a complete response: {outcome:?}"
    );
    let state = sim.get_control("/state").await;
    assert_eq!(state["orders"], json!([]));
    let log = sim.get_control("/requests").await;
    assert_eq!(log[1]["endpoint"], "receipt");
    assert_eq!(log[1]["status"], 0);
    // The rule is used up: the retry succeeds.
    assert_eq!(
        sim.post_receipt(&token, "order-1", &receipt()).await.0,
        StatusCode::CREATED
    );
}

#[actix_web::test]
async fn an_after_store_fault_stores_then_fails() {
    let sim = spawn();
    let token = sim.token().await;
    let fault = json!({"endpoint": "receipt", "status": 503, "afterStore": true, "times": 1});
    assert_eq!(
        sim.control(Method::POST, "/faults", Some(fault)).await.0,
        StatusCode::CREATED
    );
    let (status, body) = sim.post_receipt(&token, "order-1", &receipt()).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body["detail"], "Injected fault");
    let state = sim.get_control("/state").await;
    assert_eq!(state["orders"][0]["orderId"], "order-1");
    assert_eq!(state["orders"][0]["paymentType"], "ecom");
    assert_eq!(state["orders"][0]["msn"], DEMO_MSN);
    assert_eq!(state["orders"][0]["receipt"], receipt());
    // The caller's retry now meets the stored receipt.
    assert_eq!(
        sim.post_receipt(&token, "order-1", &receipt()).await.0,
        StatusCode::CONFLICT
    );

    // Dropped after storing: the category is there although the client saw no answer.
    let fault = json!({"endpoint": "category", "drop": true, "afterStore": true});
    assert_eq!(
        sim.control(Method::POST, "/faults", Some(fault)).await.0,
        StatusCode::CREATED
    );
    let category = json!({"category": "GENERAL", "orderDetailsUrl": "https://shop.example"});
    let result = sim
        .om(Method::PUT, "/v2/ecom/categories/order-1", &token)
        .send_json(&category)
        .await;
    let complete = match result {
        Ok(mut resp) => resp.body().await.is_ok(),
        Err(_) => false,
    };
    assert!(!complete);
    let state = sim.get_control("/state").await;
    assert_eq!(state["orders"][0]["category"]["category"], "GENERAL");
}

#[actix_web::test]
async fn counters_and_request_log_record_every_call() {
    let sim = spawn();
    let token = sim.token().await;
    sim.post_receipt(&token, "order-1", &receipt()).await;
    sim.post_receipt(&token, "order-1", &receipt()).await;
    sim.send(sim.om(Method::GET, "/v2/ecom/order-1", &token), None)
        .await;
    sim.send(sim.om(Method::GET, "/v2/ecom/order-1", "bad"), None)
        .await;
    let counters = sim.get_control("/counters").await;
    assert_eq!(counters["calls"]["token"], 1);
    assert_eq!(counters["calls"]["receipt"], 2);
    assert_eq!(counters["calls"]["order"], 2);
    assert_eq!(counters["calls"]["image"], 0);
    assert_eq!(counters["tokenFetches"][DEMO_MSN], 1);
    assert_eq!(counters["tokenRejections"][DEMO_MSN], 1);

    let log = sim.get_control("/requests").await;
    let statuses: Vec<u64> = log
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|e| e["status"].as_u64())
        .collect();
    assert_eq!(statuses, [200, 201, 409, 200, 401]);
    let first_receipt = &log[1];
    assert_eq!(first_receipt["endpoint"], "receipt");
    assert_eq!(first_receipt["method"], "POST");
    assert_eq!(
        first_receipt["path"],
        "/order-management/v2/ecom/receipts/order-1"
    );
    assert_eq!(first_receipt["headers"]["merchant-serial-number"], DEMO_MSN);
    assert_eq!(
        first_receipt["headers"]["vipps-system-name"],
        "vipps-order-gateway"
    );
    assert_eq!(first_receipt["body"], receipt());
    assert_eq!(log[0]["body"], Value::Null);

    assert_eq!(
        sim.control(Method::DELETE, "/requests", None).await.0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(sim.get_control("/requests").await, json!([]));
}

#[actix_web::test]
async fn the_request_log_can_be_turned_off_while_counters_keep_counting() {
    let sim = spawn();
    let token = sim.token().await;
    let (status, body) = sim
        .control(Method::PUT, "/settings", Some(json!({"requestLog": false})))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body,
        json!({"tokenTtlSeconds": 3600, "requestLog": false, "maxOrders": 10_000})
    );
    assert_eq!(sim.get_control("/requests").await, json!([]));
    sim.post_receipt(&token, "order-1", &receipt()).await;
    assert_eq!(sim.get_control("/requests").await, json!([]));
    assert_eq!(sim.get_control("/counters").await["calls"]["receipt"], 1);

    let (status, _) = sim
        .control(Method::PUT, "/settings", Some(json!({"requestLog": true})))
        .await;
    assert_eq!(status, StatusCode::OK);
    sim.send(sim.om(Method::GET, "/v2/ecom/order-1", &token), None)
        .await;
    let log = sim.get_control("/requests").await;
    assert_eq!(log.as_array().map(Vec::len), Some(1));
    assert_eq!(log[0]["endpoint"], "order");

    // A settings body must set something.
    let (status, _) = sim.control(Method::PUT, "/settings", Some(json!({}))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

#[actix_web::test]
async fn reset_forgets_everything_but_merchants() {
    let sim = spawn();
    let added =
        json!({"msn": "7777", "clientId": "c7", "clientSecret": "s7", "subscriptionKey": "k7"});
    assert_eq!(
        sim.control(Method::POST, "/merchants", Some(added)).await.0,
        StatusCode::CREATED
    );
    let token = sim.token().await;
    sim.post_receipt(&token, "order-1", &receipt()).await;
    sim.post_image(&token, "logo", &png(200)).await;
    let link = json!({"orderId": "order-1", "paymentType": "ECOM", "type": "TICKET",
                      "url": "https://shop.example/t"});
    let req = sim.om(Method::POST, "/v3/categories", &token);
    assert_eq!(sim.send(req, Some(&link)).await.0, StatusCode::CREATED);
    sim.control(
        Method::POST,
        "/faults",
        Some(json!({"endpoint": "image", "status": 500})),
    )
    .await;

    assert_eq!(
        sim.control(Method::POST, "/reset", None).await.0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        sim.get_control("/state").await,
        json!({"orders": [], "images": [], "categories": []})
    );
    assert_eq!(sim.get_control("/faults").await, json!([]));
    assert_eq!(sim.get_control("/requests").await, json!([]));
    let counters = sim.get_control("/counters").await;
    assert_eq!(counters["tokenFetches"][DEMO_MSN], 0);
    assert_eq!(counters["calls"]["receipt"], 0);
    // Tokens are gone, merchants are not.
    assert_eq!(
        sim.send(sim.om(Method::GET, "/v2/ecom/order-1", &token), None)
            .await
            .0,
        StatusCode::UNAUTHORIZED
    );
    let added = SimMerchant {
        msn: "7777".to_owned(),
        client_id: "c7".to_owned(),
        client_secret: "s7".to_owned(),
        subscription_key: "k7".to_owned(),
    };
    assert!(!sim.token_for(&added).await.is_empty());
}

#[actix_web::test]
async fn order_lines_carry_tax_rate_or_tax_percentage_and_both_must_agree() {
    let sim = spawn();
    let token = sim.token().await;
    // Each shape alone is stored as sent; so is a line with both, agreeing.
    let shape = |percentage: Option<Value>, rate: Option<Value>| {
        let mut body = receipt();
        for line in body["orderLines"].as_array_mut().unwrap() {
            let line = line.as_object_mut().unwrap();
            line.remove("taxPercentage");
            if let Some(p) = &percentage {
                line.insert("taxPercentage".into(), p.clone());
            }
            if let Some(r) = &rate {
                line.insert("taxRate".into(), r.clone());
            }
        }
        body
    };
    let accepted = [
        shape(Some(json!(25)), None),
        shape(None, Some(json!(2500))),
        shape(Some(json!(25)), Some(json!(2500))),
        shape(Some(json!(null)), Some(json!(2500))),
    ];
    for (i, body) in accepted.iter().enumerate() {
        let (status, problem) = sim.post_receipt(&token, &format!("ok-{i}"), body).await;
        assert_eq!(status, StatusCode::CREATED, "{body}: {problem}");
        let (_, order) = sim
            .send(
                sim.om(Method::GET, &format!("/v2/ecom/ok-{i}"), &token),
                None,
            )
            .await;
        assert_eq!(order["receipt"], *body, "stored and returned as sent");
    }
    let refused = [
        (shape(None, None), "orderLines[0].taxRate"),
        (
            shape(Some(json!(null)), Some(json!(null))),
            "orderLines[0].taxRate",
        ),
        (
            shape(Some(json!(25)), Some(json!(2550))),
            "orderLines[0].taxRate",
        ),
        (shape(None, Some(json!(10001))), "orderLines[0].taxRate"),
        (shape(None, Some(json!(-1))), "orderLines[0].taxRate"),
        (shape(None, Some(json!(25.5))), "orderLines[0].taxRate"),
        (shape(None, Some(json!("2500"))), "orderLines[0].taxRate"),
    ];
    for (i, (body, name)) in refused.iter().enumerate() {
        let (status, problem) = sim.post_receipt(&token, &format!("bad-{i}"), body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {problem}");
        assert!(
            param_names(&problem).iter().any(|n| n == name),
            "{name}: {problem}"
        );
    }
}

#[actix_web::test]
async fn an_unknown_field_named_by_the_empty_string_is_named_in_quotes() {
    let sim = spawn();
    let token = sim.token().await;
    let mut body = receipt();
    body[""] = json!(1);
    body["orderLines"][0][""] = json!(1);
    let (status, problem) = sim.post_receipt(&token, "empty-name", &body).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{problem}");
    let names = param_names(&problem);
    assert!(names.iter().all(|n| !n.is_empty()), "{problem}");
    assert!(names.contains(&"\"\"".to_owned()), "{problem}");
    assert!(
        names.contains(&"orderLines[0].\"\"".to_owned()),
        "{problem}"
    );
}

#[actix_web::test]
async fn a_json_operation_sent_as_another_media_type_is_415() {
    let sim = spawn();
    let token = sim.token().await;
    let body = receipt().to_string();
    for media in [
        "text/plain",
        "application/x-www-form-urlencoded",
        "text/json",
    ] {
        let resp = sim
            .om(Method::POST, "/v2/ecom/receipts/media", &token)
            .content_type(media)
            .send_body(body.clone())
            .await
            .expect("sent");
        assert_eq!(resp.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE, "{media}");
    }
    let resp = sim
        .om(Method::POST, "/v2/ecom/receipts/media", &token)
        .content_type("application/json; charset=utf-8")
        .send_body(body)
        .await
        .expect("sent");
    assert_eq!(resp.status(), StatusCode::CREATED);
    let state = sim.get_control("/state").await;
    assert_eq!(state["orders"].as_array().map(Vec::len), Some(1));
}

/// A 2.1 `/v3/categories` request with a merchant's headers.
fn v3(sim: &Sim, method: Method, path: &str, token: &str, m: &SimMerchant) -> awc::ClientRequest {
    sim.client
        .request(
            method,
            sim.url(&format!("/order-management/v3/categories{path}")),
        )
        .insert_header(("Authorization", format!("Bearer {token}")))
        .insert_header(("Ocp-Apim-Subscription-Key", m.subscription_key.as_str()))
        .insert_header(("Merchant-Serial-Number", m.msn.as_str()))
}

#[actix_web::test]
async fn v3_categories_are_validated_and_bad_fields_named() {
    let sim = spawn();
    let demo = SimMerchant::demo();
    let token = sim.token().await;
    for (body, names) in [
        (json!({}), vec!["orderId", "paymentType", "type", "url"]),
        (
            json!({"orderId": "o 1", "paymentType": "ecom", "type": "SHOE",
                   "url": "shop.example", "imageId": null}),
            vec!["orderId", "paymentType", "type", "url", "imageId"],
        ),
        (
            json!({"orderId": "o-1", "paymentType": "ECOM", "type": "RECEIPT",
                   "url": "https://shop.example", "category": "RECEIPT"}),
            vec!["category"],
        ),
    ] {
        let req = v3(&sim, Method::POST, "", &token, &demo);
        let (status, answer) = sim.send(req, Some(&body)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(param_names(&answer), names, "{body}");
    }
    for query in ["", "?orderId=", "?orderId=a%20b"] {
        let req = v3(&sim, Method::GET, query, &token, &demo);
        let (status, answer) = sim.send(req, None).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}");
        assert_eq!(param_names(&answer), ["orderId"], "{query}");
    }
    for method in [Method::GET, Method::DELETE] {
        let req = v3(&sim, method, "/not-a-uuid", &token, &demo);
        let (status, answer) = sim.send(req, None).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(param_names(&answer), ["categoryId"]);
    }
    // Credentials are checked as on every Order Management endpoint.
    let req = v3(&sim, Method::GET, "?orderId=o-1", "sim.unknown", &demo);
    assert_eq!(sim.send(req, None).await.0, StatusCode::UNAUTHORIZED);
    assert!(sim.get_control("/state").await["categories"]
        .as_array()
        .unwrap()
        .is_empty());
}

#[actix_web::test]
async fn v3_categories_are_kept_per_merchant() {
    let sim = spawn_with(SimulatorSettings {
        merchants: vec![SimMerchant::demo(), second_merchant()],
        ..SimulatorSettings::demo()
    });
    let demo = SimMerchant::demo();
    let other = second_merchant();
    let token = sim.token().await;
    let other_token = sim.token_for(&other).await;
    let body = json!({"orderId": "o-1", "paymentType": "ECOM", "type": "TICKET",
                      "url": "https://shop.example/t"});
    let (status, added) = sim
        .send(v3(&sim, Method::POST, "", &token, &demo), Some(&body))
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let id = added["categoryId"].as_str().unwrap().to_owned();
    assert_eq!(added, json!({"categoryId": id}));

    // The other merchant sees nothing of it and cannot delete it.
    let path = format!("/{id}");
    for method in [Method::GET, Method::DELETE] {
        let req = v3(&sim, method, &path, &other_token, &other);
        assert_eq!(sim.send(req, None).await.0, StatusCode::NOT_FOUND);
    }
    let req = v3(&sim, Method::GET, "?orderId=o-1", &other_token, &other);
    assert_eq!(sim.send(req, None).await.1, json!({"categories": []}));

    let link = json!({"categoryId": id, "orderId": "o-1", "paymentType": "ECOM",
                      "type": "TICKET", "url": "https://shop.example/t"});
    let req = v3(&sim, Method::GET, "?orderId=o-1", &token, &demo);
    assert_eq!(sim.send(req, None).await.1, json!({"categories": [link]}));
    let (status, one) = sim
        .send(v3(&sim, Method::GET, &path, &token, &demo), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(one, link);
    let mut stored = link.clone();
    stored["msn"] = json!(DEMO_MSN);
    assert_eq!(
        sim.get_control("/state").await["categories"],
        json!([stored])
    );

    let (status, body) = sim
        .send(v3(&sim, Method::DELETE, &path, &token, &demo), None)
        .await;
    assert_eq!((status, body), (StatusCode::OK, Value::Null));
    let req = v3(&sim, Method::GET, &path, &token, &demo);
    assert_eq!(sim.send(req, None).await.0, StatusCode::NOT_FOUND);
    let req = v3(&sim, Method::DELETE, &path, &token, &demo);
    assert_eq!(sim.send(req, None).await.0, StatusCode::NOT_FOUND);
    let counters = sim.get_control("/counters").await;
    assert_eq!(counters["calls"]["v3-category-post"], 1);
    assert_eq!(counters["calls"]["v3-category-delete"], 3);
}

#[actix_web::test]
async fn past_max_orders_the_order_changed_longest_ago_is_forgotten_with_its_links() {
    let sim = spawn();
    let demo = SimMerchant::demo();
    let token = sim.token().await;
    let (status, body) = sim
        .control(Method::PUT, "/settings", Some(json!({"maxOrders": 2})))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["maxOrders"], 2);
    let order = |id: &str| sim.om(Method::GET, &format!("/v2/ecom/{id}"), &token);

    assert_eq!(
        sim.post_receipt(&token, "order-1", &receipt()).await.0,
        StatusCode::CREATED
    );
    assert_eq!(
        sim.post_receipt(&token, "order-2", &receipt()).await.0,
        StatusCode::CREATED
    );
    // A category is a change: order-1 is now the newer of the two.
    let category = json!({"category": "RECEIPT", "orderDetailsUrl": "https://shop.example/o/1"});
    let req = sim.om(Method::PUT, "/v2/ecom/categories/order-1", &token);
    assert_eq!(sim.send(req, Some(&category)).await.0, StatusCode::OK);
    // A 2.1 link to a third order: order-2 goes.
    let link = json!({"orderId": "order-3", "paymentType": "ECOM", "type": "TICKET",
                      "url": "https://shop.example/t"});
    let (status, added) = sim
        .send(v3(&sim, Method::POST, "", &token, &demo), Some(&link))
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let link_id = added["categoryId"].as_str().expect("categoryId").to_owned();
    assert_eq!(
        sim.send(order("order-2"), None).await.0,
        StatusCode::NOT_FOUND
    );
    let (status, kept) = sim.send(order("order-1"), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(kept["receipt"], receipt());
    assert_eq!(kept["category"]["category"], "RECEIPT");

    // A fourth order: order-1 goes, and may be stored again as new.
    assert_eq!(
        sim.post_receipt(&token, "order-4", &receipt()).await.0,
        StatusCode::CREATED
    );
    assert_eq!(
        sim.send(order("order-1"), None).await.0,
        StatusCode::NOT_FOUND
    );
    let req = v3(&sim, Method::GET, "?orderId=order-3", &token, &demo);
    assert_eq!(
        sim.send(req, None).await.1["categories"]
            .as_array()
            .map(Vec::len),
        Some(1)
    );

    // A lower bound forgets at once: order-3 and its link go.
    let (status, _) = sim
        .control(Method::PUT, "/settings", Some(json!({"maxOrders": 1})))
        .await;
    assert_eq!(status, StatusCode::OK);
    let req = v3(&sim, Method::GET, &format!("/{link_id}"), &token, &demo);
    assert_eq!(sim.send(req, None).await.0, StatusCode::NOT_FOUND);
    let req = v3(&sim, Method::GET, "?orderId=order-3", &token, &demo);
    assert_eq!(sim.send(req, None).await.1, json!({"categories": []}));
    let state = sim.get_control("/state").await;
    let held: Vec<&Value> = state["orders"]
        .as_array()
        .expect("orders")
        .iter()
        .map(|o| &o["orderId"])
        .collect();
    assert_eq!(held, [&json!("order-4")]);
    assert_eq!(state["categories"], json!([]));
    assert_eq!(sim.get_control("/counters").await["ordersForgotten"], 3);

    assert_eq!(
        sim.post_receipt(&token, "order-1", &receipt()).await.0,
        StatusCode::CREATED
    );
    assert_eq!(
        sim.send(order("order-4"), None).await.0,
        StatusCode::NOT_FOUND
    );
    let (status, body) = sim
        .control(Method::PUT, "/settings", Some(json!({"maxOrders": 0})))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
}
