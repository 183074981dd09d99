//! Exact decimal parsing and minor-unit arithmetic. No floating point:
//! amounts arrive as decimal text and become integers of minor units.

use std::borrow::Cow;
use std::fmt;

use rust_decimal::{Decimal, RoundingStrategy};
use serde::{de, Deserialize, Deserializer};
use serde_json::value::RawValue;

pub use crate::domain::Currency;

/// A decimal number as the caller wrote it: a JSON string, or a JSON number
/// read from its text (serde_json `arbitrary_precision`), never through `f64`.
/// Borrowed from the request body when the string holds no escapes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecimalText<'a>(pub Cow<'a, str>);

/// What a [`DecimalText`] field expects, for its error message.
const DECIMAL_EXPECTED: &str = "a decimal number or a string holding one";

impl<'de: 'a, 'a> Deserialize<'de> for DecimalText<'a> {
    /// Read as the raw JSON text of the value, which serde_json has checked:
    /// a number is its own text, a string is borrowed unless it holds escapes.
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = <&'de RawValue>::deserialize(d)?.get();
        let unexpected = match raw.as_bytes().first() {
            Some(b'"') if !raw.contains('\\') => {
                return Ok(Self(Cow::Borrowed(&raw[1..raw.len() - 1])));
            }
            Some(b'"') => {
                return serde_json::from_str::<String>(raw)
                    .map(|s| Self(Cow::Owned(s)))
                    .map_err(de::Error::custom);
            }
            Some(b'-' | b'0'..=b'9') => return Ok(Self(Cow::Borrowed(raw))),
            Some(b'{') => de::Unexpected::Map,
            Some(b'[') => de::Unexpected::Seq,
            Some(b't') => de::Unexpected::Bool(true),
            Some(b'f') => de::Unexpected::Bool(false),
            _ => de::Unexpected::Unit,
        };
        Err(de::Error::invalid_type(unexpected, &DECIMAL_EXPECTED))
    }
}

impl fmt::Display for DecimalText<'_> {
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
/// The digits of [`MAX_MAJOR`].
const MAX_MAJOR_DIGITS: usize = MAX_MAJOR.ilog10() as usize + 1;

/// Parses plain decimal notation (`-?digits[.digits]`), allowing at most
/// `max_decimals` digits after the point. Exponents, `NaN`, spaces, digit
/// separators and a leading `+` are refused; the value is read exactly by
/// `rust_decimal`.
pub fn parse_decimal(text: &str, max_decimals: u32) -> Result<Decimal, DecimalError> {
    let unsigned = text.strip_prefix('-').unwrap_or(text);
    let (int, frac) = match unsigned.bytes().position(|b| b == b'.') {
        Some(point) => (&unsigned[..point], Some(&unsigned[point + 1..])),
        None => (unsigned, None),
    };
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(int) || frac.is_some_and(|f| !digits(f)) {
        return Err(DecimalError::Syntax);
    }
    if frac.map_or(0, str::len) > max_decimals as usize {
        return Err(DecimalError::Range(format!(
            "must have at most {max_decimals} decimals"
        )));
    }
    let too_large = || DecimalError::Range(format!("must be at most {MAX_MAJOR}"));
    // More integer digits than the largest amount has is too large, however
    // many digits rust_decimal could carry.
    let int_digits = int.trim_start_matches('0').len();
    if int_digits > MAX_MAJOR_DIGITS {
        return Err(too_large());
    }
    let value = Decimal::from_str_exact(text).map_err(|_| {
        DecimalError::Range("has more significant digits than can be computed exactly".into())
    })?;
    // Fewer integer digits than the largest amount is below it.
    if int_digits == MAX_MAJOR_DIGITS && value.abs() > Decimal::from(MAX_MAJOR) {
        return Err(too_large());
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
    if let Some(up) = decimals.checked_sub(value.scale()) {
        // No more decimals than minor units: exact, no rounding.
        let mantissa = i64::try_from(value.mantissa()).ok()?;
        return mantissa.checked_mul(10i64.checked_pow(up)?);
    }
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

/// [`format_plain`] of `value`, which was parsed from `text`: `text` itself
/// when it is already plain (a whole number without leading zeros).
pub fn plain_text(text: &str, value: Decimal) -> String {
    let b = text.as_bytes();
    if !b.is_empty() && b.iter().all(u8::is_ascii_digit) && (b[0] != b'0' || b.len() == 1) {
        text.to_owned()
    } else {
        format_plain(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_text_is_the_plain_form_whatever_the_input() {
        for (text, plain) in [
            ("2", "2"),
            ("0", "0"),
            ("02", "2"),
            ("1.50", "1.5"),
            ("1.000", "1"),
            ("0.25", "0.25"),
            ("10", "10"),
            ("100.0", "100"),
        ] {
            let value = parse_decimal(text, 6).unwrap();
            assert_eq!(plain_text(text, value), plain, "{text}");
            assert_eq!(plain_text(text, value), format_plain(value), "{text}");
        }
    }

    #[test]
    fn parses_plain_decimals_exactly() {
        assert_eq!(parse_decimal("199.00", 2), Ok(Decimal::new(19900, 2)));
        assert_eq!(parse_decimal("-0.5", 2), Ok(Decimal::new(-5, 1)));
        assert_eq!(parse_decimal("0.123456", 6), Ok(Decimal::new(123456, 6)));
        for bad in [
            "", "1e3", "+1", " 1", "1.", ".5", "NaN", "1,5", "--1", "0x10", "1_000", "1.5e2", "1 ",
            "-", "-.5", "٣",
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
        // The largest amount itself is accepted; anything above it is not,
        // with or without leading zeros.
        assert_eq!(
            parse_decimal("1000000000000.00", 2),
            Ok(Decimal::from(MAX_MAJOR))
        );
        assert_eq!(
            parse_decimal("-0001000000000000", 2),
            Ok(Decimal::from(-MAX_MAJOR))
        );
        for over in [
            "1000000000000.01",
            "-1000000000000.01",
            "1000000000001",
            "0001000000000001",
        ] {
            assert!(
                matches!(parse_decimal(over, 2), Err(DecimalError::Range(_))),
                "{over}"
            );
        }
        assert_eq!(
            parse_decimal("999999999999.99", 2),
            Ok(Decimal::new(99_999_999_999_999, 2))
        );
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
    fn parsing_agrees_with_rust_decimal_exact_parsing() {
        crate::test_seed::seeded();
        let mut texts: Vec<String> = [
            "0",
            "-0",
            "00012.50",
            "0.0000000000000000000000000001",
            "9999999999999.99",
            "1000000000000",
            "-1000000000000.000",
            "1000000000000.01",
            "7922816251426.4337593543950335",
            "7922816251426.4337593543950336",
            "0.9999999999999999999999999999",
            "1.0000000000000000000000000000",
        ]
        .map(String::from)
        .to_vec();
        for _ in 0..20_000 {
            let digits = |n: usize| -> String {
                (0..n)
                    .map(|_| char::from(b'0' + fastrand::u8(0..10)))
                    .collect()
            };
            let mut t = String::new();
            if fastrand::bool() {
                t.push('-');
            }
            t += &digits(fastrand::usize(1..15));
            if fastrand::bool() {
                t.push('.');
                t += &digits(fastrand::usize(1..31));
            }
            texts.push(t);
        }
        for t in texts {
            let ours = parse_decimal(&t, 30);
            let exact = Decimal::from_str_exact(&t).ok().filter(|v| {
                let int_digits = t.trim_start_matches('-').split('.').next().unwrap();
                int_digits.trim_start_matches('0').len() <= 13
                    && v.abs() <= Decimal::from(MAX_MAJOR)
            });
            match (&ours, exact) {
                (Ok(a), Some(b)) => {
                    assert_eq!(*a, b, "{t}");
                    assert_eq!(a.scale(), b.scale(), "{t}");
                }
                (Err(DecimalError::Range(_)), None) => {}
                _ => panic!("{t}: ours {ours:?}, rust_decimal {exact:?}"),
            }
        }
    }

    #[test]
    fn rounds_half_away_from_zero() {
        crate::test_seed::seeded();
        assert_eq!(to_minor(Decimal::new(525, 3), 2), Some(53));
        assert_eq!(to_minor(Decimal::new(-525, 3), 2), Some(-53));
        assert_eq!(to_minor(Decimal::new(1232178, 4), 2), Some(12322));
        assert_eq!(to_minor(Decimal::new(19900, 2), 2), Some(19900));
        assert_eq!(to_minor(Decimal::new(-3, 0), 2), Some(-300));
        assert_eq!(to_minor(Decimal::new(5, 1), 2), Some(50));
        assert_eq!(to_minor(Decimal::new(i64::MAX, 2), 2), Some(i64::MAX));
        assert_eq!(to_minor(Decimal::new(i64::MAX, 1), 2), None);
        assert_eq!(to_minor(Decimal::new(i64::MIN, 0), 2), None);
        assert_eq!(
            to_minor(Decimal::from_i128_with_scale(1 << 70, 10), 2),
            Some(11_805_916_207_174)
        );
        for _ in 0..10_000 {
            let v = Decimal::new(
                fastrand::i64(..) >> fastrand::u32(0..63),
                fastrand::u32(0..6),
            );
            let slow = v
                .round_dp_with_strategy(2, RoundingStrategy::MidpointAwayFromZero)
                .checked_mul(Decimal::from(100))
                .and_then(|s| i64::try_from(s).ok());
            assert_eq!(to_minor(v, 2), slow, "{v}");
        }
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
