//! Request logs as an operator reads them: the real binary's JSON lines.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::{json, Value};
use vipps_order_gateway::simulator::{DEMO_CLIENT_SECRET, DEMO_SUBSCRIPTION_KEY};

use crate::helpers::{b64, png, spec_receipt};

const BIN: &str = env!("CARGO_BIN_EXE_vipps-order-gateway");

/// Any JSON value, refused when an object in it holds a key twice
/// (serde_json's `Value` keeps the last one without a word).
struct NoDuplicateKeys;

impl<'de> serde::Deserialize<'de> for NoDuplicateKeys {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(NoDuplicateKeys)
    }
}

impl<'de> serde::de::Visitor<'de> for NoDuplicateKeys {
    type Value = NoDuplicateKeys;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self, A::Error> {
        let mut seen = std::collections::HashSet::new();
        while let Some(key) = map.next_key::<String>()? {
            map.next_value::<NoDuplicateKeys>()?;
            if !seen.insert(key.clone()) {
                return Err(serde::de::Error::custom(format!("the key {key:?} twice")));
            }
        }
        Ok(self)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self, A::Error> {
        while seq.next_element::<NoDuplicateKeys>()?.is_some() {}
        Ok(self)
    }

    fn visit_bool<E>(self, _: bool) -> Result<Self, E> {
        Ok(self)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Self, E> {
        Ok(self)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Self, E> {
        Ok(self)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Self, E> {
        Ok(self)
    }
    fn visit_str<E>(self, _: &str) -> Result<Self, E> {
        Ok(self)
    }
    fn visit_unit<E>(self) -> Result<Self, E> {
        Ok(self)
    }
}

#[test]
fn the_duplicate_key_check_sees_a_key_twice_at_any_depth() {
    let check = |text: &str| serde_json::from_str::<NoDuplicateKeys>(text).is_ok();
    assert!(check(
        r#"{"a":1,"b":{"c":[1,{"d":null}],"e":"x"},"f":true,"g":-1.5}"#
    ));
    assert!(!check(r#"{"a":1,"a":2}"#));
    assert!(!check(r#"{"span":{"route":"/x","route":"/x"}}"#));
    assert!(!check(r#"[{"k":1,"k":1}]"#));
}

/// A number at the end of `key=N` or `"key":N` in a log line.
pub(crate) fn number_after(line: &str, key: &str) -> Option<u16> {
    let rest = line.split(key).nth(1)?;
    let digits: String = rest
        .trim_start_matches(|c: char| !c.is_ascii_digit())
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

/// Starts the gateway with the default log settings; its stdout lines
/// arrive on the channel.
pub(crate) fn spawn_gateway(
    cmd: &mut Command,
) -> (
    std::process::Child,
    mpsc::Receiver<String>,
    std::thread::JoinHandle<()>,
) {
    let mut child = cmd
        .env_remove("RUST_LOG")
        .env_remove("VOG_LOG__FORMAT")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    (child, rx, reader)
}

#[actix_web::test]
async fn json_request_logs_name_merchant_operation_and_upstream_but_no_secret() {
    let dir = std::env::temp_dir().join(format!("vog-test-logs-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("gateway.toml");
    // A config file keeps the production log format (JSON).
    std::fs::write(&config, "listen = \"127.0.0.1:0\"\n").unwrap();
    let (mut child, rx, reader) = spawn_gateway(
        Command::new(BIN)
            .args(["serve", "--simulator", "--config"])
            .arg(&config),
    );
    let mut lines = Vec::new();
    let (mut port, mut sim) = (None, None);
    while port.is_none() {
        let line = rx.recv_timeout(Duration::from_secs(20)).expect("log line");
        let v: Value = serde_json::from_str(&line).expect("every line is JSON");
        if let Some(url) = v["upstream"].as_str() {
            sim = Some(url.to_owned());
        }
        if v["message"] == "gateway listening" {
            port = number_after(&line, "\"port\"");
        }
        lines.push(line);
    }
    let base = format!("http://127.0.0.1:{}", port.unwrap());
    let sim = sim.expect("simulator address logged");
    let client = awc::Client::builder()
        .timeout(Duration::from_secs(10))
        .finish();
    let resp = client
        .post(format!("{base}/v1/merchants/123456/orders/log-1/receipt"))
        .insert_header(("x-request-id", "log-test-receipt"))
        .send_json(&spec_receipt())
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let image = b64(&png(300));
    let resp = client
        .post(format!("{base}/v1/merchants/123456/images"))
        .insert_header(("x-request-id", "log-test-image"))
        .send_json(&json!({"data": image, "imageId": "logo-log"}))
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let resp = client
        .get(format!("{base}/v1/merchants/777777/orders/log-1"))
        .insert_header(("x-request-id", "log-test-unknown"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    for (path, id, status) in [
        ("/no/such/path", "log-test-nopath", 404),
        ("/healthz", "log-test-health", 200),
    ] {
        let resp = client
            .get(format!("{base}{path}"))
            .insert_header(("x-request-id", id))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), status, "{path}");
    }
    let resp = client
        .get(format!("{base}/vipps/order-management/v2/ecom/log-1"))
        .insert_header(("x-request-id", "log-test-proxy"))
        .insert_header(("Merchant-Serial-Number", "123456"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    // The token the gateway used, as the simulator saw it.
    let mut seen = client
        .get(format!("{sim}/_simulator/requests"))
        .send()
        .await
        .unwrap();
    let seen: Value = seen.json().limit(1 << 20).await.unwrap();
    let bearer = seen
        .as_array()
        .unwrap()
        .iter()
        .find_map(|r| r["headers"]["authorization"].as_str())
        .expect("an authorized call")
        .trim_start_matches("Bearer ")
        .to_owned();
    // A graceful stop writes every buffered line before the process exits.
    let term = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    let exit = child.wait().unwrap();
    assert!(exit.success(), "{exit}");
    lines.extend(rx.iter());
    reader.join().unwrap();
    let _ = std::fs::remove_dir_all(&dir);

    let finished = |id: &str| -> Value {
        lines
            .iter()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|v| v["message"] == "request finished" && v["span"]["request_id"] == id)
            .unwrap_or_else(|| panic!("no finished line for {id}: {lines:#?}"))
    };
    let receipt = finished("log-test-receipt");
    let span = &receipt["span"];
    assert_eq!(span["msn"], "123456", "{receipt}");
    assert_eq!(span["operation"], "receipt");
    assert_eq!(span["status"], 201);
    assert_eq!(span["upstream_status"], 201);
    assert!(span["upstream_latency_ms"].as_f64().unwrap() > 0.0);
    assert!(receipt["latency_ms"].as_f64().unwrap() > 0.0);
    let image_line = finished("log-test-image");
    assert_eq!(image_line["span"]["operation"], "image");
    assert_eq!(image_line["span"]["upstream_status"], 200);
    // A route is found once routed, or at the end for a path no route
    // matches; either way it is recorded once.
    let nopath = finished("log-test-nopath");
    assert_eq!(nopath["span"]["route"], "unmatched", "{nopath}");
    assert_eq!(nopath["span"]["operation"], "other");
    assert_eq!(nopath["span"]["status"], 404);
    let health = finished("log-test-health");
    assert_eq!(health["span"]["route"], "/healthz", "{health}");
    assert_eq!(health["span"]["operation"], "health");
    assert_eq!(
        receipt["span"]["route"],
        "/v1/merchants/{msn}/orders/{orderId}/receipt"
    );
    for line in &lines {
        if let Err(e) = serde_json::from_str::<NoDuplicateKeys>(line) {
            panic!("{e}: {line}");
        }
    }
    let unknown = finished("log-test-unknown");
    assert_eq!(unknown["span"]["msn"], "777777");
    assert_eq!(unknown["span"]["status"], 404);
    assert!(unknown["span"].get("upstream_status").is_none());
    // Lines written while a request is served carry its fields too: the
    // first request fetched the merchant's token.
    let fetched = lines
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| v["message"] == "fetched access token")
        .expect("a token fetch line");
    assert_eq!(
        fetched["span"]["request_id"], "log-test-receipt",
        "{fetched}"
    );
    assert_eq!(fetched["span"]["name"], "request");
    assert_eq!(fetched["span"]["operation"], "receipt");
    assert!(fetched["span"].get("status").is_none(), "{fetched}");
    // Outside any request, a line has no request fields.
    let listening = lines
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| v["message"] == "gateway listening")
        .unwrap();
    assert!(listening.get("span").is_none(), "{listening}");
    let proxied = finished("log-test-proxy");
    assert_eq!(proxied["span"]["operation"], "proxy");
    assert_eq!(proxied["span"]["msn"], "123456");
    assert_eq!(proxied["span"]["route"], "/vipps/order-management/...");
    assert_eq!(proxied["span"]["upstream_status"], 200);

    let all = lines.join("\n");
    for secret in [
        DEMO_CLIENT_SECRET,
        DEMO_SUBSCRIPTION_KEY,
        bearer.as_str(),
        image.as_str(),
    ] {
        assert!(!all.contains(secret), "a secret or body is in the log");
    }
}

#[actix_web::test]
async fn text_request_logs_carry_the_request_fields() {
    // `serve --simulator` without a config file logs text, for a terminal.
    let (mut child, rx, reader) =
        spawn_gateway(Command::new(BIN).args(["serve", "--simulator", "--listen", "127.0.0.1:0"]));
    let mut port = None;
    while port.is_none() {
        let line = rx.recv_timeout(Duration::from_secs(20)).expect("log line");
        assert!(!line.starts_with('{'), "text, not JSON: {line}");
        if line.contains("gateway listening") {
            port = number_after(&line, "port=");
        }
    }
    let resp = awc::Client::default()
        .get(format!(
            "http://127.0.0.1:{}/vipps/order-management/v2/ecom/log-text",
            port.unwrap()
        ))
        .insert_header(("x-request-id", "log-text-proxy"))
        .insert_header(("Merchant-Serial-Number", "123456"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    let line = loop {
        let line = rx.recv_timeout(Duration::from_secs(20)).expect("log line");
        if line.contains("request finished") {
            break line;
        }
    };
    let _ = child.kill();
    let _ = child.wait();
    drop(rx);
    let _ = reader.join();
    for field in [
        "request_id=\"log-text-proxy\"",
        "operation=\"proxy\"",
        "msn=\"123456\"",
        "upstream_status=404",
        "status=404",
    ] {
        assert!(line.contains(field), "{field} missing: {line}");
    }
}
