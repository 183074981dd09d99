//! The simulator's receipt pages (`/_simulator/orders`): what a calling
//! team sees of what it sent through the gateway.

use std::str::FromStr;

use awc::http::{Method, StatusCode};
use rust_decimal::Decimal;
use serde_json::{json, Value};

use crate::helpers::{answer, b64, png, spawn_app, spec_receipt, Answer, TestApp, MSN};

/// The page writes amounts and rates with no-break spaces so they never
/// wrap; the tests compare them as plain text.
const NBSP: char = '\u{a0}';

async fn page(app: &TestApp, path: &str, accept: &str) -> Answer {
    answer(
        app.client
            .get(format!("{}{path}", app.sim_address))
            .insert_header(("Accept", accept))
            .send()
            .await,
    )
    .await
}

async fn html(app: &TestApp, path: &str) -> Answer {
    let a = page(app, path, "text/html,application/xhtml+xml,*/*;q=0.8").await;
    assert!(
        a.content_type.starts_with("text/html"),
        "{path}: {}",
        a.content_type
    );
    a
}

async fn twin(app: &TestApp, order: &str) -> Value {
    let a = page(
        app,
        &format!("/_simulator/orders/{MSN}/ecom/{order}"),
        "application/json",
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.raw);
    assert!(
        a.content_type.starts_with("application/json"),
        "{}",
        a.content_type
    );
    a.body
}

/// A façade amount ("193.25") in minor units.
fn minor(decimal: &Value) -> i64 {
    use rust_decimal::prelude::ToPrimitive as _;
    let d = Decimal::from_str(decimal.as_str().expect("a decimal string")).expect("a decimal");
    let cents = d * Decimal::ONE_HUNDRED;
    assert!(cents.fract().is_zero(), "{d} has more than two decimals");
    cents.to_i64().expect("fits in i64")
}

fn finnish_receipt() -> Value {
    json!({"currency": "EUR",
      "lines": [
        {"id": "coat", "name": "Talvitakki", "unitPrice": "100.00", "taxPercent": "25.5"},
        {"id": "buns", "name": "Korvapuusti", "quantity": "2", "unitPrice": "3.20", "taxPercent": "25.5"},
        {"id": "bread", "name": "Ruisleipä", "totalAmount": "4.79", "taxPercent": "13.5"},
        {"id": "paper", "name": "Sanomalehti", "totalAmount": "3.50", "taxPercent": "10"},
        {"id": "fuel", "name": "95E10", "quantity": "41.37", "unit": "LITRE", "unitPrice": "1.899", "taxPercent": "25.5"},
        {"id": "mug", "name": "Returned mug", "totalAmount": "12.00", "taxPercent": "25.5", "isReturn": true}],
      "tip": "2.00",
      "barcode": {"format": "CODE 128", "data": "FI-0527-01"},
      "paymentSources": {"card": "183.25"}})
}

#[actix_web::test]
async fn a_receipt_is_laid_out_with_the_totals_the_gateway_computed() {
    let app = spawn_app().await;
    let sent = app.post_receipt(MSN, "order-fi", &finnish_receipt()).await;
    assert_eq!(sent.status, StatusCode::CREATED, "{}", sent.body);
    let totals = &sent.body["totals"];

    let view = twin(&app, "order-fi").await;
    let receipt = &view["receipt"];
    assert_eq!(receipt["currency"], "EUR");
    assert_eq!(view["receiptProblem"], Value::Null);
    let tip = minor(&json!("2.00"));
    assert_eq!(receipt["tip"]["minor"], tip);
    // The façade's total counts returns negative; so does the page, and
    // the customer paid it plus the tip.
    assert_eq!(receipt["subtotal"]["minor"], minor(&totals["total"]) - tip);
    assert_eq!(receipt["total"]["minor"], minor(&totals["total"]));
    assert_eq!(receipt["totalTax"]["minor"], minor(&totals["tax"]));
    let by_rate = totals["byTaxPercent"].as_array().expect("byTaxPercent");
    let vat = receipt["vat"].as_array().expect("vat");
    assert_eq!(vat.len(), by_rate.len());
    for (page_rate, facade_rate) in vat.iter().zip(by_rate) {
        let percent = Decimal::from_str(facade_rate["taxPercent"].as_str().expect("rate"))
            .expect("decimal rate");
        assert_eq!(
            Decimal::from(
                page_rate["rate"]["hundredths"]
                    .as_i64()
                    .expect("hundredths")
            ),
            percent * Decimal::ONE_HUNDRED
        );
        assert_eq!(page_rate["total"]["minor"], minor(&facade_rate["gross"]));
        assert_eq!(page_rate["tax"]["minor"], minor(&facade_rate["tax"]));
        assert_eq!(
            page_rate["excludingTax"]["minor"],
            minor(&facade_rate["excludingTax"])
        );
    }
    // Each line is the one Vipps holds, a return subtracted.
    let stored = &app.sim_state().await["orders"][0]["receipt"]["orderLines"];
    let lines = receipt["lines"].as_array().expect("lines");
    assert_eq!(
        lines.len(),
        finnish_receipt()["lines"].as_array().map_or(0, Vec::len)
    );
    for (line, vipps) in lines.iter().zip(stored.as_array().expect("stored lines")) {
        let sign = if vipps["isReturn"] == true { -1 } else { 1 };
        assert_eq!(line["name"], vipps["name"]);
        assert_eq!(
            line["total"]["minor"],
            sign * vipps["totalAmount"].as_i64().expect("amount")
        );
        assert_eq!(line["rate"]["hundredths"], vipps["taxRate"]);
        assert_eq!(
            line["isReturn"],
            vipps["isReturn"].as_bool().unwrap_or(false)
        );
    }
    let fuel = lines.iter().find(|l| l["id"] == "fuel").expect("fuel line");
    assert_eq!(fuel["quantity"], "41,37");
    assert_eq!(fuel["unit"], "l");

    // The page shows every figure of its twin, and the barcode drawn.
    let page = html(&app, "/_simulator/orders/123456/ecom/order-fi").await;
    assert_eq!(page.status, StatusCode::OK);
    let mut figures = vec![&receipt["total"]["text"], &receipt["totalTax"]["text"]];
    for line in lines {
        figures.extend([&line["name"], &line["total"]["text"], &line["rate"]["text"]]);
    }
    for v in vat {
        figures.extend([
            &v["tax"]["text"],
            &v["excludingTax"]["text"],
            &v["total"]["text"],
        ]);
    }
    for figure in figures {
        let text = figure.as_str().expect("text");
        assert!(page.raw.contains(text), "the page lacks {text:?}");
    }
    assert!(receipt["total"]["text"]
        .as_str()
        .is_some_and(|t| t.contains(NBSP) && t.ends_with('€')));
    assert_eq!(receipt["barcode"]["format"], "CODE 128");
    assert_eq!(receipt["barcode"]["problem"], Value::Null);
    assert!(page.raw.contains("<svg"), "no barcode drawn");
    assert!(page.raw.contains("FI-0527-01"));
    assert!(page.raw.contains("in memory"));
    // What the gateway computed adds up, so the app would show it right.
    assert_eq!(view["warnings"], json!([]));
    assert!(!page.raw.contains("id=\"warnings\""));
}

#[actix_web::test]
async fn the_index_lists_every_order_and_says_its_state_is_in_memory() {
    let app = spawn_app().await;
    let empty = html(&app, "/_simulator/orders").await;
    assert_eq!(empty.status, StatusCode::OK);
    assert!(empty.raw.contains("No orders yet"));
    assert!(empty.raw.contains("in memory"));

    let sent = app.post_receipt(MSN, "order-1", &spec_receipt()).await;
    assert_eq!(sent.status, StatusCode::CREATED, "{}", sent.body);
    let link = json!({"category": "TICKET", "url": "https://shop.example/tickets/7"});
    let added = app
        .post_json(
            &format!("/v1/merchants/{MSN}/orders/links-only/categories"),
            &link,
        )
        .await;
    assert_eq!(added.status, StatusCode::CREATED, "{}", added.body);
    let category = json!({"category": "RECEIPT", "url": "https://shop.example/o/2"});
    let put = app
        .put_json(
            &format!("/v1/merchants/{MSN}/orders/order-2/category?paymentType=recurring"),
            &category,
        )
        .await;
    assert_eq!(put.status, StatusCode::OK, "{}", put.body);

    let index = html(&app, "/_simulator/orders").await;
    for (payment_type, order) in [
        ("ecom", "order-1"),
        ("ecom", "links-only"),
        ("recurring", "order-2"),
    ] {
        let href = format!("href=\"/_simulator/orders/{MSN}/{payment_type}/{order}\"");
        assert!(index.raw.contains(&href), "the index lacks {href}");
        let linked = html(
            &app,
            &format!("/_simulator/orders/{MSN}/{payment_type}/{order}"),
        )
        .await;
        assert_eq!(linked.status, StatusCode::OK, "{order}");
    }
    let paid = twin(&app, "order-1").await["receipt"]["total"]["text"].clone();
    assert!(
        index.raw.contains(paid.as_str().expect("text")),
        "the index shows what was paid"
    );
    assert!(
        index.raw.contains("1 link"),
        "the link-only order counts its link"
    );
    assert!(index.raw.contains("in memory"));

    let links_only = twin(&app, "links-only").await;
    assert_eq!(links_only["receipt"], Value::Null);
    assert_eq!(links_only["links"][0]["category"], "TICKET");
    assert_eq!(
        links_only["links"][0]["categoryId"],
        added.body["categoryId"]
    );
}

#[actix_web::test]
async fn markup_in_a_receipt_is_shown_as_text_and_no_script_may_run() {
    let app = spawn_app().await;
    let mut receipt = spec_receipt();
    receipt["lines"][0]["name"] = json!("<script>alert(1)</script>");
    receipt["posId"] = json!("\"><img src=x onerror=alert(3)>");
    let sent = app.post_receipt(MSN, "order-x", &receipt).await;
    assert_eq!(sent.status, StatusCode::CREATED, "{}", sent.body);
    // The gateway refuses a product URL that is not http(s); Vipps (and the
    // simulator) take any string, so a caller of the proxy can send one.
    let mut vipps_receipt = sent.body["receipt"].clone();
    vipps_receipt["orderLines"][0]["productUrl"] = json!("javascript:alert(2)");
    let proxied = app
        .proxy(
            Method::POST,
            "/v2/ecom/receipts/order-y",
            Some(&vipps_receipt),
        )
        .await;
    assert_eq!(proxied.status, StatusCode::CREATED, "{}", proxied.body);

    let page = html(&app, "/_simulator/orders/123456/ecom/order-x").await;
    assert!(
        page.raw
            .contains("&#60;script&#62;alert(1)&#60;/script&#62;")
            || page.raw.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
        "{}",
        page.raw
    );
    assert!(
        !page.raw.contains("<script"),
        "a script element reached the page"
    );
    assert!(
        !page.raw.contains("<img"),
        "an element of the data reached the page"
    );
    let csp = page
        .headers
        .get("content-security-policy")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    assert!(
        csp.contains("default-src 'none'") && !csp.contains("script-src"),
        "{csp}"
    );
    assert_eq!(
        page.headers
            .get("x-content-type-options")
            .and_then(|v| v.to_str().ok()),
        Some("nosniff")
    );
    let proxied_page = html(&app, "/_simulator/orders/123456/ecom/order-y").await;
    assert!(
        !proxied_page.raw.contains("href=\"javascript:"),
        "a javascript: link"
    );
    assert!(
        proxied_page.raw.contains("javascript:alert(2)"),
        "the URL is shown as text"
    );
    let index = html(&app, "/_simulator/orders").await;
    assert!(!index.raw.contains("<script"));
}

#[actix_web::test]
async fn an_unknown_order_is_404_as_a_page_and_as_json() {
    let app = spawn_app().await;
    let sent = app.post_receipt(MSN, "order-1", &spec_receipt()).await;
    assert_eq!(sent.status, StatusCode::CREATED, "{}", sent.body);
    for path in [
        "/_simulator/orders/123456/ecom/order-2",
        "/_simulator/orders/654321/ecom/order-1",
        "/_simulator/orders/123456/recurring/order-1",
        "/_simulator/orders/123456/Ecom/order-1",
    ] {
        let page = html(&app, path).await;
        assert_eq!(page.status, StatusCode::NOT_FOUND, "{path}");
        assert!(page.raw.contains("No such order"), "{path}");
        let json = page_json(&app, path).await;
        assert_eq!(json.status, StatusCode::NOT_FOUND, "{path}");
        assert_eq!(json.body["title"], "Not Found");
    }
    // 2.1's spelling of the payment type names the same order.
    let upper = page_json(&app, "/_simulator/orders/123456/ECOM/order-1").await;
    assert_eq!(upper.status, StatusCode::OK);
    assert_eq!(upper.body, twin(&app, "order-1").await);
}

async fn page_json(app: &TestApp, path: &str) -> Answer {
    page(app, path, "application/json").await
}

#[actix_web::test]
async fn a_barcode_its_format_cannot_carry_is_explained_not_drawn() {
    let app = spawn_app().await;
    // The README's EAN-13 example has a wrong check digit (it ends in 4).
    let mut receipt = spec_receipt();
    receipt["barcode"] = json!({"format": "EAN-13", "data": "7040512345678"});
    let sent = app.post_receipt(MSN, "bad-ean", &receipt).await;
    assert_eq!(sent.status, StatusCode::CREATED, "{}", sent.body);
    receipt["barcode"] = json!({"format": "EAN-13", "data": "7040512345674"});
    let sent = app.post_receipt(MSN, "good-ean", &receipt).await;
    assert_eq!(sent.status, StatusCode::CREATED, "{}", sent.body);

    let bad = twin(&app, "bad-ean").await;
    assert!(bad["receipt"]["barcode"]["problem"]
        .as_str()
        .is_some_and(|p| p.contains("checksum")));
    let bad_page = html(&app, "/_simulator/orders/123456/ecom/bad-ean").await;
    assert!(!bad_page.raw.contains("<svg") && bad_page.raw.contains("Not drawn"));
    let good_page = html(&app, "/_simulator/orders/123456/ecom/good-ean").await;
    assert_eq!(good_page.raw.matches("<svg").count(), 1);
    assert!(good_page.raw.contains("7040512345674"));
}

#[actix_web::test]
async fn a_receipt_of_many_lines_is_laid_out_whole() {
    let app = spawn_app().await;
    let lines: Vec<Value> = (0..500)
        .map(|i| json!({"id": format!("sku-{i}"), "name": format!("Item {i}"),
                        "quantity": "3", "unitPrice": "12.34", "taxPercent": if i % 2 == 0 { "25" } else { "15" }}))
        .collect();
    let sent = app
        .post_receipt(MSN, "big", &json!({"currency": "NOK", "lines": lines}))
        .await;
    assert_eq!(sent.status, StatusCode::CREATED, "{}", sent.body);
    let view = twin(&app, "big").await;
    assert_eq!(view["receipt"]["lines"].as_array().map(Vec::len), Some(500));
    assert_eq!(
        view["receipt"]["total"]["minor"],
        minor(&sent.body["totals"]["total"])
    );
    let page = html(&app, "/_simulator/orders/123456/ecom/big").await;
    assert_eq!(page.raw.matches("<tr class=\"line\">").count(), 500);
    // Grouped by thousands with no-break spaces: 500 × 37.02 NOK.
    let total = view["receipt"]["total"]["text"].as_str().expect("text");
    assert!(total.contains(NBSP) && page.raw.contains(total), "{total}");
}

/// Where `needle` first occurs in `haystack`, for order checks.
fn position(haystack: &str, needle: &str) -> usize {
    haystack
        .find(needle)
        .unwrap_or_else(|| panic!("{needle:?} is missing"))
}

#[actix_web::test]
async fn the_index_is_newest_first_filters_by_msn_and_order_id_and_has_a_json_twin() {
    let app = spawn_app().await;
    for order in ["order-a", "order-b", "order-c"] {
        let sent = app.post_receipt(MSN, order, &spec_receipt()).await;
        assert_eq!(sent.status, StatusCode::CREATED, "{}", sent.body);
    }
    // A link added later makes order-a the newest.
    let link = json!({"category": "TICKET", "url": "https://shop.example/tickets/a"});
    let added = app
        .post_json(
            &format!("/v1/merchants/{MSN}/orders/order-a/categories"),
            &link,
        )
        .await;
    assert_eq!(added.status, StatusCode::CREATED, "{}", added.body);

    let index = page(&app, "/_simulator/orders", "application/json").await;
    assert_eq!(index.status, StatusCode::OK, "{}", index.raw);
    assert!(index.content_type.starts_with("application/json"));
    let ids: Vec<&str> = index.body["orders"]
        .as_array()
        .expect("orders")
        .iter()
        .filter_map(|o| o["orderId"].as_str())
        .collect();
    assert_eq!(ids, ["order-a", "order-c", "order-b"]);
    assert_eq!(index.body["total"], 3);
    assert!(index.body["inMemory"]
        .as_str()
        .is_some_and(|t| t.contains("in memory")));
    let newest = &index.body["orders"][0];
    assert_eq!(newest["msn"], MSN);
    assert_eq!(newest["paymentType"], "ecom");
    assert_eq!(newest["hasReceipt"], true);
    assert_eq!(newest["links"], 1);
    assert_eq!(newest["category"], Value::Null);
    assert_eq!(newest["href"], "/_simulator/orders/123456/ecom/order-a");
    let when = newest["updatedAt"].as_str().expect("updatedAt");
    assert!(
        when.len() == 24 && when.ends_with('Z') && when.starts_with("20"),
        "{when}"
    );

    let html_index = html(&app, "/_simulator/orders").await;
    let (a, c, b) = (
        position(&html_index.raw, "/ecom/order-a\""),
        position(&html_index.raw, "/ecom/order-c\""),
        position(&html_index.raw, "/ecom/order-b\""),
    );
    assert!(a < c && c < b, "not newest first");
    assert!(html_index.raw.contains(" UTC</td>"), "no time shown");
    assert!(html_index.raw.contains("in memory"));
    assert!(html_index
        .raw
        .contains("<form class=\"filter\" method=\"get\""));

    let by_order = page(&app, "/_simulator/orders?orderId=der-c", "application/json").await;
    assert_eq!(by_order.body["total"], 1);
    assert_eq!(by_order.body["orders"][0]["orderId"], "order-c");
    let by_msn = page(
        &app,
        &format!("/_simulator/orders?msn={MSN}&orderId="),
        "application/json",
    )
    .await;
    assert_eq!(by_msn.body["total"], 3);
    let other = page(&app, "/_simulator/orders?msn=654321", "application/json").await;
    assert_eq!(other.body["total"], 0);
    assert_eq!(other.body["orders"], json!([]));

    let filtered = html(&app, "/_simulator/orders?orderId=%22%3E%3Cb%3Ex").await;
    assert!(filtered.raw.contains("No order matches"));
    assert!(
        !filtered.raw.contains("\"><b>x"),
        "the filter's value is escaped"
    );
    let csp = filtered
        .headers
        .get("content-security-policy")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    assert!(csp.contains("form-action 'self'"), "{csp}");
}

/// The bytes and content type of a GET to the simulator.
async fn fetch(app: &TestApp, path: &str) -> (StatusCode, String, Vec<u8>) {
    let mut resp = app
        .client
        .get(format!("{}{path}", app.sim_address))
        .send()
        .await
        .expect("the simulator answers");
    let content_type = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let body = resp.body().await.expect("a body");
    (resp.status(), content_type, body.to_vec())
}

#[actix_web::test]
async fn an_uploaded_image_is_served_and_shown_and_a_missing_one_is_warned_about() {
    let app = spawn_app().await;
    let with_image = json!({"category": "RECEIPT", "url": "https://shop.example/o/1",
                            "image": {"data": b64(&png(300)), "imageId": "logo-1"}});
    let put = app
        .put_json(
            &format!("/v1/merchants/{MSN}/orders/order-1/category"),
            &with_image,
        )
        .await;
    assert_eq!(put.status, StatusCode::OK, "{}", put.body);
    let shown =
        json!({"category": "BOOKING", "url": "https://shop.example/book/1", "imageId": "logo-1"});
    let missing = json!({"category": "DELIVERY", "url": "https://shop.example/track/1", "imageId": "never-sent"});
    for link in [&shown, &missing] {
        let added = app
            .post_json(
                &format!("/v1/merchants/{MSN}/orders/order-1/categories"),
                link,
            )
            .await;
        assert_eq!(added.status, StatusCode::CREATED, "{}", added.body);
    }

    let (status, content_type, bytes) = fetch(&app, "/_simulator/images/123456/logo-1").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(content_type, "image/png");
    assert_eq!(bytes, png(300), "the image as uploaded");
    let (status, _, _) = fetch(&app, "/_simulator/images/123456/never-sent").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _, _) = fetch(&app, "/_simulator/images/654321/logo-1").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "another merchant's image");

    let view = twin(&app, "order-1").await;
    assert_eq!(view["category"]["category"], "RECEIPT");
    assert_eq!(view["category"]["url"], "https://shop.example/o/1");
    assert_eq!(view["category"]["image"]["imageId"], "logo-1");
    assert_eq!(view["category"]["image"]["uploaded"]["height"], 300);
    assert_eq!(view["links"][1]["image"]["uploaded"], Value::Null);
    assert_eq!(view["receipt"], Value::Null);
    let src = "/_simulator/images/123456/logo-1";
    assert_eq!(view["category"]["image"]["src"], src);
    assert_eq!(view["category"]["button"], "See receipt");
    assert_eq!(view["links"][0]["image"]["src"], src);
    assert_eq!(view["links"][0]["button"], "See booking");
    assert_eq!(view["links"][1]["image"]["src"], Value::Null);
    assert_eq!(view["links"][1]["button"], "Track delivery");
    let warnings = view["warnings"].as_array().expect("warnings");
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert_eq!(warnings[0]["kind"], "image-missing");
    assert!(warnings[0]["message"]
        .as_str()
        .is_some_and(|m| m.contains("never-sent")));

    let page = html(&app, "/_simulator/orders/123456/ecom/order-1").await;
    assert_eq!(
        page.raw.matches(&format!("<img src=\"{src}\"")).count(),
        2,
        "the category's and the link's image"
    );
    assert!(page.raw.contains("Image never-sent is missing"));
    assert!(page.raw.contains("PNG, 300 px high"));
    assert!(page.raw.contains("not uploaded"));
    assert!(page.raw.contains("No receipt yet"));
    assert!(page.raw.contains(">Track delivery</a>"));
    let csp = page
        .headers
        .get("content-security-policy")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    assert!(csp.contains("img-src 'self'"), "{csp}");
}

#[actix_web::test]
async fn figures_the_app_would_show_oddly_are_warned_about() {
    let app = spawn_app().await;
    // Sent through the proxy: the façade computes figures that add up, a
    // caller of Vipps' own API may not.
    let receipt = json!({
        "orderLines": [
            {"name": "<b>Wrong VAT</b>", "id": "vat", "totalAmount": 10000,
             "totalAmountExcludingTax": 9000, "totalTaxAmount": 1000, "taxRate": 2500},
            {"name": "Wrong amount", "id": "amount", "totalAmount": 30000,
             "totalAmountExcludingTax": 24000, "totalTaxAmount": 6000, "taxRate": 2500,
             "unitInfo": {"unitPrice": 19900, "quantity": "2", "quantityUnit": "PCS"}},
            {"name": "Rounded", "id": "ok", "totalAmount": 53,
             "totalAmountExcludingTax": 42, "totalTaxAmount": 11, "taxRate": 2500,
             "unitInfo": {"unitPrice": 35, "quantity": "1.5", "quantityUnit": "KG"}}
        ],
        "bottomLine": {"currency": "NOK", "totalTax": 7000,
                       "paymentSources": {"card": 40000}}
    });
    let proxied = app
        .proxy(Method::POST, "/v2/ecom/receipts/odd", Some(&receipt))
        .await;
    assert_eq!(proxied.status, StatusCode::CREATED, "{}", proxied.body);

    let view = twin(&app, "odd").await;
    let kinds: Vec<(&str, Option<i64>)> = view["warnings"]
        .as_array()
        .expect("warnings")
        .iter()
        .map(|w| (w["kind"].as_str().unwrap_or(""), w["line"].as_i64()))
        .collect();
    assert_eq!(
        kinds,
        [
            ("line-vat", Some(0)),
            ("line-amount", Some(1)),
            ("total", None),
            ("total", None)
        ]
    );
    let messages: Vec<String> = view["warnings"]
        .as_array()
        .expect("warnings")
        .iter()
        .filter_map(|w| w["message"].as_str())
        .map(|m| m.replace(NBSP, " "))
        .collect();
    assert!(
        messages[0].contains("VAT 10,00 kr is not 25 % of 100,00 kr"),
        "{messages:?}"
    );
    assert!(
        messages[1].contains("is 398,00 kr, but the line's amount is 300,00 kr"),
        "{messages:?}"
    );
    assert!(
        messages[2].contains("payment sources add up to 400,00 kr"),
        "{messages:?}"
    );
    assert!(
        messages[3].contains("totalTax is 70,00 kr, but the lines' VAT adds up to 70,11 kr"),
        "{messages:?}"
    );

    let page = html(&app, "/_simulator/orders/123456/ecom/odd").await;
    assert!(page.raw.contains("id=\"warnings\""));
    assert_eq!(page.raw.matches("<li class=\"warning ").count(), 4);
    assert!(
        !page.raw.contains("<b>Wrong"),
        "a name in a warning is escaped"
    );

    // The README's example, through the façade: nothing to warn about.
    let sent = app.post_receipt(MSN, "fine", &spec_receipt()).await;
    assert_eq!(sent.status, StatusCode::CREATED, "{}", sent.body);
    assert_eq!(twin(&app, "fine").await["warnings"], json!([]));
}
