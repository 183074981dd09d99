//! The simulator's receipt pages, where a calling team sees what it sent:
//! `GET /_simulator/orders` lists the orders the simulator holds, and
//! `GET /_simulator/orders/{msn}/{paymentType}/{orderId}` lays one out as a
//! receipt in the Vipps app would (lines, VAT per rate, totals, bottom
//! line, barcode, category links), or answers its JSON twin to
//! `Accept: application/json`. `GET /_simulator/images/{msn}/{imageId}`
//! serves the uploaded images the pages show.
//!
//! Pages are askama templates (`templates/simulator/`), compiled and
//! HTML-escaped at build time; the state is copied under its lock and laid
//! out without it. The pages carry no script, and their
//! `Content-Security-Policy` would refuse one.

mod barcode;
mod format;
mod view;

use std::collections::BTreeMap;

use actix_web::http::header::{self, Accept, ContentType, Header as _};
use actix_web::http::StatusCode;
use actix_web::{mime, web, HttpRequest, HttpResponse};
use askama::Template;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::image::ImageFormat;
use super::state::{Activity, Shared};
use super::upstream::payment_type;
use view::{category_name, read_receipt, OrderSnapshot, OrderView};

/// The index lists at most this many orders (the newest that match its
/// filters), so a simulator that took a benchmark's receipts still answers
/// at once.
pub const INDEX_LIMIT: usize = 1000;

/// No script and nothing from elsewhere: styles inline, images only the
/// simulator's own (`/_simulator/images/…`) and the icon's data URL, forms
/// (the index's filter) only to the simulator itself.
const CSP: &str = "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; \
                   base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// What the index and its JSON twin say about the state.
const IN_MEMORY: &str = "The simulator keeps its state in memory only: these orders are lost \
                         when it stops, and POST /_simulator/reset clears them.";

/// The index's filters: `?msn=` (exact) and `?orderId=` (part of the id).
/// An empty value filters nothing.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IndexQuery {
    #[serde(default)]
    msn: Option<String>,
    #[serde(default)]
    order_id: Option<String>,
}

impl IndexQuery {
    fn msn(&self) -> Option<&str> {
        self.msn.as_deref().filter(|m| !m.is_empty())
    }

    fn order_id(&self) -> Option<&str> {
        self.order_id.as_deref().filter(|o| !o.is_empty())
    }

    fn admits(&self, msn: &str, order_id: &str) -> bool {
        self.msn().is_none_or(|m| m == msn) && self.order_id().is_none_or(|o| order_id.contains(o))
    }
}

/// One row of the index, and of its JSON twin.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct IndexRow {
    msn: String,
    payment_type: String,
    order_id: String,
    /// When something was last stored for the order (RFC 3339, UTC).
    updated_at: String,
    /// The same, as the page writes it.
    #[serde(skip)]
    when: String,
    has_receipt: bool,
    /// The v2 category's type, when the order has one.
    category: Option<&'static str>,
    /// How many 2.1 links the order has.
    links: usize,
    lines: Option<usize>,
    /// What the customer paid, as the page writes it.
    paid: Option<String>,
    /// The order's page.
    href: String,
}

#[derive(Template)]
#[template(path = "simulator/orders.html")]
struct IndexPage<'a> {
    rows: &'a [IndexRow],
    total: usize,
    msn: &'a str,
    order_id: &'a str,
    filtered: bool,
}

/// The index's JSON twin.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct IndexJson<'a> {
    /// Orders that match the filters, of which `orders` are the newest.
    total: usize,
    orders: &'a [IndexRow],
    in_memory: &'static str,
}

#[derive(Template)]
#[template(path = "simulator/order.html")]
struct OrderPage {
    order: OrderView,
}

#[derive(Template)]
#[template(path = "simulator/not_found.html")]
struct NotFoundPage {
    msn: String,
    payment_type: String,
    order_id: String,
}

/// Whether the caller ranks JSON above HTML (a browser never does).
fn wants_json(req: &HttpRequest) -> bool {
    let Ok(accept) = Accept::parse(req) else {
        return false;
    };
    for media in accept.ranked() {
        match (media.type_(), media.subtype()) {
            (mime::APPLICATION, mime::JSON) => return true,
            (mime::TEXT, mime::HTML) | (mime::TEXT, mime::STAR) | (mime::STAR, _) => return false,
            _ => {}
        }
    }
    false
}

fn page(status: StatusCode, rendered: Result<String, askama::Error>) -> HttpResponse {
    match rendered {
        Ok(html) => HttpResponse::build(status)
            .content_type(ContentType::html())
            .insert_header((header::CONTENT_SECURITY_POLICY, CSP))
            .insert_header((header::CACHE_CONTROL, "no-store"))
            .insert_header((header::VARY, "Accept"))
            .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
            .insert_header((header::REFERRER_POLICY, "no-referrer"))
            .body(html),
        Err(e) => {
            tracing::error!(error = %e, "simulator page could not be rendered");
            HttpResponse::InternalServerError().finish()
        }
    }
}

/// `GET /_simulator/orders[?msn=…&orderId=…]`: the orders the simulator
/// holds, newest first, or the index's JSON twin to `Accept:
/// application/json`.
pub async fn index(req: HttpRequest, shared: web::Data<Shared>) -> HttpResponse {
    let query = web::Query::<IndexQuery>::from_query(req.query_string())
        .map(web::Query::into_inner)
        .unwrap_or_default();
    // Copies of the receipts are read after the lock is released.
    let (total, mut rows, receipts) = {
        let state = shared.lock();
        let mut keys: BTreeMap<(&str, &str, &str), usize> = BTreeMap::new();
        for ((msn, payment_type, order_id), record) in &state.orders {
            if (record.category.is_some() || record.receipt.is_some())
                && query.admits(msn, order_id)
            {
                keys.entry((msn, payment_type, order_id)).or_insert(0);
            }
        }
        for ((msn, _), link) in &state.categories {
            if query.admits(msn, &link.request.order_id) {
                *keys
                    .entry((
                        msn,
                        link.request.payment_type.lower(),
                        &link.request.order_id,
                    ))
                    .or_insert(0) += 1;
            }
        }
        let total = keys.len();
        let mut keyed: Vec<_> = keys
            .into_iter()
            .map(|((msn, payment_type, order_id), links)| {
                let key = (msn.to_owned(), payment_type.to_owned(), order_id.to_owned());
                let activity = state
                    .activity
                    .get(&key)
                    .copied()
                    .unwrap_or(Activity { seq: 0, at_ms: 0 });
                (activity, key, links)
            })
            .collect();
        // Newest first.
        keyed.sort_by_key(|(activity, _, _)| std::cmp::Reverse(activity.seq));
        keyed.truncate(INDEX_LIMIT);
        let mut rows = Vec::with_capacity(keyed.len());
        let mut receipts = Vec::with_capacity(keyed.len());
        for (activity, key, links) in keyed {
            let record = state.orders.get(&key);
            receipts.push(record.and_then(|r| r.receipt.clone()));
            let href = format!(
                "/_simulator/orders/{}/{}/{}",
                view::path_segment(&key.0),
                view::path_segment(&key.1),
                view::path_segment(&key.2)
            );
            rows.push(IndexRow {
                updated_at: format::rfc3339(activity.at_ms),
                when: format::when(activity.at_ms),
                has_receipt: record.is_some_and(|r| r.receipt.is_some()),
                category: record
                    .and_then(|r| r.category.as_ref())
                    .map(|c| category_name(c.category)),
                msn: key.0,
                payment_type: key.1,
                order_id: key.2,
                links,
                lines: None,
                paid: None,
                href,
            });
        }
        (total, rows, receipts)
    };
    for (row, receipt) in rows.iter_mut().zip(receipts) {
        if let Some(Ok(receipt)) = receipt.as_deref().map(read_receipt) {
            row.lines = Some(receipt.order_lines.len());
            row.paid = view::paid(&receipt).ok();
        }
    }
    if wants_json(&req) {
        return HttpResponse::Ok()
            .insert_header((header::VARY, "Accept"))
            .insert_header((header::CACHE_CONTROL, "no-store"))
            .json(IndexJson {
                total,
                orders: &rows,
                in_memory: IN_MEMORY,
            });
    }
    let rendered = IndexPage {
        rows: &rows,
        total,
        msn: query.msn().unwrap_or(""),
        order_id: query.order_id().unwrap_or(""),
        filtered: query.msn().is_some() || query.order_id().is_some(),
    }
    .render();
    page(StatusCode::OK, rendered)
}

/// `GET /_simulator/orders/{msn}/{paymentType}/{orderId}`: the page, or
/// its JSON twin to `Accept: application/json`. `paymentType` is spelt as
/// Vipps' paths spell it (`ecom`, `ECOM`, …).
pub async fn order(
    req: HttpRequest,
    path: web::Path<(String, String, String)>,
    shared: web::Data<Shared>,
) -> HttpResponse {
    let (msn, raw_payment_type, order_id) = path.into_inner();
    let json = wants_json(&req);
    let snapshot = payment_type(&raw_payment_type).and_then(|payment_type| {
        OrderSnapshot::take(&shared.lock(), &msn, payment_type, &order_id)
    });
    let Some(snapshot) = snapshot else {
        if json {
            return HttpResponse::NotFound()
                .insert_header((header::VARY, "Accept"))
                .json(json!({
                    "type": "https://datatracker.ietf.org/doc/html/rfc7231#section-6.5.4",
                    "title": "Not Found",
                    "detail": format!(
                        "The simulator holds no order {order_id} ({raw_payment_type}) of merchant {msn}"
                    ),
                    "instance": req.path(),
                    "invalidParams": [],
                }));
        }
        let missing = NotFoundPage {
            msn,
            payment_type: raw_payment_type,
            order_id,
        };
        return page(StatusCode::NOT_FOUND, missing.render());
    };
    let order = OrderView::build(&snapshot);
    if json {
        return HttpResponse::Ok()
            .insert_header((header::VARY, "Accept"))
            .insert_header((header::CACHE_CONTROL, "no-store"))
            .json(order);
    }
    page(StatusCode::OK, OrderPage { order }.render())
}

/// `GET /_simulator/images/{msn}/{imageId}`: an image the merchant
/// uploaded, as the receipt pages show it, while the simulator holds its
/// bytes; `404` otherwise.
pub async fn image(path: web::Path<(String, String)>, shared: web::Data<Shared>) -> HttpResponse {
    let key = path.into_inner();
    let found = shared
        .lock()
        .images
        .get(&key)
        .and_then(|image| Some((image.format, image.data.clone()?)));
    let Some((format, data)) = found else {
        return HttpResponse::NotFound()
            .insert_header((header::CACHE_CONTROL, "no-store"))
            .json(json!({
                "type": "https://datatracker.ietf.org/doc/html/rfc7231#section-6.5.4",
                "title": "Not Found",
                "detail": format!("The simulator holds no image {} of merchant {}", key.1, key.0),
                "instance": format!("/_simulator/images/{}/{}", key.0, key.1),
                "invalidParams": [],
            }));
    };
    let content_type = match format {
        ImageFormat::Png => mime::IMAGE_PNG,
        ImageFormat::Jpeg => mime::IMAGE_JPEG,
    };
    HttpResponse::Ok()
        .content_type(content_type)
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .insert_header((header::CONTENT_SECURITY_POLICY, "default-src 'none'"))
        .body(data)
}
