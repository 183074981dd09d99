//! Body validation as the Order Management 2.1 document defines it, plus one
//! deliberate strictness: a field the document does not define is rejected by
//! name, so a misspelt field in the gateway fails its tests instead of being
//! silently dropped. An order line carries its VAT rate as `taxRate`
//! (hundredths of a percent, 2.1) or `taxPercentage` (whole percents, 2.0 and
//! deprecated in 2.1): at least one, and the two must agree when both are
//! given.
//!
//! Validation runs on the raw JSON value so that every error can name the field
//! by its JSON path as sent (`orderLines[1].totalTaxAmount`); the business rules
//! then run on the typed model.

use serde_json::{Map, Value};

use super::model::{InvalidParam, OrderCategory, Receipt};

pub mod v3;

/// A string rule: the test and the reason given when it fails.
type Pattern = (fn(&str) -> bool, &'static str);

/// The shape a JSON value must have.
enum Kind {
    Str {
        min: usize,
        max: Option<usize>,
        check: Option<Pattern>,
    },
    Int {
        min: Option<i64>,
        max: Option<i64>,
    },
    Bool,
    Enum(&'static [&'static str]),
    Object(&'static [Field]),
    Array {
        items: &'static Kind,
        min_items: usize,
    },
}

struct Field {
    name: &'static str,
    kind: Kind,
    required: bool,
    nullable: bool,
}

const fn field(name: &'static str, kind: Kind, required: bool, nullable: bool) -> Field {
    Field {
        name,
        kind,
        required,
        nullable,
    }
}

const ANY_STRING: Kind = Kind::Str {
    min: 0,
    max: None,
    check: None,
};
const AMOUNT: Kind = Kind::Int {
    min: Some(0),
    max: None,
};
const ANY_INT: Kind = Kind::Int {
    min: None,
    max: None,
};
const PERCENT: Kind = Kind::Int {
    min: Some(0),
    max: Some(100),
};
/// A rate in hundredths of a percent: 2550 is 25.5 %.
const RATE: Kind = Kind::Int {
    min: Some(0),
    max: Some(10_000),
};
/// A link: an absolute http(s) URL, by the gateway's own rule.
const ABSOLUTE_URL: Kind = Kind::Str {
    min: 1,
    max: None,
    check: Some((
        is_absolute_url,
        "must be an absolute http:// or https:// URL",
    )),
};
const ID_PATTERN: &str = "must match ^[0-9A-Za-z-_\\.]+$";
const IMAGE_ID: Kind = Kind::Str {
    min: 1,
    max: Some(128),
    check: Some((is_id, ID_PATTERN)),
};

const CATEGORIES: &[&str] = &[
    "GENERAL",
    "RECEIPT",
    "ORDER_CONFIRMATION",
    "DELIVERY",
    "TICKET",
    "BOOKING",
];

const ORDER: &[Field] = &[
    field("category", Kind::Enum(CATEGORIES), true, false),
    field("orderDetailsUrl", ABSOLUTE_URL, true, false),
    field("imageId", IMAGE_ID, false, true),
];

const IMAGE: &[Field] = &[
    field("imageId", IMAGE_ID, true, false),
    field("src", ANY_STRING, true, false),
    field("type", Kind::Enum(&["base64"]), true, false),
];

const UNIT_INFO: &[Field] = &[
    field("unitPrice", AMOUNT, true, true),
    field(
        "quantity",
        Kind::Str {
            min: 1,
            max: Some(10),
            check: Some((is_quantity, "must match ^\\d+([\\.]\\d{1,8})?$")),
        },
        true,
        false,
    ),
    field(
        "quantityUnit",
        Kind::Enum(&["PCS", "KG", "KM", "MINUTE", "LITRE", "KWH"]),
        false,
        true,
    ),
];

const ORDER_LINE: &[Field] = &[
    field("name", ANY_STRING, true, false),
    field("id", ANY_STRING, true, false),
    field("totalAmount", AMOUNT, true, false),
    field("totalAmountExcludingTax", AMOUNT, true, false),
    field("totalTaxAmount", AMOUNT, true, false),
    field("taxPercentage", PERCENT, false, true),
    field("taxRate", RATE, false, true),
    field("unitInfo", Kind::Object(UNIT_INFO), false, false),
    field("discount", AMOUNT, false, true),
    field("productUrl", ANY_STRING, false, true),
    field("isReturn", Kind::Bool, false, true),
    field("isShipping", Kind::Bool, false, true),
];

const SHIPPING_INFO: &[Field] = &[
    field("amount", AMOUNT, true, true),
    field("amountExcludingTax", AMOUNT, true, true),
    field("taxAmount", AMOUNT, true, true),
    field("taxPercentage", PERCENT, true, true),
];

const PAYMENT_SOURCES: &[Field] = &[
    field("giftCard", ANY_INT, false, true),
    field("card", ANY_INT, false, true),
    field("voucher", ANY_INT, false, true),
    field("cash", ANY_INT, false, true),
];

const BARCODE: &[Field] = &[
    field(
        "format",
        Kind::Enum(&["EAN-13", "CODE 39", "CODE 128"]),
        true,
        false,
    ),
    field("data", ANY_STRING, true, true),
];

const BOTTOM_LINE: &[Field] = &[
    field("currency", Kind::Enum(&["NOK", "DKK", "EUR"]), true, false),
    field("tipAmount", AMOUNT, false, true),
    field("giftCardAmount", AMOUNT, false, true),
    field("posId", ANY_STRING, false, true),
    field("totalAmount", ANY_INT, false, true),
    field("totalTax", AMOUNT, false, true),
    field("totalDiscount", AMOUNT, false, true),
    field("shippingAmount", AMOUNT, false, true),
    // 2.1 refers to these objects without `nullable` (unlike its scalar
    // fields): `null` is refused, as for `unitInfo`, so an order read never
    // answers a receipt that breaks the document.
    field("shippingInfo", Kind::Object(SHIPPING_INFO), false, false),
    field(
        "paymentSources",
        Kind::Object(PAYMENT_SOURCES),
        false,
        false,
    ),
    field("barcode", Kind::Object(BARCODE), false, false),
    field("receiptNumber", ANY_STRING, false, true),
    field("terminalId", ANY_STRING, false, true),
];

const RECEIPT: &[Field] = &[
    field(
        "orderLines",
        Kind::Array {
            items: &Kind::Object(ORDER_LINE),
            min_items: 1,
        },
        true,
        false,
    ),
    field("bottomLine", Kind::Object(BOTTOM_LINE), true, false),
];

/// `^[0-9A-Za-z-_\.]+$`, the pattern of `orderId` and `imageId`.
pub fn is_id(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

/// `^\d+([\.]\d{1,8})?$`, the pattern of `unitInfo.quantity`.
fn is_quantity(s: &str) -> bool {
    let (whole, fraction) = match s.split_once('.') {
        Some((w, f)) => (w, Some(f)),
        None => (s, None),
    };
    let digits = |p: &str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit());
    digits(whole) && fraction.is_none_or(|f| f.len() <= 8 && digits(f))
}

/// The gateway's own URL rule (`domain::check_url`), so the simulator never
/// stores a link its clients cannot parse back.
fn is_absolute_url(s: &str) -> bool {
    crate::domain::check_url(s).is_ok()
}

fn join(path: &str, name: &str) -> String {
    if path.is_empty() {
        name.to_owned()
    } else {
        format!("{path}.{name}")
    }
}

fn describe(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn check(value: &Value, kind: &Kind, path: &str, errors: &mut Vec<InvalidParam>) {
    let mut fail = |reason: String| errors.push(InvalidParam::new(path, reason));
    match kind {
        Kind::Str { min, max, check } => {
            let Value::String(s) = value else {
                return fail(format!("must be a string, not {}", describe(value)));
            };
            let len = s.chars().count();
            if len < *min {
                fail(format!("must be at least {min} characters long"));
            } else if let Some(max) = max.filter(|max| len > *max) {
                fail(format!("must be at most {max} characters long"));
            } else if let Some((ok, reason)) = check {
                if !ok(s) {
                    fail((*reason).to_owned());
                }
            }
        }
        Kind::Int { min, max } => {
            let Some(n) = value.as_i64() else {
                return fail(format!(
                    "must be an integer (int64), not {}",
                    match value {
                        Value::Number(n) => format!("the number {n}"),
                        other => describe(other).to_owned(),
                    }
                ));
            };
            if let Some(min) = min.filter(|min| n < *min) {
                fail(format!("must be at least {min}"));
            } else if let Some(max) = max.filter(|max| n > *max) {
                fail(format!("must be at most {max}"));
            }
        }
        Kind::Bool => {
            if !value.is_boolean() {
                fail(format!("must be a boolean, not {}", describe(value)));
            }
        }
        Kind::Enum(allowed) => match value.as_str() {
            Some(s) if allowed.contains(&s) => {}
            _ => fail(format!("must be one of {}", allowed.join(", "))),
        },
        Kind::Object(fields) => {
            let Value::Object(map) = value else {
                return fail(format!("must be an object, not {}", describe(value)));
            };
            check_object(map, fields, path, errors);
        }
        Kind::Array { items, min_items } => {
            let Value::Array(values) = value else {
                return fail(format!("must be an array, not {}", describe(value)));
            };
            if values.len() < *min_items {
                fail(format!("must hold at least {min_items} item(s)"));
            }
            for (i, item) in values.iter().enumerate() {
                check(item, items, &format!("{path}[{i}]"), errors);
            }
        }
    }
}

fn check_object(
    map: &Map<String, Value>,
    fields: &[Field],
    path: &str,
    errors: &mut Vec<InvalidParam>,
) {
    for f in fields {
        let name = join(path, f.name);
        match map.get(f.name) {
            None if f.required => errors.push(InvalidParam::new(name, "is required")),
            None => {}
            Some(Value::Null) if f.nullable => {}
            Some(Value::Null) => errors.push(InvalidParam::new(name, "must not be null")),
            Some(v) => check(v, &f.kind, &name, errors),
        }
    }
    for key in map.keys() {
        if !fields.iter().any(|f| f.name == key) {
            // A field named by the empty string is named `""`: an error's
            // `name` is never empty.
            let name = if key.is_empty() { "\"\"" } else { key };
            errors.push(InvalidParam::new(
                join(path, name),
                "unknown field: the API defines no such field (the simulator rejects unknown fields)",
            ));
        }
    }
}

fn check_root(body: &Value, fields: &[Field]) -> Vec<InvalidParam> {
    let mut errors = Vec::new();
    match body {
        Value::Object(map) => check_object(map, fields, "", &mut errors),
        other => errors.push(InvalidParam::new(
            "body",
            format!("must be a JSON object, not {}", describe(other)),
        )),
    }
    errors
}

/// Turns schema-valid JSON into the typed model; a failure here means the
/// schema above and the model disagree, which is reported rather than hidden.
fn typed<T: serde::de::DeserializeOwned>(body: &Value) -> Result<T, Vec<InvalidParam>> {
    serde_json::from_value(body.clone())
        .map_err(|e| vec![InvalidParam::new("body", format!("could not be read: {e}"))])
}

/// Validates a `Receipt` body.
pub fn receipt(body: &Value) -> Result<Receipt, Vec<InvalidParam>> {
    let errors = check_root(body, RECEIPT);
    if !errors.is_empty() {
        return Err(errors);
    }
    let receipt: Receipt = typed(body)?;
    let mut errors = Vec::new();
    for (i, line) in receipt.order_lines.iter().enumerate() {
        let at = |field: &str| format!("orderLines[{i}].{field}");
        if line
            .total_amount
            .checked_sub(line.total_amount_excluding_tax)
            != Some(line.total_tax_amount)
        {
            errors.push(InvalidParam::new(
                at("totalTaxAmount"),
                format!(
                    "totalAmount - totalAmountExcludingTax must equal totalTaxAmount ({} - {} != {})",
                    line.total_amount, line.total_amount_excluding_tax, line.total_tax_amount
                ),
            ));
        }
        match (line.tax_percentage, line.tax_rate) {
            (None, None) => errors.push(InvalidParam::new(
                at("taxRate"),
                "taxRate or taxPercentage is required",
            )),
            (Some(percent), Some(rate)) if percent * 100 != rate => {
                errors.push(InvalidParam::new(
                    at("taxRate"),
                    format!("must equal taxPercentage × 100 when both are given ({rate} != {percent} × 100)"),
                ));
            }
            _ => {}
        }
    }
    if errors.is_empty() {
        Ok(receipt)
    } else {
        Err(errors)
    }
}

/// Validates an `Order` body (category PUT, v1 order PUT).
pub fn order_category(body: &Value) -> Result<OrderCategory, Vec<InvalidParam>> {
    let errors = check_root(body, ORDER);
    if !errors.is_empty() {
        return Err(errors);
    }
    typed(body)
}

/// Validates the JSON shape of an `Image` body; the image bytes are checked by
/// [`super::image`].
pub fn image(body: &Value) -> Result<super::model::Image, Vec<InvalidParam>> {
    let errors = check_root(body, IMAGE);
    if !errors.is_empty() {
        return Err(errors);
    }
    typed(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantity_pattern_follows_the_document() {
        for ok in ["1", "0.822", "12.12345678", "2.5"] {
            assert!(is_quantity(ok), "{ok}");
        }
        for bad in ["", ".5", "1.", "1.123456789", "-1", "1,5", "1e3", "1.2.3"] {
            assert!(!is_quantity(bad), "{bad}");
        }
    }

    #[test]
    fn id_pattern_follows_the_document() {
        assert!(is_id("order-1_a.B"));
        assert!(!is_id(""));
        assert!(!is_id("a b"));
        assert!(!is_id("a/b"));
    }

    #[test]
    fn urls_must_be_absolute_http() {
        assert!(is_absolute_url("https://shop.example/o/1"));
        assert!(is_absolute_url("http://localhost:8080"));
        assert!(!is_absolute_url("ftp://shop.example"));
        assert!(!is_absolute_url("https://"));
        assert!(!is_absolute_url("/relative"));
        assert!(!is_absolute_url("https://a b"));
        assert!(!is_absolute_url("http://["));
    }
}
