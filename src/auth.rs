//! Caller authentication and authorization: which merchants a caller may
//! act for. The grant is checked before the merchant's existence, so a
//! caller learns nothing about MSNs it may not use.
//!
//! `mode = "none"` grants every caller every merchant. `mode = "jwt"` wants
//! `Authorization: Bearer <JWT>`: signature, `exp`, `nbf`, `iss` and `aud`
//! are checked (with `auth.jwt.leeway` of clock skew), and the claim `msns`
//! (an array of MSNs, or `"*"`) is the grant. Each key has exactly one
//! algorithm, fixed when the key is loaded: a token whose header names
//! another (`none`, HS256 against an RSA key, …) is refused.

use std::collections::{HashMap, HashSet};
use std::future::{ready, Ready};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use actix_web::http::header::{self, HeaderMap};
use actix_web::{dev::Payload, web, FromRequest, HttpMessage as _, HttpRequest};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use crate::config::{AuthMode, AuthSettings, ConfigError, JwtSettings};
use crate::domain::Msn;
use crate::error::{ApiError, Kind};

/// Longest bearer token accepted; real ones are well under 2 KiB.
const MAX_TOKEN_LEN: usize = 8 * 1024;
/// Shortest HS256 secret accepted (RFC 7518 §3.2: at least the hash size).
const MIN_HS256_SECRET: usize = 32;

/// The merchants a caller may act for.
#[derive(Debug, Clone)]
pub enum Grant {
    All,
    Msns(HashSet<String>),
}

impl Grant {
    /// Whether the caller may act for `msn` (as written in the request).
    pub fn allows(&self, msn: &str) -> bool {
        match self {
            Self::All => true,
            Self::Msns(set) => set.contains(msn),
        }
    }

    /// 403 unless granted. The answer is the same whether or not the MSN
    /// is configured.
    pub fn check(&self, msn: &str) -> Result<(), ApiError> {
        if self.allows(msn) {
            Ok(())
        } else {
            Err(ApiError::new(
                Kind::Forbidden,
                "The caller is not granted this merchant.",
            ))
        }
    }
}

/// Who called, as a verified JWT says: its `sub` and its client id (`azp`,
/// or `client_id` when it has no `azp`). Kept on the request (its span,
/// its access line, the deliveries it stores); never the token itself.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Caller {
    pub subject: Option<String>,
    pub client: Option<String>,
}

/// Longest `sub` or client id kept; a longer one is cut at a character
/// boundary.
const MAX_IDENTITY: usize = 255;

fn identity(value: Option<String>) -> Option<String> {
    let mut value = value.filter(|v| !v.is_empty())?;
    if value.len() > MAX_IDENTITY {
        let mut end = MAX_IDENTITY;
        while !value.is_char_boundary(end) {
            end -= 1;
        }
        value.truncate(end);
    }
    Some(value)
}

/// Reads the caller's grant from the request. In `jwt` mode a missing or
/// invalid token is a 401 with `WWW-Authenticate: Bearer`. A JWT caller's
/// [`Caller`] is recorded on the request span (`caller`, `caller_client`)
/// and left in the request's extensions.
impl FromRequest for Grant {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _payload: &mut Payload) -> Self::Future {
        ready(match req.app_data::<web::Data<Authenticator>>() {
            Some(auth) => auth.grant(req.headers()).map(|(grant, caller)| {
                if let Some(caller) = caller {
                    let span = tracing::Span::current();
                    if let Some(subject) = &caller.subject {
                        span.record("caller", subject.as_str());
                    }
                    if let Some(client) = &caller.client {
                        span.record("caller_client", client.as_str());
                    }
                    req.extensions_mut().insert(caller);
                }
                grant
            }),
            // Fail closed: a server built without an authenticator grants nothing.
            None => Err(ApiError::internal(&"no authenticator is registered")),
        })
    }
}

/// One verification key and the only algorithm it accepts.
#[derive(Clone)]
struct Key {
    key: DecodingKey,
    alg: Algorithm,
}

/// The keys of `[auth.jwt]`, loaded from their files.
#[derive(Clone)]
enum Keys {
    /// A secret or a PEM public key: tokens need no `kid`.
    Single(Key),
    /// A JWK set: tokens name their key with `kid` (optional when the set
    /// holds one key).
    ByKid(HashMap<String, Key>),
}

#[derive(Clone)]
struct JwtVerifier {
    keys: Keys,
    issuer: String,
    audience: String,
    leeway: u64,
}

/// Verifies callers' tokens. Shared by every worker; the keys are replaced
/// on reload (`SIGHUP`).
pub struct Authenticator {
    mode: AuthMode,
    jwt: Option<JwtSettings>,
    verifier: RwLock<Option<Arc<JwtVerifier>>>,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("mode", &self.mode)
            .finish_non_exhaustive()
    }
}

/// The claims the gateway reads; `exp`, `nbf`, `iss` and `aud` are checked
/// by the validation.
#[derive(Deserialize)]
struct Claims {
    #[serde(default)]
    msns: Option<serde_json::Value>,
    #[serde(default)]
    sub: Option<String>,
    #[serde(default)]
    azp: Option<String>,
    #[serde(default)]
    client_id: Option<String>,
}

/// Why a token was refused, in words safe to give the caller.
fn refusal(kind: &ErrorKind) -> &'static str {
    match kind {
        ErrorKind::ExpiredSignature => "the token has expired",
        ErrorKind::ImmatureSignature => "the token is not valid yet (nbf)",
        ErrorKind::InvalidIssuer => "the token's issuer is not accepted",
        ErrorKind::InvalidAudience => "the token is not meant for this gateway (aud)",
        ErrorKind::MissingRequiredClaim(c) if c == "exp" => "the token has no exp claim",
        ErrorKind::MissingRequiredClaim(c) if c == "iss" => "the token has no iss claim",
        ErrorKind::MissingRequiredClaim(c) if c == "aud" => "the token has no aud claim",
        ErrorKind::InvalidSignature => "the token's signature does not verify",
        ErrorKind::InvalidAlgorithm | ErrorKind::MissingAlgorithm => {
            "the token's algorithm is not accepted"
        }
        ErrorKind::InvalidKeyFormat
        | ErrorKind::InvalidEcdsaKey
        | ErrorKind::InvalidRsaKey(_)
        | ErrorKind::InvalidEddsaKey => "the token's algorithm does not fit its key",
        _ => "the token is malformed",
    }
}

fn unauthorized(reason: &str) -> ApiError {
    ApiError::new(
        Kind::Unauthorized,
        format!("Caller authentication failed: {reason}."),
    )
}

impl Authenticator {
    /// Loads the keys `settings` name. `none` mode logs a warning: every
    /// caller may then act for every merchant.
    pub fn load(settings: &AuthSettings) -> Result<Self, ConfigError> {
        let verifier = match settings.mode {
            AuthMode::None => {
                tracing::warn!(
                    "caller authentication is off (auth.mode = \"none\"): every caller may act for every merchant"
                );
                None
            }
            AuthMode::Jwt => match &settings.jwt {
                Some(jwt) => Some(Arc::new(JwtVerifier::load(jwt)?)),
                None => {
                    return Err(ConfigError::Invalid(
                        "auth.mode = \"jwt\" needs an [auth.jwt] section".into(),
                    ))
                }
            },
        };
        Ok(Self {
            mode: settings.mode,
            jwt: settings.jwt.clone(),
            verifier: RwLock::new(verifier),
        })
    }

    pub fn mode(&self) -> AuthMode {
        self.mode
    }

    /// Reads the key files again. On failure the old keys stay in use.
    pub fn reload(&self) -> Result<(), ConfigError> {
        let prepared = self.prepare_reload()?;
        self.commit_reload(prepared);
        Ok(())
    }

    /// The new keys, read but not yet in use (so a reload of merchants and
    /// keys can fail as a whole).
    pub fn prepare_reload(&self) -> Result<Option<PreparedKeys>, ConfigError> {
        match (self.mode, &self.jwt) {
            (AuthMode::Jwt, Some(jwt)) => Ok(Some(PreparedKeys(Arc::new(JwtVerifier::load(jwt)?)))),
            _ => Ok(None),
        }
    }

    /// Puts keys from [`Self::prepare_reload`] in use.
    pub fn commit_reload(&self, prepared: Option<PreparedKeys>) {
        if let Some(PreparedKeys(v)) = prepared {
            let mut g = match self.verifier.write() {
                Ok(g) => g,
                Err(poisoned) => poisoned.into_inner(),
            };
            *g = Some(v);
        }
    }

    fn current(&self) -> Option<Arc<JwtVerifier>> {
        match self.verifier.read() {
            Ok(g) => g.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// The grant of the request with these headers, and who the caller is
    /// (`None` without JWT authentication).
    pub fn grant(&self, headers: &HeaderMap) -> Result<(Grant, Option<Caller>), ApiError> {
        if self.mode == AuthMode::None {
            return Ok((Grant::All, None));
        }
        let Some(verifier) = self.current() else {
            return Err(ApiError::internal(&"jwt mode without keys"));
        };
        let token = bearer(headers).inspect_err(|r| {
            tracing::info!(reason = r, "caller refused");
        });
        let token = token.map_err(unauthorized)?;
        verifier.verify(token).map_err(|r| {
            tracing::info!(reason = r, "caller refused");
            unauthorized(r)
        })
    }
}

/// Keys read by [`Authenticator::prepare_reload`], not yet in use.
pub struct PreparedKeys(Arc<JwtVerifier>);

/// The token of `Authorization: Bearer <token>`.
fn bearer(headers: &HeaderMap) -> Result<&str, &'static str> {
    let mut values = headers.get_all(header::AUTHORIZATION);
    let value = values.next().ok_or("no bearer token was sent")?;
    if values.next().is_some() {
        return Err("more than one Authorization header was sent");
    }
    let value = value
        .to_str()
        .map_err(|_| "the Authorization header is not visible ASCII")?;
    let (scheme, token) = value
        .split_once(' ')
        .ok_or("the Authorization header is not 'Bearer <token>'")?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err("the Authorization scheme must be Bearer");
    }
    let token = token.trim();
    if token.is_empty() || token.contains(' ') {
        return Err("the Authorization header is not 'Bearer <token>'");
    }
    if token.len() > MAX_TOKEN_LEN {
        return Err("the token is too long");
    }
    Ok(token)
}

impl JwtVerifier {
    fn load(s: &JwtSettings) -> Result<Self, ConfigError> {
        let keys =
            match (&s.hs256_secret_file, &s.public_key_file, &s.jwks_file) {
                (Some(path), None, None) => Keys::Single(hs256_key(path)?),
                (None, Some(path), None) => Keys::Single(pem_key(path)?),
                (None, None, Some(path)) => Keys::ByKid(jwks_keys(path)?),
                _ => return Err(ConfigError::Invalid(
                    "auth.jwt: set exactly one of hs256_secret_file, public_key_file and jwks_file"
                        .into(),
                )),
            };
        Ok(Self {
            keys,
            issuer: s.issuer.clone(),
            audience: s.audience.clone(),
            leeway: s.leeway.as_secs(),
        })
    }

    fn verify(&self, token: &str) -> Result<(Grant, Option<Caller>), &'static str> {
        let header = jsonwebtoken::decode_header(token).map_err(|e| refusal(e.kind()))?;
        let key = match &self.keys {
            Keys::Single(k) => k,
            Keys::ByKid(keys) => match &header.kid {
                Some(kid) => keys
                    .get(kid)
                    .ok_or("the token's key id (kid) is not known")?,
                None if keys.len() == 1 => keys.values().next().ok_or("no key")?,
                None => return Err("the token names no key id (kid)"),
            },
        };
        if header.alg != key.alg {
            return Err("the token's algorithm is not accepted");
        }
        let mut v = Validation::new(key.alg);
        v.leeway = self.leeway;
        v.validate_exp = true;
        v.validate_nbf = true;
        v.set_required_spec_claims(&["exp", "iss", "aud"]);
        v.set_issuer(&[&self.issuer]);
        v.set_audience(&[&self.audience]);
        let data =
            jsonwebtoken::decode::<Claims>(token, &key.key, &v).map_err(|e| refusal(e.kind()))?;
        let grant = grant_of(data.claims.msns.as_ref())?;
        let claims = data.claims;
        let caller = Caller {
            subject: identity(claims.sub),
            client: identity(claims.azp.or(claims.client_id)),
        };
        tracing::debug!(sub = caller.subject.as_deref(), "caller authenticated");
        Ok((grant, Some(caller)))
    }
}

/// The `msns` claim: `"*"`, or an array of MSNs (4 to 6 digits).
fn grant_of(msns: Option<&serde_json::Value>) -> Result<Grant, &'static str> {
    use serde_json::Value;
    const BAD: &str = "the token's msns claim must be \"*\" or an array of MSNs";
    match msns {
        None => Err("the token has no msns claim"),
        Some(Value::String(s)) if s == "*" => Ok(Grant::All),
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| match v {
                Value::String(s) if Msn::parse(s).is_ok() => Ok(s.clone()),
                _ => Err(BAD),
            })
            .collect::<Result<HashSet<_>, _>>()
            .map(Grant::Msns),
        Some(_) => Err(BAD),
    }
}

fn key_error(path: &Path, reason: impl Into<String>) -> ConfigError {
    ConfigError::AuthKey {
        path: path.to_owned(),
        reason: reason.into(),
    }
}

/// Reads a key file. Its content never enters an error.
fn read_key_file(path: &PathBuf) -> Result<Vec<u8>, ConfigError> {
    std::fs::read(path).map_err(|e| key_error(path, e.kind().to_string()))
}

fn hs256_key(path: &PathBuf) -> Result<Key, ConfigError> {
    let raw = read_key_file(path)?;
    let secret = raw.trim_ascii();
    if secret.len() < MIN_HS256_SECRET {
        return Err(key_error(
            path,
            format!("an HS256 secret must be at least {MIN_HS256_SECRET} bytes"),
        ));
    }
    Ok(Key {
        key: DecodingKey::from_secret(secret),
        alg: Algorithm::HS256,
    })
}

/// A PEM public key; its type decides the algorithm: RSA → RS256, EC
/// P-256 → ES256.
fn pem_key(path: &PathBuf) -> Result<Key, ConfigError> {
    let raw = read_key_file(path)?;
    if raw.windows(7).any(|w| w == b"PRIVATE") {
        return Err(key_error(
            path,
            "holds a private key; give the gateway the public key only",
        ));
    }
    if let Ok(key) = DecodingKey::from_rsa_pem(&raw) {
        return Ok(Key {
            key,
            alg: Algorithm::RS256,
        });
    }
    match DecodingKey::from_ec_pem(&raw) {
        // An uncompressed P-256 point is 65 bytes; P-384 and others are refused.
        Ok(key) if key.try_get_as_bytes().is_ok_and(|b| b.len() == 65) => Ok(Key {
            key,
            alg: Algorithm::ES256,
        }),
        Ok(_) => Err(key_error(path, "EC keys must be on curve P-256 (ES256)")),
        Err(_) => Err(key_error(
            path,
            "not a PEM public key of type RSA or EC P-256",
        )),
    }
}

/// A JWK set: every signing key with a `kid`, RSA (RS256) or EC P-256
/// (ES256). A key's `alg`, when given, must be the one its type implies.
fn jwks_keys(path: &PathBuf) -> Result<HashMap<String, Key>, ConfigError> {
    let raw = read_key_file(path)?;
    let set: JwkSet = serde_json::from_slice(&raw)
        .map_err(|_| key_error(path, "not a JSON Web Key Set ({\"keys\": [...]})"))?;
    let mut keys = HashMap::new();
    for (i, jwk) in set.keys.iter().enumerate() {
        let kid = jwk.common.key_id.clone();
        let label = kid.clone().unwrap_or_else(|| format!("#{i}"));
        if matches!(jwk.common.public_key_use, Some(ref u) if *u != PublicKeyUse::Signature) {
            tracing::warn!(kid = %label, "JWKS key is not for signatures; skipped");
            continue;
        }
        let alg = match &jwk.algorithm {
            AlgorithmParameters::RSA(_) => Algorithm::RS256,
            AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P256 => {
                Algorithm::ES256
            }
            _ => {
                tracing::warn!(kid = %label, "JWKS key is neither RSA nor EC P-256; skipped");
                continue;
            }
        };
        let declared = jwk.common.key_algorithm;
        let fits = match declared {
            None => true,
            Some(KeyAlgorithm::RS256) => alg == Algorithm::RS256,
            Some(KeyAlgorithm::ES256) => alg == Algorithm::ES256,
            Some(_) => false,
        };
        if !fits {
            tracing::warn!(kid = %label, "JWKS key's alg is not RS256 or ES256 for its type; skipped");
            continue;
        }
        let Some(kid) = kid else {
            if set.keys.len() > 1 {
                return Err(key_error(path, format!("key {label} has no kid")));
            }
            // A lone key without a kid answers tokens without one.
            let key = DecodingKey::from_jwk(jwk)
                .map_err(|_| key_error(path, format!("key {label} is not usable")))?;
            keys.insert(String::new(), Key { key, alg });
            continue;
        };
        let key = DecodingKey::from_jwk(jwk)
            .map_err(|_| key_error(path, format!("key {label} is not usable")))?;
        if keys.insert(kid, Key { key, alg }).is_some() {
            return Err(key_error(path, format!("kid {label} appears twice")));
        }
    }
    if keys.is_empty() {
        return Err(key_error(path, "holds no RS256 or ES256 signing key"));
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grants_limit_merchants() {
        let g = Grant::Msns(["123456".to_owned()].into());
        assert!(g.allows("123456"));
        assert!(g.check("654321").is_err_and(|e| e.kind == Kind::Forbidden));
        assert!(Grant::All.allows("999999"));
    }

    #[test]
    fn the_msns_claim_is_a_star_or_an_array_of_msns() {
        use serde_json::json;
        assert!(matches!(grant_of(Some(&json!("*"))), Ok(Grant::All)));
        let Ok(Grant::Msns(set)) = grant_of(Some(&json!(["123456", "1234"]))) else {
            panic!("an array of MSNs is a grant");
        };
        assert_eq!(set.len(), 2);
        for bad in [json!("123456"), json!(["12ab"]), json!([123456]), json!({})] {
            assert!(grant_of(Some(&bad)).is_err(), "{bad}");
        }
        assert!(grant_of(None).is_err());
    }

    #[test]
    fn only_a_single_bearer_token_is_read() {
        let mut h = HeaderMap::new();
        assert!(bearer(&h).is_err());
        h.insert(header::AUTHORIZATION, "Basic abc".parse().unwrap());
        assert!(bearer(&h).is_err());
        h.insert(header::AUTHORIZATION, "bearer a.b.c".parse().unwrap());
        assert_eq!(bearer(&h), Ok("a.b.c"));
        h.append(header::AUTHORIZATION, "Bearer d.e.f".parse().unwrap());
        assert!(bearer(&h).is_err());
    }
}
