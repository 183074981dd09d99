//! What a receipt page shows, built from the simulator's state: a copy taken
//! under the state's lock ([`OrderSnapshot`]), then laid out here without
//! it. The same view is the page's JSON twin, so a test can read every
//! figure the page shows.

use std::collections::BTreeMap;

use rust_decimal::Decimal;
use serde::Serialize;
use serde_json::value::RawValue;

use super::barcode;
use super::format::{self, CurrencyStyle};
use crate::simulator::image::ImageFormat;
use crate::simulator::model::{Category, OrderCategory, OrderLine, QuantityUnit, Receipt};
use crate::simulator::state::State;

/// An uploaded image's facts.
#[derive(Clone, Copy, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageFacts {
    pub format: ImageFormat,
    pub height: u32,
    pub bytes: usize,
    /// Whether the simulator still holds the image itself (it lets go of
    /// the oldest images' bytes past its bound), so the page can show it.
    pub held: bool,
}

impl ImageFacts {
    pub fn format_name(&self) -> &'static str {
        match self.format {
            ImageFormat::Png => "PNG",
            ImageFormat::Jpeg => "JPEG",
        }
    }
}

/// One 2.1 category link, as stored.
#[derive(Clone, Debug)]
pub struct LinkSnapshot {
    pub category_id: String,
    pub category: Category,
    pub url: String,
    pub image_id: Option<String>,
}

/// Everything the simulator holds about one order, copied out of the state
/// so the page is laid out without holding the lock.
#[derive(Clone, Debug)]
pub struct OrderSnapshot {
    pub msn: String,
    pub payment_type: String,
    pub order_id: String,
    pub category: Option<OrderCategory>,
    pub links: Vec<LinkSnapshot>,
    pub receipt: Option<Box<RawValue>>,
    /// The merchant's uploaded images among those the order names.
    pub images: BTreeMap<String, ImageFacts>,
}

impl OrderSnapshot {
    /// The order under (msn, paymentType, orderId) — its v2 category and
    /// receipt and its 2.1 links — or `None` when the simulator holds
    /// nothing for it. `payment_type` is `ecom` or `recurring`.
    pub fn take(state: &State, msn: &str, payment_type: &str, order_id: &str) -> Option<Self> {
        let key = (msn.to_owned(), payment_type.to_owned(), order_id.to_owned());
        let record = state.orders.get(&key);
        let mut links: Vec<_> = state
            .categories
            .iter()
            .filter(|((m, _), c)| {
                m == msn
                    && c.request.order_id == order_id
                    && c.request.payment_type.lower() == payment_type
            })
            .collect();
        if record.is_none() && links.is_empty() {
            return None;
        }
        links.sort_by_key(|(_, c)| c.seq);
        let links: Vec<LinkSnapshot> = links
            .into_iter()
            .map(|((_, id), c)| LinkSnapshot {
                category_id: id.hyphenated().to_string(),
                category: c.request.kind,
                url: c.request.url.clone(),
                image_id: c.request.image_id.clone(),
            })
            .collect();
        let category = record.and_then(|r| r.category.clone());
        let images = category
            .iter()
            .filter_map(|c| c.image_id.as_ref())
            .chain(links.iter().filter_map(|l| l.image_id.as_ref()))
            .filter_map(|id| {
                let image = state.images.get(&(msn.to_owned(), id.clone()))?;
                let facts = ImageFacts {
                    format: image.format,
                    height: image.height,
                    bytes: image.bytes,
                    held: image.data.is_some(),
                };
                Some((id.clone(), facts))
            })
            .collect();
        Some(OrderSnapshot {
            msn: msn.to_owned(),
            payment_type: payment_type.to_owned(),
            order_id: order_id.to_owned(),
            category,
            links,
            receipt: record.and_then(|r| r.receipt.clone()),
            images,
        })
    }
}

/// An amount: exact minor units, and the text the page shows.
#[derive(Clone, Debug, Serialize)]
pub struct Money {
    pub minor: i128,
    pub text: String,
}

/// A VAT rate: hundredths of a percent (2550), and the text (`25,5 %`).
#[derive(Clone, Debug, Serialize)]
pub struct Rate {
    pub hundredths: i64,
    pub text: String,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageView {
    pub image_id: String,
    /// `None`: no image of that id was uploaded for the merchant.
    pub uploaded: Option<ImageFacts>,
    /// Where the simulator serves the image, when it holds it.
    pub src: Option<String>,
}

/// The v2 category, or one 2.1 link (`category_id` set).
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LinkView {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub category_id: Option<String>,
    pub category: &'static str,
    /// The text of the link's button on the page.
    pub button: &'static str,
    pub url: String,
    pub image: Option<ImageView>,
}

/// Something the app would show oddly, or not at all.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Warning {
    /// `total`, `line-amount`, `line-vat` or `image-missing`.
    pub kind: &'static str,
    /// The line it is about (its index in `orderLines`), if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<usize>,
    pub message: String,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LineView {
    pub id: String,
    pub name: String,
    /// The quantity with a decimal comma, when `unitInfo` gives one.
    pub quantity: Option<String>,
    pub unit: Option<&'static str>,
    pub unit_price: Option<Money>,
    pub discount: Option<Money>,
    /// Negative for a return: Vipps subtracts it.
    pub total: Money,
    pub tax: Money,
    pub excluding_tax: Money,
    pub rate: Rate,
    pub is_return: bool,
    pub is_shipping: bool,
    /// Only an absolute http(s) URL becomes a link.
    pub product_url: Option<String>,
    /// The product URL when it is not one the page links to.
    pub product_url_text: Option<String>,
}

/// The lines of one VAT rate, added up (returns negative).
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct VatView {
    pub rate: Rate,
    pub total: Money,
    pub tax: Money,
    pub excluding_tax: Money,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PaymentView {
    pub source: &'static str,
    pub amount: Money,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BarcodeView {
    pub format: &'static str,
    pub data: Option<String>,
    /// The drawing, for the page only.
    #[serde(skip)]
    pub svg: Option<String>,
    /// Why the data cannot be drawn in its format.
    pub problem: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ReceiptView {
    pub currency: &'static str,
    pub lines: Vec<LineView>,
    /// Ascending by rate.
    pub vat: Vec<VatView>,
    /// The lines added up, returns subtracted.
    pub subtotal: Money,
    pub tip: Option<Money>,
    /// Subtotal plus tip: what the customer paid.
    pub total: Money,
    pub total_tax: Money,
    pub total_excluding_tax: Money,
    pub payment_sources: Vec<PaymentView>,
    pub pos_id: Option<String>,
    pub receipt_number: Option<String>,
    pub terminal_id: Option<String>,
    pub barcode: Option<BarcodeView>,
}

/// The JSON twin of an order page.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OrderView {
    pub msn: String,
    pub payment_type: String,
    pub order_id: String,
    /// The v2 category (`PUT …/categories/{orderId}`).
    pub category: Option<LinkView>,
    /// The 2.1 links (`/v3/categories`), oldest first.
    pub links: Vec<LinkView>,
    pub receipt: Option<ReceiptView>,
    /// What the app would show oddly: totals that do not add up, a line's
    /// VAT off its rate, an image it cannot show.
    pub warnings: Vec<Warning>,
    /// Why a stored receipt could not be laid out (never for a receipt the
    /// simulator accepted; kept so the page shows it instead of failing).
    pub receipt_problem: Option<String>,
}

pub fn category_name(c: Category) -> &'static str {
    match c {
        Category::General => "GENERAL",
        Category::Receipt => "RECEIPT",
        Category::OrderConfirmation => "ORDER_CONFIRMATION",
        Category::Delivery => "DELIVERY",
        Category::Ticket => "TICKET",
        Category::Booking => "BOOKING",
    }
}

/// The text of a category's button on the page. Vipps' documents name
/// the categories but not the app's wording (which follows the customer's
/// language), so these are the simulator's own English labels.
pub fn button_text(c: Category) -> &'static str {
    match c {
        Category::General => "Order details",
        Category::Receipt => "See receipt",
        Category::OrderConfirmation => "See order confirmation",
        Category::Delivery => "Track delivery",
        Category::Ticket => "See ticket",
        Category::Booking => "See booking",
    }
}

fn unit_name(u: QuantityUnit) -> &'static str {
    match u {
        QuantityUnit::Pcs => "pcs",
        QuantityUnit::Kg => "kg",
        QuantityUnit::Km => "km",
        QuantityUnit::Minute => "min",
        QuantityUnit::Litre => "l",
        QuantityUnit::Kwh => "kWh",
    }
}

fn is_web_link(url: &str) -> bool {
    let lower = url.get(..8).unwrap_or(url).to_ascii_lowercase();
    lower.starts_with("https://") || lower.starts_with("http://")
}

/// A receipt's sums in minor units (returns negative).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Sums {
    pub total: i128,
    pub tax: i128,
    pub excluding_tax: i128,
}

impl Sums {
    fn add(&mut self, line: &OrderLine) {
        let sign: i128 = if line.is_return == Some(true) { -1 } else { 1 };
        self.total += sign * i128::from(line.total_amount);
        self.tax += sign * i128::from(line.total_tax_amount);
        self.excluding_tax += sign * i128::from(line.total_amount_excluding_tax);
    }
}

/// A line's rate in hundredths: `taxRate`, else `taxPercentage` × 100 (the
/// simulator checked that one is given and that they agree).
fn line_rate(line: &OrderLine) -> Result<i64, String> {
    line.tax_rate
        .or(line.tax_percentage.map(|p| p * 100))
        .ok_or_else(|| format!("line {} has neither taxRate nor taxPercentage", line.id))
}

/// Reads a stored receipt with the simulator's own model.
pub fn read_receipt(text: &RawValue) -> Result<Receipt, String> {
    serde_json::from_str(text.get()).map_err(|e| format!("the stored receipt cannot be read: {e}"))
}

/// The currency's code and its style.
fn style(receipt: &Receipt) -> Result<CurrencyStyle, String> {
    let code = match receipt.bottom_line.currency {
        crate::simulator::model::Currency::Nok => "NOK",
        crate::simulator::model::Currency::Dkk => "DKK",
        crate::simulator::model::Currency::Eur => "EUR",
    };
    CurrencyStyle::of(code).ok_or_else(|| format!("no way to write {code}"))
}

/// What the customer paid, as the index shows it: the lines (returns
/// subtracted) plus the tip.
pub fn paid(receipt: &Receipt) -> Result<String, String> {
    let style = style(receipt)?;
    let mut sums = Sums::default();
    receipt.order_lines.iter().for_each(|l| sums.add(l));
    let tip = i128::from(receipt.bottom_line.tip_amount.unwrap_or(0));
    Ok(style.amount(sums.total + tip))
}

/// How far (in minor units) a line's VAT may be from its rate applied to
/// its amount: rounding to the minor unit, in whichever direction a
/// merchant's system rounds, moves it by less than one.
pub const VAT_TOLERANCE_MINOR: i128 = 1;

/// Whether a line's `totalTaxAmount` is more than [`VAT_TOLERANCE_MINOR`]
/// from `totalAmount × rate / (10000 + rate)`, compared exactly in integers.
fn vat_is_off(line: &OrderLine, hundredths: i64) -> bool {
    let rate = i128::from(hundredths);
    let divisor = 10_000 + rate;
    let off =
        (i128::from(line.total_tax_amount) * divisor - i128::from(line.total_amount) * rate).abs();
    off > VAT_TOLERANCE_MINOR * divisor
}

/// When a line gives a unit price: how far its `totalAmount` is from
/// quantity × unit price − discount, if more than rounding explains (half
/// a minor unit per unit, as the unit price itself is rounded to minor
/// units, and half for the product). `None` when it adds up or cannot be
/// checked.
fn line_amount_off(line: &OrderLine) -> Option<(Decimal, Decimal)> {
    let unit = line.unit_info.as_ref()?;
    let price = Decimal::from(unit.unit_price?);
    let quantity = Decimal::from_str_exact(&unit.quantity).ok()?;
    let expected = quantity.checked_mul(price)? - Decimal::from(line.discount.unwrap_or(0));
    let off = (expected - Decimal::from(line.total_amount)).abs();
    let tolerance = (quantity + Decimal::ONE) / Decimal::TWO;
    (off > tolerance).then_some((expected, off))
}

/// A decimal of minor units rounded to a whole one (half away from zero).
fn whole_minor(d: Decimal) -> i128 {
    use rust_decimal::prelude::ToPrimitive as _;
    d.round_dp_with_strategy(0, rust_decimal::RoundingStrategy::MidpointAwayFromZero)
        .to_i128()
        .unwrap_or(0)
}

/// The receipt's own figures that do not add up: each line's amount
/// against its unit price and its VAT against its rate, the payment
/// sources against the total, and the deprecated bottom-line totals
/// against the lines.
fn receipt_warnings(receipt: &Receipt, view: &ReceiptView, style: CurrencyStyle) -> Vec<Warning> {
    let mut warnings = Vec::new();
    for (i, (line, shown)) in receipt.order_lines.iter().zip(&view.lines).enumerate() {
        if let Some((expected, _)) = line_amount_off(line) {
            warnings.push(Warning {
                kind: "line-amount",
                line: Some(i),
                message: format!(
                    "{}: {} × {} less discount is {}, but the line's amount is {}",
                    line.name,
                    shown.quantity.as_deref().unwrap_or("1"),
                    shown.unit_price.as_ref().map_or("", |p| p.text.as_str()),
                    style.amount(whole_minor(expected)),
                    style.amount(i128::from(line.total_amount)),
                ),
            });
        }
        if vat_is_off(line, shown.rate.hundredths) {
            warnings.push(Warning {
                kind: "line-vat",
                line: Some(i),
                message: format!(
                    "{}: VAT {} is not {} of {} (more than rounding apart)",
                    line.name,
                    style.amount(i128::from(line.total_tax_amount)),
                    shown.rate.text,
                    style.amount(i128::from(line.total_amount)),
                ),
            });
        }
    }
    let bottom = &receipt.bottom_line;
    if let Some(sources) = &bottom.payment_sources {
        let paid: i128 = [
            sources.gift_card,
            sources.card,
            sources.voucher,
            sources.cash,
        ]
        .into_iter()
        .flatten()
        .map(i128::from)
        .sum();
        if paid != view.total.minor {
            warnings.push(Warning {
                kind: "total",
                line: None,
                message: format!(
                    "The payment sources add up to {}, but the receipt's total is {}",
                    style.amount(paid),
                    view.total.text
                ),
            });
        }
    }
    if let Some(total) = bottom.total_amount.map(i128::from) {
        if total != view.total.minor && total != view.subtotal.minor {
            warnings.push(Warning {
                kind: "total",
                line: None,
                message: format!(
                    "bottomLine.totalAmount is {}, but the lines add up to {}",
                    style.amount(total),
                    view.subtotal.text
                ),
            });
        }
    }
    if let Some(tax) = bottom.total_tax.map(i128::from) {
        if tax != view.total_tax.minor {
            warnings.push(Warning {
                kind: "total",
                line: None,
                message: format!(
                    "bottomLine.totalTax is {}, but the lines' VAT adds up to {}",
                    style.amount(tax),
                    view.total_tax.text
                ),
            });
        }
    }
    warnings
}

fn lay_out(receipt: &Receipt) -> Result<(ReceiptView, Vec<Warning>), String> {
    let style = style(receipt)?;
    let money = |minor: i128| Money {
        minor,
        text: style.amount(minor),
    };
    let rate = |hundredths: i64| Rate {
        hundredths,
        text: format::rate(hundredths),
    };
    let mut sums = Sums::default();
    let mut by_rate: BTreeMap<i64, Sums> = BTreeMap::new();
    let mut lines = Vec::with_capacity(receipt.order_lines.len());
    for line in &receipt.order_lines {
        let hundredths = line_rate(line)?;
        sums.add(line);
        by_rate.entry(hundredths).or_default().add(line);
        let sign: i128 = if line.is_return == Some(true) { -1 } else { 1 };
        let unit = line.unit_info.as_ref();
        let (product_url, product_url_text) = match &line.product_url {
            Some(url) if is_web_link(url) => (Some(url.clone()), None),
            Some(url) if !url.is_empty() => (None, Some(url.clone())),
            _ => (None, None),
        };
        lines.push(LineView {
            id: line.id.clone(),
            name: line.name.clone(),
            quantity: unit.map(|u| format::quantity(&u.quantity)),
            unit: unit.and_then(|u| u.quantity_unit).map(unit_name),
            unit_price: unit.and_then(|u| u.unit_price).map(|p| money(p.into())),
            discount: line.discount.filter(|d| *d != 0).map(|d| money(d.into())),
            total: money(sign * i128::from(line.total_amount)),
            tax: money(sign * i128::from(line.total_tax_amount)),
            excluding_tax: money(sign * i128::from(line.total_amount_excluding_tax)),
            rate: rate(hundredths),
            is_return: line.is_return == Some(true),
            is_shipping: line.is_shipping == Some(true),
            product_url,
            product_url_text,
        });
    }
    let bottom = &receipt.bottom_line;
    let tip = bottom.tip_amount.filter(|t| *t != 0).map(i128::from);
    let payment_sources = bottom
        .payment_sources
        .iter()
        .flat_map(|p| {
            [
                ("Gift card", p.gift_card),
                ("Card", p.card),
                ("Voucher", p.voucher),
                ("Cash", p.cash),
            ]
        })
        .filter_map(|(source, amount)| {
            amount.map(|a| PaymentView {
                source,
                amount: money(a.into()),
            })
        })
        .collect();
    let barcode = bottom.barcode.as_ref().map(|b| {
        let drawn = b.data.as_deref().map(|data| barcode::svg(b.format, data));
        BarcodeView {
            format: barcode::format_name(b.format),
            data: b.data.clone(),
            problem: drawn.as_ref().and_then(|d| d.as_ref().err().cloned()),
            svg: drawn.and_then(Result::ok),
        }
    });
    let view = ReceiptView {
        currency: style.code,
        lines,
        vat: by_rate
            .into_iter()
            .map(|(hundredths, s)| VatView {
                rate: rate(hundredths),
                total: money(s.total),
                tax: money(s.tax),
                excluding_tax: money(s.excluding_tax),
            })
            .collect(),
        subtotal: money(sums.total),
        tip: tip.map(money),
        total: money(sums.total + tip.unwrap_or(0)),
        total_tax: money(sums.tax),
        total_excluding_tax: money(sums.excluding_tax),
        payment_sources,
        pos_id: bottom.pos_id.clone(),
        receipt_number: bottom.receipt_number.clone(),
        terminal_id: bottom.terminal_id.clone(),
        barcode,
    };
    let warnings = receipt_warnings(receipt, &view, style);
    Ok((view, warnings))
}

impl OrderView {
    pub fn build(order: &OrderSnapshot) -> OrderView {
        let image = |id: &Option<String>| {
            id.as_ref().map(|id| {
                let uploaded = order.images.get(id).copied();
                ImageView {
                    image_id: id.clone(),
                    src: uploaded.filter(|f| f.held).map(|_| {
                        format!(
                            "/_simulator/images/{}/{}",
                            path_segment(&order.msn),
                            path_segment(id)
                        )
                    }),
                    uploaded,
                }
            })
        };
        let mut warnings = Vec::new();
        let (receipt, receipt_problem) = match order.receipt.as_deref().map(read_receipt) {
            None => (None, None),
            Some(Ok(r)) => match lay_out(&r) {
                Ok((view, found)) => {
                    warnings = found;
                    (Some(view), None)
                }
                Err(problem) => (None, Some(problem)),
            },
            Some(Err(problem)) => (None, Some(problem)),
        };
        let mut view = OrderView {
            msn: order.msn.clone(),
            payment_type: order.payment_type.clone(),
            order_id: order.order_id.clone(),
            category: order.category.as_ref().map(|c| LinkView {
                category_id: None,
                category: category_name(c.category),
                button: button_text(c.category),
                url: c.order_details_url.clone(),
                image: image(&c.image_id),
            }),
            links: order
                .links
                .iter()
                .map(|l| LinkView {
                    category_id: Some(l.category_id.clone()),
                    category: category_name(l.category),
                    button: button_text(l.category),
                    url: l.url.clone(),
                    image: image(&l.image_id),
                })
                .collect(),
            receipt,
            warnings,
            receipt_problem,
        };
        let missing: Vec<Warning> = view
            .category
            .iter()
            .chain(&view.links)
            .filter_map(|link| link.image.as_ref())
            .filter(|image| image.src.is_none())
            .map(|image| Warning {
                kind: "image-missing",
                line: None,
                message: match image.uploaded {
                    None => format!(
                        "Image {} is missing: the simulator holds no image of that id for merchant {}",
                        image.image_id, view.msn
                    ),
                    Some(_) => format!(
                        "Image {} is missing: the simulator no longer holds its bytes (it keeps the newest images only)",
                        image.image_id
                    ),
                },
            })
            .collect();
        view.warnings.extend(missing);
        view
    }
}

/// A path segment with everything but unreserved characters
/// percent-encoded.
pub fn path_segment(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    for b in raw.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    use super::*;

    fn snapshot(receipt: Value) -> OrderSnapshot {
        OrderSnapshot {
            msn: "123456".into(),
            payment_type: "ecom".into(),
            order_id: "o-1".into(),
            category: None,
            links: Vec::new(),
            receipt: Some(serde_json::value::to_raw_value(&receipt).expect("receipt text")),
            images: BTreeMap::new(),
        }
    }

    fn line(name: &str, total: i64, tax: i64, rate: Value) -> Value {
        json!({"name": name, "id": name, "totalAmount": total,
               "totalAmountExcludingTax": total - tax, "totalTaxAmount": tax, "taxRate": rate})
    }

    #[test]
    fn returns_count_negative_and_vat_is_grouped_by_exact_rate() {
        let receipt = json!({
            "orderLines": [
                line("coat", 10_000, 2032, json!(2550)),
                line("bread", 479, 57, json!(1350)),
                {"name": "buns", "id": "buns", "totalAmount": 640, "totalAmountExcludingTax": 510,
                 "totalTaxAmount": 130, "taxPercentage": null, "taxRate": 2550},
                {"name": "back", "id": "back", "totalAmount": 640, "totalAmountExcludingTax": 510,
                 "totalTaxAmount": 130, "taxPercentage": 25, "isReturn": true},
            ],
            "bottomLine": {"currency": "EUR", "tipAmount": 100}
        });
        let view = OrderView::build(&snapshot(receipt));
        let r = view
            .receipt
            .unwrap_or_else(|| panic!("{:?}", view.receipt_problem));
        let rates: Vec<i64> = r.vat.iter().map(|v| v.rate.hundredths).collect();
        assert_eq!(rates, [1350, 2500, 2550]);
        let at = |h: i64| {
            r.vat
                .iter()
                .find(|v| v.rate.hundredths == h)
                .map(|v| v.total.minor)
        };
        assert_eq!(at(2500), Some(-640));
        assert_eq!(at(2550), Some(10_640));
        assert_eq!(r.subtotal.minor, 10_000 + 479 + 640 - 640);
        assert_eq!(r.total.minor, r.subtotal.minor + 100);
        assert_eq!(r.total_tax.minor, 2032 + 57 + 130 - 130);
        assert_eq!(
            r.total_tax.minor + r.total_excluding_tax.minor,
            r.subtotal.minor
        );
        assert_eq!(r.lines[3].total.minor, -640);
        assert!(r.lines[3].is_return);
        assert_eq!(r.lines[0].rate.text.replace(format::NBSP, " "), "25,5 %");
        assert_eq!(r.total.text.replace(format::NBSP, " "), "105,79 €");
    }

    #[test]
    fn only_web_addresses_become_links() {
        let mut script = line("x", 100, 20, json!(2500));
        script["productUrl"] = json!("javascript:alert(1)");
        let mut web = line("y", 100, 20, json!(2500));
        web["productUrl"] = json!("HTTPS://shop.example/y");
        let receipt = json!({"orderLines": [script, web], "bottomLine": {"currency": "NOK"}});
        let view = OrderView::build(&snapshot(receipt));
        let r = view
            .receipt
            .unwrap_or_else(|| panic!("{:?}", view.receipt_problem));
        assert_eq!(r.lines[0].product_url, None);
        assert_eq!(
            r.lines[0].product_url_text.as_deref(),
            Some("javascript:alert(1)")
        );
        assert_eq!(
            r.lines[1].product_url.as_deref(),
            Some("HTTPS://shop.example/y")
        );
    }

    #[test]
    fn vat_within_one_minor_unit_of_the_rate_is_rounding() {
        let at = |tax: i64| {
            let line: OrderLine = serde_json::from_value(line("x", 10_000, tax, json!(2500)))
                .unwrap_or_else(|e| panic!("{e}"));
            vat_is_off(&line, 2500)
        };
        assert!(!at(2000) && !at(1999) && !at(2001));
        assert!(at(2002) && at(1998) && at(0));
    }

    #[test]
    fn a_line_amount_may_differ_by_its_unit_price_rounding_only() {
        let with = |total: i64, quantity: &str, price: i64, discount: i64| {
            let mut l = line("x", total, 0, json!(0));
            l["unitInfo"] = json!({"unitPrice": price, "quantity": quantity});
            l["discount"] = json!(discount);
            let line: OrderLine = serde_json::from_value(l).unwrap_or_else(|e| panic!("{e}"));
            line_amount_off(&line).is_some()
        };
        // 41.37 l at 1.899 EUR sent as 1.90: 7,856 against 7,860.3.
        assert!(!with(7856, "41.37", 190, 0));
        assert!(!with(29_800, "2", 19_900, 10_000));
        assert!(with(39_800, "2", 19_900, 10_000), "discount not taken off");
        assert!(with(30_000, "2", 19_900, 0));
    }

    #[test]
    fn an_unreadable_receipt_is_reported_not_laid_out() {
        let view = OrderView::build(&snapshot(json!({"orderLines": "none"})));
        assert!(view.receipt.is_none());
        assert!(view
            .receipt_problem
            .is_some_and(|p| p.contains("cannot be read")));
    }
}
