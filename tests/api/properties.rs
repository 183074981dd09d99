//! Property-based tests (proptest) of the receipt translation and the
//! request parsing: no input panics them, and every receipt they accept
//! adds up. Case counts are fixed here so the suite stays fast.

use proptest::prelude::*;
use rust_decimal::Decimal;
use serde_json::{json, Value};
use vipps_order_gateway::domain::{ApiVersion, ImageId, OrderId};
use vipps_order_gateway::facade::json_from_slice;
use vipps_order_gateway::translate::money::parse_decimal;
use vipps_order_gateway::translate::receipt::{build_receipt, format_rate, totals, ReceiptRequest};

/// Receipt cases: each builds and checks a receipt of up to 8 lines.
const RECEIPT_CASES: u32 = 1000;
/// Parser cases: cheap, so more of them.
const PARSER_CASES: u32 = 2000;

/// Decimal text: mostly plausible amounts, sometimes garbage.
fn decimal_text() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => (0u64..1_000_000, 0u32..100, prop::bool::ANY).prop_map(|(i, f, two)| {
            if two { format!("{i}.{f:02}") } else { format!("{i}") }
        }),
        2 => (0u64..100, 0u64..1_000_000).prop_map(|(i, f)| format!("{i}.{f:06}")),
        1 => (0u64..10_000_000_000_000u64, 0u8..10).prop_map(|(i, f)| format!("{i}.{f}")),
        1 => "[-+0-9.eE ,]{0,16}".prop_map(|s: String| s),
    ]
}

fn rate_text() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => prop::sample::select(vec!["0", "10", "12", "13.5", "15", "25", "25.5", "60", "100"]).prop_map(str::to_owned),
        1 => (0u32..200).prop_map(|r| r.to_string()),
        1 => (0u32..100, 1u32..10).prop_map(|(r, f)| format!("{r}.{f}")),
        1 => (0u32..101, 0u32..100).prop_map(|(r, f)| format!("{r}.{f:02}")),
    ]
}

fn quantity_text() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => (1u32..100).prop_map(|q| q.to_string()),
        2 => (0u32..1000, 0u32..1000).prop_map(|(i, f)| format!("{i}.{f:03}")),
        1 => (0u64..100_000_000_000u64).prop_map(|q| q.to_string()),
        1 => "[-0-9.]{0,12}".prop_map(|s: String| s),
    ]
}

/// Amounts with at most `dp` decimals, up to a billion major units.
fn amount(dp: u32) -> impl Strategy<Value = String> {
    (0u64..1_000_000_000, 0u64..10u64.pow(dp)).prop_map(move |(i, f)| {
        if dp == 0 {
            i.to_string()
        } else {
            format!("{i}.{f:0width$}", width = dp as usize)
        }
    })
}

fn valid_rate() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(vec!["0", "10", "12", "15", "25", "60", "100"]).prop_map(str::to_owned),
        1 => (0u32..=100).prop_map(|r| r.to_string()),
    ]
}

/// A line: mostly well-formed (priced, or with a total), sometimes chaotic.
fn line() -> impl Strategy<Value = Value> {
    let priced = (
        prop::option::of(prop_oneof![
            (1u32..100).prop_map(|q| q.to_string()),
            (0u32..1000, 1u32..1000).prop_map(|(i, f)| format!("{i}.{f:03}")),
        ]),
        prop_oneof![
            amount(2),
            amount(6),
            (0u32..100, 0u32..1_000_000).prop_map(|(i, f)| format!("{i}.{f:06}"))
        ],
        prop::option::weighted(
            0.3,
            (0u32..500).prop_map(|d| format!("{}.{:02}", d / 100, d % 100)),
        ),
        valid_rate(),
        prop::bool::weighted(0.2),
    )
        .prop_map(|(q, price, discount, rate, ret)| {
            let mut l = json!({"id": "l", "name": "Line", "taxPercent": rate,
                               "unitPrice": price, "isReturn": ret});
            if let Some(q) = q {
                l["quantity"] = json!(q);
            }
            if let Some(d) = discount {
                l["discount"] = json!(d);
            }
            l
        });
    let total = (amount(2), valid_rate(), prop::bool::weighted(0.2)).prop_map(|(t, rate, ret)| {
        json!({"id": "t", "name": "Total", "totalAmount": t, "taxPercent": rate, "isReturn": ret})
    });
    let chaotic = (
        prop::option::of(quantity_text()),
        prop::option::of(decimal_text()),
        prop::option::of(decimal_text()),
        prop::option::weighted(0.3, decimal_text()),
        rate_text(),
        prop::bool::weighted(0.2),
    )
        .prop_map(|(q, price, total, discount, rate, ret)| {
            let mut l = json!({"id": "l", "name": "Line", "taxPercent": rate, "isReturn": ret});
            for (k, v) in [
                ("quantity", q),
                ("unitPrice", price),
                ("totalAmount", total),
                ("discount", discount),
            ] {
                if let Some(v) = v {
                    l[k] = Value::String(v);
                }
            }
            l
        });
    prop_oneof![5 => priced, 4 => total, 1 => chaotic]
}

fn receipt() -> impl Strategy<Value = Value> {
    (
        prop::collection::vec(line(), 1..8),
        prop::option::of(prop_oneof![4 => amount(2), 1 => decimal_text()]),
        prop::sample::select(vec!["NOK", "DKK", "EUR"]),
    )
        .prop_map(|(lines, tip, cur)| {
            let mut r = json!({"currency": cur, "lines": lines});
            if let Some(t) = tip {
                r["tip"] = Value::String(t);
            }
            r
        })
}

fn minor(text: &str) -> i128 {
    let d: Decimal = text.parse().expect("totals are decimal text");
    let scaled = d * Decimal::from(100);
    assert!(scaled.fract().is_zero(), "{text} has more than 2 decimals");
    rust_decimal::prelude::ToPrimitive::to_i128(&scaled).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: RECEIPT_CASES, ..ProptestConfig::default() })]

    /// Every accepted receipt adds up per line and in its totals; a refused
    /// one names at least one field; nothing panics.
    #[test]
    fn accepted_receipts_add_up(body in receipt()) {
        let text = body.to_string();
        let req: ReceiptRequest = serde_json::from_str(&text).expect("the shape is valid");
        match build_receipt(&req, ApiVersion::V2_1) {
            Ok(r) => {
                prop_assert_eq!(r.order_lines.len(), req.lines.len(), "a line went missing");
                let (mut total, mut tax) = (0i128, 0i128);
                let mut by_rate = std::collections::BTreeMap::<u32, (i128, i128, i128)>::new();
                for (l, asked) in r.order_lines.iter().zip(&req.lines) {
                    prop_assert_eq!(l.total_amount_excluding_tax + l.total_tax_amount, l.total_amount);
                    prop_assert!(l.total_amount >= 0 && l.total_tax_amount >= 0);
                    prop_assert!(l.total_tax_amount <= l.total_amount);
                    // 2.1: the rate in hundredths, as taxRate only.
                    prop_assert_eq!(l.tax_percentage, None);
                    let rate = l.rate().expect("a rate");
                    prop_assert!(rate <= 10_000);
                    // tax = round(gross × r / (10000 + r)), half away from zero.
                    let (g, p) = (i128::from(l.total_amount), i128::from(rate));
                    let exact2 = 2 * g * p; // twice the numerator, over 10000 + r
                    let t = i128::from(l.total_tax_amount);
                    prop_assert!((2 * t * (10_000 + p) - exact2).abs() <= 10_000 + p, "tax not rounded to nearest");
                    let sign = if asked.is_return { -1 } else { 1 };
                    total += sign * g;
                    tax += sign * t;
                    let e = by_rate.entry(rate).or_default();
                    e.0 += sign * g;
                    e.1 += sign * t;
                    e.2 += sign * i128::from(l.total_amount_excluding_tax);
                }
                total += i128::from(r.bottom_line.tip_amount.unwrap_or(0));
                let t = totals(&r);
                prop_assert_eq!(minor(&t.total), total);
                prop_assert_eq!(minor(&t.tax), tax);
                prop_assert_eq!(t.by_tax_percent.len(), by_rate.len());
                for (rt, (rate, (g, tx, ex))) in t.by_tax_percent.iter().zip(by_rate) {
                    prop_assert_eq!(&rt.tax_percent, &format_rate(u16::try_from(rate).unwrap()));
                    prop_assert_eq!(minor(&rt.gross), g);
                    prop_assert_eq!(minor(&rt.tax), tx);
                    prop_assert_eq!(minor(&rt.excluding_tax), ex);
                    prop_assert_eq!(ex + tx, g);
                }
            }
            Err(rej) => prop_assert!(!rej.params.is_empty(), "refused without a reason"),
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: PARSER_CASES, ..ProptestConfig::default() })]

    /// Accepted decimals are plain notation within the decimals allowed,
    /// and read back exactly.
    #[test]
    fn parse_decimal_accepts_only_plain_bounded_decimals(text in "\\PC{0,24}|-?[0-9]{0,16}(\\.[0-9]{0,10})?", max in 0u32..8) {
        if let Ok(v) = parse_decimal(&text, max) {
            let unsigned = text.strip_prefix('-').unwrap_or(&text);
            prop_assert!(unsigned.bytes().all(|b| b.is_ascii_digit() || b == b'.'));
            let decimals = unsigned.split_once('.').map_or(0, |(_, f)| f.len());
            prop_assert!(decimals <= max as usize);
            prop_assert_eq!(v, text.parse::<Decimal>().expect("plain decimal"));
        }
    }

    /// Any bytes: a value or a named 400, never a panic.
    #[test]
    fn json_bodies_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        if let Err(e) = json_from_slice::<ReceiptRequest>(&bytes) {
            prop_assert!(!e.invalid_params.is_empty());
        }
    }

    /// Mutated valid receipts (a byte changed, inserted or cut): no panic,
    /// and the error names a field.
    #[test]
    fn mutated_receipts_never_panic(pos in any::<prop::sample::Index>(), byte in any::<u8>(), op in 0u8..3) {
        let mut body = crate::helpers::spec_receipt().to_string().into_bytes();
        let i = pos.index(body.len());
        match op {
            0 => body[i] = byte,
            1 => body.insert(i, byte),
            _ => body.truncate(i),
        }
        match json_from_slice::<ReceiptRequest>(&body) {
            Ok(req) => { let _ = build_receipt(&req, ApiVersion::V2_1).map(|r| totals(&r)); }
            Err(e) => prop_assert!(!e.invalid_params.is_empty()),
        }
    }

    /// Ids: accepted ones match the upstream pattern, fit their bound and
    /// are not dot segments.
    #[test]
    fn ids_accept_only_the_upstream_pattern(s in "\\PC{0,12}|[0-9A-Za-z._/%-]{0,300}") {
        for (ok, max) in [(OrderId::parse(&s).is_ok(), 256), (ImageId::parse(&s).is_ok(), 128)] {
            let fits = !s.is_empty()
                && s.len() <= max
                && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
                && !s.bytes().all(|b| b == b'.');
            prop_assert_eq!(ok, fits, "{:?}", s);
        }
    }
}
