//! 2.1's several category links per order:
//! `POST` and `GET /v1/merchants/{msn}/orders/{orderId}/categories` and
//! `DELETE …/categories/{categoryId}`.
//!
//! An order here is (payment type, order id), as everywhere in the façade:
//! lists show the links of the request's payment type, and a link of
//! another order, payment type or merchant is `404 category-not-found`.

use tokio::time::Instant;

use actix_web::http::StatusCode;
use actix_web::web;
use actix_web::{HttpRequest, HttpResponse};
use serde::Serialize;

use super::category::read_link;
use super::{json_response, upstream_problem, AppState, Operation, OrderTarget};
use crate::domain::{Category, OrderId, PaymentType};
use crate::error::{ApiError, Kind};
use crate::middleware::within_deadline;
use crate::vipps::model::{AddCategoryV3, CategoryV3, PaymentTypeV3};
use crate::vipps::{CallContext, UpstreamError, VippsClient};

/// One link as callers see it.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LinkView<'a> {
    category_id: &'a str,
    category: Category,
    url: &'a str,
    image_id: Option<&'a str>,
}

/// The order's links of one payment type, as callers see them. A link that
/// names no payment type is the order's whatever the type.
pub fn link_views(links: &[CategoryV3], payment_type: PaymentType) -> Vec<LinkView<'_>> {
    let wanted = PaymentTypeV3::from(payment_type);
    links
        .iter()
        .filter(|l| l.payment_type.is_none_or(|p| p == wanted))
        .map(|l| LinkView {
            category_id: &l.category_id,
            category: l.type_,
            url: &l.url,
            image_id: l.image_id.as_deref(),
        })
        .collect()
}

#[derive(Serialize)]
struct LinkList<'a> {
    categories: Vec<LinkView<'a>>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct AddedLink<'a> {
    category_id: &'a str,
    category: Category,
    url: &'a str,
    image_id: Option<&'a str>,
    payment_type: PaymentType,
}

/// `POST …/categories`: adds a link. Sent once: when its outcome is unknown
/// the order's links are read back instead (see [`settle`]).
pub async fn post(
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
        let sent = AddCategoryV3 {
            order_id: order.as_str(),
            payment_type: payment_type.into(),
            type_: link.category,
            url: &link.url,
            image_id: link.image_id.as_ref().map(|i| i.as_str()),
        };
        // The add gets the request's time less a share kept for reading
        // the links back, so an add whose outcome is unknown can still be
        // settled before the deadline.
        let settle_time = ctx.deadline.saturating_duration_since(Instant::now()) / 4;
        let add_ctx = CallContext {
            deadline: ctx.deadline.checked_sub(settle_time).unwrap_or(ctx.deadline),
            ..ctx.clone()
        };
        let id = match client.add_category_v3(&add_ctx, &sent).await {
            Ok(id) => id,
            Err(e) if outcome_unknown(&e) => match settle(&client, &ctx, &order, &sent).await {
                Some(id) => id,
                None => {
                    // Not "retry": the link may exist, or be on its way.
                    let mut problem = upstream_problem(e, Operation::CategoryLink);
                    problem.detail = "Vipps' answer was lost and reading the order's links back did not show the link; it may still have been added. List the order's links before adding it again.".into();
                    return Err(problem);
                }
            },
            Err(e) => return Err(upstream_problem(e, Operation::CategoryLink)),
        };
        json_response(
            StatusCode::CREATED,
            &AddedLink {
                category_id: &id,
                category: sent.type_,
                url: sent.url,
                image_id: sent.image_id,
                payment_type,
            },
        )
    })
    .await
}

/// Whether Vipps may have stored a link although the gateway got no usable
/// answer: no answer in time (the call's own timeout or the time left for
/// it), a broken exchange, a 5xx (a proxy in front of Vipps may fail after
/// Vipps acted), or a success it could not read.
fn outcome_unknown(e: &UpstreamError) -> bool {
    match e {
        UpstreamError::Timeout
        | UpstreamError::DeadlineExceeded
        | UpstreamError::Broken(_)
        | UpstreamError::BadResponse(_) => true,
        UpstreamError::Status { status, .. } => status.is_server_error(),
        _ => false,
    }
}

/// Settles an add whose outcome is unknown by reading the order's links
/// back: a link with the same payment type, category, url and image counts
/// as the one added (the newest, when there are several). `None` when there
/// is none or the read fails: the caller then gets the add's own status
/// with a detail that says the link may exist, never a plain "retry".
async fn settle(
    client: &VippsClient,
    ctx: &CallContext,
    order: &OrderId,
    sent: &AddCategoryV3<'_>,
) -> Option<String> {
    tracing::info!(
        order = order.as_str(),
        "category link add: outcome unknown; reading the order's links back"
    );
    match client.list_categories_v3(ctx, order).await {
        Ok(links) => {
            let found = links.into_iter().rev().find(|l| same_link(l, sent));
            tracing::info!(
                found = found.is_some(),
                "category link add settled by reading back"
            );
            found.map(|l| l.category_id)
        }
        Err(e) => {
            tracing::warn!(error = %e, "reading category links back failed");
            None
        }
    }
}

fn same_link(l: &CategoryV3, sent: &AddCategoryV3<'_>) -> bool {
    l.order_id.as_deref().is_none_or(|o| o == sent.order_id)
        && l.payment_type.is_none_or(|p| p == sent.payment_type)
        && l.type_ == sent.type_
        && l.url == sent.url
        && l.image_id.as_deref() == sent.image_id
}

/// `GET …/categories`: the order's links (an empty list when it has none:
/// Vipps does not know whether an order exists).
pub async fn list(
    // First, so an unauthenticated caller gets its 401 before any other check.
    target: OrderTarget,
    client: web::Data<VippsClient>,
) -> Result<HttpResponse, ApiError> {
    within_deadline(async move {
        let OrderTarget {
            ctx,
            order,
            payment_type,
        } = target;
        let links = client
            .list_categories_v3(&ctx, &order)
            .await
            .map_err(|e| upstream_problem(e, Operation::CategoryLink))?;
        json_response(
            StatusCode::OK,
            &LinkList {
                categories: link_views(&links, payment_type),
            },
        )
    })
    .await
}

/// A `{categoryId}`: a UUID in its hyphenated form, either case.
pub fn category_id(raw: &str) -> Result<uuid::Uuid, ApiError> {
    crate::domain::parse_hyphenated_uuid(raw).ok_or_else(|| {
        ApiError::field(
            Kind::InvalidRequest,
            "categoryId",
            "must be a UUID such as 337f5e5d-288b-40d5-be14-901cc3acacc0",
        )
    })
}

/// `DELETE …/categories/{categoryId}`: reads the link first and deletes it
/// only when it belongs to this order; `204`. A 404 from the delete itself
/// (the link was just read, so an earlier attempt or a concurrent delete
/// removed it) leaves the link gone, which is what was asked: also `204`.
pub async fn delete(
    // First, so an unauthenticated caller gets its 401 before any other check.
    target: OrderTarget,
    req: HttpRequest,
    client: web::Data<VippsClient>,
) -> Result<HttpResponse, ApiError> {
    within_deadline(async move {
        let OrderTarget {
            ctx,
            order,
            payment_type,
        } = target;
        let id = category_id(req.match_info().get("categoryId").unwrap_or_default())?;
        let found = client
            .get_category_v3(&ctx, id)
            .await
            .map_err(|e| upstream_problem(e, Operation::CategoryLink))?;
        let wanted = PaymentTypeV3::from(payment_type);
        let belongs = found.is_some_and(|l| {
            l.order_id.as_deref() == Some(order.as_str())
                && l.payment_type.is_none_or(|p| p == wanted)
        });
        if !belongs {
            return Err(ApiError::new(
                Kind::CategoryNotFound,
                "This order has no category link with this id.",
            ));
        }
        client
            .delete_category_v3(&ctx, id)
            .await
            .map_err(|e| upstream_problem(e, Operation::CategoryLink))?;
        Ok(HttpResponse::NoContent().finish())
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn category_ids_must_be_hyphenated_uuids() {
        let id = category_id("337F5E5D-288B-40D5-BE14-901CC3ACACC0").expect("a UUID");
        assert_eq!(
            id.hyphenated().to_string(),
            "337f5e5d-288b-40d5-be14-901cc3acacc0"
        );
        for bad in [
            "",
            "42",
            "337f5e5d288b40d5be14901cc3acacc0",
            "{337f5e5d-288b-40d5-be14-901cc3acacc0}",
            "337f5e5d-288b-40d5-be14-901cc3acacc",
            "337f5e5d-288b-40d5-be14-901cc3acaccz",
        ] {
            let e = category_id(bad).expect_err(bad);
            assert_eq!(e.invalid_params[0].name, "categoryId");
        }
    }

    #[test]
    fn an_unknown_outcome_is_a_lost_answer_not_a_refusal() {
        assert!(outcome_unknown(&UpstreamError::Timeout));
        assert!(outcome_unknown(&UpstreamError::DeadlineExceeded));
        assert!(outcome_unknown(&UpstreamError::Broken("reset".into())));
        assert!(outcome_unknown(&UpstreamError::Status {
            status: http::StatusCode::BAD_GATEWAY,
            problem: None,
            retry_after: None,
        }));
        for refused in [
            UpstreamError::Connect("refused".into()),
            UpstreamError::Internal("unbuildable".into()),
            UpstreamError::Status {
                status: http::StatusCode::BAD_REQUEST,
                problem: None,
                retry_after: None,
            },
            UpstreamError::Status {
                status: http::StatusCode::TOO_MANY_REQUESTS,
                problem: None,
                retry_after: None,
            },
        ] {
            assert!(!outcome_unknown(&refused), "{refused:?}");
        }
    }
}
