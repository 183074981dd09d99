//! Pure functions from façade requests to Vipps requests. No I/O here:
//! money arithmetic, receipt building, image checks.

pub mod image;
pub mod money;
pub mod receipt;

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer};

/// A JSON string of a request, borrowed from the body when it holds no
/// escapes, so reading a request copies no text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Text<'a>(pub Cow<'a, str>);

impl std::ops::Deref for Text<'_> {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Text<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_str(TextVisitor).map(Text)
    }
}

/// Reads a JSON string as text borrowed from the body where it can be.
struct TextVisitor;

impl<'de> Visitor<'de> for TextVisitor {
    type Value = Cow<'de, str>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a string")
    }

    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Cow::Borrowed(v))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v.to_owned()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::translate::money::DecimalText;

    #[test]
    fn text_borrows_plain_strings_and_owns_escaped_ones() {
        let v: Vec<Text> = serde_json::from_str(r#"["plain", "esc\"aped", "\u00e5"]"#).unwrap();
        assert!(matches!(v[0].0, Cow::Borrowed("plain")));
        assert_eq!(&*v[1], "esc\"aped");
        assert!(matches!(v[1].0, Cow::Owned(_)));
        assert_eq!(&*v[2], "å");
        assert!(serde_json::from_str::<Text>("12").is_err());
    }

    #[test]
    fn decimal_text_takes_strings_and_exact_numbers_only() {
        let v: Vec<DecimalText> =
            serde_json::from_str(r#"["199.00", 12, -3, 0.10, 123456789012345678901234.5]"#)
                .unwrap();
        let texts: Vec<&str> = v.iter().map(|d| &*d.0).collect();
        assert_eq!(
            texts,
            ["199.00", "12", "-3", "0.10", "123456789012345678901234.5"]
        );
        assert!(matches!(v[0].0, Cow::Borrowed(_)));
        for bad in ["true", "null", "[]", "{}", r#"{"a": 1}"#] {
            let e = serde_json::from_str::<DecimalText>(bad).unwrap_err();
            assert!(
                e.to_string().contains("decimal number or a string"),
                "{bad}: {e}"
            );
        }
    }
}
