//! The receipt arithmetic of SPEC §3 over HTTP: what the caller gets back
//! and what the simulator (the upstream) received, line by line.

use rust_decimal::Decimal;
use serde_json::{json, Value};

use crate::helpers::{spawn_app, spec_receipt, TestApp, MSN};

/// One façade line and the upstream amounts it must become.
struct Case {
    name: &'static str,
    line: Value,
    /// `(totalAmount, totalTaxAmount, totalAmountExcludingTax)` in øre.
    amounts: (i64, i64, i64),
    /// The upstream `unitInfo`, or `None` when it must be absent.
    unit_info: Option<Value>,
    /// The upstream `discount` in øre.
    discount: i64,
}

fn case(
    name: &'static str,
    line: Value,
    amounts: (i64, i64, i64),
    unit_info: Option<Value>,
    discount: i64,
) -> Case {
    Case {
        name,
        line,
        amounts,
        unit_info,
        discount,
    }
}

fn unit_info(unit_price: i64, quantity: &str, unit: &str) -> Option<Value> {
    Some(json!({"unitPrice": unit_price, "quantity": quantity, "quantityUnit": unit}))
}

/// The façade line with the required `id` and `name` added.
fn line(mut fields: Value) -> Value {
    fields["id"] = json!("line-1");
    fields["name"] = json!("Item");
    fields
}

#[allow(clippy::too_many_lines)]
fn cases() -> Vec<Case> {
    vec![
        // The seven worked examples of SPEC §3.
        case(
            "spec: 2 x 199.00 @ 25",
            line(json!({"quantity": "2", "unitPrice": "199.00", "taxPercent": "25"})),
            (39800, 7960, 31840),
            unit_info(19900, "2", "PCS"),
            0,
        ),
        case(
            "spec: 0.822 x 149.90 @ 15",
            line(
                json!({"quantity": "0.822", "unit": "KG", "unitPrice": "149.90", "taxPercent": "15"}),
            ),
            (12322, 1607, 10715),
            unit_info(14990, "0.822", "KG"),
            0,
        ),
        case(
            "spec: 1.5 x 0.35 @ 25",
            line(json!({"quantity": "1.5", "unitPrice": "0.35", "taxPercent": "25"})),
            (53, 11, 42),
            unit_info(35, "1.5", "PCS"),
            0,
        ),
        case(
            "spec: 1 x 0.12 @ 60 (tax 4.5 rounds away from zero)",
            line(json!({"quantity": "1", "unitPrice": "0.12", "taxPercent": "60"})),
            (12, 5, 7),
            unit_info(12, "1", "PCS"),
            0,
        ),
        case(
            "spec: 3 x 0.10 @ 25",
            line(json!({"quantity": "3", "unitPrice": "0.10", "taxPercent": "25"})),
            (30, 6, 24),
            unit_info(10, "3", "PCS"),
            0,
        ),
        case(
            "spec: totalAmount 49 @ 25",
            line(json!({"totalAmount": "49", "taxPercent": "25"})),
            (4900, 980, 3920),
            None,
            0,
        ),
        case(
            "spec: 2 x 100.00 - 50.00 discount @ 12",
            line(
                json!({"quantity": "2", "unitPrice": "100.00", "discount": "50.00", "taxPercent": "12"}),
            ),
            (15000, 1607, 13393),
            unit_info(10000, "2", "PCS"),
            5000,
        ),
        // Further lines, computed with Python's decimal (ROUND_HALF_UP on
        // absolute values).
        case(
            "fractional KG: 1.234 x 89.90 @ 15 (110.9366)",
            line(
                json!({"quantity": "1.234", "unit": "KG", "unitPrice": "89.90", "taxPercent": "15"}),
            ),
            (11094, 1447, 9647),
            unit_info(8990, "1.234", "KG"),
            0,
        ),
        case(
            "0 %: 3 x 45.50 @ 0",
            line(json!({"quantity": "3", "unitPrice": "45.50", "taxPercent": "0"})),
            (13650, 0, 13650),
            unit_info(4550, "3", "PCS"),
            0,
        ),
        case(
            "12 %: 1 x 129.00 @ 12",
            line(json!({"quantity": "1", "unitPrice": "129.00", "taxPercent": "12"})),
            (12900, 1382, 11518),
            unit_info(12900, "1", "PCS"),
            0,
        ),
        case(
            "15 %: 4 x 24.90 @ 15",
            line(json!({"quantity": "4", "unitPrice": "24.90", "taxPercent": "15"})),
            (9960, 1299, 8661),
            unit_info(2490, "4", "PCS"),
            0,
        ),
        case(
            "discount: 3 x 59.90 - 29.90 @ 25",
            line(
                json!({"quantity": "3", "unitPrice": "59.90", "discount": "29.90", "taxPercent": "25"}),
            ),
            (14980, 2996, 11984),
            unit_info(5990, "3", "PCS"),
            2990,
        ),
        case(
            "shipping: totalAmount 79.00 @ 25, isShipping",
            line(json!({"totalAmount": "79.00", "taxPercent": "25", "isShipping": true})),
            (7900, 1580, 6320),
            None,
            0,
        ),
        case(
            "return: 1 x 299.00 @ 25, isReturn stays positive upstream",
            line(
                json!({"quantity": "1", "unitPrice": "299.00", "taxPercent": "25", "isReturn": true}),
            ),
            (29900, 5980, 23920),
            unit_info(29900, "1", "PCS"),
            0,
        ),
        case(
            "JSON numbers: 2 x 19.99 @ 25",
            line(json!({"quantity": 2, "unitPrice": 19.99, "taxPercent": 25})),
            (3998, 800, 3198),
            unit_info(1999, "2", "PCS"),
            0,
        ),
        case(
            "JSON number read exactly: 1 x 1.005 @ 25 (the half-way case of a number)",
            line(json!({"quantity": 1, "unitPrice": 1.005, "taxPercent": 25})),
            (101, 20, 81),
            unit_info(101, "1", "PCS"),
            0,
        ),
        case(
            "6-decimal unitPrice: 412.5 KWH x 1.234567 @ 25 (509.2588875)",
            line(
                json!({"quantity": "412.5", "unit": "KWH", "unitPrice": "1.234567", "taxPercent": "25"}),
            ),
            (50926, 10185, 40741),
            unit_info(123, "412.5", "KWH"),
            0,
        ),
        case(
            "fuel: 45.67 LITRE x 21.349 @ 25 (975.00883)",
            line(
                json!({"quantity": "45.67", "unit": "LITRE", "unitPrice": "21.349", "taxPercent": "25"}),
            ),
            (97501, 19500, 78001),
            unit_info(2135, "45.67", "LITRE"),
            0,
        ),
        case(
            "unitPrice and totalAmount agree: 2 x 12.50 = 25.00 @ 25",
            line(
                json!({"quantity": "2", "unitPrice": "12.50", "totalAmount": "25.00", "taxPercent": "25"}),
            ),
            (2500, 500, 2000),
            unit_info(1250, "2", "PCS"),
            0,
        ),
        case(
            "half-way gross: 0.5 x 0.25 = 0.125 @ 25",
            line(json!({"quantity": "0.5", "unitPrice": "0.25", "taxPercent": "25"})),
            (13, 3, 10),
            unit_info(25, "0.5", "PCS"),
            0,
        ),
        case(
            "half-way tax: totalAmount 0.14 @ 12 (tax 1.5)",
            line(json!({"totalAmount": "0.14", "taxPercent": "12"})),
            (14, 2, 12),
            None,
            0,
        ),
        case(
            "trailing zeros dropped: 1.500 LITRE x 19.90 @ 25",
            line(
                json!({"quantity": "1.500", "unit": "LITRE", "unitPrice": "19.90", "taxPercent": "25"}),
            ),
            (2985, 597, 2388),
            unit_info(1990, "1.5", "LITRE"),
            0,
        ),
        case(
            "rounds up to a whole krone: 0.333 x 3.00 @ 25 (0.999)",
            line(json!({"quantity": "0.333", "unitPrice": "3.00", "taxPercent": "25"})),
            (100, 20, 80),
            unit_info(300, "0.333", "PCS"),
            0,
        ),
        case(
            "default quantity 1 and a rate written 25.00",
            line(json!({"unitPrice": "0.01", "taxPercent": "25.00"})),
            (1, 0, 1),
            unit_info(1, "1", "PCS"),
            0,
        ),
        case(
            "MINUTE: 7 x 0.07 @ 25",
            line(
                json!({"quantity": "7", "unit": "MINUTE", "unitPrice": "0.07", "taxPercent": "25"}),
            ),
            (49, 10, 39),
            unit_info(7, "7", "MINUTE"),
            0,
        ),
    ]
}

/// A line's `taxPercent` as Order Management 2.1's `taxRate`: hundredths of
/// a percent.
fn rate_of(line: &Value) -> u64 {
    let rate = &line["taxPercent"];
    let text = rate
        .as_str()
        .map_or_else(|| rate.to_string(), str::to_owned);
    let percent: Decimal = text.parse().expect("a decimal rate");
    (percent * Decimal::from(100))
        .normalize()
        .to_string()
        .parse()
        .expect("a rate of at most two decimals")
}

/// The last receipt POST the simulator logged for `order` (ecom).
async fn sent_receipt(app: &TestApp, payment_type: &str, order: &str) -> Value {
    let path = format!("/order-management/v2/{payment_type}/receipts/{order}");
    let mut sent: Vec<Value> = app
        .sim_requests_to("receipt")
        .await
        .into_iter()
        .filter(|r| r["path"] == path.as_str())
        .collect();
    assert_eq!(sent.len(), 1, "one receipt POST to {path}: {sent:?}");
    sent.pop().unwrap()
}

#[actix_web::test]
async fn each_line_becomes_exactly_the_upstream_amounts() {
    let app = spawn_app().await;
    for (i, c) in cases().into_iter().enumerate() {
        let order = format!("arith-{i}");
        let resp = app
            .post_receipt(MSN, &order, &json!({"currency": "NOK", "lines": [c.line]}))
            .await;
        assert_eq!(resp.status, 201, "{}: {}", c.name, resp.body);
        let got = &resp.body["receipt"]["orderLines"][0];
        let (gross, tax, excl) = c.amounts;
        assert_eq!(
            (
                got["totalAmount"].as_i64(),
                got["totalTaxAmount"].as_i64(),
                got["totalAmountExcludingTax"].as_i64()
            ),
            (Some(gross), Some(tax), Some(excl)),
            "{}: {got}",
            c.name
        );
        assert_eq!(got["taxRate"], rate_of(&c.line), "{}", c.name);
        assert!(got.get("taxPercentage").is_none(), "{}: {got}", c.name);
        assert_eq!(got["discount"], c.discount, "{}", c.name);
        assert_eq!(
            got["isShipping"],
            c.line["isShipping"].as_bool().unwrap_or(false),
            "{}",
            c.name
        );
        assert_eq!(
            got["isReturn"],
            c.line["isReturn"].as_bool().unwrap_or(false),
            "{}",
            c.name
        );
        match &c.unit_info {
            Some(info) => assert_eq!(&got["unitInfo"], info, "{}", c.name),
            None => assert!(
                got.get("unitInfo").is_none_or(Value::is_null),
                "{}: a totalAmount-only line has no unitInfo: {got}",
                c.name
            ),
        }

        // The simulator received exactly that line, and only that one.
        let sent = sent_receipt(&app, "ecom", &order).await;
        assert_eq!(sent["status"], 201, "{}", c.name);
        let lines = sent["body"]["orderLines"].as_array().expect("orderLines");
        assert_eq!(lines.len(), 1, "{}", c.name);
        assert_eq!(&lines[0], got, "{}: sent upstream", c.name);
        assert_eq!(
            sent["body"], resp.body["receipt"],
            "{}: the response is the receipt sent",
            c.name
        );
    }
}

#[actix_web::test]
async fn the_spec_receipt_is_sent_with_its_bottom_line_and_totals() {
    let app = spawn_app().await;
    let resp = app.post_receipt(MSN, "spec-1", &spec_receipt()).await;
    assert_eq!(resp.status, 201, "{}", resp.body);
    assert_eq!(
        resp.body["totals"],
        json!({"total": "447.00", "tax": "89.40", "byTaxPercent": [
            {"taxPercent": "25", "gross": "447.00", "tax": "89.40", "excludingTax": "357.60"}
        ]})
    );
    assert_eq!(resp.body["replayed"], false);

    let sent = sent_receipt(&app, "ecom", "spec-1").await;
    let body = &sent["body"];
    assert_eq!(
        body["bottomLine"],
        json!({
            "currency": "NOK",
            "tipAmount": 0,
            "posId": "pos-7",
            "paymentSources": {"card": 44700},
            "barcode": {"format": "EAN-13", "data": "7040512345678"},
            "receiptNumber": "0527013501"
        })
    );
    assert_eq!(
        body["orderLines"],
        json!([
            {"name": "Socks", "id": "sku-1", "totalAmount": 39800,
             "totalAmountExcludingTax": 31840, "totalTaxAmount": 7960, "taxRate": 2500,
             "unitInfo": {"unitPrice": 19900, "quantity": "2", "quantityUnit": "PCS"},
             "discount": 0, "productUrl": "https://shop.example/socks",
             "isReturn": false, "isShipping": false},
            {"name": "Home delivery", "id": "ship", "totalAmount": 4900,
             "totalAmountExcludingTax": 3920, "totalTaxAmount": 980, "taxRate": 2500,
             "discount": 0, "isReturn": false, "isShipping": true}
        ])
    );
    assert_eq!(*body, resp.body["receipt"]);
}

#[actix_web::test]
async fn totals_are_per_rate_in_rate_order_with_returns_negative_and_tip_in_total_only() {
    let app = spawn_app().await;
    // Rates deliberately out of order; 6 sorts after 25 as text, before 12 as a number.
    let body = json!({
        "currency": "NOK",
        "lines": [
            {"id": "a", "name": "Jacket", "quantity": "2", "unitPrice": "100.00", "taxPercent": "25"},
            {"id": "b", "name": "Bread", "unitPrice": "50.00", "taxPercent": "15"},
            {"id": "c", "name": "Returned cap", "unitPrice": "30.00", "taxPercent": "25", "isReturn": true},
            {"id": "d", "name": "Book", "unitPrice": "21.20", "taxPercent": "6"},
            {"id": "e", "name": "Bus ticket", "totalAmount": "11.20", "taxPercent": "12"}
        ],
        "tip": "10.00",
        "expectedTotal": "262.40"
    });
    let resp = app.post_receipt(MSN, "multi-rate", &body).await;
    assert_eq!(resp.status, 201, "{}", resp.body);
    assert_eq!(
        resp.body["totals"],
        json!({"total": "262.40", "tax": "42.92", "byTaxPercent": [
            {"taxPercent": "6", "gross": "21.20", "tax": "1.20", "excludingTax": "20.00"},
            {"taxPercent": "12", "gross": "11.20", "tax": "1.20", "excludingTax": "10.00"},
            {"taxPercent": "15", "gross": "50.00", "tax": "6.52", "excludingTax": "43.48"},
            {"taxPercent": "25", "gross": "170.00", "tax": "34.00", "excludingTax": "136.00"}
        ]})
    );
    let sent = sent_receipt(&app, "ecom", "multi-rate").await;
    assert_eq!(sent["body"]["bottomLine"]["tipAmount"], 1000);
    let returned = &sent["body"]["orderLines"][2];
    assert_eq!(returned["isReturn"], true);
    assert_eq!(returned["totalAmount"], 3000);
    assert_eq!(returned["totalTaxAmount"], 600);
}

#[actix_web::test]
async fn expected_total_counts_return_lines_negative() {
    let app = spawn_app().await;
    let lines = json!([
        {"id": "a", "name": "Shoes", "unitPrice": "100.00", "taxPercent": "25"},
        {"id": "r", "name": "Returned socks", "totalAmount": "40.00", "taxPercent": "25", "isReturn": true}
    ]);
    let resp = app
        .post_receipt(
            MSN,
            "with-return",
            &json!({"currency": "NOK", "lines": lines, "expectedTotal": "60.00"}),
        )
        .await;
    assert_eq!(resp.status, 201, "{}", resp.body);
    assert_eq!(resp.body["totals"]["total"], "60.00");
    assert_eq!(resp.body["totals"]["tax"], "12.00");
    let sent = sent_receipt(&app, "ecom", "with-return").await;
    assert_eq!(sent["body"]["orderLines"][1]["totalAmount"], 4000);
    assert_eq!(sent["body"]["orderLines"][1]["isReturn"], true);

    // A receipt of returns only has a negative expected total.
    let resp = app
        .post_receipt(
            MSN,
            "only-return",
            &json!({"currency": "NOK", "expectedTotal": "-40.00", "lines": [
                {"id": "r", "name": "Returned socks", "totalAmount": "40.00", "taxPercent": "25", "isReturn": true}
            ]}),
        )
        .await;
    assert_eq!(resp.status, 201, "{}", resp.body);
    assert_eq!(resp.body["totals"]["total"], "-40.00");
}

/// A receipt the gateway must refuse with 422 naming `field`, before any
/// upstream call (no token fetch either).
async fn assert_unprocessable(app: &TestApp, label: &str, body: &Value, field: &str) {
    let resp = app.post_receipt(MSN, "refused", body).await;
    let problem = resp.problem(422);
    assert!(
        problem["type"]
            .as_str()
            .unwrap()
            .ends_with("/unprocessable"),
        "{label}: {problem}"
    );
    assert_eq!(resp.invalid_names(), vec![field.to_owned()], "{label}");
    assert_eq!(
        app.upstream_call_count().await,
        0,
        "{label}: no upstream call"
    );
}

fn one_line(fields: Value) -> Value {
    json!({"currency": "NOK", "lines": [line(fields)]})
}

#[actix_web::test]
async fn receipts_that_cannot_be_translated_are_422_naming_the_field() {
    let app = spawn_app().await;
    let cases = [
        (
            "unitPrice and totalAmount disagree",
            one_line(
                json!({"quantity": "2", "unitPrice": "12.50", "totalAmount": "25.01", "taxPercent": "25"}),
            ),
            "lines[0].totalAmount",
        ),
        (
            "a rate with more than two decimals",
            one_line(json!({"totalAmount": "10", "taxPercent": "12.555"})),
            "lines[0].taxPercent",
        ),
        (
            "taxPercent above 100",
            one_line(json!({"totalAmount": "10", "taxPercent": "101"})),
            "lines[0].taxPercent",
        ),
        (
            "discount larger than the line",
            one_line(
                json!({"quantity": "2", "unitPrice": "10.00", "discount": "20.01", "taxPercent": "25"}),
            ),
            "lines[0].discount",
        ),
        (
            "negative quantity",
            one_line(json!({"quantity": "-1", "unitPrice": "10.00", "taxPercent": "25"})),
            "lines[0].quantity",
        ),
        (
            "zero quantity",
            one_line(json!({"quantity": "0", "unitPrice": "10.00", "taxPercent": "25"})),
            "lines[0].quantity",
        ),
        (
            "quantity with 9 decimals",
            one_line(json!({"quantity": "1.123456789", "unitPrice": "10.00", "taxPercent": "25"})),
            "lines[0].quantity",
        ),
        (
            "quantity longer than 10 characters",
            one_line(json!({"quantity": "123456.1234", "unitPrice": "1", "taxPercent": "25"})),
            "lines[0].quantity",
        ),
        (
            "negative unitPrice",
            one_line(json!({"quantity": "1", "unitPrice": "-10.00", "taxPercent": "25"})),
            "lines[0].unitPrice",
        ),
        (
            "unitPrice with 7 decimals",
            one_line(json!({"unitPrice": "1.2345678", "taxPercent": "25"})),
            "lines[0].unitPrice",
        ),
        (
            "negative totalAmount",
            one_line(json!({"totalAmount": "-49", "taxPercent": "25"})),
            "lines[0].totalAmount",
        ),
        (
            "totalAmount with more decimals than NOK has",
            one_line(json!({"totalAmount": "49.001", "taxPercent": "25"})),
            "lines[0].totalAmount",
        ),
        (
            "discount with more decimals than NOK has",
            one_line(
                json!({"quantity": "2", "unitPrice": "10.00", "discount": "1.005", "taxPercent": "25"}),
            ),
            "lines[0].discount",
        ),
        (
            "overflow-sized totalAmount",
            one_line(json!({"totalAmount": "99999999999999", "taxPercent": "25"})),
            "lines[0].totalAmount",
        ),
        (
            "quantity x unitPrice overflows",
            one_line(
                json!({"quantity": "99999999", "unitPrice": "999999999999", "taxPercent": "25"}),
            ),
            "lines[0].unitPrice",
        ),
        (
            "tip with more decimals than NOK has",
            json!({"currency": "NOK", "tip": "0.001",
                   "lines": [line(json!({"totalAmount": "10", "taxPercent": "25"}))]}),
            "tip",
        ),
        (
            "expectedTotal mismatch",
            json!({"currency": "NOK", "expectedTotal": "50.00",
                   "lines": [line(json!({"totalAmount": "49", "taxPercent": "25"}))]}),
            "expectedTotal",
        ),
        (
            "expectedTotal that counts a return positive",
            json!({"currency": "NOK", "expectedTotal": "140.00", "lines": [
                {"id": "a", "name": "Shoes", "unitPrice": "100.00", "taxPercent": "25"},
                {"id": "r", "name": "Returned socks", "totalAmount": "40.00",
                 "taxPercent": "25", "isReturn": true}
            ]}),
            "expectedTotal",
        ),
        ("no lines", json!({"currency": "NOK", "lines": []}), "lines"),
        (
            "more than 1000 lines",
            json!({"currency": "NOK",
                   "lines": vec![line(json!({"totalAmount": "1", "taxPercent": "25"})); 1001]}),
            "lines",
        ),
        (
            "empty line name",
            json!({"currency": "NOK", "lines": [
                {"id": "a", "name": " ", "totalAmount": "1", "taxPercent": "25"}
            ]}),
            "lines[0].name",
        ),
        (
            "neither unitPrice nor totalAmount",
            one_line(json!({"quantity": "2", "taxPercent": "25"})),
            "lines[0].unitPrice",
        ),
        (
            "negative tip",
            json!({"currency": "NOK", "tip": "-1.00",
                   "lines": [line(json!({"totalAmount": "10", "taxPercent": "25"}))]}),
            "tip",
        ),
        (
            "negative payment source",
            json!({"currency": "NOK", "paymentSources": {"card": "-10.00"},
                   "lines": [line(json!({"totalAmount": "10", "taxPercent": "25"}))]}),
            "paymentSources.card",
        ),
        (
            "a productUrl with a bracketed host",
            one_line(json!({"totalAmount": "10", "taxPercent": "25", "productUrl": "http://[::1"})),
            "lines[0].productUrl",
        ),
        (
            "a productUrl with user info",
            one_line(
                json!({"totalAmount": "10", "taxPercent": "25", "productUrl": "https://u:p@shop.example/"}),
            ),
            "lines[0].productUrl",
        ),
    ];
    for (label, body, field) in &cases {
        assert_unprocessable(&app, label, body, field).await;
    }
}

#[actix_web::test]
async fn every_untranslatable_field_is_named_in_one_answer() {
    let app = spawn_app().await;
    let body = json!({"currency": "NOK", "tip": "0.001", "lines": [
        {"id": "a", "name": "A", "totalAmount": "10", "taxPercent": "12.555"},
        {"id": "b", "name": "B", "unitPrice": "10.00", "discount": "10.01", "taxPercent": "25"}
    ]});
    let resp = app.post_receipt(MSN, "many-faults", &body).await;
    resp.problem(422);
    assert_eq!(
        resp.invalid_names(),
        ["lines[0].taxPercent", "lines[1].discount", "tip"]
    );
    assert_eq!(app.upstream_call_count().await, 0);
}

#[actix_web::test]
async fn a_recurring_receipt_goes_to_the_recurring_endpoint() {
    let app = spawn_app().await;
    let resp = app
        .post_json(
            &format!("/v1/merchants/{MSN}/orders/sub-1/receipt?paymentType=recurring"),
            &spec_receipt(),
        )
        .await;
    assert_eq!(resp.status, 201, "{}", resp.body);
    let sent = sent_receipt(&app, "recurring", "sub-1").await;
    assert_eq!(sent["method"], "POST");
    assert_eq!(sent["status"], 201);
    assert_eq!(sent["body"], resp.body["receipt"]);

    // Case-insensitive, sent upstream in lower case.
    let resp = app
        .post_json(
            &format!("/v1/merchants/{MSN}/orders/sub-2/receipt?paymentType=RECURRING"),
            &spec_receipt(),
        )
        .await;
    assert_eq!(resp.status, 201, "{}", resp.body);
    sent_receipt(&app, "recurring", "sub-2").await;
    assert!(app
        .sim_requests_to("receipt")
        .await
        .iter()
        .all(|r| r["path"]
            .as_str()
            .unwrap()
            .contains("/v2/recurring/receipts/")));
}

/// A JSON number with more digits than a double holds is read from its text:
/// as an f64, 99999999999.994999 would become 99999999999.995 and round up.
#[actix_web::test]
async fn json_numbers_are_read_exactly_not_through_floating_point() {
    let app = spawn_app().await;
    let body = br#"{"currency":"NOK","lines":[{"id":"x","name":"Big","quantity":1,"unitPrice":99999999999.994999,"taxPercent":25}]}"#;
    let a = app
        .send_raw(
            awc::http::Method::POST,
            "/v1/merchants/123456/orders/exact-1/receipt",
            "application/json",
            body.to_vec(),
        )
        .await;
    assert_eq!(a.status, 201, "{}", a.body);
    let line = &a.body["receipt"]["orderLines"][0];
    assert_eq!(line["unitInfo"]["unitPrice"], 9_999_999_999_999_i64);
    assert_eq!(line["totalAmount"], 9_999_999_999_999_i64);
    assert_eq!(line["totalTaxAmount"], 2_000_000_000_000_i64);
    assert_eq!(line["totalAmountExcludingTax"], 7_999_999_999_999_i64);
}
