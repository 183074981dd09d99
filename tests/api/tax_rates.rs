//! VAT rates with decimals (Order Management 2.1's `taxRate`) end to end:
//! what goes to Vipps under each `upstream.api_version`, the totals, and
//! receipts stored with either rate field read back and replayed.

use awc::http::Method;
use serde_json::{json, Value};

use crate::helpers::{spawn_app, spawn_app_with, spec_receipt, Options, MSN};

/// A Finnish receipt in EUR: the standard 25.5 %, the reduced 13.5 % and
/// 10 %, and fuel priced to the tenth of a cent.
fn finnish_receipt() -> Value {
    json!({
        "currency": "EUR",
        "lines": [
            {"id": "coat", "name": "Talvitakki", "unitPrice": "100.00", "taxPercent": "25.5"},
            {"id": "buns", "name": "Korvapuusti", "quantity": "2", "unitPrice": "3.20", "taxPercent": "25.5"},
            {"id": "bread", "name": "Ruisleipä", "totalAmount": "4.79", "taxPercent": "13.5"},
            {"id": "paper", "name": "Sanomalehti", "totalAmount": "3.50", "taxPercent": "10"},
            {"id": "fuel", "name": "95E10", "quantity": "41.37", "unit": "LITRE",
             "unitPrice": "1.899", "taxPercent": "25.5"}
        ],
        "expectedTotal": "193.25"
    })
}

/// (taxRate, totalAmount, totalTaxAmount, totalAmountExcludingTax) of each line.
fn amounts(receipt: &Value) -> Vec<(Value, i64, i64, i64)> {
    receipt["orderLines"]
        .as_array()
        .expect("order lines")
        .iter()
        .map(|l| {
            (
                l["taxRate"].clone(),
                l["totalAmount"].as_i64().unwrap(),
                l["totalTaxAmount"].as_i64().unwrap(),
                l["totalAmountExcludingTax"].as_i64().unwrap(),
            )
        })
        .collect()
}

#[actix_web::test]
async fn a_finnish_receipt_goes_to_vipps_with_tax_rates_in_hundredths() {
    let app = spawn_app().await;
    let a = app.post_receipt(MSN, "fi-1", &finnish_receipt()).await;
    assert_eq!(a.status, 201, "{}", a.body);
    let sent = app.sim_requests_to("receipt").await;
    let sent = &sent.last().expect("a receipt call")["body"];
    assert_eq!(
        amounts(sent),
        [
            (json!(2550), 10000, 2032, 7968),
            (json!(2550), 640, 130, 510),
            (json!(1350), 479, 57, 422),
            (json!(1000), 350, 32, 318),
            (json!(2550), 7856, 1596, 6260),
        ]
    );
    for line in sent["orderLines"].as_array().unwrap() {
        assert!(line.get("taxPercentage").is_none(), "{line}");
    }
    assert_eq!(a.body["receipt"], *sent, "the answer holds what was sent");
    let totals = &a.body["totals"];
    assert_eq!(totals["total"], "193.25");
    assert_eq!(totals["tax"], "38.47");
    assert_eq!(
        totals["byTaxPercent"],
        json!([
            {"taxPercent": "10", "gross": "3.50", "tax": "0.32", "excludingTax": "3.18"},
            {"taxPercent": "13.5", "gross": "4.79", "tax": "0.57", "excludingTax": "4.22"},
            {"taxPercent": "25.5", "gross": "184.96", "tax": "37.58", "excludingTax": "147.38"}
        ])
    );
    // Read back, the totals are the same.
    let read = app.get(&format!("/v1/merchants/{MSN}/orders/fi-1")).await;
    assert_eq!(read.status, 200, "{}", read.body);
    assert_eq!(read.body["totals"], *totals);
    assert_eq!(read.body["receipt"], *sent);
}

#[actix_web::test]
async fn order_management_2_0_sends_whole_percents_and_refuses_fractions() {
    let app = spawn_app_with(Options {
        api_version: "2.0",
        ..Options::default()
    })
    .await;
    let a = app.post_receipt(MSN, "old-1", &spec_receipt()).await;
    assert_eq!(a.status, 201, "{}", a.body);
    for line in a.body["receipt"]["orderLines"].as_array().unwrap() {
        assert_eq!(line["taxPercentage"], 25, "{line}");
        assert!(line.get("taxRate").is_none(), "{line}");
    }
    // A 2.0 Vipps has no category links: the order read does not ask.
    let read = app.get(&format!("/v1/merchants/{MSN}/orders/old-1")).await;
    assert_eq!(read.status, 200, "{}", read.body);
    assert_eq!(read.body["categories"], json!([]));
    assert!(app.sim_requests_to("v3-category-list").await.is_empty());
    let calls = app.upstream_call_count().await;
    let refused = app.post_receipt(MSN, "fi-1", &finnish_receipt()).await;
    refused.problem(422);
    assert_eq!(
        refused.invalid_names(),
        [
            "lines[0].taxPercent",
            "lines[1].taxPercent",
            "lines[2].taxPercent",
            "lines[4].taxPercent"
        ]
    );
    assert_eq!(app.upstream_call_count().await, calls, "no upstream call");
}

#[actix_web::test]
async fn a_receipt_stored_with_tax_percentage_is_the_same_receipt_under_2_1() {
    let app = spawn_app().await;
    // Another client stored the receipt through the proxy, in the 2.0 shape.
    let sent = app.post_receipt(MSN, "probe", &spec_receipt()).await.body["receipt"].clone();
    let mut old = sent.clone();
    for line in old["orderLines"].as_array_mut().unwrap() {
        let rate = line["taxRate"].as_u64().unwrap();
        let object = line.as_object_mut().unwrap();
        object.remove("taxRate");
        object.insert("taxPercentage".into(), json!(rate / 100));
    }
    let stored = app
        .proxy(Method::POST, "/v2/ecom/receipts/shared-1", Some(&old))
        .await;
    assert_eq!(stored.status, 201, "{}", stored.body);
    // The caller's retry through the façade meets it: the same receipt.
    let replay = app.post_receipt(MSN, "shared-1", &spec_receipt()).await;
    assert_eq!(replay.status, 201, "{}", replay.body);
    assert_eq!(replay.body["replayed"], true);
    let read = app
        .get(&format!("/v1/merchants/{MSN}/orders/shared-1"))
        .await;
    assert_eq!(read.body["receipt"], old, "Vipps keeps what was sent");
    assert_eq!(read.body["totals"], replay.body["totals"]);
    assert_eq!(read.body["totals"]["byTaxPercent"][0]["taxPercent"], "25");
    // A receipt that differs in its rate is a conflict, not a replay.
    let mut other = spec_receipt();
    other["lines"][1]["taxPercent"] = json!("25.5");
    other["expectedTotal"] = json!("447.00");
    let conflict = app.post_receipt(MSN, "shared-1", &other).await;
    conflict.problem(409);
    assert!(
        conflict.body["type"]
            .as_str()
            .unwrap()
            .ends_with("/receipt-conflict"),
        "{}",
        conflict.body
    );
}
