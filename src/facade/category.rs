//! `PUT /v1/merchants/{msn}/orders/{orderId}/category`, and the link body it
//! shares with the v3 links (`categories`).

use actix_web::http::StatusCode;
use actix_web::web;
use actix_web::{HttpRequest, HttpResponse};
use serde::{Deserialize, Serialize};

use super::images::{image_problem, parse_image_id, upload};
use super::{
    json_response, parse_json, read_body, upstream_problem, AppState, Operation, OrderTarget,
};
use crate::domain::{check_url, Category, ImageId, PaymentType};
use crate::error::{ApiError, Kind};
use crate::middleware::within_deadline;
use crate::translate::image::check_base64;
use crate::vipps::model::OrderCategory;
use crate::vipps::{CallContext, VippsClient};

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CategoryRequest {
    pub category: Category,
    pub url: String,
    #[serde(default)]
    pub image_id: Option<String>,
    #[serde(default)]
    pub image: Option<InlineImage>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct InlineImage {
    pub data: String,
    #[serde(default)]
    pub image_id: Option<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct CategoryResponse<'a> {
    category: Category,
    url: &'a str,
    image_id: Option<&'a str>,
    payment_type: PaymentType,
}

/// A category link as the caller asked for it, any inline image uploaded.
pub struct Link {
    pub category: Category,
    pub url: String,
    pub image_id: Option<ImageId>,
}

/// Reads the body of a category PUT (v2) or POST (v3 links): checks every
/// field first, then uploads an inline image, so bad input never reaches Vipps.
pub async fn read_link(
    req: &HttpRequest,
    payload: web::Payload,
    state: &AppState,
    client: &VippsClient,
    ctx: &CallContext,
) -> Result<Link, ApiError> {
    let body = read_body(req, payload, state.limits.image_body).await?;
    let request: CategoryRequest = parse_json(req, &body)?;
    check_url(&request.url).map_err(|e| ApiError::field(Kind::InvalidRequest, "url", e.0))?;

    let image_id = match (request.image_id, request.image) {
        (Some(_), Some(_)) => {
            return Err(ApiError::field(
                Kind::InvalidRequest,
                "image",
                "give imageId or image, not both",
            ));
        }
        (Some(id), None) => Some(parse_image_id(&id, "imageId")?),
        (None, Some(inline)) => {
            let named = inline
                .image_id
                .map(|id| parse_image_id(&id, "image.imageId"))
                .transpose()?;
            let image = check_base64(&inline.data).map_err(|e| image_problem(e, "image.data"))?;
            Some(upload(client, ctx, image, named).await?.0)
        }
        (None, None) => None,
    };
    Ok(Link {
        category: request.category,
        url: request.url,
        image_id,
    })
}

pub async fn put(
    // First, so an unauthenticated caller gets its 401 before any other check.
    target: OrderTarget,
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
    client: web::Data<VippsClient>,
) -> Result<HttpResponse, ApiError> {
    within_deadline(async move {
        let OrderTarget {
            ctx,
            order,
            payment_type,
        } = target;
        let link = read_link(&req, payload, &state, &client, &ctx).await?;
        let upstream = OrderCategory {
            category: link.category,
            order_details_url: link.url,
            image_id: link.image_id.as_ref().map(|i| i.as_str().to_owned()),
        };
        client
            .put_category(&ctx, payment_type, &order, &upstream)
            .await
            .map_err(|e| upstream_problem(e, Operation::Category))?;
        json_response(
            StatusCode::OK,
            &CategoryResponse {
                category: upstream.category,
                url: &upstream.order_details_url,
                image_id: upstream.image_id.as_deref(),
                payment_type,
            },
        )
    })
    .await
}
