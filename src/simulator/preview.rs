//! The simulator's receipt pages, where a calling team sees what it sent:
//! `GET /_simulator/orders` lists the orders the simulator holds, and
//! `GET /_simulator/orders/{msn}/{paymentType}/{orderId}` lays one out as a
//! receipt in the Vipps app would (lines, VAT per rate, totals, bottom
//! line, barcode, category links), or answers its JSON twin to
//! `Accept: application/json`.
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
use serde_json::json;

use super::state::Shared;
use super::upstream::payment_type;
use view::{category_name, read_receipt, OrderSnapshot, OrderView};

/// The index lists at most this many orders (in key order), so a
/// simulator that took a benchmark's receipts still answers at once.
pub const INDEX_LIMIT: usize = 1000;

/// No script, no outside resource: styles inline, the icon a data URL.
const CSP: &str = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; \
                   base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// One row of the index.
struct IndexRow {
    msn: String,
    payment_type: String,
    order_id: String,
    category: Option<&'static str>,
    links: usize,
    lines: Option<usize>,
    paid: Option<String>,
}

#[derive(Template)]
#[template(path = "simulator/orders.html")]
struct IndexPage {
    rows: Vec<IndexRow>,
    total: usize,
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

/// `GET /_simulator/orders`.
pub async fn index(shared: web::Data<Shared>) -> HttpResponse {
    // Copies of the receipts are read after the lock is released.
    let (total, mut rows, receipts) = {
        let state = shared.lock();
        let mut keys: BTreeMap<(&str, &str, &str), usize> = BTreeMap::new();
        for ((msn, payment_type, order_id), record) in &state.orders {
            if record.category.is_some() || record.receipt.is_some() {
                keys.entry((msn, payment_type, order_id)).or_insert(0);
            }
        }
        for ((msn, _), link) in &state.categories {
            *keys
                .entry((
                    msn,
                    link.request.payment_type.lower(),
                    &link.request.order_id,
                ))
                .or_insert(0) += 1;
        }
        let total = keys.len();
        let mut rows = Vec::new();
        let mut receipts = Vec::new();
        for ((msn, payment_type, order_id), links) in keys.into_iter().take(INDEX_LIMIT) {
            let key = (msn.to_owned(), payment_type.to_owned(), order_id.to_owned());
            let record = state.orders.get(&key);
            receipts.push(record.and_then(|r| r.receipt.clone()));
            rows.push(IndexRow {
                msn: key.0,
                payment_type: key.1,
                order_id: key.2,
                category: record
                    .and_then(|r| r.category.as_ref())
                    .map(|c| category_name(c.category)),
                links,
                lines: None,
                paid: None,
            });
        }
        (total, rows, receipts)
    };
    for (row, receipt) in rows.iter_mut().zip(receipts) {
        if let Some(Ok(receipt)) = receipt.as_ref().map(read_receipt) {
            row.lines = Some(receipt.order_lines.len());
            row.paid = view::paid(&receipt).ok();
        }
    }
    page(StatusCode::OK, IndexPage { rows, total }.render())
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
