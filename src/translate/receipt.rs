//! Façade receipt → Vipps receipt: minor units, VAT per line, totals.
//!
//! Per line, in integer minor units:
//! `gross = round(quantity × unitPrice) − discount` (or the given
//! `totalAmount`), `tax = round(gross × rate / (10000 + rate))` with the rate
//! in hundredths of a percent (25.5 % is 2550), `excl = gross − tax`, all
//! rounded half away from zero, so `excl + tax == gross` always.

use std::borrow::Cow;
use std::collections::BTreeMap;

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use super::money::{
    div_round_half_away, format_minor, format_plain, parse_decimal, parse_non_negative, plain_text,
    to_minor, Currency, DecimalError, DecimalText,
};
use super::Text;
use crate::domain::ApiVersion;
use crate::error::InvalidParam;
use crate::vipps::model::{
    Barcode, BarcodeFormat, BottomLine, OrderLine, PaymentSources, QuantityUnit, Receipt, UnitInfo,
};

/// The façade's receipt request.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ReceiptRequest<'a> {
    pub currency: Currency,
    #[serde(borrow)]
    pub lines: Vec<LineRequest<'a>>,
    #[serde(default, borrow)]
    pub tip: Option<DecimalText<'a>>,
    #[serde(default, borrow)]
    pub pos_id: Option<Text<'a>>,
    #[serde(default, borrow)]
    pub receipt_number: Option<Text<'a>>,
    #[serde(default, borrow)]
    pub barcode: Option<BarcodeRequest<'a>>,
    #[serde(default, borrow)]
    pub payment_sources: Option<PaymentSourcesRequest<'a>>,
    #[serde(default, borrow)]
    pub expected_total: Option<DecimalText<'a>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LineRequest<'a> {
    #[serde(borrow)]
    pub id: Text<'a>,
    #[serde(borrow)]
    pub name: Text<'a>,
    #[serde(borrow)]
    pub tax_percent: DecimalText<'a>,
    #[serde(default, borrow)]
    pub quantity: Option<DecimalText<'a>>,
    #[serde(default)]
    pub unit: Option<QuantityUnit>,
    #[serde(default, borrow)]
    pub unit_price: Option<DecimalText<'a>>,
    #[serde(default, borrow)]
    pub total_amount: Option<DecimalText<'a>>,
    #[serde(default, borrow)]
    pub discount: Option<DecimalText<'a>>,
    #[serde(default, borrow)]
    pub product_url: Option<Text<'a>>,
    #[serde(default)]
    pub is_return: bool,
    #[serde(default)]
    pub is_shipping: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BarcodeRequest<'a> {
    pub format: BarcodeFormat,
    #[serde(borrow)]
    pub data: Text<'a>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PaymentSourcesRequest<'a> {
    #[serde(default, borrow)]
    pub gift_card: Option<DecimalText<'a>>,
    #[serde(default, borrow)]
    pub card: Option<DecimalText<'a>>,
    #[serde(default, borrow)]
    pub voucher: Option<DecimalText<'a>>,
    #[serde(default, borrow)]
    pub cash: Option<DecimalText<'a>>,
}

/// Sums of a receipt, as decimal strings in major units.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Totals {
    pub total: String,
    pub tax: String,
    pub by_tax_percent: Vec<RateTotals>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RateTotals {
    pub tax_percent: String,
    pub gross: String,
    pub tax: String,
    pub excluding_tax: String,
}

/// What a receipt request is refused for: each field at fault. A syntax
/// error is a 400; everything else (a well-formed value the gateway cannot
/// turn into a valid upstream receipt) is a 422.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    pub syntax: bool,
    pub params: Vec<InvalidParam>,
}

/// Most decimals `unitPrice` may carry (fuel, electricity).
const UNIT_PRICE_DECIMALS: u32 = 6;
/// Most decimals and characters of a quantity, as the upstream's `unitInfo.quantity`.
const QUANTITY_DECIMALS: u32 = 8;
const QUANTITY_MAX_CHARS: usize = 10;
/// Free-text fields are bounded so a receipt stays a receipt.
const TEXT_MAX_CHARS: usize = 256;
/// Most lines in one receipt.
pub const MAX_LINES: usize = 1000;

struct Collector {
    syntax: bool,
    params: Vec<InvalidParam>,
}

impl Collector {
    fn fail(&mut self, name: String, reason: impl Into<String>) {
        self.params.push(InvalidParam::new(name, reason));
    }

    fn decimal(&mut self, name: String, err: DecimalError) {
        if err == DecimalError::Syntax {
            self.syntax = true;
        }
        self.fail(name, err.reason());
    }

    /// A non-negative amount in minor units of `currency`. The field's
    /// name is built only when it is at fault.
    fn amount(
        &mut self,
        name: impl FnOnce() -> String,
        text: &DecimalText,
        currency: Currency,
    ) -> Option<i64> {
        match parse_non_negative(&text.0, currency.decimals()) {
            Ok(v) => to_minor(v, currency.decimals()).or_else(|| {
                self.fail(name(), "is too large");
                None
            }),
            Err(e) => {
                self.decimal(name(), e);
                None
            }
        }
    }

    fn text(&mut self, name: impl FnOnce() -> String, value: &str, required: bool) {
        // ASCII text (the usual) is measured and checked byte by byte.
        let (chars, control) = if value.is_ascii() {
            (value.len(), value.bytes().any(|b| b < 0x20 || b == 0x7f))
        } else {
            (value.chars().count(), value.chars().any(char::is_control))
        };
        if required && value.trim().is_empty() {
            self.fail(name(), "must not be empty");
        } else if chars > TEXT_MAX_CHARS {
            self.fail(
                name(),
                format!("must be at most {TEXT_MAX_CHARS} characters"),
            );
        } else if control {
            self.fail(name(), "must not contain control characters");
        }
    }
}

/// Builds the upstream receipt from the façade request, or names every
/// field that prevents it.
pub fn build_receipt<'a>(
    req: &'a ReceiptRequest<'_>,
    version: ApiVersion,
) -> Result<Receipt<'a>, Rejected> {
    let mut c = Collector {
        syntax: false,
        params: Vec::new(),
    };
    let cur = req.currency;
    if req.lines.is_empty() {
        c.fail("lines".into(), "must hold at least one line");
    }
    if req.lines.len() > MAX_LINES {
        c.fail(
            "lines".into(),
            format!("must hold at most {MAX_LINES} lines"),
        );
    }
    let mut order_lines = Vec::with_capacity(req.lines.len());
    let mut signed_sum: i128 = 0;
    for (i, line) in req.lines.iter().enumerate() {
        let errors_before = c.params.len();
        let built = build_line(&mut c, i, line, cur, version);
        if built.is_none() && c.params.len() == errors_before {
            // Every refusal names its field; a line is never dropped silently.
            c.fail(format!("lines[{i}]"), "cannot be translated");
        }
        if let Some(built) = built {
            let sign = if line.is_return { -1 } else { 1 };
            signed_sum += sign * i128::from(built.total_amount);
            order_lines.push(built);
        }
    }
    let tip = req
        .tip
        .as_ref()
        .and_then(|t| c.amount(|| "tip".into(), t, cur))
        .unwrap_or(0);
    if let Some(expected) = &req.expected_total {
        // The expected total may be negative: a receipt of returns only.
        match parse_decimal(&expected.0, cur.decimals()) {
            Ok(v) => {
                let want = to_minor(v, cur.decimals());
                let got = signed_sum + i128::from(tip);
                if c.params.is_empty() && want.map(i128::from) != Some(got) {
                    let got = i64::try_from(got)
                        .map_or_else(|_| got.to_string(), |g| format_minor(g, cur.decimals()));
                    c.fail(
                        "expectedTotal".into(),
                        format!("is {expected} but the lines and tip add up to {got}"),
                    );
                }
            }
            Err(e) => c.decimal("expectedTotal".into(), e),
        }
    }
    if let Some(pos) = &req.pos_id {
        c.text(|| "posId".into(), pos, false);
    }
    if let Some(n) = &req.receipt_number {
        c.text(|| "receiptNumber".into(), n, false);
    }
    if let Some(b) = &req.barcode {
        c.text(|| "barcode.data".into(), &b.data, true);
    }
    let payment_sources = req.payment_sources.as_ref().map(|p| {
        let mut one = |name: &str, v: &Option<DecimalText>| {
            v.as_ref()
                .and_then(|t| c.amount(|| format!("paymentSources.{name}"), t, cur))
        };
        PaymentSources {
            gift_card: one("giftCard", &p.gift_card),
            card: one("card", &p.card),
            voucher: one("voucher", &p.voucher),
            cash: one("cash", &p.cash),
        }
    });
    if !c.params.is_empty() {
        return Err(Rejected {
            syntax: c.syntax,
            params: c.params,
        });
    }
    Ok(Receipt {
        order_lines,
        bottom_line: BottomLine {
            currency: cur,
            tip_amount: Some(tip),
            pos_id: req.pos_id.as_deref().map(Cow::Borrowed),
            payment_sources,
            barcode: req.barcode.as_ref().map(|b| Barcode {
                format: b.format,
                data: Cow::Borrowed(&b.data),
            }),
            receipt_number: req.receipt_number.as_deref().map(Cow::Borrowed),
        },
    })
}

fn build_line<'a>(
    c: &mut Collector,
    i: usize,
    line: &'a LineRequest<'_>,
    cur: Currency,
    version: ApiVersion,
) -> Option<OrderLine<'a>> {
    let at = |field: &str| format!("lines[{i}].{field}");
    let errors_before = c.params.len();
    c.text(|| at("id"), &line.id, true);
    c.text(|| at("name"), &line.name, true);
    if let Some(url) = &line.product_url {
        if let Err(e) = crate::domain::check_url(url) {
            c.fail(at("productUrl"), e.0);
        }
    }

    let rate = parse_rate(c, || at("taxPercent"), &line.tax_percent, version);

    // The quantity with its upstream text, written once.
    let quantity = match &line.quantity {
        None => Some((Decimal::ONE, String::from("1"))),
        Some(given) => match parse_non_negative(&given.0, QUANTITY_DECIMALS) {
            Ok(q) if q.is_zero() => {
                c.fail(at("quantity"), "must be greater than zero");
                None
            }
            Ok(q) => {
                let text = plain_text(&given.0, q);
                if text.len() > QUANTITY_MAX_CHARS {
                    c.fail(
                        at("quantity"),
                        format!("must be at most {QUANTITY_MAX_CHARS} characters"),
                    );
                    None
                } else {
                    Some((q, text))
                }
            }
            Err(e) => {
                c.decimal(at("quantity"), e);
                None
            }
        },
    };
    let unit_price = line.unit_price.as_ref().and_then(|p| {
        match parse_non_negative(&p.0, UNIT_PRICE_DECIMALS) {
            Ok(v) => Some(v),
            Err(e) => {
                c.decimal(at("unitPrice"), e);
                None
            }
        }
    });
    let total = line
        .total_amount
        .as_ref()
        .and_then(|t| c.amount(|| at("totalAmount"), t, cur));
    let discount = match &line.discount {
        Some(d) => c.amount(|| at("discount"), d, cur),
        None => Some(0),
    };
    if line.unit_price.is_none() && line.total_amount.is_none() {
        c.fail(at("unitPrice"), "unitPrice or totalAmount is required");
    }
    if c.params.len() > errors_before {
        return None;
    }
    let (rate, (quantity, quantity_text), discount) = (rate?, quantity?, discount?);

    let mut unit_info = None;
    let gross = match unit_price {
        Some(price) => {
            let Some(before) = quantity
                .checked_mul(price)
                .and_then(|v| to_minor(v, cur.decimals()))
            else {
                c.fail(at("unitPrice"), "quantity × unitPrice is too large");
                return None;
            };
            if discount > before {
                c.fail(
                    at("discount"),
                    format!(
                        "{} is larger than the line before discount ({})",
                        format_minor(discount, cur.decimals()),
                        format_minor(before, cur.decimals())
                    ),
                );
                return None;
            }
            let gross = before - discount;
            if let Some(total) = total {
                if total != gross {
                    c.fail(
                        at("totalAmount"),
                        format!(
                            "is {} but quantity × unitPrice − discount is {}",
                            format_minor(total, cur.decimals()),
                            format_minor(gross, cur.decimals())
                        ),
                    );
                    return None;
                }
            }
            let Some(unit_price) = to_minor(price, cur.decimals()) else {
                c.fail(at("unitPrice"), "is too large");
                return None;
            };
            unit_info = Some(UnitInfo {
                unit_price,
                quantity: quantity_text,
                quantity_unit: Some(line.unit.unwrap_or_default()),
            });
            gross
        }
        None => total?,
    };
    let tax = div_round_half_away(
        i128::from(gross) * i128::from(rate),
        i128::from(FULL_RATE) + i128::from(rate),
    );
    let Ok(tax) = i64::try_from(tax) else {
        c.fail(at("totalAmount"), "is too large");
        return None;
    };
    Some(OrderLine {
        name: Cow::Borrowed(&line.name),
        id: Cow::Borrowed(&line.id),
        total_amount: gross,
        total_amount_excluding_tax: gross - tax,
        total_tax_amount: tax,
        tax_percentage: match version {
            ApiVersion::V2_0 => Some(u32::from(rate / 100)),
            ApiVersion::V2_1 => None,
        },
        tax_rate: match version {
            ApiVersion::V2_0 => None,
            ApiVersion::V2_1 => Some(u32::from(rate)),
        },
        unit_info,
        discount: Some(discount),
        product_url: line.product_url.as_deref().map(Cow::Borrowed),
        is_return: Some(line.is_return),
        is_shipping: Some(line.is_shipping),
    })
}

/// A VAT rate of 100 %, in hundredths of a percent.
const FULL_RATE: u16 = 10_000;

/// The line's `taxPercent` as a rate in hundredths of a percent: 0 to 100
/// with at most two decimals, and whole under Order Management 2.0, which
/// cannot express more. A rate the version cannot carry is refused, never
/// rounded.
fn parse_rate(
    c: &mut Collector,
    name: impl Fn() -> String,
    text: &DecimalText,
    version: ApiVersion,
) -> Option<u16> {
    let percent = match parse_non_negative(&text.0, 2) {
        Ok(p) => p,
        Err(e) => {
            c.decimal(name(), e);
            return None;
        }
    };
    let Some(rate) = to_minor(percent, 2)
        .and_then(|r| u16::try_from(r).ok())
        .filter(|r| *r <= FULL_RATE)
    else {
        c.fail(name(), "must be between 0 and 100");
        return None;
    };
    if version == ApiVersion::V2_0 && rate % 100 != 0 {
        c.fail(
            name(),
            format!(
                "{} % cannot be sent: Order Management 2.0 takes whole percents only",
                format_rate(rate)
            ),
        );
        return None;
    }
    Some(rate)
}

/// A rate in hundredths of a percent as the percent's plain text:
/// 2550 → `"25.5"`, 2500 → `"25"`, 1 → `"0.01"`.
pub fn format_rate(rate: impl Into<i64>) -> String {
    format_plain(Decimal::new(rate.into(), 2))
}

/// Totals of an upstream receipt: returns count negative, the tip is in
/// `total`, rates are listed in ascending order, grouped by the exact rate
/// whichever field carries it. A line with no rate at all (Vipps refuses
/// one) counts in `total` and `tax` but in no rate's group.
pub fn totals(receipt: &Receipt<'_>) -> Totals {
    let dp = receipt.bottom_line.currency.decimals();
    let mut by_rate: BTreeMap<u32, (i64, i64, i64)> = BTreeMap::new();
    let (mut total, mut tax) = (0i64, 0i64);
    for line in &receipt.order_lines {
        let sign = if line.is_return == Some(true) { -1 } else { 1 };
        total = total.saturating_add(sign * line.total_amount);
        tax = tax.saturating_add(sign * line.total_tax_amount);
        let Some(rate) = line.rate() else {
            continue;
        };
        let entry = by_rate.entry(rate).or_default();
        entry.0 = entry.0.saturating_add(sign * line.total_amount);
        entry.1 = entry.1.saturating_add(sign * line.total_tax_amount);
        entry.2 = entry
            .2
            .saturating_add(sign * line.total_amount_excluding_tax);
    }
    total = total.saturating_add(receipt.bottom_line.tip_amount.unwrap_or(0));
    Totals {
        total: format_minor(total, dp),
        tax: format_minor(tax, dp),
        by_tax_percent: by_rate
            .into_iter()
            .map(|(rate, (gross, tax, excl))| RateTotals {
                tax_percent: format_rate(rate),
                gross: format_minor(gross, dp),
                tax: format_minor(tax, dp),
                excluding_tax: format_minor(excl, dp),
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::translate::money::MAX_MAJOR;

    /// Builds the receipt of a request given as JSON, read from its text
    /// as the handler reads it.
    fn build<T>(json: serde_json::Value, f: impl FnOnce(&Receipt) -> T) -> Result<T, Rejected> {
        build_for(ApiVersion::V2_1, json, f)
    }

    fn build_for<T>(
        version: ApiVersion,
        json: serde_json::Value,
        f: impl FnOnce(&Receipt) -> T,
    ) -> Result<T, Rejected> {
        let text = json.to_string();
        let request: ReceiptRequest = serde_json::from_str(&text).expect("valid request");
        build_receipt(&request, version).map(|r| f(&r))
    }

    /// (quantity, unitPrice, discount, totalAmount, taxPercent) → (gross, tax, excl).
    fn line(
        q: Option<&str>,
        price: Option<&str>,
        discount: Option<&str>,
        total: Option<&str>,
        rate: &str,
    ) -> Result<(i64, i64, i64), Rejected> {
        let mut l = serde_json::json!({"id": "l", "name": "n", "taxPercent": rate});
        for (k, v) in [
            ("quantity", q),
            ("unitPrice", price),
            ("discount", discount),
            ("totalAmount", total),
        ] {
            if let Some(v) = v {
                l[k] = serde_json::Value::String(v.into());
            }
        }
        build(serde_json::json!({"currency": "NOK", "lines": [l]}), |r| {
            let o = &r.order_lines[0];
            (
                o.total_amount,
                o.total_tax_amount,
                o.total_amount_excluding_tax,
            )
        })
    }

    #[test]
    fn spec_worked_examples() {
        assert_eq!(
            line(Some("2"), Some("199.00"), None, None, "25"),
            Ok((39800, 7960, 31840))
        );
        assert_eq!(
            line(Some("0.822"), Some("149.90"), None, None, "15"),
            Ok((12322, 1607, 10715))
        );
        assert_eq!(
            line(Some("1.5"), Some("0.35"), None, None, "25"),
            Ok((53, 11, 42))
        );
        assert_eq!(
            line(Some("1"), Some("0.12"), None, None, "60"),
            Ok((12, 5, 7))
        );
        assert_eq!(
            line(Some("3"), Some("0.10"), None, None, "25"),
            Ok((30, 6, 24))
        );
        assert_eq!(
            line(None, None, None, Some("49"), "25"),
            Ok((4900, 980, 3920))
        );
        assert_eq!(
            line(Some("2"), Some("100.00"), Some("50.00"), None, "12"),
            Ok((15000, 1607, 13393))
        );
    }

    #[test]
    fn text_is_measured_in_characters_and_refuses_control_characters() {
        let check = |value: &str| {
            let mut c = Collector {
                syntax: false,
                params: Vec::new(),
            };
            c.text(|| "name".into(), value, true);
            c.params.first().map(|p| p.reason.clone())
        };
        assert_eq!(check("Socks"), None);
        assert_eq!(check(&"é".repeat(TEXT_MAX_CHARS)), None, "chars, not bytes");
        assert_eq!(check(&"a".repeat(TEXT_MAX_CHARS)), None);
        for long in [
            "a".repeat(TEXT_MAX_CHARS + 1),
            "é".repeat(TEXT_MAX_CHARS + 1),
        ] {
            assert_eq!(
                check(&long).as_deref(),
                Some("must be at most 256 characters")
            );
        }
        for bad in ["a\tb", "a\u{7f}", "\u{0}", "é\u{85}", "日本\u{9f}"] {
            assert_eq!(
                check(bad).as_deref(),
                Some("must not contain control characters"),
                "{bad:?}"
            );
        }
        assert_eq!(check(" ").as_deref(), Some("must not be empty"));
    }

    #[test]
    fn a_rate_order_management_2_0_cannot_express_is_refused_not_rounded() {
        let request = |rate: &str| {
            serde_json::json!({"currency": "EUR", "lines": [
                {"id": "l", "name": "n", "totalAmount": "10", "taxPercent": rate}]})
        };
        let rates = |r: &Receipt| {
            let l = &r.order_lines[0];
            (l.tax_percentage, l.tax_rate)
        };
        let err = build_for(ApiVersion::V2_0, request("12.5"), rates).unwrap_err();
        assert!(!err.syntax);
        assert_eq!(err.params[0].name, "lines[0].taxPercent");
        assert!(err.params[0].reason.contains("12.5 %"), "{:?}", err.params);
        assert_eq!(
            build_for(ApiVersion::V2_0, request("25.00"), rates),
            Ok((Some(25), None))
        );
        // 2.1 carries the rate in hundredths, and only that field.
        assert_eq!(
            build_for(ApiVersion::V2_1, request("12.5"), rates),
            Ok((None, Some(1250)))
        );
        assert_eq!(
            build_for(ApiVersion::V2_1, request("25"), rates),
            Ok((None, Some(2500)))
        );
    }

    /// The worked examples of fractional rates, in EUR.
    #[test]
    fn fractional_rates_work_in_hundredths() {
        let eur = |l: serde_json::Value| {
            build(serde_json::json!({"currency": "EUR", "lines": [l]}), |r| {
                let o = &r.order_lines[0];
                (
                    o.total_amount,
                    o.total_tax_amount,
                    o.total_amount_excluding_tax,
                )
            })
        };
        let table = [
            (
                serde_json::json!({"id": "a", "name": "a", "unitPrice": "100.00", "taxPercent": "25.5"}),
                (10000, 2032, 7968),
            ),
            (
                serde_json::json!({"id": "b", "name": "b", "quantity": "2", "unitPrice": "3.20", "taxPercent": "25.5"}),
                (640, 130, 510),
            ),
            (
                serde_json::json!({"id": "c", "name": "c", "totalAmount": "4.79", "taxPercent": "13.5"}),
                (479, 57, 422),
            ),
            (
                serde_json::json!({"id": "d", "name": "d", "quantity": "41.37", "unit": "LITRE", "unitPrice": "1.899", "taxPercent": "25.5"}),
                (7856, 1596, 6260),
            ),
        ];
        for (line, want) in table {
            assert_eq!(eur(line.clone()), Ok(want), "{line}");
        }
    }

    #[test]
    fn rates_are_parsed_to_two_decimals_between_0_and_100() {
        let rate = |text: serde_json::Value| {
            build(
                serde_json::json!({"currency": "EUR", "lines": [
                    {"id": "l", "name": "n", "totalAmount": "1", "taxPercent": text}]}),
                |r| r.order_lines[0].tax_rate,
            )
        };
        for (text, want) in [
            ("0", 0),
            ("0.01", 1),
            ("99.99", 9999),
            ("100", 10000),
            ("25.5", 2550),
            ("13.50", 1350),
        ] {
            assert_eq!(rate(text.into()), Ok(Some(want)), "{text}");
        }
        // A JSON number is read from its text too.
        let number: serde_json::Value = serde_json::from_str("25.5").unwrap();
        assert_eq!(rate(number), Ok(Some(2550)));
        for (text, syntax) in [
            ("100.01", false),
            ("25.555", false),
            ("-1", false),
            ("1e1", true),
            ("", true),
        ] {
            let err = rate(text.into()).unwrap_err();
            assert_eq!(err.params[0].name, "lines[0].taxPercent", "{text}");
            assert_eq!(err.syntax, syntax, "{text}: {:?}", err.params);
        }
    }

    proptest::proptest! {
        /// Whatever the rate (two decimals) and the amount, up to the largest
        /// one accepted, the three amounts add up and the tax is the rate's.
        #[test]
        fn excluding_tax_and_tax_add_up_to_the_gross(
            rate in 0u16..=10_000,
            gross in proptest::prop_oneof![
                0i64..=100_000,
                0i64..=MAX_MAJOR * 100,
                (MAX_MAJOR * 100 - 1_000)..=MAX_MAJOR * 100,
            ],
        ) {
            let request = serde_json::json!({"currency": "NOK", "lines": [{
                "id": "l", "name": "n",
                "totalAmount": format_minor(gross, 2),
                "taxPercent": format_rate(rate),
            }]});
            let (total, excl, tax, tax_rate) = build(request, |r| {
                let l = &r.order_lines[0];
                (l.total_amount, l.total_amount_excluding_tax, l.total_tax_amount, l.tax_rate)
            })
            .expect("valid");
            proptest::prop_assert_eq!(total, gross);
            proptest::prop_assert_eq!(excl + tax, gross);
            proptest::prop_assert_eq!(tax_rate, Some(u32::from(rate)));
            // tax / excl is the rate, to within half a minor unit of the tax.
            let exact = i128::from(gross) * i128::from(rate);
            let tax = i128::from(tax);
            let error = (tax * (10_000 + i128::from(rate)) - exact).abs();
            proptest::prop_assert!(2 * error <= 10_000 + i128::from(rate));
        }
    }

    #[test]
    fn either_rate_field_is_the_same_rate_in_comparisons_and_totals() {
        let stored = |line: serde_json::Value| -> Receipt<'static> {
            serde_json::from_value(serde_json::json!({
                "orderLines": [line],
                "bottomLine": {"currency": "NOK", "tipAmount": 0}
            }))
            .expect("a Vipps receipt")
        };
        let base = serde_json::json!({"name": "n", "id": "l", "totalAmount": 1000,
            "totalAmountExcludingTax": 800, "totalTaxAmount": 200});
        let with = |field: &str, value: u16| {
            let mut l = base.clone();
            l[field] = value.into();
            stored(l)
        };
        let old = with("taxPercentage", 25);
        let new = with("taxRate", 2500);
        assert_eq!(old.canonical(), new.canonical());
        assert_ne!(old.canonical(), with("taxRate", 2550).canonical());
        assert_eq!(totals(&old), totals(&new));
        assert_eq!(totals(&old).by_tax_percent[0].tax_percent, "25");
        // Both given: taxRate, the current field, is read.
        let mut both = base.clone();
        both["taxPercentage"] = 25.into();
        both["taxRate"] = 2550.into();
        assert_eq!(stored(both).order_lines[0].rate(), Some(2550));
    }

    #[test]
    fn a_thousand_lines_of_the_largest_amount_still_add_up() {
        let lines: Vec<serde_json::Value> = (0..MAX_LINES)
            .map(|i| {
                let rate = ["25.5", "13.5", "10", "0.01"][i % 4];
                serde_json::json!({"id": format!("l{i}"), "name": "n",
                    "totalAmount": MAX_MAJOR.to_string(), "taxPercent": rate})
            })
            .collect();
        let (t, lines_ok) = build(
            serde_json::json!({"currency": "EUR", "lines": lines}),
            |r| {
                let ok = r
                    .order_lines
                    .iter()
                    .all(|l| l.total_amount_excluding_tax + l.total_tax_amount == l.total_amount);
                (totals(r), ok)
            },
        )
        .expect("valid");
        assert!(lines_ok);
        assert_eq!(t.total, format_minor(MAX_MAJOR * 100 * 1000, 2));
        let rates: Vec<&str> = t
            .by_tax_percent
            .iter()
            .map(|r| r.tax_percent.as_str())
            .collect();
        assert_eq!(rates, ["0.01", "10", "13.5", "25.5"]);
    }

    #[test]
    fn totals_count_returns_negative_and_include_tip() {
        let t = build(
            serde_json::json!({
                "currency": "NOK", "tip": "10",
                "lines": [
                    {"id": "a", "name": "A", "unitPrice": "100", "taxPercent": "25"},
                    {"id": "b", "name": "B", "totalAmount": "20", "taxPercent": "15", "isReturn": true}
                ],
                "expectedTotal": "90.00"
            }),
            totals,
        )
        .expect("valid");
        assert_eq!(t.total, "90.00");
        assert_eq!(t.tax, "17.39");
        assert_eq!(t.by_tax_percent[0].tax_percent, "15");
        assert_eq!(t.by_tax_percent[0].gross, "-20.00");
        assert_eq!(t.by_tax_percent[1].excluding_tax, "80.00");
    }
}
