//! The gateway's typed model of the Vipps Order Management 2.0 and Access
//! Token APIs: what it sends and what it reads back. Amounts are integers
//! of minor units, as the upstream defines them. These types are the one
//! place that names Vipps' fields; serde writes and reads them.

use std::borrow::Cow;

use secrecy::SecretString;
use serde::{Deserialize, Deserializer, Serialize};

use crate::domain::{Category, Currency};

/// `POST /order-management/v2/{paymentType}/receipts/{orderId}` body. Its
/// text borrows from the caller's request when the gateway builds it, and
/// is owned when read back from Vipps.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Receipt<'a> {
    pub order_lines: Vec<OrderLine<'a>>,
    pub bottom_line: BottomLine<'a>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OrderLine<'a> {
    pub name: Cow<'a, str>,
    pub id: Cow<'a, str>,
    pub total_amount: i64,
    pub total_amount_excluding_tax: i64,
    pub total_tax_amount: i64,
    /// The VAT rate in whole percents: the only form of Order Management
    /// 2.0, deprecated in 2.1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tax_percentage: Option<u32>,
    /// The VAT rate in hundredths of a percent (2.1): 2550 is 25.5 %.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tax_rate: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit_info: Option<UnitInfo>,
    #[serde(default)]
    pub discount: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub product_url: Option<Cow<'a, str>>,
    #[serde(default)]
    pub is_return: Option<bool>,
    #[serde(default)]
    pub is_shipping: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UnitInfo {
    pub unit_price: i64,
    pub quantity: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quantity_unit: Option<QuantityUnit>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum QuantityUnit {
    #[default]
    Pcs,
    Kg,
    Km,
    Minute,
    Litre,
    Kwh,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BottomLine<'a> {
    pub currency: Currency,
    #[serde(default)]
    pub tip_amount: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pos_id: Option<Cow<'a, str>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payment_sources: Option<PaymentSources>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub barcode: Option<Barcode<'a>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receipt_number: Option<Cow<'a, str>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct PaymentSources {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gift_card: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub card: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub voucher: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cash: Option<i64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum BarcodeFormat {
    #[serde(rename = "EAN-13")]
    Ean13,
    #[serde(rename = "CODE 39")]
    Code39,
    #[serde(rename = "CODE 128")]
    Code128,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Barcode<'a> {
    pub format: BarcodeFormat,
    pub data: Cow<'a, str>,
}

/// A receipt serialized once, as sent to Vipps: the façade's answer embeds
/// the same JSON instead of writing the receipt again.
#[derive(Debug, Serialize)]
#[serde(transparent)]
pub struct ReceiptJson(Box<serde_json::value::RawValue>);

impl ReceiptJson {
    pub fn new(receipt: &Receipt<'_>) -> serde_json::Result<Self> {
        serde_json::value::to_raw_value(receipt).map(Self)
    }

    /// The JSON text.
    pub fn as_str(&self) -> &str {
        self.0.get()
    }

    /// A receipt written earlier (the outbox keeps the very text it sends).
    pub fn from_raw(raw: Box<serde_json::value::RawValue>) -> Self {
        Self(raw)
    }
}

impl OrderLine<'_> {
    /// The line's VAT rate in hundredths of a percent, from whichever field
    /// carries it: `taxPercentage` 25 and `taxRate` 2500 are the same rate.
    /// When both are given, `taxRate` (the current field) is read.
    pub fn rate(&self) -> Option<u32> {
        self.tax_rate
            .or_else(|| self.tax_percentage.map(|p| p.saturating_mul(100)))
    }
}

impl<'a> Receipt<'a> {
    /// The receipt with the upstream's defaults made explicit, so one read
    /// back from Vipps (which may return `null` or omit optional fields) and
    /// one about to be sent compare equal when they mean the same. The VAT
    /// rate is compared as a rate, whichever field carries it.
    pub fn canonical(&self) -> Receipt<'a> {
        let mut r = self.clone();
        for line in &mut r.order_lines {
            line.tax_rate = line.rate();
            line.tax_percentage = None;
            line.discount = Some(line.discount.unwrap_or(0));
            line.is_return = Some(line.is_return.unwrap_or(false));
            line.is_shipping = Some(line.is_shipping.unwrap_or(false));
            if let Some(info) = &mut line.unit_info {
                info.quantity_unit = Some(info.quantity_unit.unwrap_or_default());
            }
        }
        r.bottom_line.tip_amount = Some(r.bottom_line.tip_amount.unwrap_or(0));
        if r.bottom_line.payment_sources == Some(PaymentSources::default()) {
            r.bottom_line.payment_sources = None;
        }
        r
    }
}

/// `PUT /order-management/v2/{paymentType}/categories/{orderId}` body, and
/// the category part of an order read back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OrderCategory {
    pub category: Category,
    pub order_details_url: String,
    #[serde(default)]
    pub image_id: Option<String>,
}

/// `POST /order-management/v1/images` body.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageUpload<'a> {
    pub image_id: &'a str,
    /// Base64 of the image bytes.
    pub src: String,
    #[serde(rename = "type")]
    pub type_: &'static str,
}

/// `GET /order-management/v2/{paymentType}/{orderId}` answer.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OrderResponse {
    #[serde(default)]
    pub category: Option<OrderCategory>,
    #[serde(default)]
    pub receipt: Option<Receipt<'static>>,
}

/// `POST /accesstoken/get` answer.
#[derive(Deserialize)]
pub struct TokenResponse {
    pub access_token: SecretString,
    pub expires_in: Seconds,
}

/// A whole number of seconds. Vipps documents a string (`"3600"`); a JSON
/// number is read too.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seconds(pub u64);

impl<'de> Deserialize<'de> for Seconds {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Seconds;

            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a whole number of seconds, as a string or a number")
            }

            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Seconds, E> {
                Ok(Seconds(v))
            }

            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Seconds, E> {
                v.trim()
                    .parse()
                    .map(Seconds)
                    .map_err(|_| E::custom("expires_in is not a whole number of seconds"))
            }

            // serde_json hands an exact (`arbitrary_precision`) number over
            // as a map that its own `Number` reads.
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<Seconds, A::Error> {
                let n = serde_json::Number::deserialize(
                    serde::de::value::MapAccessDeserializer::new(map),
                )?;
                self.visit_str(n.as_str())
            }
        }
        d.deserialize_any(Visitor)
    }
}

/// The upstream's error body. Every field is optional when reading: an
/// upstream error that does not follow its own schema is still mapped.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VippsProblem {
    #[serde(default, rename = "type")]
    pub type_: Option<String>,
    #[serde(default)]
    pub title: Option<String>,
    #[serde(default)]
    pub detail: Option<String>,
    #[serde(default)]
    pub instance: Option<String>,
    #[serde(default)]
    pub invalid_params: Vec<VippsInvalidParam>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct VippsInvalidParam {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub reason: String,
}

/// 2.1's `paymentType` in a v3 body: upper case, unlike the v2 path segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum PaymentTypeV3 {
    Ecom,
    Recurring,
}

impl From<crate::domain::PaymentType> for PaymentTypeV3 {
    fn from(pt: crate::domain::PaymentType) -> Self {
        match pt {
            crate::domain::PaymentType::Ecom => Self::Ecom,
            crate::domain::PaymentType::Recurring => Self::Recurring,
        }
    }
}

/// `POST /order-management/v3/categories` body (2.1's `AddCategoryRequest`).
/// `imageId` is left out when there is none: 2.1 does not make it nullable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AddCategoryV3<'a> {
    pub order_id: &'a str,
    pub payment_type: PaymentTypeV3,
    #[serde(rename = "type")]
    pub type_: Category,
    pub url: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image_id: Option<&'a str>,
}

/// `POST /order-management/v3/categories` answer (`AddCategoryResponse`).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AddCategoryV3Response {
    pub category_id: String,
}

/// One v3 link as `GET /order-management/v3/categories[/{categoryId}]`
/// answers it (2.1's `Category`). The document requires none of its
/// fields; a link without an id, type or url is unusable and so unreadable,
/// while a missing order id or payment type is read as unknown.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CategoryV3 {
    pub category_id: String,
    #[serde(default)]
    pub order_id: Option<String>,
    #[serde(default)]
    pub payment_type: Option<PaymentTypeV3>,
    #[serde(rename = "type")]
    pub type_: Category,
    pub url: String,
    #[serde(default)]
    pub image_id: Option<String>,
}

/// `GET /order-management/v3/categories?orderId=` answer (`GetCategoriesResponse`).
#[derive(Debug, Clone, Deserialize)]
pub struct CategoriesV3 {
    #[serde(default)]
    pub categories: Vec<CategoryV3>,
}
