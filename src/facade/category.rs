//! `PUT /v1/merchants/{msn}/orders/{orderId}/category`, and the link body it
//! shares with the v3 links (`categories`).

use actix_web::http::StatusCode;
use actix_web::web;
use actix_web::{HttpRequest, HttpResponse};
use serde::{Deserialize, Serialize};

use super::deliveries::accepted;
use super::images::{image_problem, parse_image_id};
use super::{json_response, parse_json, read_body, AppState, AsyncOrderTarget, OrderTarget};
use crate::domain::{check_url, Category, ImageId, OrderId, PaymentType};
use crate::error::{ApiError, Kind};
use crate::middleware::within_deadline;
use crate::outbox::{
    fingerprint, prefers_async, CategoryPayload, Enqueued, Kind as OutboxKind, NewDelivery, Origin,
    StoredImage,
};
use crate::translate::image::check_base64;
use crate::usecase::put_category;
pub use crate::usecase::LinkImage;
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

/// A category link as the caller sent it, every field checked, its inline
/// image (if any) not yet uploaded.
pub struct ParsedLink {
    pub category: Category,
    pub url: String,
    pub image: LinkImage,
}

/// Reads and checks the body of a category PUT (v2) or POST (v3 links).
pub async fn parse_link(
    req: &HttpRequest,
    payload: web::Payload,
    state: &AppState,
) -> Result<ParsedLink, ApiError> {
    let body = read_body(req, payload, state.limits.image_body).await?;
    let request: CategoryRequest = parse_json(req, &body)?;
    check_url(&request.url).map_err(|e| ApiError::field(Kind::InvalidRequest, "url", e.0))?;
    let image = match (request.image_id, request.image) {
        (Some(_), Some(_)) => {
            return Err(ApiError::field(
                Kind::InvalidRequest,
                "image",
                "give imageId or image, not both",
            ));
        }
        (Some(id), None) => LinkImage::Id(parse_image_id(&id, "imageId")?),
        (None, Some(inline)) => LinkImage::Inline {
            named: inline
                .image_id
                .map(|id| parse_image_id(&id, "image.imageId"))
                .transpose()?,
            image: check_base64(&inline.data).map_err(|e| image_problem(e, "image.data"))?,
        },
        (None, None) => LinkImage::None,
    };
    Ok(ParsedLink {
        category: request.category,
        url: request.url,
        image,
    })
}

impl ParsedLink {
    /// The link to send, its inline image uploaded first.
    pub async fn upload(self, client: &VippsClient, ctx: &CallContext) -> Result<Link, ApiError> {
        let image_id = self.image.upload(client, ctx).await?;
        Ok(Link {
            category: self.category,
            url: self.url,
            image_id,
        })
    }
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
    parse_link(req, payload, state)
        .await?
        .upload(client, ctx)
        .await
}

/// Stores the link in the outbox and answers `202` with its delivery: the
/// same delivery for an identical request, and a pending link of the order
/// not yet claimed is replaced by this one.
async fn accept_async(
    state: &AppState,
    ctx: &CallContext,
    origin: Origin,
    payment_type: PaymentType,
    order: &OrderId,
    link: ParsedLink,
) -> Result<HttpResponse, ApiError> {
    let store = state.outbox.store().await?;
    let (image_id, image) = match link.image {
        LinkImage::None => (None, None),
        LinkImage::Id(id) => (Some(id.as_str().to_owned()), None),
        LinkImage::Inline { image, named } => (
            None,
            Some(StoredImage {
                data: image.to_base64(),
                image_id: named.map(|id| id.as_str().to_owned()),
            }),
        ),
    };
    let payload = serde_json::to_string(&CategoryPayload {
        category: link.category,
        url: link.url,
        image_id,
        image,
    })
    .map_err(|e| ApiError::internal(&e))?;
    let new = NewDelivery {
        msn: ctx.merchant.msn.as_str().to_owned(),
        kind: OutboxKind::Category,
        payment_type: payment_type.as_str().to_owned(),
        order_id: order.as_str().to_owned(),
        fingerprint: fingerprint(&payload),
        payload,
        origin,
    };
    match state.outbox.enqueue(&store, &new).await? {
        Enqueued::Created(d) | Enqueued::Repost(d) | Enqueued::Replaced(d) => accepted(&d),
        Enqueued::Conflict(_) | Enqueued::AlreadyDelivered(_) | Enqueued::Full => Err(
            ApiError::internal(&"the outbox answered a category link as a receipt"),
        ),
    }
}

pub async fn put(
    // First, so an unauthenticated caller gets its 401 before any other check.
    AsyncOrderTarget(target, origin): AsyncOrderTarget,
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
        let parsed = parse_link(&req, payload, &state).await?;
        if state.outbox.enabled() && prefers_async(req.headers()) {
            return accept_async(&state, &ctx, origin, payment_type, &order, parsed).await;
        }
        let upstream = put_category(
            &client,
            &ctx,
            payment_type,
            &order,
            parsed.category,
            parsed.url,
            parsed.image,
        )
        .await?;
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
