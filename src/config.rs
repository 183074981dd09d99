//! Typed settings: a TOML file, then `VOG_*` environment variables on top,
//! then secrets read from the files or variables each merchant names.
//! The settings value is passed into [`crate::Application::build`]; nothing
//! here is global.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::marker::PhantomData;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use figment::providers::{Format, Toml};
use figment::value::{Dict, Map, Value};
use figment::{Figment, Metadata, Profile, Provider};
use secrecy::{ExposeSecret, SecretString};
use serde::de::{Error as _, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer};

use crate::domain::{ApiVersion, Msn};

/// Prefix of the environment variables that override the file.
pub const ENV_PREFIX: &str = "VOG_";

/// The longest `outbox.group_commit_wait`: a lone asynchronous request
/// waits that long for company before its commit.
const MAX_GROUP_COMMIT_WAIT: Duration = Duration::from_millis(100);

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    ReadFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config: {0}")]
    Invalid(String),
    #[error("merchant {msn}: cannot read {what} from file {path}: {reason}")]
    SecretFile {
        msn: String,
        what: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error("auth.jwt: cannot use key file {path}: {reason}")]
    AuthKey { path: PathBuf, reason: String },
    #[error("merchant {msn}: environment variable {var} for {what} is not set or empty")]
    SecretEnv {
        msn: String,
        what: &'static str,
        var: String,
    },
}

/// Everything the gateway is configured with (secrets still unread).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    #[serde(default = "defaults::listen")]
    pub listen: String,
    /// A second listener serving only operational endpoints (metrics).
    #[serde(default)]
    pub metrics_listen: Option<String>,
    /// HTTP worker threads; the number of CPUs when unset.
    #[serde(default)]
    pub workers: Option<usize>,
    /// On SIGTERM, how long in-flight requests may take to finish.
    #[serde(default = "defaults::shutdown_grace", with = "humantime_serde")]
    pub shutdown_grace: Duration,
    #[serde(default)]
    pub log: LogSettings,
    #[serde(default)]
    pub upstream: UpstreamSettings,
    #[serde(default)]
    pub system: SystemSettings,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub resilience: Resilience,
    #[serde(default)]
    pub proxy: ProxySettings,
    #[serde(default)]
    pub outbox: OutboxSettings,
    /// A list in the file; `VOG_MERCHANTS__<index>__*` override or add
    /// entries (see [`ByIndex`]).
    #[serde(default, deserialize_with = "list_or_indexed")]
    pub merchants: Vec<MerchantSettings>,
    #[serde(default)]
    pub auth: AuthSettings,
    #[serde(default)]
    pub telemetry: TelemetrySettings,
}

/// Traces (`[telemetry]`): OTLP export, off unless an endpoint is set.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetrySettings {
    #[serde(default)]
    pub otlp: OtlpSettings,
    /// The share of new traces recorded (0.0 to 1.0); a trace a caller
    /// started follows the caller's sampled flag.
    #[serde(default = "defaults::sampling_ratio")]
    pub sampling_ratio: f64,
}

impl Default for TelemetrySettings {
    fn default() -> Self {
        Self {
            otlp: OtlpSettings::default(),
            sampling_ratio: defaults::sampling_ratio(),
        }
    }
}

/// `[telemetry.otlp]`: where spans are exported.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OtlpSettings {
    /// The receiver's base URL (`http://otel-collector:4318`); spans go to
    /// its `/v1/traces`. Unset: no export.
    #[serde(default)]
    pub endpoint: Option<String>,
    #[serde(default)]
    pub protocol: OtlpProtocol,
    /// Headers sent with every export (`Name: value` lines), such as the
    /// receiver's credentials.
    #[serde(default)]
    pub headers_file: Option<PathBuf>,
    /// How long one export request may take.
    #[serde(default = "defaults::otlp_timeout", with = "humantime_serde")]
    pub timeout: Duration,
}

impl Default for OtlpSettings {
    fn default() -> Self {
        Self {
            endpoint: None,
            protocol: OtlpProtocol::default(),
            headers_file: None,
            timeout: defaults::otlp_timeout(),
        }
    }
}

/// The OTLP encoding: protobuf over HTTP (what collectors take on port
/// 4318). gRPC is not offered (docs/decisions.md, "Traces").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
pub enum OtlpProtocol {
    #[default]
    #[serde(rename = "http/protobuf")]
    HttpProtobuf,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSettings {
    /// `json` (production) or `text` (a terminal).
    #[serde(default = "defaults::log_format")]
    pub format: LogFormat,
    /// A `tracing` filter such as `info` or `vipps_order_gateway=debug`;
    /// `RUST_LOG` wins when set.
    #[serde(default = "defaults::log_level")]
    pub level: String,
}

impl Default for LogSettings {
    fn default() -> Self {
        Self {
            format: defaults::log_format(),
            level: defaults::log_level(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Json,
    Text,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamSettings {
    #[serde(default = "defaults::base_url")]
    pub base_url: String,
    /// Total time allowed for one upstream call.
    #[serde(default = "defaults::timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// A token is replaced (in the background) once less than this much of
    /// its life remains (capped at a fifth of its lifetime, for short-lived
    /// tokens).
    #[serde(default = "defaults::token_margin", with = "humantime_serde")]
    pub token_margin: Duration,
    /// Time allowed to open a connection.
    #[serde(default = "defaults::connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// The Order Management version spoken: `"2.1"` (VAT rates in hundredths
    /// of a percent) or `"2.0"` (whole percents only).
    #[serde(default)]
    pub api_version: ApiVersion,
}

impl UpstreamSettings {
    /// `base_url` as a URI without its trailing `/`: `http` or `https`,
    /// with a host and no query.
    pub fn base_uri(&self) -> Result<http::Uri, String> {
        let bad = || "upstream.base_url must be an http or https URL with a host".to_owned();
        let uri: http::Uri = self
            .base_url
            .trim_end_matches('/')
            .parse()
            .map_err(|_| bad())?;
        if !matches!(uri.scheme_str(), Some("http" | "https"))
            || uri.host().is_none_or(str::is_empty)
        {
            return Err(bad());
        }
        if uri.query().is_some() {
            return Err("upstream.base_url must not have a query".into());
        }
        Ok(uri)
    }
}

impl Default for UpstreamSettings {
    fn default() -> Self {
        Self {
            base_url: defaults::base_url(),
            timeout: defaults::timeout(),
            token_margin: defaults::token_margin(),
            connect_timeout: defaults::connect_timeout(),
            api_version: ApiVersion::default(),
        }
    }
}

/// The `Vipps-System-*` header values.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SystemSettings {
    #[serde(default = "defaults::system_name")]
    pub name: String,
    #[serde(default = "defaults::version")]
    pub version: String,
    #[serde(default = "defaults::system_name")]
    pub plugin_name: String,
    #[serde(default = "defaults::version")]
    pub plugin_version: String,
}

impl Default for SystemSettings {
    fn default() -> Self {
        Self {
            name: defaults::system_name(),
            version: defaults::version(),
            plugin_name: defaults::system_name(),
            plugin_version: defaults::version(),
        }
    }
}

/// Body size limits, in bytes.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// JSON bodies without images (receipts).
    #[serde(default = "defaults::json_body")]
    pub json_body: usize,
    /// Bodies that may carry an image: 2,000,000 bytes of image, base64
    /// encoded (4/3), plus room for the JSON around it.
    #[serde(default = "defaults::image_body")]
    pub image_body: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            json_body: defaults::json_body(),
            image_body: defaults::image_body(),
        }
    }
}

/// Retries, limits and the circuit breaker, per merchant.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resilience {
    /// Most time one façade or proxy request may take, retries included.
    #[serde(default = "defaults::request_deadline", with = "humantime_serde")]
    pub request_deadline: Duration,
    /// Attempts per upstream call, the first included (1 = no retries).
    #[serde(default = "defaults::max_attempts")]
    pub max_attempts: usize,
    /// Backoff before retry n is random in [0, min(max, base × 2^(n−1))].
    #[serde(default = "defaults::backoff_base", with = "humantime_serde")]
    pub backoff_base: Duration,
    #[serde(default = "defaults::backoff_max", with = "humantime_serde")]
    pub backoff_max: Duration,
    /// Retries in flight may be at most this percentage of a merchant's
    /// upstream calls in flight (but `retry_budget_min` are always allowed).
    #[serde(default = "defaults::retry_budget_percent")]
    pub retry_budget_percent: usize,
    #[serde(default = "defaults::retry_budget_min")]
    pub retry_budget_min: usize,
    /// Most upstream calls in flight per merchant; a call waits up to
    /// `queue_timeout` for a slot, then is answered 503.
    #[serde(default = "defaults::max_concurrent")]
    pub max_concurrent: usize,
    #[serde(default = "defaults::queue_timeout", with = "humantime_serde")]
    pub queue_timeout: Duration,
    /// Requests per second per merchant (token bucket; 0 = no limit), with
    /// bursts up to `rate_burst`; beyond: 429.
    #[serde(default = "defaults::rate_per_second")]
    pub rate_per_second: usize,
    #[serde(default = "defaults::rate_burst")]
    pub rate_burst: usize,
    /// Consecutive upstream failures that open a merchant's circuit (0 = never).
    #[serde(default = "defaults::breaker_failures")]
    pub breaker_failures: usize,
    /// How long an open circuit refuses calls before one probe is let through.
    #[serde(default = "defaults::breaker_open", with = "humantime_serde")]
    pub breaker_open: Duration,
    /// After a failed token fetch, fetches for that merchant wait this long,
    /// doubling per failure up to `token_backoff_max`.
    #[serde(default = "defaults::token_backoff", with = "humantime_serde")]
    pub token_backoff: Duration,
    #[serde(default = "defaults::token_backoff_max", with = "humantime_serde")]
    pub token_backoff_max: Duration,
    /// How often mounted secret files are checked for changes (0s = never).
    #[serde(default = "defaults::secret_poll", with = "humantime_serde")]
    pub secret_poll: Duration,
}

impl Default for Resilience {
    fn default() -> Self {
        Self {
            request_deadline: defaults::request_deadline(),
            max_attempts: defaults::max_attempts(),
            backoff_base: defaults::backoff_base(),
            backoff_max: defaults::backoff_max(),
            retry_budget_percent: defaults::retry_budget_percent(),
            retry_budget_min: defaults::retry_budget_min(),
            max_concurrent: defaults::max_concurrent(),
            queue_timeout: defaults::queue_timeout(),
            rate_per_second: defaults::rate_per_second(),
            rate_burst: defaults::rate_burst(),
            breaker_failures: defaults::breaker_failures(),
            breaker_open: defaults::breaker_open(),
            token_backoff: defaults::token_backoff(),
            token_backoff_max: defaults::token_backoff_max(),
            secret_poll: defaults::secret_poll(),
        }
    }
}

/// The reverse-proxy surface (`/vipps/order-management/...`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxySettings {
    /// Most bytes of a request body forwarded to Vipps. The body is held
    /// whole, because a 401 from Vipps makes the gateway send it again with
    /// a new token.
    #[serde(default = "defaults::image_body")]
    pub body_limit: usize,
}

impl Default for ProxySettings {
    fn default() -> Self {
        Self {
            body_limit: defaults::image_body(),
        }
    }
}

/// Asynchronous receipts (`Prefer: respond-async`) and their store
/// (`[outbox]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutboxSettings {
    /// `false`: `Prefer: respond-async` is ignored.
    #[serde(default = "defaults::outbox_enabled")]
    pub enabled: bool,
    /// `sqlite://PATH` (one replica) or `postgres://USER@HOST:PORT/DB`.
    #[serde(default = "defaults::outbox_url")]
    pub url: String,
    /// The PostgreSQL password, read from this file.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// How long a replica holds an entry it is delivering.
    #[serde(default = "defaults::outbox_lease", with = "humantime_serde")]
    pub lease: Duration,
    /// Full-jitter backoff between attempts: the first at most this long.
    #[serde(default = "defaults::outbox_backoff_base", with = "humantime_serde")]
    pub backoff_base: Duration,
    /// The longest wait between attempts.
    #[serde(default = "defaults::outbox_backoff_max", with = "humantime_serde")]
    pub backoff_max: Duration,
    /// An entry not delivered this long after it was accepted is failed.
    #[serde(default = "defaults::outbox_max_age", with = "humantime_serde")]
    pub max_age: Duration,
    /// How long delivered and failed entries are kept.
    #[serde(default = "defaults::outbox_retention", with = "humantime_serde")]
    pub retention: Duration,
    /// Most entries of one merchant waiting for delivery: past it, an
    /// asynchronous request is answered `503 outbox-full`. What bounds the
    /// store, since a `202` is not limited by the merchant's rate.
    #[serde(default = "defaults::outbox_max_pending_per_merchant")]
    pub max_pending_per_merchant: u32,
    /// After the first enqueue of a group, how long the store's writer
    /// waits for more before it commits them together (one sync to disk
    /// for all); zero: only the enqueues already waiting. A lone `202`
    /// waits this long more.
    #[serde(
        default = "defaults::outbox_group_commit_wait",
        with = "humantime_serde"
    )]
    pub group_commit_wait: Duration,
}

impl Default for OutboxSettings {
    fn default() -> Self {
        Self {
            enabled: defaults::outbox_enabled(),
            url: defaults::outbox_url(),
            password_file: None,
            lease: defaults::outbox_lease(),
            backoff_base: defaults::outbox_backoff_base(),
            backoff_max: defaults::outbox_backoff_max(),
            max_age: defaults::outbox_max_age(),
            retention: defaults::outbox_retention(),
            max_pending_per_merchant: defaults::outbox_max_pending_per_merchant(),
            group_commit_wait: defaults::outbox_group_commit_wait(),
        }
    }
}

/// How callers are authenticated (`[auth]`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthSettings {
    #[serde(default)]
    pub mode: AuthMode,
    /// Required when `mode = "jwt"`.
    #[serde(default)]
    pub jwt: Option<JwtSettings>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// Every caller may act for every configured merchant.
    #[default]
    None,
    /// Callers present `Authorization: Bearer <JWT>`; its `msns` claim
    /// grants merchants.
    Jwt,
}

/// `[auth.jwt]`: what a caller's token must satisfy, and the one place its
/// verification key comes from. The algorithm follows from the key: HS256
/// for a secret file, RS256 for an RSA public key, ES256 for a P-256 key;
/// in a JWKS each key's own `alg` (or its type) decides.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtSettings {
    /// The `iss` every token must carry.
    pub issuer: String,
    /// The `aud` every token must carry (one of its values when an array).
    pub audience: String,
    /// Clock skew allowed on `exp` and `nbf`.
    #[serde(default = "defaults::jwt_leeway", with = "humantime_serde")]
    pub leeway: Duration,
    /// A shared HS256 secret (at least 32 bytes).
    #[serde(default)]
    pub hs256_secret_file: Option<PathBuf>,
    /// A PEM public key: RSA (RS256) or EC P-256 (ES256).
    #[serde(default)]
    pub public_key_file: Option<PathBuf>,
    /// A JWK set; tokens name their key with `kid`.
    #[serde(default)]
    pub jwks_file: Option<PathBuf>,
}

/// One merchant: its MSN, client id, and where its two secrets are.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MerchantSettings {
    pub msn: Msn,
    pub client_id: String,
    #[serde(default)]
    pub client_secret_file: Option<PathBuf>,
    #[serde(default)]
    pub client_secret_env: Option<String>,
    #[serde(default)]
    pub subscription_key_file: Option<PathBuf>,
    #[serde(default)]
    pub subscription_key_env: Option<String>,
    /// Secrets given in code (the built-in simulator's demo merchant);
    /// never read from a file.
    #[serde(skip)]
    pub inline: Option<InlineSecrets>,
}

#[derive(Clone)]
pub struct InlineSecrets {
    pub client_secret: SecretString,
    pub subscription_key: SecretString,
}

impl std::fmt::Debug for InlineSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("InlineSecrets([redacted])")
    }
}

/// A merchant with its secrets read. `Debug` redacts them.
#[derive(Clone)]
pub struct Merchant {
    pub msn: Msn,
    pub client_id: String,
    pub client_secret: SecretString,
    pub subscription_key: SecretString,
}

impl Merchant {
    /// Whether both hold the same credentials (a reload keeps the tokens
    /// of merchants whose credentials did not change).
    pub fn same_credentials(&self, other: &Merchant) -> bool {
        self.client_id == other.client_id
            && expose(&self.client_secret) == expose(&other.client_secret)
            && expose(&self.subscription_key) == expose(&other.subscription_key)
    }
}

impl std::fmt::Debug for Merchant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Merchant")
            .field("msn", &self.msn)
            .field("client_id", &self.client_id)
            .finish_non_exhaustive()
    }
}

/// The configured merchants by MSN.
/// By MSN, hashed with FxHash: looked up on every request with a key from a
/// fixed, configured set (docs/decisions.md, "Performance").
pub type Merchants = HashMap<Msn, Arc<Merchant>, rustc_hash::FxBuildHasher>;

/// The configured merchants, replaceable at run time (secrets reloaded).
#[derive(Default)]
pub struct MerchantRegistry(RwLock<Arc<Merchants>>);

impl MerchantRegistry {
    pub fn new(merchants: Merchants) -> Self {
        Self(RwLock::new(Arc::new(merchants)))
    }

    /// The configured merchant with this MSN (any text: an ill-formed MSN
    /// is simply not configured).
    pub fn get(&self, msn: &str) -> Option<Arc<Merchant>> {
        self.snapshot().get(msn).cloned()
    }

    pub fn snapshot(&self) -> Arc<Merchants> {
        match self.0.read() {
            Ok(g) => g.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    pub fn replace(&self, merchants: Merchants) {
        let mut g = match self.0.write() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        *g = Arc::new(merchants);
    }
}

mod defaults {
    use std::time::Duration;

    pub fn listen() -> String {
        "0.0.0.0:8080".into()
    }
    pub fn outbox_enabled() -> bool {
        true
    }
    pub fn outbox_url() -> String {
        "sqlite:///var/lib/vipps-order-gateway/outbox.db".into()
    }
    pub fn outbox_lease() -> Duration {
        Duration::from_secs(30)
    }
    pub fn outbox_backoff_base() -> Duration {
        Duration::from_secs(1)
    }
    pub fn outbox_backoff_max() -> Duration {
        Duration::from_secs(300)
    }
    pub fn outbox_max_age() -> Duration {
        Duration::from_secs(72 * 3600)
    }
    pub fn outbox_max_pending_per_merchant() -> u32 {
        100_000
    }
    pub fn outbox_group_commit_wait() -> Duration {
        Duration::from_millis(2)
    }
    pub fn outbox_retention() -> Duration {
        Duration::from_secs(7 * 24 * 3600)
    }
    pub fn shutdown_grace() -> Duration {
        Duration::from_secs(25)
    }
    pub fn log_format() -> super::LogFormat {
        super::LogFormat::Json
    }
    pub fn log_level() -> String {
        "info".into()
    }
    pub fn sampling_ratio() -> f64 {
        1.0
    }
    pub fn otlp_timeout() -> Duration {
        Duration::from_secs(10)
    }
    pub fn base_url() -> String {
        "https://apitest.vipps.no".into()
    }
    pub fn timeout() -> Duration {
        Duration::from_secs(10)
    }
    pub fn token_margin() -> Duration {
        Duration::from_secs(300)
    }
    pub fn system_name() -> String {
        "vipps-order-gateway".into()
    }
    pub fn version() -> String {
        env!("CARGO_PKG_VERSION").into()
    }
    pub fn connect_timeout() -> Duration {
        Duration::from_secs(3)
    }
    pub fn request_deadline() -> Duration {
        Duration::from_secs(20)
    }
    pub fn max_attempts() -> usize {
        3
    }
    pub fn backoff_base() -> Duration {
        Duration::from_millis(100)
    }
    pub fn backoff_max() -> Duration {
        Duration::from_secs(2)
    }
    pub fn retry_budget_percent() -> usize {
        20
    }
    pub fn retry_budget_min() -> usize {
        3
    }
    pub fn max_concurrent() -> usize {
        64
    }
    pub fn queue_timeout() -> Duration {
        Duration::from_secs(2)
    }
    pub fn rate_per_second() -> usize {
        200
    }
    pub fn rate_burst() -> usize {
        400
    }
    pub fn breaker_failures() -> usize {
        10
    }
    pub fn breaker_open() -> Duration {
        Duration::from_secs(10)
    }
    pub fn token_backoff() -> Duration {
        Duration::from_secs(1)
    }
    pub fn token_backoff_max() -> Duration {
        Duration::from_secs(30)
    }
    pub fn secret_poll() -> Duration {
        Duration::from_secs(10)
    }
    pub fn jwt_leeway() -> Duration {
        Duration::from_secs(30)
    }
    pub fn json_body() -> usize {
        256 * 1024
    }
    pub fn image_body() -> usize {
        2_000_000_usize.div_ceil(3) * 4 + 64 * 1024
    }
}

impl Settings {
    /// Reads the file, applies `VOG_*` variables from `env`, and checks the result.
    pub fn load(
        path: &Path,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::ReadFile {
            path: path.to_owned(),
            source,
        })?;
        Self::from_toml(&text, env)
    }

    /// Parses TOML text with `VOG_*` overrides, then validates.
    pub fn from_toml(
        text: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        // `extract_lossy`: a number setting also accepts its digits as a
        // string, which is how every environment value arrives.
        let settings: Settings = Figment::new()
            .merge(ByIndex(Toml::string(text)))
            .merge(EnvVars(env.into_iter().collect()))
            .extract_lossy()
            .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        settings.validate()?;
        Ok(settings)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        let s = &self.system;
        for (key, value) in [
            ("system.name", &s.name),
            ("system.version", &s.version),
            ("system.plugin_name", &s.plugin_name),
            ("system.plugin_version", &s.plugin_version),
        ] {
            if value.chars().count() > 30 {
                return bad(format!("{key} must be at most 30 characters"));
            }
            if !value.bytes().all(|b| (0x20..0x7f).contains(&b)) {
                return bad(format!("{key} must be printable ASCII"));
            }
        }
        if let Err(e) = self.upstream.base_uri() {
            return bad(e);
        }
        if self.upstream.timeout.is_zero() {
            return bad("upstream.timeout must be greater than zero".into());
        }
        let o = &self.outbox;
        if !(o.url.starts_with("sqlite:")
            || o.url.starts_with("postgres:")
            || o.url.starts_with("postgresql:"))
        {
            return bad("outbox.url must be a sqlite:// or postgres:// URL".into());
        }
        // An attempt (a post and, on a 409, a read-back) gets half the lease
        // as its deadline, so it ends before another replica may take the
        // entry.
        if o.lease < Duration::from_secs(2) {
            return bad("outbox.lease must be at least 2s".into());
        }
        if o.max_pending_per_merchant == 0 {
            return bad("outbox.max_pending_per_merchant must be at least 1".into());
        }
        // Every lone `202` waits this long: a bound, not a schedule.
        if o.group_commit_wait > MAX_GROUP_COMMIT_WAIT {
            return bad("outbox.group_commit_wait must be at most 100ms".into());
        }
        if o.backoff_base.is_zero() || o.backoff_base > o.backoff_max {
            return bad(
                "outbox.backoff_base must be greater than zero and at most outbox.backoff_max"
                    .into(),
            );
        }
        let r = &self.resilience;
        if r.max_attempts == 0 {
            return bad("resilience.max_attempts must be at least 1".into());
        }
        if r.max_concurrent == 0 {
            return bad("resilience.max_concurrent must be at least 1".into());
        }
        if r.retry_budget_percent > 100 {
            return bad("resilience.retry_budget_percent must be at most 100".into());
        }
        if r.rate_per_second > 0 && r.rate_burst == 0 {
            return bad(
                "resilience.rate_burst must be at least 1 when rate_per_second is set".into(),
            );
        }
        if r.request_deadline.is_zero() || self.upstream.connect_timeout.is_zero() {
            return bad("resilience.request_deadline and upstream.connect_timeout must be greater than zero".into());
        }
        if self.workers == Some(0) {
            return bad("workers must be at least 1".into());
        }
        self.validate_auth()?;
        self.validate_telemetry()?;
        if self.proxy.body_limit == 0 {
            return bad("proxy.body_limit must be greater than zero".into());
        }
        let mut seen = std::collections::HashSet::new();
        for m in &self.merchants {
            if !seen.insert(m.msn.clone()) {
                return bad(format!("merchant {} is configured twice", m.msn));
            }
            if m.client_id.trim().is_empty() {
                return bad(format!("merchant {}: client_id must not be empty", m.msn));
            }
            if m.inline.is_none() {
                for (what, file, env) in [
                    ("client_secret", &m.client_secret_file, &m.client_secret_env),
                    (
                        "subscription_key",
                        &m.subscription_key_file,
                        &m.subscription_key_env,
                    ),
                ] {
                    if file.is_some() == env.is_some() {
                        return bad(format!(
                            "merchant {}: set exactly one of {what}_file and {what}_env",
                            m.msn
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    fn validate_telemetry(&self) -> Result<(), ConfigError> {
        let bad = |m: &str| Err(ConfigError::Invalid(m.to_owned()));
        let t = &self.telemetry;
        if !(0.0..=1.0).contains(&t.sampling_ratio) {
            return bad("telemetry.sampling_ratio must be between 0.0 and 1.0");
        }
        if t.otlp.timeout.is_zero() {
            return bad("telemetry.otlp.timeout must be greater than zero");
        }
        if let Some(endpoint) = &t.otlp.endpoint {
            let uri: Result<http::Uri, _> = endpoint.parse();
            let ok = uri.is_ok_and(|u| {
                matches!(u.scheme_str(), Some("http" | "https"))
                    && u.host().is_some()
                    && u.query().is_none()
            });
            if !ok {
                return bad("telemetry.otlp.endpoint must be an http:// or https:// URL such as http://otel-collector:4318");
            }
        }
        Ok(())
    }

    fn validate_auth(&self) -> Result<(), ConfigError> {
        let bad = |m: &str| Err(ConfigError::Invalid(m.to_owned()));
        let Some(jwt) = &self.auth.jwt else {
            if self.auth.mode == AuthMode::Jwt {
                return bad("auth.mode = \"jwt\" needs an [auth.jwt] section");
            }
            return Ok(());
        };
        if jwt.issuer.trim().is_empty() {
            return bad("auth.jwt.issuer must not be empty");
        }
        if jwt.audience.trim().is_empty() {
            return bad("auth.jwt.audience must not be empty");
        }
        let sources = [
            jwt.hs256_secret_file.is_some(),
            jwt.public_key_file.is_some(),
            jwt.jwks_file.is_some(),
        ];
        if sources.iter().filter(|s| **s).count() != 1 {
            return bad(
                "auth.jwt: set exactly one of hs256_secret_file, public_key_file and jwks_file",
            );
        }
        if jwt.leeway > Duration::from_secs(300) {
            return bad("auth.jwt.leeway must be at most 5m");
        }
        Ok(())
    }

    /// Reads every merchant's secrets. `env` looks up a variable.
    pub fn load_merchants(
        &self,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Merchants, ConfigError> {
        let mut out =
            HashMap::with_capacity_and_hasher(self.merchants.len(), rustc_hash::FxBuildHasher);
        for m in &self.merchants {
            let (client_secret, subscription_key) = match &m.inline {
                Some(i) => (i.client_secret.clone(), i.subscription_key.clone()),
                None => (
                    read_secret(
                        m,
                        "client_secret",
                        &m.client_secret_file,
                        &m.client_secret_env,
                        env,
                    )?,
                    read_secret(
                        m,
                        "subscription_key",
                        &m.subscription_key_file,
                        &m.subscription_key_env,
                        env,
                    )?,
                ),
            };
            out.insert(
                m.msn.clone(),
                Arc::new(Merchant {
                    msn: m.msn.clone(),
                    client_id: m.client_id.clone(),
                    client_secret,
                    subscription_key,
                }),
            );
        }
        Ok(out)
    }
}

fn read_secret(
    m: &MerchantSettings,
    what: &'static str,
    file: &Option<PathBuf>,
    var: &Option<String>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<SecretString, ConfigError> {
    let value = match (file, var) {
        (Some(path), _) => {
            // The file's content never enters an error: only its path and the I/O reason.
            let raw = std::fs::read(path).map_err(|e| ConfigError::SecretFile {
                msn: m.msn.to_string(),
                what,
                path: path.clone(),
                reason: e.kind().to_string(),
            })?;
            String::from_utf8(raw).map_err(|_| ConfigError::SecretFile {
                msn: m.msn.to_string(),
                what,
                path: path.clone(),
                reason: "not UTF-8".into(),
            })?
        }
        (None, Some(var)) => env(var).unwrap_or_default(),
        (None, None) => String::new(),
    };
    let trimmed = value.trim();
    let invalid = trimmed.is_empty() || trimmed.bytes().any(|b| !(0x21..0x7f).contains(&b));
    if invalid {
        return Err(match (file, var) {
            (Some(path), _) => ConfigError::SecretFile {
                msn: m.msn.to_string(),
                what,
                path: path.clone(),
                reason: "empty, or not printable ASCII without spaces".into(),
            },
            (None, var) => ConfigError::SecretEnv {
                msn: m.msn.to_string(),
                what,
                var: var.clone().unwrap_or_default(),
            },
        });
    }
    Ok(SecretString::from(trimmed.to_owned()))
}

/// The `VOG_*` variables among the given pairs: `VOG_A__B=value` sets
/// `a.b`. They are passed in rather than read from the process (figment's
/// `Env` can only read the process environment), so tests own theirs.
/// Values stay strings: a string setting keeps `007` as written, and number
/// settings read their digits through `extract_lossy`.
struct EnvVars(Vec<(String, String)>);

impl Provider for EnvVars {
    fn metadata(&self) -> Metadata {
        Metadata::named("environment variable(s)")
            .interpolater(|_, path| format!("{ENV_PREFIX}{}", path.join("__").to_ascii_uppercase()))
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        let mut vars: Vec<_> = self
            .0
            .iter()
            .filter_map(|(k, v)| Some((k, k.strip_prefix(ENV_PREFIX)?, v)))
            .collect();
        vars.sort();
        let mut dict = Dict::new();
        for (key, name, value) in vars {
            let path: Vec<String> = name.split("__").map(str::to_ascii_lowercase).collect();
            if path.iter().any(String::is_empty) {
                return Err(format!("environment variable {key} has an empty segment").into());
            }
            if !insert(&mut dict, &path, value.as_str().into()) {
                return Err(
                    format!("environment variable {key} sets a field inside a value").into(),
                );
            }
        }
        Ok(Profile::Default.collect(dict))
    }
}

/// Sets `path` in `dict`, adding tables on the way; false if the way
/// crosses a value that is not a table.
fn insert(dict: &mut Dict, path: &[String], value: Value) -> bool {
    match path {
        [] => false,
        [last] => {
            dict.insert(last.clone(), value);
            true
        }
        [first, rest @ ..] => match dict
            .entry(first.clone())
            .or_insert_with(|| Dict::new().into())
        {
            Value::Dict(_, inner) => insert(inner, rest, value),
            _ => false,
        },
    }
}

/// A provider with every list of tables presented as a table keyed by
/// index (`[[merchants]]` as `merchants.0`, `merchants.1`, …). figment's
/// merge replaces a list whole but merges tables key by key, so this is what
/// lets `VOG_MERCHANTS__0__CLIENT_ID` replace one field of the first entry.
/// [`list_or_indexed`] reads such a table back as a list.
struct ByIndex<P>(P);

impl<P: Provider> Provider for ByIndex<P> {
    fn metadata(&self) -> Metadata {
        self.0.metadata()
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        Ok(self
            .0
            .data()?
            .into_iter()
            .map(|(profile, dict)| (profile, index_lists(dict)))
            .collect())
    }
}

fn index_lists(dict: Dict) -> Dict {
    dict.into_iter()
        .map(|(key, value)| (key, index_list(value)))
        .collect()
}

fn index_list(value: Value) -> Value {
    match value {
        Value::Dict(tag, dict) => Value::Dict(tag, index_lists(dict)),
        Value::Array(tag, items)
            if !items.is_empty() && items.iter().all(|i| matches!(i, Value::Dict(..))) =>
        {
            let by_index = items.into_iter().enumerate();
            Value::Dict(
                tag,
                by_index
                    .map(|(i, item)| (i.to_string(), index_list(item)))
                    .collect(),
            )
        }
        other => other,
    }
}

/// Reads a list, or a table keyed by list index (see [`ByIndex`]) in index
/// order; the indices must run from 0 without gaps.
fn list_or_indexed<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    struct ListOrIndexed<T>(PhantomData<T>);

    impl<'de, T: Deserialize<'de>> Visitor<'de> for ListOrIndexed<T> {
        type Value = Vec<T>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a list, or a table keyed by list index")
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
            let mut items = Vec::new();
            while let Some(item) = seq.next_element()? {
                items.push(item);
            }
            Ok(items)
        }

        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Vec<T>, A::Error> {
            let mut items = BTreeMap::new();
            while let Some(key) = map.next_key::<String>()? {
                let index: usize = key
                    .parse()
                    .map_err(|_| A::Error::custom(format!("{key:?} is not a list index")))?;
                if items.insert(index, map.next_value()?).is_some() {
                    return Err(A::Error::custom(format!("index {index} is given twice")));
                }
            }
            if let Some((missing, _)) = items.keys().enumerate().find(|(i, index)| i != *index) {
                return Err(A::Error::custom(format!(
                    "index {missing} is missing (indices run from 0 without gaps)"
                )));
            }
            Ok(items.into_values().collect())
        }
    }

    d.deserialize_any(ListOrIndexed(PhantomData))
}

/// Exposes a secret for a header value. Kept in one place so every use is easy to find.
pub fn expose(secret: &SecretString) -> &str {
    secret.expose_secret()
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"
listen = "127.0.0.1:0"
[upstream]
base_url = "http://127.0.0.1:1"
timeout = "1500ms"
[[merchants]]
msn = "123456"
client_id = "id"
client_secret_env = "SECRET"
subscription_key_env = "KEY"
"#;

    #[test]
    fn env_overrides_file_values_and_array_entries() {
        let s = Settings::from_toml(
            BASE,
            [
                ("VOG_UPSTREAM__TIMEOUT".to_owned(), "2s".to_owned()),
                ("VOG_MERCHANTS__0__CLIENT_ID".to_owned(), "other".to_owned()),
                ("VOG_WORKERS".to_owned(), "3".to_owned()),
                ("UNRELATED".to_owned(), "x".to_owned()),
            ],
        )
        .expect("valid");
        assert_eq!(s.upstream.timeout, Duration::from_secs(2));
        assert_eq!(s.merchants[0].client_id, "other");
        assert_eq!(s.workers, Some(3));
    }

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn timeout(value: &str) -> Result<Duration, String> {
        Settings::from_toml(BASE, env(&[("VOG_UPSTREAM__TIMEOUT", value)]))
            .map(|s| s.upstream.timeout)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn the_upstream_base_url_is_an_http_url_with_a_host_and_no_query() {
        let base_url = |value: &str| {
            Settings::from_toml(BASE, env(&[("VOG_UPSTREAM__BASE_URL", value)]))
                .map(|s| s.upstream.base_url)
                .map_err(|e| e.to_string())
        };
        for good in [
            "https://api.vipps.no",
            "http://127.0.0.1:8080/",
            "http://[::1]:9000/prefix",
        ] {
            assert_eq!(base_url(good).as_deref(), Ok(good), "{good}");
        }
        for bad in [
            "ftp://api.vipps.no",
            "api.vipps.no",
            "https://",
            "https://a b",
            "",
        ] {
            let err = base_url(bad).expect_err(bad);
            assert!(
                err.contains("must be an http or https URL with a host"),
                "{bad}: {err}"
            );
        }
        let err = base_url("https://api.vipps.no/?x=1").expect_err("a query");
        assert!(err.contains("must not have a query"), "{err}");
    }

    #[test]
    fn durations_need_units() {
        assert_eq!(timeout("1500ms"), Ok(Duration::from_millis(1500)));
        assert_eq!(timeout("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(timeout("1h 30m"), Ok(Duration::from_secs(5400)));
        assert!(timeout("10").is_err());
        assert!(timeout("ten seconds").is_err());
    }

    #[test]
    fn the_group_commit_wait_is_2ms_by_default_zero_allowed_and_at_most_100ms() {
        let wait = |value: &str| {
            Settings::from_toml(BASE, env(&[("VOG_OUTBOX__GROUP_COMMIT_WAIT", value)]))
                .map(|s| s.outbox.group_commit_wait)
                .map_err(|e| e.to_string())
        };
        let default = Settings::from_toml(BASE, []).unwrap();
        assert_eq!(default.outbox.group_commit_wait, Duration::from_millis(2));
        assert_eq!(wait("0ms"), Ok(Duration::ZERO));
        assert_eq!(wait("100ms"), Ok(Duration::from_millis(100)));
        let err = wait("101ms").expect_err("past the bound");
        assert!(
            err.contains("outbox.group_commit_wait must be at most 100ms"),
            "{err}"
        );
        assert!(wait("2").is_err(), "a duration needs its unit");
    }

    #[test]
    fn a_duration_with_a_bad_unit_names_the_key() {
        let err = timeout("10parsecs").expect_err("bad unit");
        assert!(err.contains("VOG_UPSTREAM__TIMEOUT"), "{err}");
        let in_file = BASE.replace("\"1500ms\"", "\"10parsecs\"");
        let err = Settings::from_toml(&in_file, [])
            .expect_err("bad unit")
            .to_string();
        assert!(err.contains("upstream.timeout"), "{err}");
    }

    #[test]
    fn env_overrides_a_nested_key_and_keeps_its_siblings() {
        let s = Settings::from_toml(
            BASE,
            env(&[
                ("VOG_RESILIENCE__BREAKER_OPEN", "30s"),
                ("VOG_LOG__FORMAT", "text"),
            ]),
        )
        .expect("valid");
        assert_eq!(s.resilience.breaker_open, Duration::from_secs(30));
        assert_eq!(s.resilience.queue_timeout, defaults::queue_timeout());
        assert_eq!(s.log.format, LogFormat::Text);
        assert_eq!(s.upstream.timeout, Duration::from_millis(1500));
        assert_eq!(s.upstream.base_url, "http://127.0.0.1:1");
    }

    #[test]
    fn numbers_come_from_env_strings() {
        let s = Settings::from_toml(
            BASE,
            env(&[
                ("VOG_WORKERS", "3"),
                ("VOG_RESILIENCE__MAX_ATTEMPTS", "5"),
                ("VOG_LIMITS__JSON_BODY", "1024"),
                ("VOG_SYSTEM__VERSION", "2"),
            ]),
        )
        .expect("valid");
        assert_eq!(s.workers, Some(3));
        assert_eq!(s.resilience.max_attempts, 5);
        assert_eq!(s.limits.json_body, 1024);
        // A string setting keeps digits as text.
        assert_eq!(s.system.version, "2");
        let err = Settings::from_toml(BASE, env(&[("VOG_WORKERS", "three")]))
            .expect_err("not a number")
            .to_string();
        assert!(err.contains("VOG_WORKERS"), "{err}");
    }

    #[test]
    fn an_index_overrides_one_field_of_a_merchant() {
        let s = Settings::from_toml(BASE, env(&[("VOG_MERCHANTS__0__CLIENT_ID", "other")]))
            .expect("valid");
        assert_eq!(s.merchants.len(), 1);
        let m = &s.merchants[0];
        assert_eq!(m.client_id, "other");
        assert_eq!(m.msn.to_string(), "123456");
        assert_eq!(m.client_secret_env.as_deref(), Some("SECRET"));
        assert_eq!(m.subscription_key_env.as_deref(), Some("KEY"));

        let merchant = |i: usize| {
            let var = |field: &str| format!("VOG_MERCHANTS__{i}__{field}");
            [
                (var("MSN"), "654321".to_owned()),
                (var("CLIENT_ID"), "second".to_owned()),
                (var("CLIENT_SECRET_ENV"), "SECRET2".to_owned()),
                (var("SUBSCRIPTION_KEY_ENV"), "KEY2".to_owned()),
            ]
        };
        let s = Settings::from_toml(BASE, merchant(1)).expect("valid");
        let ids: Vec<_> = s.merchants.iter().map(|m| m.client_id.as_str()).collect();
        assert_eq!(ids, ["id", "second"]);
        assert_eq!(s.merchants[1].msn.to_string(), "654321");

        let err = Settings::from_toml(BASE, merchant(2))
            .expect_err("index 1 is missing")
            .to_string();
        assert!(err.contains("index 1 is missing"), "{err}");
    }

    #[test]
    fn an_unknown_env_key_is_named() {
        let err = Settings::from_toml(BASE, env(&[("VOG_SURPRISE", "1")]))
            .expect_err("unknown")
            .to_string();
        assert!(err.contains("surprise"), "{err}");
        let err = Settings::from_toml(BASE, env(&[("VOG_UPSTREAM__RETRIES", "1")]))
            .expect_err("unknown")
            .to_string();
        assert!(err.contains("retries"), "{err}");
    }

    #[test]
    fn bad_settings_are_named() {
        let long = BASE.replace(
            "[upstream]",
            "[system]\nname = \"0123456789012345678901234567890\"\n[upstream]",
        );
        let err = Settings::from_toml(&long, [])
            .expect_err("too long")
            .to_string();
        assert!(err.contains("system.name"), "{err}");
        let unknown = format!("{BASE}\nsurprise = 1\n");
        let err = Settings::from_toml(&unknown, [])
            .expect_err("unknown")
            .to_string();
        assert!(err.contains("surprise"), "{err}");
        let bad_msn = BASE.replace("123456", "12");
        assert!(Settings::from_toml(&bad_msn, []).is_err());
    }

    #[test]
    fn missing_secret_names_the_variable_not_a_value() {
        let s = Settings::from_toml(BASE, []).expect("valid");
        let err = s
            .load_merchants(&|name| (name == "SECRET").then(|| "s3cr3t-value\n".to_owned()))
            .expect_err("KEY is missing")
            .to_string();
        assert!(err.contains("KEY") && err.contains("123456"), "{err}");
        assert!(!err.contains("s3cr3t"), "{err}");
        let ok = s
            .load_merchants(&|name| Some(format!("  value-of-{name}\n")))
            .expect("both set");
        let m = &ok[&Msn::parse("123456").expect("msn")];
        assert_eq!(expose(&m.client_secret), "value-of-SECRET");
        assert!(!format!("{m:?}").contains("value-of"));
    }
}

#[cfg(test)]
mod example_tests {
    use super::*;

    /// The example shipped in the repository stays a valid configuration.
    #[test]
    fn the_example_config_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("gateway.example.toml");
        let s = Settings::load(&path, []).expect("example parses");
        assert_eq!(s.merchants.len(), 2);
        assert_eq!(s.limits.image_body, defaults::image_body());
        assert_eq!(s.limits.json_body, defaults::json_body());
        assert_eq!(s.upstream.timeout, defaults::timeout());
        assert_eq!(s.upstream.token_margin, defaults::token_margin());
    }
}
