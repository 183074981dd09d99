//! Domain newtypes: input becomes one of these at the edge, so invalid
//! identifiers never reach the translation or the upstream client.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The header naming the merchant of a Vipps call (and of a proxied one).
pub const MSN_HEADER: &str = "merchant-serial-number";

/// Where the reverse proxy serves: what follows it is the upstream path
/// below `/order-management`. Known here so the request middleware can tell
/// a proxied request without depending on the proxy.
pub const PROXY_PREFIX: &str = "/vipps/order-management";

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

/// The Order Management version the gateway speaks (`upstream.api_version`).
/// 2.1 carries an order line's VAT rate as `taxRate` in hundredths of a
/// percent; 2.0 only as `taxPercentage` in whole percents.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum ApiVersion {
    #[serde(rename = "2.0")]
    V2_0,
    #[default]
    #[serde(rename = "2.1")]
    V2_1,
}

impl ApiVersion {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::V2_0 => "2.0",
            Self::V2_1 => "2.1",
        }
    }
}

/// Why a value was refused, in words a caller can act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid(pub String);

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Merchant serial number: 4 to 6 digits.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct Msn(String);

impl Msn {
    /// Whether `s` is a well-formed MSN, without making one.
    pub fn is_valid(s: &str) -> bool {
        (4..=6).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_digit())
    }

    pub fn parse(s: &str) -> Result<Self, Invalid> {
        if Self::is_valid(s) {
            Ok(Self(s.to_owned()))
        } else {
            Err(Invalid("must be 4 to 6 digits".into()))
        }
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Maps keyed by MSN are looked up with the caller's text, without a copy
/// (the derived `Hash` and `Eq` are the string's).
impl std::borrow::Borrow<str> for Msn {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Msn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Msn {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Msn::parse(&s).map_err(|e| serde::de::Error::custom(format!("msn {s:?} {e}")))
    }
}

/// Characters the upstream allows in order and image ids: `^[0-9A-Za-z-_\.]+$`.
fn is_id_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.')
}

/// Checks an upstream path identifier. The pattern alone admits `.` and `..`,
/// which would be dot segments once placed in an upstream path, so they are refused.
fn check_id(s: &str, max_len: usize) -> Result<(), Invalid> {
    if s.is_empty() {
        return Err(Invalid("must not be empty".into()));
    }
    if s.len() > max_len {
        return Err(Invalid(format!("must be at most {max_len} characters")));
    }
    if !s.bytes().all(is_id_char) {
        return Err(Invalid(
            "may contain only letters, digits, '-', '_' and '.'".into(),
        ));
    }
    if s.bytes().all(|b| b == b'.') {
        return Err(Invalid("must not consist of dots only".into()));
    }
    Ok(())
}

/// An order id as the upstream path accepts it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct OrderId(String);

impl OrderId {
    /// Upstream documents no maximum; 256 keeps upstream URLs bounded.
    pub const MAX_LEN: usize = 256;
    pub fn parse(s: &str) -> Result<Self, Invalid> {
        check_id(s, Self::MAX_LEN).map(|()| Self(s.to_owned()))
    }
    /// Whether [`Self::parse`] would accept `s`, without allocating.
    pub fn is_valid(s: &str) -> bool {
        check_id(s, Self::MAX_LEN).is_ok()
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// An image id: the order id pattern, at most 128 characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct ImageId(String);

impl ImageId {
    pub const MAX_LEN: usize = 128;
    pub fn parse(s: &str) -> Result<Self, Invalid> {
        check_id(s, Self::MAX_LEN).map(|()| Self(s.to_owned()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The upstream's `paymentType` path segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum PaymentType {
    #[default]
    Ecom,
    Recurring,
}

impl PaymentType {
    /// Callers may write it in any case; upstream gets lower case.
    pub fn parse(s: &str) -> Result<Self, Invalid> {
        if s.eq_ignore_ascii_case("ecom") {
            Ok(Self::Ecom)
        } else if s.eq_ignore_ascii_case("recurring") {
            Ok(Self::Recurring)
        } else {
            Err(Invalid("must be 'ecom' or 'recurring'".into()))
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ecom => "ecom",
            Self::Recurring => "recurring",
        }
    }
}

impl Serialize for PaymentType {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// The category of an order link, as the upstream names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Category {
    General,
    Receipt,
    OrderConfirmation,
    Delivery,
    Ticket,
    Booking,
}

/// An id the gateway or Vipps hands out as a UUID (2.1's `categoryId`, an
/// outbox delivery's id): a UUID in its hyphenated form (36 characters), in
/// either case.
pub fn parse_hyphenated_uuid(raw: &str) -> Option<uuid::Uuid> {
    if raw.len() != 36 {
        return None;
    }
    uuid::Uuid::try_parse(raw).ok()
}

/// An absolute `http`/`https` URL, as the upstream's `orderDetailsUrl` expects.
///
/// The authority is a host name or IPv4 address (ASCII letters, digits, `.`,
/// `-`, `_`) with an optional port 1-65535: no user info, no IP literals in
/// brackets, no non-ASCII host (international names go in their `xn--` form).
/// Whatever follows the authority starts with `/`, `?` or `#` and holds no
/// whitespace or control characters. A link the gateway stores must be one
/// every client can parse back, so anything looser is refused here.
pub fn check_url(s: &str) -> Result<(), Invalid> {
    let rest = s
        .strip_prefix("https://")
        .or_else(|| s.strip_prefix("http://"))
        .ok_or_else(|| Invalid("must be an absolute http or https URL".into()))?;
    if s.len() > 2048 {
        return Err(Invalid("must be at most 2048 characters".into()));
    }
    if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(Invalid(
            "must not contain whitespace or control characters".into(),
        ));
    }
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let (host, port) = match authority.split_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (authority, None),
    };
    if host.is_empty() {
        return Err(Invalid("must name a host".into()));
    }
    if !host
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
    {
        return Err(Invalid(
            "host must be a name or IPv4 address of ASCII letters, digits, '.', '-' and '_'".into(),
        ));
    }
    if let Some(port) = port {
        let valid = !port.is_empty()
            && port.len() <= 5
            && !port.starts_with('0')
            && port.bytes().all(|b| b.is_ascii_digit())
            && port.parse::<u32>().is_ok_and(|p| p <= 65_535);
        if !valid {
            return Err(Invalid("port must be a number from 1 to 65535".into()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_keyed_by_msn_are_read_with_plain_text() {
        let mut map = std::collections::HashMap::new();
        map.insert(Msn::parse("123456").unwrap(), 1);
        map.insert(Msn::parse("4321").unwrap(), 2);
        assert_eq!(map.get("123456"), Some(&1));
        assert_eq!(map.get("4321"), Some(&2));
        assert_eq!(map.get("12345"), None);
        assert_eq!(map.get(" 123456"), None);
        for text in ["123", "1234567", "12a4", "", "１２３４"] {
            assert!(!Msn::is_valid(text), "{text}");
            assert!(Msn::parse(text).is_err(), "{text}");
        }
    }

    #[test]
    fn msn_is_four_to_six_digits() {
        assert!(Msn::parse("1234").is_ok());
        assert!(Msn::parse("123456").is_ok());
        assert!(Msn::parse("123").is_err());
        assert!(Msn::parse("1234567").is_err());
        assert!(Msn::parse("12a4").is_err());
    }

    #[test]
    fn ids_refuse_dot_segments_and_separators() {
        assert!(OrderId::parse("order-1_a.b").is_ok());
        for bad in ["", ".", "..", "a/b", "a%2Fb", "a b", "ø"] {
            assert!(OrderId::parse(bad).is_err(), "{bad:?} accepted");
        }
        assert!(ImageId::parse(&"a".repeat(128)).is_ok());
        assert!(ImageId::parse(&"a".repeat(129)).is_err());
    }

    #[test]
    fn payment_type_is_case_insensitive() {
        assert_eq!(PaymentType::parse("ECOM"), Ok(PaymentType::Ecom));
        assert_eq!(PaymentType::parse("Recurring"), Ok(PaymentType::Recurring));
        assert!(PaymentType::parse("pos").is_err());
    }

    #[test]
    fn urls_must_be_absolute_http() {
        assert!(check_url("https://shop.example/o/1").is_ok());
        assert!(check_url("ftp://x").is_err());
        assert!(check_url("https://").is_err());
        assert!(check_url("https://a b").is_err());
    }

    #[test]
    fn url_authority_is_a_plain_host_and_port() {
        for ok in [
            "http://localhost:8080",
            "https://shop.example",
            "https://shop.example?x=1",
            "https://shop.example#top",
            "https://xn--blbrsyltetj-e5a.no/o/[1]",
            "https://10.0.0.1:65535/a@b",
            "https://my_shop-1.example:1/",
        ] {
            assert!(check_url(ok).is_ok(), "{ok}");
        }
        for bad in [
            "http://[",
            "http://[::1]/",
            "http://a]b/",
            "https://user:pw@shop.example/",
            "https://blåbær.no/",
            "https://shop.example:/",
            "https://shop.example:0/",
            "https://shop.example:080/",
            "https://shop.example:65536/",
            "https://shop.example:http/",
            "https://:443/",
            "https://?q",
        ] {
            assert!(check_url(bad).is_err(), "{bad}");
        }
    }
}
