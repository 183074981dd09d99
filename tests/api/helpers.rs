//! `spawn_app()`: the gateway and its simulator, each on a loopback port 0,
//! and helpers to call the façade and read what the simulator saw.

use std::io::Write;
use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, Once};
use std::time::Duration;

use awc::http::{Method, StatusCode};
use secrecy::SecretString;
use serde_json::Value;
use vipps_order_gateway::config::{InlineSecrets, MerchantSettings, OutboxSettings, Settings};
use vipps_order_gateway::domain::Msn;
use vipps_order_gateway::simulator::{
    SimMerchant, Simulator, SimulatorSettings, DEMO_CLIENT_ID, DEMO_CLIENT_SECRET, DEMO_MSN,
    DEMO_SUBSCRIPTION_KEY,
};
use vipps_order_gateway::{Application, Reloader};

/// The demo merchant, configured on both sides.
pub const MSN: &str = DEMO_MSN;
/// A second merchant, configured on both sides.
pub const MSN2: &str = "654321";
/// A well-formed MSN configured nowhere.
pub const UNKNOWN_MSN: &str = "999999";
/// Where the reverse proxy's paths start on the gateway.
pub const PROXY_PREFIX: &str = "/vipps/order-management";

/// What a test may change before the app starts.
pub struct Options {
    /// Lifetime of the simulator's tokens.
    pub token_ttl: Duration,
    /// Extra TOML appended to the gateway's config.
    pub extra_toml: String,
    pub gateway_workers: usize,
    /// The second merchant's secret as the gateway knows it (tests of
    /// refused credentials set a wrong one).
    pub msn2_secret: String,
    /// The gateway's `[upstream] timeout`.
    pub upstream_timeout: &'static str,
    /// The gateway's `[upstream] api_version`.
    pub api_version: &'static str,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            token_ttl: Duration::from_secs(3600),
            extra_toml: String::new(),
            gateway_workers: 1,
            msn2_secret: "second-secret".into(),
            upstream_timeout: "5s",
            api_version: "2.1",
        }
    }
}

pub struct TestApp {
    pub address: String,
    /// The metrics-only listener, when the config sets `metrics_listen`.
    pub metrics_address: Option<String>,
    pub sim_address: String,
    pub client: awc::Client,
    /// What `SIGHUP` triggers in the binary.
    pub reloader: Reloader,
}

/// A parsed answer.
pub struct Answer {
    pub status: StatusCode,
    pub content_type: String,
    pub request_id: Option<String>,
    pub retry_after: Option<String>,
    pub headers: awc::http::header::HeaderMap,
    pub body: Value,
    /// The body as received (lossy UTF-8), for tests that search it.
    pub raw: String,
}

fn merchant(msn: &str, client_id: &str, secret: &str, key: &str) -> MerchantSettings {
    MerchantSettings {
        msn: Msn::parse(msn).expect("test MSN"),
        client_id: client_id.into(),
        client_secret_file: None,
        client_secret_env: None,
        subscription_key_file: None,
        subscription_key_env: None,
        inline: Some(InlineSecrets {
            client_secret: SecretString::from(secret.to_owned()),
            subscription_key: SecretString::from(key.to_owned()),
        }),
    }
}

/// Log lines written while at least one [`LogCapture`] is alive, at
/// `trace` level, from every thread (actix workers log on their own).
static CAPTURED: Mutex<Vec<u8>> = Mutex::new(Vec::new());
static CAPTURING: AtomicUsize = AtomicUsize::new(0);

struct CaptureWriter;

impl Write for CaptureWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        CAPTURED
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Installs the test binary's one global subscriber (once): a capture
/// layer that records everything, `trace` included, while a
/// [`LogCapture`] is alive, and with `TEST_LOG=1` the log on stdout.
/// `log` records (awc, actix) are forwarded to it too.
fn init_test_log() {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        use tracing_subscriber::layer::SubscriberExt as _;
        use tracing_subscriber::util::SubscriberInitExt as _;
        use tracing_subscriber::{filter, fmt, Layer as _};
        let capture = fmt::layer()
            .with_writer(|| CaptureWriter)
            .with_ansi(false)
            .with_filter(filter::filter_fn(|_| CAPTURING.load(Ordering::SeqCst) > 0));
        let stdout = std::env::var_os("TEST_LOG").map(|_| {
            fmt::layer()
                .with_writer(std::io::stdout)
                .with_filter(filter::LevelFilter::DEBUG)
        });
        tracing_subscriber::registry()
            .with(capture)
            .with(stdout)
            .try_init()
            .expect("the test binary's only subscriber");
    });
}

/// Records every log line of the process while alive.
pub struct LogCapture;

impl LogCapture {
    pub fn start() -> Self {
        init_test_log();
        CAPTURING.fetch_add(1, Ordering::SeqCst);
        Self
    }

    /// Everything captured so far (by this and any concurrent capture).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(
            &CAPTURED
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
        .into_owned()
    }
}

impl Drop for LogCapture {
    fn drop(&mut self) {
        if CAPTURING.fetch_sub(1, Ordering::SeqCst) == 1 {
            CAPTURED
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clear();
        }
    }
}

/// Options whose retries back off fast (from 10 ms), so retried calls do not
/// slow the tests down; `resilience` is appended to that `[resilience]` table.
pub fn fast_retries(resilience: &str) -> Options {
    Options {
        extra_toml: format!("[resilience]\nbackoff_base = \"10ms\"\n{resilience}"),
        ..Options::default()
    }
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(Options::default()).await
}

pub async fn spawn_app_with(opts: Options) -> TestApp {
    init_test_log();
    let sim_listener = TcpListener::bind("127.0.0.1:0").expect("bind simulator");
    let sim = Simulator::build(
        sim_listener,
        SimulatorSettings {
            merchants: vec![
                SimMerchant::demo(),
                SimMerchant {
                    msn: MSN2.into(),
                    client_id: "second-client".into(),
                    client_secret: "second-secret".into(),
                    subscription_key: "second-key".into(),
                },
            ],
            token_ttl: opts.token_ttl,
            workers: 2,
            max_orders: vipps_order_gateway::simulator::DEFAULT_MAX_ORDERS,
        },
    )
    .expect("build simulator");
    let sim_address = format!("http://127.0.0.1:{}", sim.port());
    actix_rt::spawn(sim.run());

    let toml = format!(
        "listen = \"127.0.0.1:0\"\nworkers = {}\n{}\n[upstream]\nbase_url = \"{sim_address}\"\ntimeout = \"{}\"\napi_version = \"{}\"\n",
        opts.gateway_workers, opts.extra_toml, opts.upstream_timeout, opts.api_version
    );
    let mut settings = Settings::from_toml(&toml, []).expect("test settings");
    settings.merchants = vec![
        merchant(
            MSN,
            DEMO_CLIENT_ID,
            DEMO_CLIENT_SECRET,
            DEMO_SUBSCRIPTION_KEY,
        ),
        merchant(MSN2, "second-client", &opts.msn2_secret, "second-key"),
    ];
    start_gateway(settings, sim_address)
}

/// Starts the gateway with `settings` on a loopback port 0; `sim_address`
/// is the upstream it was pointed at.
fn start_gateway(mut settings: Settings, sim_address: String) -> TestApp {
    // The outbox's default store is under /var/lib; each test gateway gets
    // a SQLite file of its own unless the test named a store.
    if settings.outbox.url == OutboxSettings::default().url {
        let file = crate::auth::temp_dir("outbox").join("outbox.db");
        settings.outbox.url = format!("sqlite://{}", file.display());
    }
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind gateway");
    let app =
        Application::build_with_listener(settings, listener, &|_| None).expect("build gateway");
    let address = format!("http://127.0.0.1:{}", app.port());
    let metrics_address = app.metrics_port().map(|p| format!("http://127.0.0.1:{p}"));
    let reloader = app.reloader();
    actix_rt::spawn(app.server());
    TestApp {
        address,
        metrics_address,
        sim_address,
        reloader,
        client: awc::Client::builder()
            .timeout(Duration::from_secs(30))
            .finish(),
    }
}

pub async fn answer(
    resp: Result<
        awc::ClientResponse<
            impl futures_util::Stream<Item = Result<actix_web::web::Bytes, awc::error::PayloadError>>
                + Unpin,
        >,
        awc::error::SendRequestError,
    >,
) -> Answer {
    let mut resp = resp.expect("gateway answers");
    let header = |name: &str| {
        resp.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let content_type = header("content-type").unwrap_or_default();
    let request_id = header("x-request-id");
    let retry_after = header("retry-after");
    let status = resp.status();
    let headers = resp.headers().clone();
    let bytes = resp.body().limit(16 * 1024 * 1024).await.expect("body");
    let raw = String::from_utf8_lossy(&bytes).into_owned();
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
    };
    Answer {
        status,
        content_type,
        request_id,
        retry_after,
        headers,
        body,
        raw,
    }
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.address)
    }

    pub async fn get(&self, path: &str) -> Answer {
        answer(self.client.get(self.url(path)).send().await).await
    }

    pub async fn put_json(&self, path: &str, body: &Value) -> Answer {
        answer(self.client.put(self.url(path)).send_json(body).await).await
    }

    pub async fn post_json(&self, path: &str, body: &Value) -> Answer {
        answer(self.client.post(self.url(path)).send_json(body).await).await
    }

    pub async fn delete(&self, path: &str) -> Answer {
        answer(self.client.delete(self.url(path)).send().await).await
    }

    /// A call through the reverse proxy (`path` is what follows
    /// [`PROXY_PREFIX`]) with the demo merchant's `Merchant-Serial-Number`,
    /// and `body`, if any, as JSON.
    pub async fn proxy(&self, method: Method, path: &str, body: Option<&Value>) -> Answer {
        let req = self
            .client
            .request(method, self.url(&format!("{PROXY_PREFIX}{path}")))
            .insert_header(("Merchant-Serial-Number", MSN));
        answer(match body {
            Some(b) => req.send_json(b).await,
            None => req.send().await,
        })
        .await
    }

    /// Sends raw bytes with the given content type.
    pub async fn send_raw(
        &self,
        method: Method,
        path: &str,
        content_type: &str,
        body: Vec<u8>,
    ) -> Answer {
        answer(
            self.client
                .request(method, self.url(path))
                .insert_header(("content-type", content_type))
                .send_body(body)
                .await,
        )
        .await
    }

    pub async fn post_receipt(&self, msn: &str, order: &str, body: &Value) -> Answer {
        self.post_json(&format!("/v1/merchants/{msn}/orders/{order}/receipt"), body)
            .await
    }

    async fn sim(&self, method: Method, path: &str, body: Option<&Value>) -> Value {
        let req = self
            .client
            .request(method, format!("{}{path}", self.sim_address));
        let resp = match body {
            Some(b) => req.send_json(b).await,
            None => req.send().await,
        };
        let a = answer(resp).await;
        assert!(
            a.status.is_success(),
            "simulator control {path}: {} {}",
            a.status,
            a.body
        );
        a.body
    }

    /// Every request the simulator received, oldest first.
    pub async fn sim_requests(&self) -> Vec<Value> {
        match self.sim(Method::GET, "/_simulator/requests", None).await {
            Value::Array(v) => v,
            other => panic!("request log is not an array: {other}"),
        }
    }

    /// Requests the simulator received at one endpoint (`receipt`, `token`, …).
    pub async fn sim_requests_to(&self, endpoint: &str) -> Vec<Value> {
        self.sim_requests()
            .await
            .into_iter()
            .filter(|r| r["endpoint"] == endpoint)
            .collect()
    }

    /// The statuses the simulator answered at one endpoint, oldest first
    /// (`0`: the connection was dropped).
    pub async fn sim_statuses(&self, endpoint: &str) -> Vec<u64> {
        self.sim_requests_to(endpoint)
            .await
            .iter()
            .map(|r| r["status"].as_u64().unwrap_or(999))
            .collect()
    }

    pub async fn sim_counters(&self) -> Value {
        self.sim(Method::GET, "/_simulator/counters", None).await
    }

    /// Tokens issued for `msn`.
    pub async fn token_fetches(&self, msn: &str) -> u64 {
        self.sim_counters().await["tokenFetches"][msn]
            .as_u64()
            .unwrap_or(0)
    }

    /// Every request that reached the simulator, token calls included.
    pub async fn upstream_call_count(&self) -> usize {
        self.sim_requests().await.len()
    }

    pub async fn sim_state(&self) -> Value {
        self.sim(Method::GET, "/_simulator/state", None).await
    }

    pub async fn add_fault(&self, fault: Value) {
        self.sim(Method::POST, "/_simulator/faults", Some(&fault))
            .await;
    }

    /// Empties the simulator's request log.
    pub async fn clear_sim_requests(&self) {
        let resp = self
            .client
            .delete(format!("{}/_simulator/requests", self.sim_address))
            .send()
            .await
            .expect("simulator answers");
        assert!(resp.status().is_success());
    }

    pub async fn clear_faults(&self) {
        let resp = self
            .client
            .delete(format!("{}/_simulator/faults", self.sim_address))
            .send()
            .await
            .expect("simulator answers");
        assert!(resp.status().is_success());
    }

    pub async fn expire_tokens(&self) {
        self.sim(Method::POST, "/_simulator/tokens/expire", None)
            .await;
    }
}

impl Answer {
    /// Asserts an RFC 9457 problem with the given status, and returns it.
    #[track_caller]
    pub fn problem(&self, status: u16) -> &Value {
        assert_eq!(self.status.as_u16(), status, "body: {}", self.body);
        assert_eq!(
            self.content_type, "application/problem+json",
            "body: {}",
            self.body
        );
        for field in ["type", "title", "detail", "instance"] {
            assert!(
                self.body[field].is_string(),
                "problem without {field}: {}",
                self.body
            );
        }
        assert_eq!(self.body["status"], status);
        &self.body
    }

    /// The names in `invalidParams`.
    pub fn invalid_names(&self) -> Vec<String> {
        self.body["invalidParams"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|p| p["name"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// A PNG header of the given height (the gateway reads only the IHDR).
pub fn png(height: u32) -> Vec<u8> {
    let mut v = b"\x89PNG\r\n\x1a\n".to_vec();
    v.extend_from_slice(&13u32.to_be_bytes());
    v.extend_from_slice(b"IHDR");
    v.extend_from_slice(&300u32.to_be_bytes());
    v.extend_from_slice(&height.to_be_bytes());
    v.extend_from_slice(&[8, 6, 0, 0, 0, 0, 0, 0, 0]);
    v
}

/// A JPEG with an APP0 segment before its SOF0.
pub fn jpeg(height: u16) -> Vec<u8> {
    let mut v = vec![0xFF, 0xD8, 0xFF, 0xE0, 0x00, 0x04, 0x4A, 0x46];
    v.extend_from_slice(&[0xFF, 0xC0, 0x00, 0x0B, 0x08]);
    v.extend_from_slice(&height.to_be_bytes());
    v.extend_from_slice(&300u16.to_be_bytes());
    v.extend_from_slice(&[0x01, 0x01, 0x11, 0x00, 0xFF, 0xD9]);
    v
}

pub fn b64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// The receipt of SPEC §3: two socks and home delivery, 447.00 NOK.
pub fn spec_receipt() -> Value {
    serde_json::json!({
        "currency": "NOK",
        "lines": [
            {"id": "sku-1", "name": "Socks", "quantity": "2", "unit": "PCS",
             "unitPrice": "199.00", "discount": "0", "taxPercent": "25",
             "productUrl": "https://shop.example/socks"},
            {"id": "ship", "name": "Home delivery", "totalAmount": "49", "taxPercent": "25",
             "isShipping": true}
        ],
        "tip": "0", "posId": "pos-7", "receiptNumber": "0527013501",
        "barcode": {"format": "EAN-13", "data": "7040512345678"},
        "paymentSources": {"card": "447.00"},
        "expectedTotal": "447.00"
    })
}

/// The gateway alone, against `base_url` instead of a simulator (a scripted
/// upstream, say), with the demo merchant (MSN 123456) and its credentials.
/// `extra_toml` is appended inside the `[upstream]` table: its leading bare
/// keys are upstream settings (`timeout = "5s"`), and it may open further
/// tables (`[resilience]`, `[log]`). `sim_address` is `base_url`.
pub async fn spawn_gateway_against(base_url: &str, extra_toml: &str) -> TestApp {
    init_test_log();
    let toml = format!(
        "listen = \"127.0.0.1:0\"\nworkers = 1\n[upstream]\nbase_url = \"{base_url}\"\n{extra_toml}\n"
    );
    let mut settings = Settings::from_toml(&toml, []).expect("test settings");
    settings.merchants = vec![merchant(
        MSN,
        DEMO_CLIENT_ID,
        DEMO_CLIENT_SECRET,
        DEMO_SUBSCRIPTION_KEY,
    )];
    start_gateway(settings, base_url.to_owned())
}

/// Tries `attempt` until it returns `Some`, 20 ms apart, at most 1,000
/// times (a cap only a hung gateway reaches), and returns what it found.
/// For what a server-side timer or a background task brings about: the
/// test waits for the outcome instead of guessing how long it takes.
pub async fn poll_until<T, F, Fut>(what: &str, mut attempt: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    for _ in 0..1000 {
        if let Some(found) = attempt().await {
            return found;
        }
        actix_rt::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{what}: still not the case after 1,000 tries");
}

impl TestApp {
    /// Calls the simulator has received at `endpoint`, counted on arrival
    /// (the request log has a call only once it is answered).
    pub async fn sim_calls(&self, endpoint: &str) -> u64 {
        self.sim_counters().await["calls"][endpoint]
            .as_u64()
            .unwrap_or(0)
    }
}

/// Every delivery of the merchant `MSN` (one page of 100 suffices in the
/// tests), newest first.
pub async fn deliveries(app: &TestApp) -> Vec<Value> {
    let page = app
        .get(&format!("/v1/merchants/{MSN}/deliveries?limit=100"))
        .await;
    assert_eq!(page.status, 200, "{}", page.body);
    page.body["deliveries"].as_array().unwrap().clone()
}
