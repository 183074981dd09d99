//! Validation of 2.1's `POST /v3/categories` body (`AddCategoryRequest`)
//! and of the v3 query and path parameters, with the same table-driven
//! checks as the v2 bodies.

use serde_json::Value;

use super::{
    check_root, field, is_id, typed, Field, Kind, ABSOLUTE_URL, CATEGORIES, ID_PATTERN, IMAGE_ID,
};
use crate::simulator::model::v3::AddCategoryRequest;
use crate::simulator::model::InvalidParam;

const ORDER_ID: Kind = Kind::Str {
    min: 1,
    max: None,
    check: Some((is_id, ID_PATTERN)),
};

/// `AddCategoryRequest`: `orderId`, `paymentType`, `type` and `url` are
/// required; `imageId` is optional and, unlike v2's, not nullable. `type`
/// refers to the nullable `CategoryEnum`, but it is required and a link
/// without a category means nothing, so `null` is refused.
const ADD_CATEGORY: &[Field] = &[
    field("orderId", ORDER_ID, true, false),
    field(
        "paymentType",
        Kind::Enum(&["ECOM", "RECURRING"]),
        true,
        false,
    ),
    field("type", Kind::Enum(CATEGORIES), true, false),
    field("url", ABSOLUTE_URL, true, false),
    field("imageId", IMAGE_ID, false, false),
];

/// Validates an `AddCategoryRequest` body.
pub fn add_category(body: &Value) -> Result<AddCategoryRequest, Vec<InvalidParam>> {
    let errors = check_root(body, ADD_CATEGORY);
    if !errors.is_empty() {
        return Err(errors);
    }
    typed(body)
}

/// The `orderId` query parameter of `GET /v3/categories`. The document
/// does not mark it required, but the operation is "query categories by
/// orderId": without one there is nothing to query, so it is a `400`.
pub fn order_id_query(value: Option<&str>) -> Result<String, InvalidParam> {
    match value {
        None | Some("") => Err(InvalidParam::new(
            "orderId",
            "is a required query parameter",
        )),
        Some(v) if is_id(v) => Ok(v.to_owned()),
        Some(_) => Err(InvalidParam::new("orderId", ID_PATTERN)),
    }
}

/// The `{categoryId}` path parameter: a UUID (`format: uuid`), in its
/// hyphenated form, in either case.
pub fn category_id(raw: &str) -> Result<uuid::Uuid, InvalidParam> {
    let hyphenated = raw.len() == 36 && raw.bytes().filter(|b| *b == b'-').count() == 4;
    uuid::Uuid::try_parse(raw)
        .ok()
        .filter(|_| hyphenated)
        .ok_or_else(|| InvalidParam::new("categoryId", "must be a UUID (format: uuid)"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn add_category_names_every_bad_field() {
        let names = |body: Value| -> Vec<String> {
            add_category(&body)
                .err()
                .unwrap_or_default()
                .into_iter()
                .map(|p| p.name)
                .collect()
        };
        assert!(
            add_category(&json!({"orderId": "o-1", "paymentType": "ECOM",
            "type": "RECEIPT", "url": "https://shop.example/o/1"}))
            .is_ok()
        );
        assert_eq!(
            names(
                json!({"orderId": "o 1", "paymentType": "ecom", "type": "SHOE",
                "url": "shop.example", "imageId": null, "category": "RECEIPT"})
            ),
            [
                "orderId",
                "paymentType",
                "type",
                "url",
                "imageId",
                "category"
            ]
        );
        assert_eq!(names(json!({})), ["orderId", "paymentType", "type", "url"]);
    }

    #[test]
    fn category_ids_are_hyphenated_uuids() {
        assert!(category_id("337f5e5d-288b-40d5-be14-901cc3acacc0").is_ok());
        assert!(category_id("337F5E5D-288B-40D5-BE14-901CC3ACACC0").is_ok());
        for bad in [
            "",
            "x",
            "337f5e5d288b40d5be14901cc3acacc0",
            "{337f5e5d-288b-40d5-be14-901cc3acacc0}",
            "urn:uuid:337f5e5d-288b-40d5-be14-901cc3acacc0",
            "337f5e5d-288b-40d5-be14-901cc3acaccg",
        ] {
            assert!(category_id(bad).is_err(), "{bad}");
        }
    }
}
