//! Order Management 2.1's `/v3/categories`: several category links per
//! order, each with its own id. Written from the 2.1 document
//! (`AddCategoryRequest`, `AddCategoryResponse`, `Category`,
//! `GetCategoriesResponse`).

use serde::{Deserialize, Serialize};

use super::Category;

/// `PaymentType` of 2.1: upper case, unlike v2's `{paymentType}` path segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum PaymentType {
    Ecom,
    Recurring,
}

impl PaymentType {
    /// The name the v2 paths and the simulator's state give it.
    pub fn lower(self) -> &'static str {
        match self {
            PaymentType::Ecom => "ecom",
            PaymentType::Recurring => "recurring",
        }
    }
}

/// `AddCategoryRequest`: the body of `POST /v3/categories`.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AddCategoryRequest {
    pub order_id: String,
    pub payment_type: PaymentType,
    #[serde(rename = "type")]
    pub kind: Category,
    pub url: String,
    #[serde(default)]
    pub image_id: Option<String>,
}

/// `AddCategoryResponse`.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AddCategoryResponse {
    pub category_id: String,
}

/// `Category`: one link as `GET /v3/categories/{categoryId}` and the list
/// answer it. `imageId` is left out when the link has none (the document
/// does not make it nullable).
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CategoryLink {
    pub category_id: String,
    pub order_id: String,
    pub payment_type: PaymentType,
    #[serde(rename = "type")]
    pub kind: Category,
    pub url: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image_id: Option<String>,
}

/// `GetCategoriesResponse`.
#[derive(Clone, Debug, Serialize)]
pub struct GetCategoriesResponse {
    pub categories: Vec<CategoryLink>,
}

/// A link as the simulator keeps it (the merchant and id are its key).
#[derive(Clone, Debug)]
pub struct StoredCategory {
    pub request: AddCategoryRequest,
    /// Creation order, for lists oldest first.
    pub seq: u64,
}

impl StoredCategory {
    pub fn link(&self, id: uuid::Uuid) -> CategoryLink {
        let r = &self.request;
        CategoryLink {
            category_id: id.hyphenated().to_string(),
            order_id: r.order_id.clone(),
            payment_type: r.payment_type,
            kind: r.kind,
            url: r.url.clone(),
            image_id: r.image_id.clone(),
        }
    }
}
