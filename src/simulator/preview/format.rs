//! How the receipt pages write amounts, VAT rates and quantities: the
//! conventions of the customer's country, from integers of minor units, so
//! no amount passes through floating point.
//!
//! | currency | example | grouping | decimals | symbol |
//! |---|---|---|---|---|
//! | NOK | `1 234,50 kr` | no-break space | comma | ` kr` after |
//! | SEK | `1 234,50 kr` | no-break space | comma | ` kr` after |
//! | DKK | `1.234,50 kr.` | full stop | comma | ` kr.` after |
//! | EUR | `1 234,50 €` | no-break space | comma | ` €` after (Finland) |
//!
//! The spaces are no-break spaces (U+00A0), so an amount never wraps.

/// A no-break space: amounts and rates never wrap inside.
pub const NBSP: char = '\u{a0}';

/// How one currency is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CurrencyStyle {
    pub code: &'static str,
    group: char,
    symbol: &'static str,
}

impl CurrencyStyle {
    /// The style of an ISO 4217 code; `None` for a currency the pages do
    /// not know (the simulator stores only Vipps' NOK, DKK and EUR).
    pub fn of(code: &str) -> Option<CurrencyStyle> {
        let (code, group, symbol) = match code {
            "NOK" => ("NOK", NBSP, "kr"),
            "SEK" => ("SEK", NBSP, "kr"),
            "DKK" => ("DKK", '.', "kr."),
            "EUR" => ("EUR", NBSP, "€"),
            _ => return None,
        };
        Some(CurrencyStyle {
            code,
            group,
            symbol,
        })
    }

    /// `minor` units (øre, cent; two decimals in every supported currency)
    /// as the customer reads them: `-1 234,50 kr` for -123450 in NOK.
    pub fn amount(self, minor: i128) -> String {
        let sign = if minor < 0 { "-" } else { "" };
        let abs = minor.unsigned_abs();
        format!(
            "{sign}{},{:02}{NBSP}{}",
            group_thousands(abs / 100, self.group),
            abs % 100,
            self.symbol
        )
    }
}

/// Digits of `n` in groups of three, separated by `sep`.
fn group_thousands(n: u128, sep: char) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, digit) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(sep);
        }
        out.push(digit);
    }
    out
}

/// A VAT rate in hundredths of a percent (2550) as `25,5 %`: a decimal
/// comma, no trailing zeros, a no-break space before the sign.
pub fn rate(hundredths: i64) -> String {
    let sign = if hundredths < 0 { "-" } else { "" };
    let abs = hundredths.unsigned_abs();
    let (whole, frac) = (abs / 100, abs % 100);
    match frac {
        0 => format!("{sign}{whole}{NBSP}%"),
        f if f % 10 == 0 => format!("{sign}{whole},{}{NBSP}%", f / 10),
        f => format!("{sign}{whole},{f:02}{NBSP}%"),
    }
}

/// A quantity as Vipps carries it (`41.37`, at most 8 decimals) with a
/// decimal comma: `41,37`.
pub fn quantity(text: &str) -> String {
    text.replacen('.', ",", 1)
}

/// A Unix millisecond time as the index writes it: `2026-12-06 14:03:07 UTC`.
pub fn when(ms: u64) -> String {
    let format =
        time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second] UTC");
    at(ms)
        .and_then(|t| t.format(format).ok())
        .unwrap_or_default()
}

/// A Unix millisecond time in RFC 3339 (UTC, milliseconds), for the JSON twin.
pub fn rfc3339(ms: u64) -> String {
    let format = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    at(ms)
        .and_then(|t| t.format(format).ok())
        .unwrap_or_default()
}

fn at(ms: u64) -> Option<time::OffsetDateTime> {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plain(s: String) -> String {
        s.replace(NBSP, " ")
    }

    fn style(code: &str) -> CurrencyStyle {
        CurrencyStyle::of(code).unwrap_or_else(|| panic!("{code} has a style"))
    }

    #[test]
    fn each_currency_is_written_its_own_way() {
        assert_eq!(plain(style("NOK").amount(123_450)), "1 234,50 kr");
        assert_eq!(plain(style("SEK").amount(123_450)), "1 234,50 kr");
        assert_eq!(plain(style("DKK").amount(123_450)), "1.234,50 kr.");
        assert_eq!(plain(style("EUR").amount(123_450)), "1 234,50 €");
        assert_eq!(CurrencyStyle::of("USD"), None);
    }

    #[test]
    fn amounts_keep_every_minor_unit_and_group_by_thousands() {
        let nok = style("NOK");
        assert_eq!(plain(nok.amount(0)), "0,00 kr");
        assert_eq!(plain(nok.amount(5)), "0,05 kr");
        assert_eq!(plain(nok.amount(99_999)), "999,99 kr");
        assert_eq!(plain(nok.amount(100_000)), "1 000,00 kr");
        assert_eq!(plain(nok.amount(-123_450)), "-1 234,50 kr");
        assert_eq!(plain(nok.amount(123_456_789_012)), "1 234 567 890,12 kr");
        assert_eq!(
            plain(nok.amount(i128::from(i64::MAX) * 2)),
            "184 467 440 737 095 516,14 kr"
        );
        assert_eq!(plain(style("DKK").amount(-100)), "-1,00 kr.");
    }

    #[test]
    fn amounts_never_wrap() {
        let text = style("NOK").amount(123_450);
        assert!(!text.contains(' '), "{text:?} has a breaking space");
        assert_eq!(text.matches(NBSP).count(), 2);
    }

    #[test]
    fn rates_drop_trailing_zeros_and_use_a_decimal_comma() {
        assert_eq!(plain(rate(2500)), "25 %");
        assert_eq!(plain(rate(2550)), "25,5 %");
        assert_eq!(plain(rate(1350)), "13,5 %");
        assert_eq!(plain(rate(1234)), "12,34 %");
        assert_eq!(plain(rate(1205)), "12,05 %");
        assert_eq!(plain(rate(0)), "0 %");
        assert_eq!(plain(rate(10_000)), "100 %");
    }

    #[test]
    fn times_are_written_in_utc() {
        assert_eq!(when(1_796_457_600_123), "2026-12-05 08:00:00 UTC");
        assert_eq!(rfc3339(1_796_457_600_123), "2026-12-05T08:00:00.123Z");
    }

    #[test]
    fn quantities_get_a_decimal_comma() {
        assert_eq!(quantity("2"), "2");
        assert_eq!(quantity("41.37"), "41,37");
        assert_eq!(quantity("0.00000001"), "0,00000001");
    }
}
