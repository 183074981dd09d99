//! The Vipps receipt written as JSON by hand. A receipt is the largest body
//! the gateway builds, and serde's writer checks every key for characters to
//! escape; here the keys are literals and only the caller's text is checked
//! (with the log's string writer).
//! The output is byte for byte what `serde_json` writes for the same
//! [`Receipt`] (a test holds the two together).

use super::model::{
    Barcode, BarcodeFormat, BottomLine, OrderLine, PaymentSources, QuantityUnit, Receipt,
};
use crate::translate::money::Currency;

impl Receipt<'_> {
    /// The receipt as the JSON body of `POST .../receipts/{orderId}`.
    pub fn to_json(&self) -> Vec<u8> {
        // About 300 bytes per line; one allocation for the usual receipt.
        let mut w = Writer(Vec::with_capacity(128 + 320 * self.order_lines.len()));
        w.raw(b"{\"orderLines\":[");
        for (i, line) in self.order_lines.iter().enumerate() {
            if i > 0 {
                w.raw(b",");
            }
            w.order_line(line);
        }
        w.raw(b"],\"bottomLine\":");
        w.bottom_line(&self.bottom_line);
        w.raw(b"}");
        w.0
    }
}

struct Writer(Vec<u8>);

impl Writer {
    fn raw(&mut self, bytes: &[u8]) {
        self.0.extend_from_slice(bytes);
    }

    fn int(&mut self, n: i64) {
        self.raw(itoa::Buffer::new().format(n).as_bytes());
    }

    fn opt_int(&mut self, n: Option<i64>) {
        match n {
            Some(n) => self.int(n),
            None => self.raw(b"null"),
        }
    }

    fn opt_bool(&mut self, b: Option<bool>) {
        self.raw(match b {
            Some(true) => b"true",
            Some(false) => b"false",
            None => b"null",
        });
    }

    fn str(&mut self, s: &str) {
        crate::json::write_str(&mut self.0, s);
    }

    fn order_line(&mut self, l: &OrderLine<'_>) {
        self.raw(b"{\"name\":");
        self.str(&l.name);
        self.raw(b",\"id\":");
        self.str(&l.id);
        self.raw(b",\"totalAmount\":");
        self.int(l.total_amount);
        self.raw(b",\"totalAmountExcludingTax\":");
        self.int(l.total_amount_excluding_tax);
        self.raw(b",\"totalTaxAmount\":");
        self.int(l.total_tax_amount);
        self.raw(b",\"taxPercentage\":");
        self.int(i64::from(l.tax_percentage));
        if let Some(info) = &l.unit_info {
            self.raw(b",\"unitInfo\":{\"unitPrice\":");
            self.int(info.unit_price);
            self.raw(b",\"quantity\":");
            self.str(&info.quantity);
            if let Some(unit) = info.quantity_unit {
                self.raw(b",\"quantityUnit\":\"");
                self.raw(unit.as_str().as_bytes());
                self.raw(b"\"");
            }
            self.raw(b"}");
        }
        self.raw(b",\"discount\":");
        self.opt_int(l.discount);
        if let Some(url) = &l.product_url {
            self.raw(b",\"productUrl\":");
            self.str(url);
        }
        self.raw(b",\"isReturn\":");
        self.opt_bool(l.is_return);
        self.raw(b",\"isShipping\":");
        self.opt_bool(l.is_shipping);
        self.raw(b"}");
    }

    fn bottom_line(&mut self, b: &BottomLine<'_>) {
        self.raw(b"{\"currency\":\"");
        self.raw(currency(b.currency).as_bytes());
        self.raw(b"\",\"tipAmount\":");
        self.opt_int(b.tip_amount);
        if let Some(pos) = &b.pos_id {
            self.raw(b",\"posId\":");
            self.str(pos);
        }
        if let Some(p) = &b.payment_sources {
            self.raw(b",\"paymentSources\":");
            self.payment_sources(p);
        }
        if let Some(Barcode { format, data }) = &b.barcode {
            self.raw(b",\"barcode\":{\"format\":\"");
            self.raw(barcode_format(*format).as_bytes());
            self.raw(b"\",\"data\":");
            self.str(data);
            self.raw(b"}");
        }
        if let Some(n) = &b.receipt_number {
            self.raw(b",\"receiptNumber\":");
            self.str(n);
        }
        self.raw(b"}");
    }

    fn payment_sources(&mut self, p: &PaymentSources) {
        self.raw(b"{");
        let mut first = true;
        for (key, value) in [
            ("giftCard", p.gift_card),
            ("card", p.card),
            ("voucher", p.voucher),
            ("cash", p.cash),
        ] {
            if let Some(v) = value {
                if !first {
                    self.raw(b",");
                }
                first = false;
                self.raw(b"\"");
                self.raw(key.as_bytes());
                self.raw(b"\":");
                self.int(v);
            }
        }
        self.raw(b"}");
    }
}

impl QuantityUnit {
    /// The upstream's name of the unit.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Pcs => "PCS",
            Self::Kg => "KG",
            Self::Km => "KM",
            Self::Minute => "MINUTE",
            Self::Litre => "LITRE",
            Self::Kwh => "KWH",
        }
    }
}

const fn currency(c: Currency) -> &'static str {
    match c {
        Currency::NOK => "NOK",
        Currency::DKK => "DKK",
        Currency::EUR => "EUR",
    }
}

const fn barcode_format(f: BarcodeFormat) -> &'static str {
    match f {
        BarcodeFormat::Ean13 => "EAN-13",
        BarcodeFormat::Code39 => "CODE 39",
        BarcodeFormat::Code128 => "CODE 128",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vipps::model::UnitInfo;

    fn line(name: &str, id: &str) -> OrderLine<'static> {
        OrderLine {
            name: name.to_owned().into(),
            id: id.to_owned().into(),
            total_amount: 39800,
            total_amount_excluding_tax: 31840,
            total_tax_amount: 7960,
            tax_percentage: 25,
            unit_info: Some(UnitInfo {
                unit_price: 19900,
                quantity: "2".into(),
                quantity_unit: Some(QuantityUnit::Pcs),
            }),
            discount: Some(0),
            product_url: None,
            is_return: Some(false),
            is_shipping: Some(false),
        }
    }

    fn bottom(currency: Currency) -> BottomLine<'static> {
        BottomLine {
            currency,
            tip_amount: Some(0),
            pos_id: None,
            payment_sources: None,
            barcode: None,
            receipt_number: None,
        }
    }

    fn same_as_serde(r: &Receipt) {
        let ours = String::from_utf8(r.to_json()).expect("utf-8");
        let serde = serde_json::to_string(r).expect("serializes");
        assert_eq!(ours, serde);
        let back: Receipt = serde_json::from_str(&ours).expect("reads back");
        assert_eq!(&back, r);
    }

    #[test]
    fn every_field_and_variant_is_written_as_serde_writes_it() {
        let units = [
            QuantityUnit::Pcs,
            QuantityUnit::Kg,
            QuantityUnit::Km,
            QuantityUnit::Minute,
            QuantityUnit::Litre,
            QuantityUnit::Kwh,
        ];
        let mut lines: Vec<OrderLine> = units
            .iter()
            .enumerate()
            .map(|(i, &u)| {
                let mut l = line(&format!("Item {i}"), &format!("sku-{i}"));
                l.unit_info.as_mut().unwrap().quantity_unit = Some(u);
                l.total_amount = -(i as i64) * 1_000_000_007;
                l
            })
            .collect();
        let mut bare = line("Bare", "b");
        bare.unit_info = None;
        bare.discount = None;
        bare.is_return = None;
        bare.is_shipping = Some(true);
        bare.product_url = Some("https://example.com/p?a=1&b=\"2\"".into());
        bare.total_amount = i64::MIN;
        bare.total_tax_amount = i64::MAX;
        bare.tax_percentage = 255;
        lines.push(bare);
        let mut no_unit = line("No unit", "n");
        no_unit.unit_info.as_mut().unwrap().quantity_unit = None;
        no_unit.is_return = Some(true);
        lines.push(no_unit);

        for (currency, format) in [
            (Currency::NOK, BarcodeFormat::Ean13),
            (Currency::DKK, BarcodeFormat::Code39),
            (Currency::EUR, BarcodeFormat::Code128),
        ] {
            let mut b = bottom(currency);
            b.tip_amount = None;
            b.pos_id = Some("pos 1".into());
            b.barcode = Some(Barcode {
                format,
                data: "123\\456".into(),
            });
            b.receipt_number = Some("r-9".into());
            same_as_serde(&Receipt {
                order_lines: lines.clone(),
                bottom_line: b,
            });
        }
        same_as_serde(&Receipt {
            order_lines: vec![],
            bottom_line: bottom(Currency::NOK),
        });
    }

    #[test]
    fn payment_sources_list_only_what_is_given() {
        let amounts = [1, 22, 3, 4444];
        for mask in 0..16u8 {
            let pick = |i: usize| (mask & (1 << i) != 0).then_some(amounts[i]);
            let mut b = bottom(Currency::NOK);
            b.payment_sources = Some(PaymentSources {
                gift_card: pick(0),
                card: pick(1),
                voucher: pick(2),
                cash: pick(3),
            });
            same_as_serde(&Receipt {
                order_lines: vec![line("a", "b")],
                bottom_line: b,
            });
        }
    }

    #[test]
    fn text_is_escaped_as_serde_escapes_it() {
        let mut texts: Vec<String> = (0u8..0x80).map(|b| format!("a{}z", b as char)).collect();
        texts.extend(
            [
                "",
                "\"",
                "\\",
                "\u{7f}",
                "æøå",
                "日本",
                "🧾",
                "\u{2028}",
                "a\r\n\tb\u{8}\u{c}",
            ]
            .map(String::from),
        );
        for t in texts {
            let mut b = bottom(Currency::NOK);
            b.pos_id = Some(t.clone().into());
            same_as_serde(&Receipt {
                order_lines: vec![line(&t, &t)],
                bottom_line: b,
            });
        }
    }
}
