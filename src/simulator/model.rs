//! The simulator's own model of the Vipps wire format, written from the Vipps
//! documents (Order Management 2.0 and Access token 2.0). It deliberately shares
//! nothing with the gateway's client types, so a mistake there cannot make the
//! gateway's tests pass against its own mistake.

use serde::{Deserialize, Serialize};

pub mod v3;

/// `CategoryEnum`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Category {
    General,
    Receipt,
    OrderConfirmation,
    Delivery,
    Ticket,
    Booking,
}

/// `Order`: the body of the category PUT (v2) and of the deprecated v1 order PUT.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OrderCategory {
    pub category: Category,
    pub order_details_url: String,
    #[serde(default)]
    pub image_id: Option<String>,
}

/// `Image`: the body of the image upload.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Image {
    pub image_id: String,
    pub src: String,
    #[serde(rename = "type")]
    pub kind: ImageSourceType,
}

#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ImageSourceType {
    Base64,
}

/// `ImageResponse`.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageResponse {
    pub image_id: String,
}

/// `Receipt`. Amounts are integers of minor units.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Receipt {
    pub order_lines: Vec<OrderLine>,
    pub bottom_line: BottomLine,
}

/// `OrderLine`.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OrderLine {
    pub name: String,
    pub id: String,
    pub total_amount: i64,
    pub total_amount_excluding_tax: i64,
    pub total_tax_amount: i64,
    #[serde(default)]
    pub tax_percentage: Option<i64>,
    #[serde(default)]
    pub tax_rate: Option<i64>,
    #[serde(default)]
    pub unit_info: Option<UnitInfo>,
    #[serde(default)]
    pub discount: Option<i64>,
    #[serde(default)]
    pub product_url: Option<String>,
    #[serde(default)]
    pub is_return: Option<bool>,
    #[serde(default)]
    pub is_shipping: Option<bool>,
}

/// `UnitInfo`.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UnitInfo {
    pub unit_price: Option<i64>,
    pub quantity: String,
    #[serde(default)]
    pub quantity_unit: Option<QuantityUnit>,
}

/// `QuantityUnitEnum`.
#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum QuantityUnit {
    Pcs,
    Kg,
    Km,
    Minute,
    Litre,
    Kwh,
}

/// `CurrencyEnum`.
#[derive(Clone, Copy, Debug, Deserialize)]
pub enum Currency {
    #[serde(rename = "NOK")]
    Nok,
    #[serde(rename = "DKK")]
    Dkk,
    #[serde(rename = "EUR")]
    Eur,
}

/// `BottomLine`, including the fields the 2.0 document marks deprecated (the
/// upstream still accepts them, so the simulator does too).
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BottomLine {
    pub currency: Currency,
    #[serde(default)]
    pub tip_amount: Option<i64>,
    #[serde(default)]
    pub gift_card_amount: Option<i64>,
    #[serde(default)]
    pub pos_id: Option<String>,
    #[serde(default)]
    pub total_amount: Option<i64>,
    #[serde(default)]
    pub total_tax: Option<i64>,
    #[serde(default)]
    pub total_discount: Option<i64>,
    #[serde(default)]
    pub shipping_amount: Option<i64>,
    #[serde(default)]
    pub shipping_info: Option<ShippingInfo>,
    #[serde(default)]
    pub payment_sources: Option<PaymentSources>,
    #[serde(default)]
    pub barcode: Option<Barcode>,
    #[serde(default)]
    pub receipt_number: Option<String>,
    #[serde(default)]
    pub terminal_id: Option<String>,
}

/// `ShippingInfo` (deprecated upstream).
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ShippingInfo {
    pub amount: Option<i64>,
    pub amount_excluding_tax: Option<i64>,
    pub tax_amount: Option<i64>,
    pub tax_percentage: Option<i64>,
}

/// `PaymentSources`.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PaymentSources {
    #[serde(default)]
    pub gift_card: Option<i64>,
    #[serde(default)]
    pub card: Option<i64>,
    #[serde(default)]
    pub voucher: Option<i64>,
    #[serde(default)]
    pub cash: Option<i64>,
}

/// `Barcode`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Barcode {
    pub format: BarcodeFormat,
    pub data: Option<String>,
}

/// `BarcodeFormatEnum`.
#[derive(Clone, Copy, Debug, Deserialize)]
pub enum BarcodeFormat {
    #[serde(rename = "EAN-13")]
    Ean13,
    #[serde(rename = "CODE 39")]
    Code39,
    #[serde(rename = "CODE 128")]
    Code128,
}

/// `AuthorizationTokenResponse` of `POST /accesstoken/get`: every value is a
/// string, as the Access token document defines it.
#[derive(Clone, Debug, Serialize)]
pub struct TokenResponse {
    pub token_type: String,
    pub expires_in: String,
    pub ext_expires_in: String,
    pub expires_on: String,
    pub not_before: String,
    pub resource: String,
    pub access_token: String,
}

/// One entry of `ErrorResponse.invalidParams`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct InvalidParam {
    pub name: String,
    pub reason: String,
}

impl InvalidParam {
    pub fn new(name: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            reason: reason.into(),
        }
    }
}

/// `ErrorResponse`.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ErrorResponse {
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub detail: String,
    pub instance: String,
    pub invalid_params: Vec<InvalidParam>,
}

/// `OrderV2Response`: what `GET /v2/{paymentType}/{orderId}` answers. The
/// receipt is kept exactly as it was received. 2.1 makes neither field
/// nullable, so the one the order lacks is left out rather than `null`.
/// Borrowed from the stored order, so answering copies nothing.
#[derive(Debug, Serialize)]
pub struct OrderV2Response<'a> {
    #[serde(skip_serializing_if = "is_none")]
    pub category: &'a Option<OrderCategory>,
    #[serde(skip_serializing_if = "is_none")]
    pub receipt: &'a Option<Box<serde_json::value::RawValue>>,
}

/// `skip_serializing_if` for a borrowed `Option`.
fn is_none<T>(value: &&Option<T>) -> bool {
    value.is_none()
}

/// The deprecated v1 `GET /v1/orders/{transactionId}` answer.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct V1OrderResponse {
    pub category: Category,
    pub order_details_url: String,
    pub image_ids: Vec<V1ImageRef>,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct V1ImageRef {
    pub id: String,
    pub sort_order: u32,
}
