//! What the gateway does with Vipps, whichever door a request came in
//! by: a façade handler answering now, or the outbox worker delivering what
//! was accepted earlier. Each is one function here, below both, so a
//! receipt is posted, a 409 settled and a failure named the same way:
//!
//! - upload an image ([`upload_image`]);
//! - post a receipt, settling a 409 by reading the stored one back
//!   ([`post_receipt`]);
//! - set a category link, its inline image uploaded first
//!   ([`put_category`]);
//! - map a Vipps failure to the caller's problem ([`upstream_problem`]), and
//!   tell whether sending again may succeed ([`is_final`]).
//!
//! Nothing here knows HTTP handlers or the store.

use crate::domain::{Category, ImageId, OrderId, PaymentType};
use crate::error::{ApiError, Kind};
use crate::translate::image::CheckedImage;
use crate::vipps::model::{OrderCategory, Receipt, ReceiptJson};
use crate::vipps::{CallContext, Retry, UpstreamError, VippsClient};

/// Which façade operation an upstream answer belongs to, for naming fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    Image,
    Category,
    /// 2.1's v3 category links.
    CategoryLink,
    Receipt,
    Order,
}

/// Maps an upstream failure to the caller's problem, naming Vipps' invalid
/// fields in the façade's terms.
pub fn upstream_problem(e: UpstreamError, op: Operation) -> ApiError {
    ApiError::upstream(e, &|name| facade_field(op, name))
}

/// Translates an upstream field name into the façade's, where there is one.
pub fn facade_field(op: Operation, upstream: &str) -> String {
    let lower = upstream.to_ascii_lowercase();
    let rename = |table: &[(&str, &str)], name: &str| {
        table
            .iter()
            .find(|(u, _)| u.eq_ignore_ascii_case(name))
            .map(|(_, f)| (*f).to_owned())
    };
    match op {
        Operation::Receipt => {
            if let Some(rest) = lower.strip_prefix("orderlines[") {
                if let Some((index, field)) = rest.split_once("].") {
                    let line_fields = [
                        ("name", "name"),
                        ("id", "id"),
                        ("totalAmount", "totalAmount"),
                        ("taxPercentage", "taxPercent"),
                        ("taxRate", "taxPercent"),
                        ("discount", "discount"),
                        ("productUrl", "productUrl"),
                        ("isReturn", "isReturn"),
                        ("isShipping", "isShipping"),
                        ("unitInfo.unitPrice", "unitPrice"),
                        ("unitInfo.quantity", "quantity"),
                        ("unitInfo.quantityUnit", "unit"),
                    ];
                    if let Some(f) = rename(&line_fields, field) {
                        return format!("lines[{index}].{f}");
                    }
                }
            }
            if let Some(field) = lower.strip_prefix("bottomline.") {
                let bottom = [
                    ("currency", "currency"),
                    ("tipAmount", "tip"),
                    ("posId", "posId"),
                    ("receiptNumber", "receiptNumber"),
                    ("barcode.format", "barcode.format"),
                    ("barcode.data", "barcode.data"),
                    ("paymentSources.giftCard", "paymentSources.giftCard"),
                    ("paymentSources.card", "paymentSources.card"),
                    ("paymentSources.voucher", "paymentSources.voucher"),
                    ("paymentSources.cash", "paymentSources.cash"),
                ];
                if let Some(f) = rename(&bottom, field) {
                    return f;
                }
            }
        }
        Operation::Category => {
            let fields = [
                ("category", "category"),
                ("orderDetailsUrl", "url"),
                ("imageId", "imageId"),
            ];
            if let Some(f) = rename(&fields, upstream) {
                return f;
            }
        }
        Operation::CategoryLink => {
            let fields = [
                ("type", "category"),
                ("url", "url"),
                ("imageId", "imageId"),
                ("paymentType", "paymentType"),
            ];
            if let Some(f) = rename(&fields, upstream) {
                return f;
            }
        }
        Operation::Image => {
            let fields = [("src", "data"), ("imageId", "imageId")];
            if let Some(f) = rename(&fields, upstream) {
                return f;
            }
        }
        Operation::Order => {}
    }
    if upstream.eq_ignore_ascii_case("orderId") {
        return "orderId".into();
    }
    upstream.to_owned()
}

/// Whether a failed use case is final: the problem is one the request
/// itself caused (a 4xx: Vipps refused it, or the order holds a different
/// receipt), so sending it again cannot succeed. Anything else (Vipps
/// unavailable, overloaded or refusing the gateway's credentials, a limit,
/// a timeout) may pass later.
pub fn is_final(problem: &ApiError) -> bool {
    // Vipps said 409 but showed no receipt: a read that lags behind the
    // write, settled by trying again.
    if problem.kind == Kind::UpstreamConflict {
        return false;
    }
    let status = problem.kind.status();
    status.is_client_error() && !matches!(status.as_u16(), 408 | 429)
}

/// Uploads a checked image. Returns its id and whether it was new. A
/// content-derived id that already exists upstream is the same image, so
/// that is success; a caller-named id that exists is a conflict, because
/// the upstream offers no way to read an image back and compare.
pub async fn upload_image(
    client: &VippsClient,
    ctx: &CallContext,
    image: CheckedImage,
    named: Option<ImageId>,
) -> Result<(ImageId, bool), ApiError> {
    let content_derived = named.is_none();
    let id = named.unwrap_or_else(|| image.content_id());
    let retry = if content_derived {
        Retry::Safe
    } else {
        Retry::IfNotProcessed
    };
    match client
        .upload_image(ctx, &id, image.to_base64(), retry)
        .await
    {
        Ok(()) => Ok((id, true)),
        Err(UpstreamError::Status { status, .. }) if status.as_u16() == 409 => {
            if content_derived {
                Ok((id, false))
            } else {
                Err(ApiError::field(
                    Kind::ImageIdTaken,
                    "imageId",
                    "an image with this id already exists; image ids cannot be overwritten",
                ))
            }
        }
        Err(e) => Err(upstream_problem(e, Operation::Image)),
    }
}

/// Posts a receipt exactly as `sent`. Returns whether Vipps already held
/// it: a receipt is immutable upstream, so on a 409 the stored one is read
/// back, and the same receipt means an earlier attempt succeeded (a
/// replay, `true`); a different one is `receipt-conflict`.
pub async fn post_receipt(
    client: &VippsClient,
    ctx: &CallContext,
    payment_type: PaymentType,
    order: &OrderId,
    sent: &ReceiptJson,
) -> Result<bool, ApiError> {
    match client.post_receipt(ctx, payment_type, order, sent).await {
        Ok(()) => Ok(false),
        Err(UpstreamError::Status { status, .. }) if status.as_u16() == 409 => {
            settle_receipt_conflict(client, ctx, payment_type, order, sent).await
        }
        Err(e) => Err(upstream_problem(e, Operation::Receipt)),
    }
}

async fn settle_receipt_conflict(
    client: &VippsClient,
    ctx: &CallContext,
    payment_type: PaymentType,
    order: &OrderId,
    sent: &ReceiptJson,
) -> Result<bool, ApiError> {
    let ours: Receipt<'_> =
        serde_json::from_str(sent.as_str()).map_err(|e| ApiError::internal(&e))?;
    let stored = client
        .get_order(ctx, payment_type, order)
        .await
        .map_err(|e| upstream_problem(e, Operation::Order))?
        .and_then(|o| o.receipt);
    match stored {
        Some(s) if s.canonical() == ours.canonical() => {
            tracing::info!(
                order = order.as_str(),
                "receipt already stored and identical: replayed"
            );
            Ok(true)
        }
        Some(_) => Err(ApiError::new(
            Kind::ReceiptConflict,
            "This order already has a different receipt; receipts cannot be changed.",
        )),
        None => Err(ApiError::new(
            Kind::UpstreamConflict,
            "Vipps reported a conflict but holds no receipt for this order.",
        )),
    }
}

/// The image of a category link.
pub enum LinkImage {
    None,
    /// An image uploaded earlier.
    Id(ImageId),
    /// An image to upload first, under `named` or its content-derived id.
    Inline {
        image: CheckedImage,
        named: Option<ImageId>,
    },
}

impl LinkImage {
    /// The image's id, an inline image uploaded first.
    pub async fn upload(
        self,
        client: &VippsClient,
        ctx: &CallContext,
    ) -> Result<Option<ImageId>, ApiError> {
        Ok(match self {
            LinkImage::None => None,
            LinkImage::Id(id) => Some(id),
            LinkImage::Inline { image, named } => {
                Some(upload_image(client, ctx, image, named).await?.0)
            }
        })
    }
}

/// Sets the order's (2.0) category link, its inline image uploaded first;
/// returns the link as sent.
pub async fn put_category(
    client: &VippsClient,
    ctx: &CallContext,
    payment_type: PaymentType,
    order: &OrderId,
    category: Category,
    url: String,
    image: LinkImage,
) -> Result<OrderCategory, ApiError> {
    let image_id = image.upload(client, ctx).await?;
    let link = OrderCategory {
        category,
        order_details_url: url,
        image_id: image_id.map(|i| i.as_str().to_owned()),
    };
    client
        .put_category(ctx, payment_type, order, &link)
        .await
        .map_err(|e| upstream_problem(e, Operation::Category))?;
    Ok(link)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_field_names_become_facade_names() {
        assert_eq!(
            facade_field(Operation::Receipt, "orderLines[2].taxPercentage"),
            "lines[2].taxPercent"
        );
        assert_eq!(
            facade_field(Operation::Receipt, "OrderLines[0].UnitInfo.Quantity"),
            "lines[0].quantity"
        );
        assert_eq!(
            facade_field(Operation::Receipt, "bottomLine.tipAmount"),
            "tip"
        );
        assert_eq!(
            facade_field(Operation::Receipt, "orderLines[0].totalAmountExcludingTax"),
            "orderLines[0].totalAmountExcludingTax"
        );
        assert_eq!(facade_field(Operation::Category, "orderDetailsUrl"), "url");
        assert_eq!(facade_field(Operation::Image, "src"), "data");
        assert_eq!(facade_field(Operation::CategoryLink, "type"), "category");
    }

    #[test]
    fn only_problems_the_request_caused_are_final() {
        for (kind, final_) in [
            (Kind::UpstreamRejected, true),
            (Kind::ReceiptConflict, true),
            (Kind::NotFound, true),
            (Kind::RateLimited, false),
            (Kind::UpstreamConflict, false),
            (Kind::DeadlineExceeded, false),
            (Kind::OutboxUnavailable, false),
        ] {
            assert_eq!(is_final(&ApiError::new(kind, "x")), final_, "{kind:?}");
        }
    }
}
