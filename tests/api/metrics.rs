//! `/metrics` after real traffic: the series each request leaves, bounded
//! labels, token and upstream counters, and the metrics-only listener.

use std::collections::BTreeMap;

use awc::http::Method;
use futures_util::future::{join_all, select, Either};
use serde_json::json;

use crate::helpers::{
    poll_until, spawn_app, spawn_app_with, spec_receipt, Options, TestApp, MSN, MSN2, UNKNOWN_MSN,
};

/// One sample of the text exposition.
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// Parses the exposition's sample lines (label values here never contain
/// `,` or `"`, so a plain split is enough).
fn parse(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|line| {
            let (series, value) = line.rsplit_once(' ').expect("sample line");
            let (name, labels) = match series.split_once('{') {
                Some((n, rest)) => (n, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            let labels = labels
                .split(',')
                .filter(|p| !p.is_empty())
                .map(|p| {
                    let (k, v) = p.split_once('=').expect("label pair");
                    (k.to_owned(), v.trim_matches('"').to_owned())
                })
                .collect();
            Sample {
                name: name.to_owned(),
                labels,
                value: value.parse().expect("sample value"),
            }
        })
        .collect()
}

pub struct Scrape(Vec<Sample>);

impl Scrape {
    /// The value of the one series with exactly these labels (0 when absent).
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let found: Vec<_> = self
            .0
            .iter()
            .filter(|s| {
                s.name == name
                    && s.labels.len() == labels.len()
                    && labels
                        .iter()
                        .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .collect();
        assert!(found.len() <= 1, "{name} {labels:?} matched several series");
        found.first().map_or(0.0, |s| s.value)
    }

    /// The series that come from traffic: the outbox's backlog gauges,
    /// which the worker sets for every configured merchant from the start,
    /// are left out.
    fn traffic_series(&self) -> impl Iterator<Item = &Sample> {
        self.0
            .iter()
            .filter(|s| !s.name.starts_with("gateway_outbox_"))
    }

    /// Series from traffic with this label value.
    fn series_with(&self, label: &str, value: &str) -> usize {
        self.traffic_series()
            .filter(|s| s.labels.get(label).map(String::as_str) == Some(value))
            .count()
    }

    /// How many series come from traffic.
    fn len(&self) -> usize {
        self.traffic_series().count()
    }
}

async fn scrape_at(app: &TestApp, base: &str) -> Scrape {
    let mut resp = app
        .client
        .get(format!("{base}/metrics"))
        .send()
        .await
        .expect("scrape");
    assert_eq!(resp.status(), 200);
    let ct = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(ct.starts_with("text/plain; version=0.0.4"), "{ct}");
    let body = resp.body().limit(4 * 1024 * 1024).await.expect("body");
    Scrape(parse(std::str::from_utf8(&body).expect("utf-8")))
}

pub async fn scrape(app: &TestApp) -> Scrape {
    scrape_at(app, &app.address).await
}

fn receipt_path(msn: &str, order: &str) -> String {
    format!("/v1/merchants/{msn}/orders/{order}/receipt")
}

#[actix_web::test]
async fn requests_upstream_calls_and_tokens_are_counted_per_merchant() {
    let app = spawn_app().await;
    for i in 0..3 {
        let a = app
            .post_receipt(MSN, &format!("m-{i}"), &spec_receipt())
            .await;
        assert_eq!(a.status, 201, "{}", a.body);
    }
    // Bad input: counted as a 4xx receipt request, never sent upstream.
    let bad = app
        .post_receipt(MSN, "m-bad", &json!({"currency": "SEK"}))
        .await;
    bad.problem(400);
    let order = app.get(&format!("/v1/merchants/{MSN}/orders/m-0")).await;
    assert_eq!(order.status, 200);

    let m = scrape(&app).await;
    let req = "gateway_requests_total";
    let receipt_ok = [("msn", MSN), ("operation", "receipt"), ("status", "2xx")];
    assert_eq!(m.value(req, &receipt_ok), 3.0);
    let receipt_bad = [("msn", MSN), ("operation", "receipt"), ("status", "4xx")];
    assert_eq!(m.value(req, &receipt_bad), 1.0);
    let order_ok = [("msn", MSN), ("operation", "order"), ("status", "2xx")];
    assert_eq!(m.value(req, &order_ok), 1.0);
    // The histogram has no status label: 4 receipt requests, one series set.
    let hist = [("msn", MSN), ("operation", "receipt")];
    assert_eq!(
        m.value("gateway_request_duration_seconds_count", &hist),
        4.0
    );
    let mut inf = hist.to_vec();
    inf.push(("le", "+Inf"));
    assert_eq!(
        m.value("gateway_request_duration_seconds_bucket", &inf),
        4.0
    );
    assert!(m.value("gateway_request_duration_seconds_sum", &hist) > 0.0);

    let up = "gateway_upstream_requests_total";
    let up_receipt = [("msn", MSN), ("endpoint", "receipt"), ("status", "201")];
    assert_eq!(m.value(up, &up_receipt), 3.0);
    let up_order = [("msn", MSN), ("endpoint", "order"), ("status", "200")];
    assert_eq!(m.value(up, &up_order), 1.0);
    let up_token = [("msn", MSN), ("endpoint", "token"), ("status", "200")];
    assert_eq!(m.value(up, &up_token), 1.0);
    assert_eq!(
        m.value(
            "gateway_upstream_request_duration_seconds_count",
            &[("msn", MSN), ("endpoint", "receipt")]
        ),
        3.0
    );
    let fetches = [("msn", MSN), ("result", "ok")];
    assert_eq!(m.value("gateway_token_fetches_total", &fetches), 1.0);
    let lookups = "gateway_token_cache_lookups_total";
    assert_eq!(m.value(lookups, &[("msn", MSN), ("result", "miss")]), 1.0);
    // Hits: two more receipts, and the order read's second call (its links).
    assert_eq!(m.value(lookups, &[("msn", MSN), ("result", "hit")]), 4.0);
    let up_links = [
        ("msn", MSN),
        ("endpoint", "categories-v3"),
        ("status", "200"),
    ];
    assert_eq!(m.value(up, &up_links), 1.0);
    // The simulator's tokens live an hour.
    let left = m.value("gateway_token_expiry_seconds", &[("msn", MSN)]);
    assert!((3000.0..=3600.0).contains(&left), "{left}");
    // The scrape counts itself as in flight.
    assert_eq!(m.value("gateway_requests_in_flight", &[]), 1.0);
    assert!(m.value("process_resident_memory_bytes", &[]) > 0.0);

    // The second configured merchant had no traffic: not a single series.
    assert_eq!(m.series_with("msn", MSN2), 0);
}

#[actix_web::test]
async fn random_msns_never_add_series() {
    let app = spawn_app().await;
    let receipt = spec_receipt();
    let category = json!({"category": "GENERAL", "url": "https://shop.example/"});
    // Warm up: each kind of request once, so the series that exist for
    // unknown merchants are all there before the flood.
    let warm = [UNKNOWN_MSN, "12ab"];
    for msn in warm {
        app.post_receipt(msn, "o-1", &receipt).await.problem(404);
        app.put_json(
            &format!("/v1/merchants/{msn}/orders/o-1/category"),
            &category,
        )
        .await
        .problem(404);
        app.get(&format!("/v1/merchants/{msn}/orders/o-1"))
            .await
            .problem(404);
        app.get(&format!("/nowhere/{msn}")).await.problem(404);
    }
    scrape(&app).await;
    let before = scrape(&app).await;

    // 1,000 random MSNs, well formed or not, over every merchant operation
    // and some unknown paths.
    let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let paths: Vec<(u64, String)> = (0..1000)
        .map(|i| {
            let r = next();
            let msn = match i % 3 {
                0 => format!("{:06}", r % 1_000_000),
                1 => format!("{:04}", r % 10_000),
                _ => format!("x{r:x}"),
            };
            (r, msn)
        })
        .collect();
    for chunk in paths.chunks(50) {
        let calls = chunk.iter().map(|(r, msn)| {
            let app = &app;
            let (receipt, category) = (&receipt, &category);
            async move {
                let a = match r % 4 {
                    0 => app.post_receipt(msn, "o-1", receipt).await,
                    1 => {
                        app.put_json(
                            &format!("/v1/merchants/{msn}/orders/o-1/category"),
                            category,
                        )
                        .await
                    }
                    2 => app.get(&format!("/v1/merchants/{msn}/orders/o-1")).await,
                    _ => app.get(&format!("/nowhere/{msn}")).await,
                };
                a.status.as_u16()
            }
        });
        for status in join_all(calls).await {
            assert_eq!(status, 404);
        }
    }
    let after = scrape(&app).await;
    assert_eq!(after.len(), before.len(), "the series count grew");
    let unknown = [
        ("msn", "unknown"),
        ("operation", "receipt"),
        ("status", "4xx"),
    ];
    assert!(
        after.value("gateway_requests_total", &unknown)
            > before.value("gateway_requests_total", &unknown)
    );
    assert_eq!(app.upstream_call_count().await, 0);
}

#[actix_web::test]
async fn a_retry_after_401_and_a_broken_exchange_are_counted() {
    // No retries of failed calls, so the broken exchange reaches the caller.
    let app = spawn_app_with(Options {
        extra_toml: "[resilience]\nmax_attempts = 1\n".into(),
        ..Options::default()
    })
    .await;
    assert_eq!(
        app.post_receipt(MSN, "r-1", &spec_receipt()).await.status,
        201
    );
    app.expire_tokens().await;
    assert_eq!(
        app.post_receipt(MSN, "r-2", &spec_receipt()).await.status,
        201
    );
    app.add_fault(json!({"endpoint": "category", "drop": true, "times": 1}))
        .await;
    let broken = app
        .put_json(
            &format!("/v1/merchants/{MSN}/orders/r-3/category"),
            &json!({"category": "GENERAL", "url": "https://shop.example/"}),
        )
        .await;
    broken.problem(502);

    let m = scrape(&app).await;
    let retry = [
        ("msn", MSN),
        ("endpoint", "receipt"),
        ("reason", "unauthorized"),
    ];
    assert_eq!(m.value("gateway_upstream_retries_total", &retry), 1.0);
    let up = "gateway_upstream_requests_total";
    assert_eq!(
        m.value(
            up,
            &[("msn", MSN), ("endpoint", "receipt"), ("status", "401")]
        ),
        1.0
    );
    assert_eq!(
        m.value(
            up,
            &[("msn", MSN), ("endpoint", "receipt"), ("status", "201")]
        ),
        2.0
    );
    assert_eq!(
        m.value(
            up,
            &[("msn", MSN), ("endpoint", "category"), ("status", "error")]
        ),
        1.0
    );
    let req = [("msn", MSN), ("operation", "category"), ("status", "5xx")];
    assert_eq!(m.value("gateway_requests_total", &req), 1.0);
    assert_eq!(
        m.value(
            "gateway_token_fetches_total",
            &[("msn", MSN), ("result", "ok")]
        ),
        2.0
    );
}

#[actix_web::test]
async fn token_fetches_are_counted_by_result() {
    let app = spawn_app_with(Options {
        msn2_secret: "wrong-secret".into(),
        ..Options::default()
    })
    .await;
    app.post_receipt(MSN2, "t-1", &spec_receipt())
        .await
        .problem(502);
    app.add_fault(json!({"endpoint": "token", "msn": MSN, "status": 500, "times": 1}))
        .await;
    app.post_receipt(MSN, "t-2", &spec_receipt())
        .await
        .problem(503);

    let m = scrape(&app).await;
    let fetches = "gateway_token_fetches_total";
    assert_eq!(
        m.value(fetches, &[("msn", MSN2), ("result", "rejected")]),
        1.0
    );
    assert_eq!(m.value(fetches, &[("msn", MSN), ("result", "failed")]), 1.0);
    assert_eq!(m.value(fetches, &[("msn", MSN), ("result", "ok")]), 0.0);
    let up = "gateway_upstream_requests_total";
    assert_eq!(
        m.value(
            up,
            &[("msn", MSN2), ("endpoint", "token"), ("status", "401")]
        ),
        1.0
    );
    assert_eq!(
        m.value(
            up,
            &[("msn", MSN), ("endpoint", "token"), ("status", "500")]
        ),
        1.0
    );
    // No token is cached, so there is no expiry to report.
    assert!(m.series_with("msn", MSN) > 0);
    assert!(!m.0.iter().any(|s| s.name == "gateway_token_expiry_seconds"));
}

#[actix_web::test]
async fn requests_in_flight_are_a_gauge() {
    let app = spawn_app().await;
    app.add_fault(json!({"endpoint": "category", "delayMs": 1500, "times": 1}))
        .await;
    let path = format!("/v1/merchants/{MSN}/orders/f-1/category");
    let body = json!({"category": "GENERAL", "url": "https://shop.example/"});
    let slow = Box::pin(app.put_json(&path, &body));
    let app_ref = &app;
    let watch = Box::pin(async move {
        // The slow request is held upstream, so in flight at the gateway.
        poll_until("the slow call at the simulator", || async move {
            (app_ref.sim_calls("category").await >= 1).then_some(())
        })
        .await;
        // The slow request and the scrape itself.
        scrape(app_ref)
            .await
            .value("gateway_requests_in_flight", &[])
    });
    let (in_flight, slow) = match select(slow, watch).await {
        Either::Right(seen) => seen,
        Either::Left(_) => panic!("the slow request was answered before it was seen upstream"),
    };
    assert_eq!(in_flight, 2.0, "the slow request is counted in flight");
    assert_eq!(slow.await.status, 200);
    assert_eq!(
        scrape(&app).await.value("gateway_requests_in_flight", &[]),
        1.0
    );
}

#[actix_web::test]
async fn the_metrics_listener_serves_metrics_only() {
    let app = spawn_app_with(Options {
        extra_toml: "metrics_listen = \"127.0.0.1:0\"".into(),
        ..Options::default()
    })
    .await;
    let metrics = app.metrics_address.clone().expect("metrics listener");
    assert_ne!(metrics, app.address);
    assert_eq!(
        app.post_receipt(MSN, "l-1", &spec_receipt()).await.status,
        201
    );
    let m = scrape_at(&app, &metrics).await;
    let receipt_ok = [("msn", MSN), ("operation", "receipt"), ("status", "2xx")];
    assert_eq!(m.value("gateway_requests_total", &receipt_ok), 1.0);
    // Scrapes on the metrics listener are not API requests.
    assert_eq!(m.series_with("operation", "metrics"), 0);
    // The same registry is on the API listener too.
    let main = scrape(&app).await;
    assert_eq!(main.value("gateway_requests_total", &receipt_ok), 1.0);
    // The metrics listener offers no API.
    let resp = app
        .client
        .post(format!("{metrics}{}", receipt_path(MSN, "l-2")))
        .send_json(&spec_receipt())
        .await
        .expect("answer");
    assert_eq!(resp.status(), 404);
    assert_eq!(app.sim_requests_to("receipt").await.len(), 1);
}

#[actix_web::test]
async fn each_merchant_gets_the_same_series_for_the_same_traffic() {
    let app = spawn_app().await;
    let before = scrape(&app).await;
    assert_eq!(
        before.series_with("msn", MSN) + before.series_with("msn", MSN2),
        0
    );
    for msn in [MSN, MSN2] {
        for i in 0..2 {
            let a = app
                .post_receipt(msn, &format!("s-{i}"), &spec_receipt())
                .await;
            assert_eq!(a.status, 201, "{}", a.body);
        }
        assert_eq!(
            app.get(&format!("/v1/merchants/{msn}/orders/s-0"))
                .await
                .status,
            200
        );
        let a = app
            .put_json(
                &format!("/v1/merchants/{msn}/orders/s-0/category"),
                &json!({"category": "GENERAL", "url": "https://shop.example/"}),
            )
            .await;
        assert_eq!(a.status, 200);
    }
    let m = scrape(&app).await;
    let (one, two) = (m.series_with("msn", MSN), m.series_with("msn", MSN2));
    assert_eq!(one, two);
    // Per merchant: 3 operations × (1 counter + 15 histogram samples) and
    // 5 endpoints (the order read also lists the v3 links) × (1 counter +
    // 15 histogram samples) upstream, token fetch, lookups (hit, miss) and
    // expiry.
    assert_eq!(one, 3 * 16 + 5 * 16 + 1 + 2 + 1);
    eprintln!(
        "series: {one} per merchant, {} in total ({} gateway_*)",
        m.len(),
        m.0.iter()
            .filter(|s| s.name.starts_with("gateway_"))
            .count()
    );
}

#[actix_web::test]
async fn proxied_requests_are_counted_under_their_merchant() {
    let app = spawn_app().await;
    let a = app.proxy(Method::GET, "/v2/ecom/p-1", None).await;
    assert_eq!(a.status, 404);
    let resp = app
        .client
        .get(app.url("/vipps/order-management/v2/ecom/p-1"))
        .insert_header(("Merchant-Serial-Number", "31337"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    let m = scrape(&app).await;
    let proxied = [("msn", MSN), ("operation", "proxy"), ("status", "4xx")];
    assert_eq!(m.value("gateway_requests_total", &proxied), 1.0);
    let unknown = [
        ("msn", "unknown"),
        ("operation", "proxy"),
        ("status", "4xx"),
    ];
    assert_eq!(m.value("gateway_requests_total", &unknown), 1.0);
}
