//! Traces end to end: the real binary exports over OTLP/HTTP to a receiver
//! here that decodes the spans with the official protobuf definitions
//! (opentelemetry-proto), and the simulator shows the `traceparent` each
//! call to Vipps carried.

use std::collections::HashMap;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use prost::Message as _;
use serde_json::{json, Value};

use crate::auth::{hs256, now, random_secret, temp_dir, AUDIENCE, ISSUER};
use crate::helpers::{poll_until, spawn_app_with, spec_receipt, Options};
use crate::logs::{number_after, spawn_gateway};

const BIN: &str = env!("CARGO_BIN_EXE_vipps-order-gateway");

/// One exported span, as the receiver decoded it.
#[derive(Debug, Clone)]
struct Span {
    trace_id: String,
    span_id: String,
    parent: String,
    name: String,
    kind: SpanKind,
    start_ns: u64,
    attributes: HashMap<String, String>,
}

impl Span {
    fn attr(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).map(String::as_str)
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// What the receiver got: the spans, and the headers of each export.
#[derive(Default)]
struct Received {
    spans: Vec<Span>,
    headers: Vec<HashMap<String, String>>,
}

/// An OTLP/HTTP receiver on a loopback port: `POST /v1/traces` with a
/// protobuf `ExportTraceServiceRequest`.
struct Receiver {
    url: String,
    got: Arc<Mutex<Received>>,
}

async fn receive(
    req: HttpRequest,
    body: web::Bytes,
    got: web::Data<Mutex<Received>>,
) -> HttpResponse {
    let Ok(export) = ExportTraceServiceRequest::decode(body) else {
        return HttpResponse::BadRequest().finish();
    };
    let mut got = got.lock().unwrap();
    got.headers.push(
        req.headers()
            .iter()
            .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned()))
            .collect(),
    );
    for resource in export.resource_spans {
        for scope in resource.scope_spans {
            for s in scope.spans {
                let attributes = s
                    .attributes
                    .iter()
                    .map(|kv| {
                        let value = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                            Some(AnyValue::StringValue(s)) => s.clone(),
                            Some(AnyValue::IntValue(i)) => i.to_string(),
                            Some(AnyValue::BoolValue(b)) => b.to_string(),
                            Some(AnyValue::DoubleValue(d)) => d.to_string(),
                            other => format!("{other:?}"),
                        };
                        (kv.key.clone(), value)
                    })
                    .collect();
                got.spans.push(Span {
                    trace_id: hex(&s.trace_id),
                    span_id: hex(&s.span_id),
                    parent: hex(&s.parent_span_id),
                    name: s.name.clone(),
                    kind: SpanKind::try_from(s.kind).unwrap_or(SpanKind::Unspecified),
                    start_ns: s.start_time_unix_nano,
                    attributes,
                });
            }
        }
    }
    HttpResponse::Ok()
        .content_type("application/x-protobuf")
        .finish()
}

impl Receiver {
    fn start() -> Self {
        let got = web::Data::new(Mutex::new(Received::default()));
        let data = got.clone();
        let server = HttpServer::new(move || {
            App::new()
                .app_data(data.clone())
                .app_data(web::PayloadConfig::new(16 << 20))
                .route("/v1/traces", web::post().to(receive))
        })
        .workers(1)
        .bind("127.0.0.1:0")
        .unwrap();
        let port = server.addrs()[0].port();
        actix_rt::spawn(server.run());
        Receiver {
            url: format!("http://127.0.0.1:{port}"),
            got: got.into_inner(),
        }
    }

    /// The spans of `trace`, once `ready` says they are all there (polled
    /// 20 ms apart, at most 1,000 times).
    async fn trace(&self, trace: &str, ready: impl Fn(&[Span]) -> bool) -> Vec<Span> {
        let mut spans = Vec::new();
        for _ in 0..1000 {
            spans = self
                .got
                .lock()
                .unwrap()
                .spans
                .iter()
                .filter(|s| s.trace_id == trace)
                .cloned()
                .collect();
            if ready(&spans) {
                return spans;
            }
            actix_rt::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("the spans of trace {trace} are not all there: {spans:#?}");
    }
}

/// The gateway binary against its built-in simulator, with `extra` in its
/// config file; its base URL, the simulator's, and its log lines so far.
struct Gateway {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
    base: String,
    sim: String,
    client: awc::Client,
}

impl Gateway {
    fn start(extra: &str) -> Self {
        let dir = temp_dir("traces");
        let config = dir.join("gateway.toml");
        std::fs::write(&config, format!("listen = \"127.0.0.1:0\"\n{extra}")).unwrap();
        let (child, lines, _reader) = spawn_gateway(
            Command::new(BIN)
                .args(["serve", "--simulator", "--config"])
                .arg(&config),
        );
        let (mut port, mut sim) = (None, None);
        while port.is_none() {
            let line = lines
                .recv_timeout(Duration::from_secs(30))
                .expect("a log line");
            let v: Value = serde_json::from_str(&line).expect("a JSON line");
            if let Some(url) = v["upstream"].as_str() {
                sim = Some(url.to_owned());
            }
            if v["message"] == "gateway listening" {
                port = number_after(&line, "\"port\"");
            }
        }
        Gateway {
            child,
            lines,
            base: format!("http://127.0.0.1:{}", port.unwrap()),
            sim: sim.expect("the simulator's address"),
            client: awc::Client::builder()
                .timeout(Duration::from_secs(20))
                .finish(),
        }
    }

    async fn json(&self, url: String) -> Value {
        let mut resp = self.client.get(url).send().await.unwrap();
        resp.json().limit(8 << 20).await.unwrap()
    }

    /// The calls the simulator answered, with their headers.
    async fn sim_requests(&self) -> Vec<Value> {
        let v = self.json(format!("{}/_simulator/requests", self.sim)).await;
        v.as_array().cloned().unwrap_or_default()
    }

    async fn fault(&self, fault: Value) {
        let resp = self
            .client
            .post(format!("{}/_simulator/faults", self.sim))
            .send_json(&fault)
            .await
            .unwrap();
        assert!(resp.status().is_success(), "{}", resp.status());
    }

    async fn metrics(&self) -> String {
        let mut resp = self
            .client
            .get(format!("{}/metrics", self.base))
            .send()
            .await
            .unwrap();
        String::from_utf8(resp.body().await.unwrap().to_vec()).unwrap()
    }

    /// Stops it gracefully and returns every line it logged.
    fn stop(mut self) -> Vec<Value> {
        let term = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(term.success());
        let exit = self.child.wait().unwrap();
        assert!(exit.success(), "{exit}");
        self.lines
            .iter()
            .filter_map(|l| serde_json::from_str(&l).ok())
            .collect()
    }
}

/// The value of `dropped{reason}` in a scrape.
fn dropped(scrape: &str, reason: &str) -> f64 {
    let prefix = format!("gateway_trace_spans_dropped_total{{reason=\"{reason}\"}} ");
    scrape
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no {prefix} in {scrape}"))
        .trim()
        .parse()
        .unwrap()
}

/// The W3C `traceparent` a calling service sends.
fn traceparent(trace: &str, span: &str) -> String {
    format!("00-{trace}-{span}-01")
}

fn new_trace() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

#[actix_web::test]
async fn a_callers_trace_runs_through_the_gateway_to_vipps_and_out_over_otlp() {
    let receiver = Receiver::start();
    let dir = temp_dir("traces-jwt");
    let secret = random_secret();
    std::fs::write(dir.join("hs256"), &secret).unwrap();
    std::fs::write(
        dir.join("otlp-headers"),
        "# the collector's key\nAuthorization: Bearer otlp-test-key\n",
    )
    .unwrap();
    let gw = Gateway::start(&format!(
        "[resilience]\nbackoff_base = \"10ms\"\nmax_attempts = 2\n\
         [outbox]\nbackoff_base = \"50ms\"\nbackoff_max = \"100ms\"\n\
         [auth]\nmode = \"jwt\"\n[auth.jwt]\nissuer = \"{ISSUER}\"\naudience = \"{AUDIENCE}\"\n\
         hs256_secret_file = \"{}\"\n\
         [telemetry.otlp]\nendpoint = \"{}\"\nheaders_file = \"{}\"\n",
        dir.join("hs256").display(),
        receiver.url,
        dir.join("otlp-headers").display(),
    ));
    let token = hs256(
        &secret,
        &json!({"iss": ISSUER, "aud": AUDIENCE, "sub": "svc-shop", "azp": "shop-backend",
                "iat": now(), "exp": now() + 3600, "msns": ["123456"]}),
    );
    let bearer = format!("Bearer {token}");

    // 1. A receipt sent with the caller's trace context.
    let (trace, caller_span) = (new_trace(), "00f067aa0ba902b7");
    let resp = gw
        .client
        .post(format!(
            "{}/v1/merchants/123456/orders/trace-1/receipt",
            gw.base
        ))
        .insert_header(("authorization", bearer.as_str()))
        .insert_header(("traceparent", traceparent(&trace, caller_span)))
        .insert_header(("tracestate", "shop=abc"))
        .send_json(&spec_receipt())
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let spans = receiver
        .trace(&trace, |s| {
            s.iter().any(|s| s.kind == SpanKind::Server)
                && s.iter().any(|s| s.attr("endpoint") == Some("receipt"))
                && s.iter().any(|s| s.name == "vipps token")
        })
        .await;
    let server = spans.iter().find(|s| s.kind == SpanKind::Server).unwrap();
    assert_eq!(
        server.parent, caller_span,
        "the caller's span is the parent"
    );
    assert_eq!(
        server.name,
        "POST /v1/merchants/{msn}/orders/{orderId}/receipt"
    );
    assert_eq!(server.attr("msn"), Some("123456"), "{server:?}");
    assert_eq!(server.attr("operation"), Some("receipt"));
    assert_eq!(server.attr("order_id"), Some("trace-1"));
    assert_eq!(server.attr("status"), Some("201"));
    assert_eq!(server.attr("caller"), Some("svc-shop"));
    assert_eq!(server.attr("caller_client"), Some("shop-backend"));
    for s in &spans {
        for value in s.attributes.values() {
            assert!(!value.contains(&token), "a token in {s:?}");
            assert!(!value.contains("demo-client-secret"), "a secret in {s:?}");
        }
    }
    let call = spans
        .iter()
        .find(|s| s.attr("endpoint") == Some("receipt"))
        .unwrap();
    assert_eq!(call.kind, SpanKind::Client);
    assert_eq!(call.parent, server.span_id, "{call:?}");
    assert_eq!(call.attr("attempt"), Some("1"));
    assert_eq!(call.attr("retry"), Some("false"));
    assert_eq!(call.attr("replay"), Some("false"));
    assert_eq!(call.attr("status"), Some("201"));
    // The request waited for the merchant's first token: its fetch shows.
    let fetch = spans.iter().find(|s| s.name == "vipps token").unwrap();
    assert_eq!(fetch.parent, server.span_id);
    assert_eq!(fetch.kind, SpanKind::Client);
    // Vipps received the client span's traceparent, and the caller's
    // tracestate.
    let seen = gw.sim_requests().await;
    let receipt_call = seen
        .iter()
        .find(|r| {
            r["path"]
                .as_str()
                .is_some_and(|p| p.ends_with("/receipts/trace-1"))
        })
        .expect("the receipt call");
    assert_eq!(
        receipt_call["headers"]["traceparent"],
        traceparent(&trace, &call.span_id),
        "{receipt_call}"
    );
    assert_eq!(receipt_call["headers"]["tracestate"], "shop=abc");
    let token_call = seen
        .iter()
        .find(|r| r["path"] == "/accesstoken/get")
        .expect("the token call");
    assert_eq!(
        token_call["headers"]["traceparent"],
        traceparent(&trace, &fetch.span_id)
    );
    // The exporter sent the headers of telemetry.otlp.headers_file.
    assert!(receiver
        .got
        .lock()
        .unwrap()
        .headers
        .iter()
        .all(|h| h.get("authorization").map(String::as_str) == Some("Bearer otlp-test-key")));

    // 2. A call Vipps fails once is retried: two attempt spans.
    gw.fault(json!({"endpoint": "order", "status": 503, "times": 1}))
        .await;
    let retried = new_trace();
    let resp = gw
        .client
        .get(format!(
            "{}/vipps/order-management/v2/ecom/trace-1",
            gw.base
        ))
        .insert_header(("authorization", bearer.as_str()))
        .insert_header(("merchant-serial-number", "123456"))
        .insert_header(("traceparent", traceparent(&retried, "1111111111111111")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let spans = receiver
        .trace(&retried, |s| {
            s.iter()
                .filter(|s| s.attr("endpoint") == Some("order"))
                .count()
                == 2
                && s.iter().any(|s| s.kind == SpanKind::Server)
        })
        .await;
    let server = spans.iter().find(|s| s.kind == SpanKind::Server).unwrap();
    assert_eq!(server.attr("operation"), Some("proxy"));
    let mut attempts: Vec<&Span> = spans
        .iter()
        .filter(|s| s.attr("endpoint") == Some("order"))
        .collect();
    attempts.sort_by_key(|s| s.start_ns);
    assert_eq!(attempts[0].attr("status"), Some("503"));
    assert_eq!(attempts[0].attr("retry"), Some("false"));
    assert_eq!(attempts[1].attr("status"), Some("200"));
    assert_eq!(attempts[1].attr("attempt"), Some("2"));
    assert_eq!(attempts[1].attr("retry"), Some("true"));
    assert!(attempts.iter().all(|a| a.parent == server.span_id));
    // The proxy sent its own span's traceparent, not the caller's.
    let seen = gw.sim_requests().await;
    let sent: Vec<&str> = seen
        .iter()
        .filter_map(|r| r["headers"]["traceparent"].as_str())
        .filter(|t| t.contains(&retried))
        .collect();
    assert_eq!(sent.len(), 2, "{sent:?}");
    for a in &attempts {
        assert!(sent.contains(&traceparent(&retried, &a.span_id).as_str()));
    }

    // 3. A malformed traceparent starts a new trace; it is not an error.
    let resp = gw
        .client
        .get(format!("{}/v1/merchants/123456/orders/trace-1", gw.base))
        .insert_header(("authorization", bearer.as_str()))
        .insert_header(("x-request-id", "trace-malformed"))
        .insert_header(("traceparent", "00-not-a-trace-01"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);

    // 4. An async receipt accepted while Vipps fails, delivered later: its
    // attempts are spans in the accepting request's trace.
    gw.fault(json!({"endpoint": "receipt", "status": 503, "times": 3}))
        .await;
    let accepted_in = new_trace();
    let mut resp = gw
        .client
        .post(format!(
            "{}/v1/merchants/123456/orders/trace-async/receipt",
            gw.base
        ))
        .insert_header(("authorization", bearer.as_str()))
        .insert_header(("prefer", "respond-async"))
        .insert_header(("traceparent", traceparent(&accepted_in, "2222222222222222")))
        .send_json(&spec_receipt())
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(
        body["createdBy"],
        json!({"sub": "svc-shop", "clientId": "shop-backend"})
    );
    assert_eq!(body["traceId"], accepted_in.as_str());
    let location = format!(
        "{}/v1/merchants/123456/deliveries/{}",
        gw.base,
        body["deliveryId"].as_str().unwrap()
    );
    let delivered = poll_until("the receipt delivered", || async {
        let mut resp = gw
            .client
            .get(&location)
            .insert_header(("authorization", bearer.as_str()))
            .send()
            .await
            .unwrap();
        let v: Value = resp.json().await.unwrap();
        (v["state"] == "delivered").then_some(v)
    })
    .await;
    assert_eq!(delivered["createdBy"]["sub"], "svc-shop");
    let spans = receiver
        .trace(&accepted_in, |s| {
            s.iter().any(|s| {
                s.name == "outbox delivery receipt" && s.attr("result") == Some("delivered")
            })
        })
        .await;
    let server = spans.iter().find(|s| s.kind == SpanKind::Server).unwrap();
    assert_eq!(server.attr("status"), Some("202"));
    let mut deliveries: Vec<&Span> = spans
        .iter()
        .filter(|s| s.name == "outbox delivery receipt")
        .collect();
    deliveries.sort_by_key(|s| s.start_ns);
    assert!(deliveries.len() >= 2, "{deliveries:#?}");
    for d in &deliveries {
        assert_eq!(d.kind, SpanKind::Consumer);
        assert_eq!(d.parent, server.span_id, "a child of the accepting request");
        assert_eq!(d.attr("created_by"), Some("svc-shop"));
        assert!(d.start_ns > server.start_ns);
    }
    // The trace as the receiver saw it (shown with --nocapture).
    let mut tree: Vec<&Span> = spans.iter().collect();
    tree.sort_by_key(|s| s.start_ns);
    println!("trace {accepted_in}, as the receiver decoded it:");
    for s in &tree {
        println!(
            "  +{:>7.1} ms  {:<50} {:<9} span {} parent {} {}",
            (s.start_ns - server.start_ns) as f64 / 1e6,
            s.name,
            format!("{:?}", s.kind),
            s.span_id,
            if s.parent.is_empty() { "-" } else { &s.parent },
            ["status", "attempt", "retry", "result"]
                .iter()
                .filter_map(|k| s.attr(k).map(|v| format!("{k}={v}")))
                .collect::<Vec<_>>()
                .join(" ")
        );
    }
    assert_eq!(deliveries[0].attr("result"), Some("retried"));
    assert_eq!(deliveries.last().unwrap().attr("result"), Some("delivered"));
    let calls: Vec<&Span> = spans
        .iter()
        .filter(|s| s.attr("endpoint") == Some("receipt"))
        .collect();
    assert!(calls.len() >= 4, "{calls:#?}");
    for c in &calls {
        assert!(
            deliveries.iter().any(|d| d.span_id == c.parent),
            "each call to Vipps is under a delivery attempt: {c:?}"
        );
    }
    assert_eq!(
        dropped(&gw.metrics().await, "export_failed"),
        0.0,
        "a receiver that takes every batch drops nothing"
    );

    // Every line logged within a request or an attempt names its trace and
    // span; the access line names the caller.
    let lines = gw.stop();
    let finished = lines
        .iter()
        .find(|v| {
            v["message"] == "request finished"
                && v["span"]["trace_id"] == trace.as_str()
                && v["span"]["operation"] == "receipt"
        })
        .expect("the receipt's access line");
    assert_eq!(finished["span"]["caller"], "svc-shop", "{finished}");
    assert_eq!(finished["span"]["caller_client"], "shop-backend");
    let first = receiver.got.lock().unwrap().spans.clone();
    let server = first
        .iter()
        .find(|s| s.trace_id == trace && s.kind == SpanKind::Server)
        .unwrap();
    assert_eq!(finished["span"]["span_id"], server.span_id.as_str());
    let malformed = lines
        .iter()
        .find(|v| {
            v["message"] == "request finished" && v["span"]["request_id"] == "trace-malformed"
        })
        .expect("the malformed request's line");
    let new = malformed["span"]["trace_id"].as_str().unwrap();
    assert_eq!(new.len(), 32);
    assert!(first
        .iter()
        .any(|s| s.trace_id == new && s.kind == SpanKind::Server && s.parent.is_empty()));
    let attempts: Vec<&Value> = lines
        .iter()
        .filter(|v| v["message"] == "outbox delivery attempt")
        .collect();
    assert!(attempts.len() >= 2, "{attempts:#?}");
    for a in attempts {
        assert_eq!(a["span"]["trace_id"], accepted_in.as_str(), "{a}");
        assert_eq!(a["span"]["span_id"].as_str().unwrap().len(), 16);
    }
    for v in &lines {
        assert!(!v.to_string().contains(&token), "the token in {v}");
    }
    // The token fetch's line is written within its own span, which names
    // the trace too.
    let fetched = lines
        .iter()
        .find(|v| v["message"] == "fetched access token")
        .expect("the token fetch's line");
    assert_eq!(fetched["span"]["trace_id"], trace.as_str(), "{fetched}");
    assert_eq!(fetched["span"]["name"], "vipps token");
}

#[actix_web::test]
async fn a_receiver_that_is_down_changes_no_answer_and_its_spans_are_counted_dropped() {
    // A port nothing listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://127.0.0.1:{}", closed.local_addr().unwrap().port());
    drop(closed);
    let gw = Gateway::start(&format!("[telemetry.otlp]\nendpoint = \"{url}\"\n"));
    for i in 0..20 {
        let resp = gw
            .client
            .post(format!(
                "{}/v1/merchants/123456/orders/down-{i}/receipt",
                gw.base
            ))
            .send_json(&spec_receipt())
            .await
            .unwrap();
        assert_eq!(resp.status(), 201, "request {i}");
    }
    let scrape = poll_until("spans counted dropped", || async {
        let scrape = gw.metrics().await;
        (dropped(&scrape, "export_failed") >= 40.0).then_some(scrape)
    })
    .await;
    assert_eq!(dropped(&scrape, "queue_full"), 0.0);
    let lines = gw.stop();
    let warned: Vec<&Value> = lines
        .iter()
        .filter(|v| v["message"] == "trace export failed; the batch's spans are dropped")
        .collect();
    assert_eq!(warned.len(), 1, "logged once a minute at most: {warned:#?}");
}

#[actix_web::test]
async fn without_jwt_a_delivery_names_no_caller_and_vipps_still_gets_the_trace() {
    // In-process, export off: the ids are the gateway's own.
    let app = spawn_app_with(Options::default()).await;
    let trace = new_trace();
    let resp = app
        .client
        .post(app.url("/v1/merchants/123456/orders/no-jwt/receipt"))
        .insert_header(("prefer", "respond-async"))
        .insert_header(("traceparent", traceparent(&trace, "3333333333333333")))
        .send_json(&spec_receipt())
        .await
        .unwrap();
    let answer = crate::helpers::answer(Ok(resp)).await;
    assert_eq!(answer.status, 202, "{:?}", answer.body);
    assert!(answer.body["createdBy"].is_null(), "{:?}", answer.body);
    assert_eq!(answer.body["traceId"], trace.as_str());
    let sent = poll_until("the delivery's call", || async {
        let calls = app.sim_requests_to("receipt").await;
        calls.into_iter().next()
    })
    .await;
    let parent = sent["headers"]["traceparent"].as_str().unwrap().to_owned();
    assert!(
        parent.starts_with(&format!("00-{trace}-")) && parent.ends_with("-01"),
        "the stored trace continues, sampled as the caller said: {parent}"
    );
    assert!(!parent.contains("3333333333333333"), "a span id of its own");
    // A synchronous call without a traceparent starts a trace, not sampled.
    let resp = app
        .client
        .get(app.url("/v1/merchants/123456/orders/no-jwt"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let order_calls = app.sim_requests_to("order").await;
    let fresh = order_calls
        .last()
        .and_then(|r| r["headers"]["traceparent"].as_str())
        .unwrap()
        .to_owned();
    assert!(
        fresh.starts_with("00-") && fresh.ends_with("-00"),
        "{fresh}"
    );
    assert!(!fresh.contains(&trace));
}
