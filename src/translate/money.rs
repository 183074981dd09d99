//! Exact decimal parsing and minor-unit arithmetic. No floating point:
//! amounts arrive as decimal text and become integers of minor units.

use std::fmt;

use rust_decimal::{Decimal, RoundingStrategy};
use serde::{Deserialize, Deserializer, Serialize};

/// A decimal number as the caller wrote it: a JSON string, or a JSON number
/// read from its text (serde_json `arbitrary_precision`), never through `f64`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecimalText(pub String);

impl<'de> Deserialize<'de> for DecimalText {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match serde_json::Value::deserialize(d)? {
            serde_json::Value::String(s) => Ok(Self(s)),
            serde_json::Value::Number(n) => Ok(Self(n.to_string())),
            _ => Err(serde::de::Error::custom(
                "expected a decimal number or a string holding one",
            )),
        }
    }
}

impl fmt::Display for DecimalText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Why a decimal was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecimalError {
    /// Not plain decimal notation (the text is not a number at all).
    Syntax,
    /// A number, but outside what the field accepts (sign, precision, size).
    Range(String),
}

impl DecimalError {
    pub fn reason(&self) -> String {
        match self {
            Self::Syntax => "must be a decimal number in plain notation, such as \"12.50\"".into(),
            Self::Range(r) => r.clone(),
        }
    }
}

/// Largest magnitude accepted for any amount, in major units. Upstream
/// amounts are int64 minor units; this leaves room for line sums.
pub const MAX_MAJOR: i64 = 1_000_000_000_000;

/// Parses plain decimal notation (`-?digits[.digits]`), allowing at most
/// `max_decimals` digits after the point. Exponents, `NaN`, spaces and a
/// leading `+` are refused.
pub fn parse_decimal(text: &str, max_decimals: u32) -> Result<Decimal, DecimalError> {
    let unsigned = text.strip_prefix('-').unwrap_or(text);
    let (int, frac) = match unsigned.split_once('.') {
        Some((i, f)) => (i, Some(f)),
        None => (unsigned, None),
    };
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(int) || frac.is_some_and(|f| !digits(f)) {
        return Err(DecimalError::Syntax);
    }
    let decimals = frac.map_or(0, str::len);
    if decimals > max_decimals as usize {
        return Err(DecimalError::Range(format!(
            "must have at most {max_decimals} decimals"
        )));
    }
    if int.trim_start_matches('0').len() > 13 {
        return Err(DecimalError::Range(format!("must be at most {MAX_MAJOR}")));
    }
    // Plain notation that still does not fit: more significant digits
    // than exact decimal arithmetic carries (28).
    let value = Decimal::from_str_exact(text).map_err(|_| {
        DecimalError::Range("has more significant digits than can be computed exactly".into())
    })?;
    if value.abs() > Decimal::from(MAX_MAJOR) {
        return Err(DecimalError::Range(format!("must be at most {MAX_MAJOR}")));
    }
    Ok(value)
}

/// Parses a non-negative decimal.
pub fn parse_non_negative(text: &str, max_decimals: u32) -> Result<Decimal, DecimalError> {
    let v = parse_decimal(text, max_decimals)?;
    if v.is_sign_negative() && !v.is_zero() {
        return Err(DecimalError::Range("must not be negative".into()));
    }
    Ok(v)
}

/// Rounds half away from zero to `decimals` places and returns the integer
/// of minor units. `None` when it does not fit an `i64`.
pub fn to_minor(value: Decimal, decimals: u32) -> Option<i64> {
    let rounded = value.round_dp_with_strategy(decimals, RoundingStrategy::MidpointAwayFromZero);
    let scaled = rounded.checked_mul(Decimal::from(10i64.checked_pow(decimals)?))?;
    i64::try_from(scaled).ok()
}

/// `numerator / denominator` rounded half away from zero, exactly.
pub fn div_round_half_away(numerator: i128, denominator: i128) -> i128 {
    debug_assert!(denominator > 0);
    let q = numerator / denominator;
    let r = numerator % denominator;
    if 2 * r.abs() >= denominator {
        q + numerator.signum()
    } else {
        q
    }
}

/// Formats minor units as a decimal string with `decimals` places: `44700` → `"447.00"`.
pub fn format_minor(minor: i64, decimals: u32) -> String {
    Decimal::new(minor, decimals).to_string()
}

/// A decimal without trailing zeros: `"1.500"` → `"1.5"`, `"2.0"` → `"2"`.
pub fn format_plain(value: Decimal) -> String {
    value.normalize().to_string()
}

/// The currencies the upstream accepts; all have two decimals.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Currency {
    NOK,
    DKK,
    EUR,
}

impl Currency {
    pub const fn decimals(self) -> u32 {
        2
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_plain_decimals_exactly() {
        assert_eq!(parse_decimal("199.00", 2), Ok(Decimal::new(19900, 2)));
        assert_eq!(parse_decimal("-0.5", 2), Ok(Decimal::new(-5, 1)));
        assert_eq!(parse_decimal("0.123456", 6), Ok(Decimal::new(123456, 6)));
        for bad in [
            "", "1e3", "+1", " 1", "1.", ".5", "NaN", "1,5", "--1", "0x10",
        ] {
            assert_eq!(parse_decimal(bad, 6), Err(DecimalError::Syntax), "{bad:?}");
        }
        assert!(matches!(
            parse_decimal("1.001", 2),
            Err(DecimalError::Range(_))
        ));
        assert!(matches!(
            parse_decimal("99999999999999", 2),
            Err(DecimalError::Range(_))
        ));
        assert!(matches!(
            parse_non_negative("-1", 2),
            Err(DecimalError::Range(_))
        ));
        assert_eq!(parse_non_negative("-0", 2), Ok(Decimal::ZERO));
        assert!(matches!(
            parse_decimal("10.0000000000000000000000000001", 30),
            Err(DecimalError::Range(_))
        ));
    }

    #[test]
    fn rounds_half_away_from_zero() {
        assert_eq!(to_minor(Decimal::new(525, 3), 2), Some(53));
        assert_eq!(to_minor(Decimal::new(-525, 3), 2), Some(-53));
        assert_eq!(to_minor(Decimal::new(1232178, 4), 2), Some(12322));
        assert_eq!(div_round_half_away(45, 10), 5);
        assert_eq!(div_round_half_away(-45, 10), -5);
        assert_eq!(div_round_half_away(44, 10), 4);
        assert_eq!(div_round_half_away(12322 * 15, 115), 1607);
    }

    #[test]
    fn formats_minor_units_and_plain_quantities() {
        assert_eq!(format_minor(44700, 2), "447.00");
        assert_eq!(format_minor(-5, 2), "-0.05");
        assert_eq!(format_minor(0, 2), "0.00");
        assert_eq!(format_plain(Decimal::new(1500, 3)), "1.5");
        assert_eq!(format_plain(Decimal::new(20, 1)), "2");
    }
}
