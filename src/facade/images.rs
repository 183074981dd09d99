//! `POST /v1/merchants/{msn}/images`: raw PNG/JPEG or JSON with base64.

use actix_web::http::StatusCode;
use actix_web::web;
use actix_web::{HttpRequest, HttpResponse};
use serde::{Deserialize, Serialize};

use super::query::{self, Others};
use super::{json_response, media_type, parse_json, read_body, AppState, MerchantTarget};
use crate::domain::ImageId;
use crate::error::{ApiError, Kind};
use crate::middleware::within_deadline;
use crate::translate::image::{check_base64, check_bytes, ImageError};
use crate::usecase::upload_image;
use crate::vipps::VippsClient;

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ImageJson {
    pub data: String,
    #[serde(default)]
    pub image_id: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct ImageQuery {
    #[serde(rename = "imageId")]
    pub image_id: Option<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ImageResponse<'a> {
    image_id: &'a str,
}

pub async fn post(
    // First, so an unauthenticated caller gets its 401 before any other check.
    target: MerchantTarget,
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
    client: web::Data<VippsClient>,
) -> Result<HttpResponse, ApiError> {
    within_deadline(async move {
        let MerchantTarget { ctx } = target;
        let query: ImageQuery = query::parse(req.query_string(), &["imageId"], Others::Ignored)?;
        let media = media_type(&req).unwrap_or_default();
        let (image, named) = match media.as_str() {
            "image/png" | "image/jpeg" | "image/jpg" => {
                let body = read_body(&req, payload, state.limits.image_body).await?;
                (
                    check_bytes(body.to_vec()).map_err(|e| image_problem(e, "body"))?,
                    query.image_id.clone(),
                )
            }
            _ => {
                let body = read_body(&req, payload, state.limits.image_body).await?;
                let json: ImageJson = parse_json(&req, &body).map_err(|e| {
                    if e.kind == Kind::UnsupportedMediaType {
                        ApiError::new(
                            Kind::UnsupportedMediaType,
                            "Send image/png, image/jpeg or application/json.",
                        )
                    } else {
                        e
                    }
                })?;
                if query.image_id.is_some() && json.image_id.is_some() {
                    return Err(ApiError::field(
                        Kind::InvalidRequest,
                        "imageId",
                        "give imageId in the body or the query, not both",
                    ));
                }
                (
                    check_base64(&json.data).map_err(|e| image_problem(e, "data"))?,
                    json.image_id.or_else(|| query.image_id.clone()),
                )
            }
        };
        let named = named.map(|id| parse_image_id(&id, "imageId")).transpose()?;
        let (id, created) = upload_image(&client, &ctx, image, named).await?;
        let status = if created {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        };
        json_response(
            status,
            &ImageResponse {
                image_id: id.as_str(),
            },
        )
    })
    .await
}

pub fn parse_image_id(raw: &str, field: &str) -> Result<ImageId, ApiError> {
    ImageId::parse(raw).map_err(|e| ApiError::field(Kind::InvalidRequest, field, e.0))
}

/// The problem for an image refused before any upstream call.
pub fn image_problem(e: ImageError, field: &str) -> ApiError {
    let kind = match e {
        ImageError::NotBase64 => Kind::InvalidRequest,
        ImageError::TooLarge(_) => Kind::PayloadTooLarge,
        ImageError::UnsupportedFormat => Kind::UnsupportedMediaType,
        ImageError::Unreadable(_) | ImageError::TooShort(_) => Kind::Unprocessable,
    };
    ApiError::field(kind, field, e.reason())
}
