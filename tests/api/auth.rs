//! Caller authentication in `jwt` mode: which tokens get through, and that
//! a caller learns nothing about merchants it is not granted.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use awc::http::Method;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use vipps_order_gateway::auth::Authenticator;
use vipps_order_gateway::config::Settings;

use crate::helpers::{
    answer, spawn_app_with, spec_receipt, Answer, LogCapture, Options, TestApp, MSN, MSN2,
    UNKNOWN_MSN,
};

pub const ISSUER: &str = "https://login.example/";
pub const AUDIENCE: &str = "vipps-order-gateway";

pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

pub fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "vog-auth-{name}-{}-{}",
        std::process::id(),
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A fresh random HS256 secret (64 hex characters).
pub fn random_secret() -> String {
    format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Claims that pass: right issuer and audience, an hour left, `msns` as given.
pub fn claims(msns: Value) -> Value {
    json!({"iss": ISSUER, "aud": AUDIENCE, "sub": "orders-service",
           "iat": now(), "exp": now() + 3600, "msns": msns})
}

pub fn hs256(secret: &str, claims: &Value) -> String {
    encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

/// Signs with a PEM private key from `tests/fixtures`.
pub fn signed(alg: Algorithm, pem: &str, kid: Option<&str>, claims: &Value) -> String {
    let bytes = std::fs::read(fixture(pem)).unwrap();
    let key = match alg {
        Algorithm::RS256 => EncodingKey::from_rsa_pem(&bytes).unwrap(),
        Algorithm::ES256 => EncodingKey::from_ec_pem(&bytes).unwrap(),
        other => panic!("no fixture for {other:?}"),
    };
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    encode(&header, claims, &key).unwrap()
}

fn b64url(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// A token with any header, and the given signature part.
fn crafted(header: &Value, claims: &Value, signature: &str) -> String {
    format!(
        "{}.{}.{signature}",
        b64url(header.to_string().as_bytes()),
        b64url(claims.to_string().as_bytes())
    )
}

/// The TOML of `[auth]` in jwt mode with one key source line.
pub fn jwt_toml(source: &str) -> String {
    format!(
        "[auth]\nmode = \"jwt\"\n[auth.jwt]\nissuer = \"{ISSUER}\"\naudience = \"{AUDIENCE}\"\nleeway = \"30s\"\n{source}\n"
    )
}

/// A gateway in jwt mode with a fresh HS256 secret; returns it and the secret.
pub async fn spawn_hs256(workers: usize, msn2_secret: Option<&str>) -> (TestApp, String) {
    let dir = temp_dir("hs256");
    let secret = random_secret();
    let path = dir.join("jwt-secret");
    std::fs::write(&path, format!("{secret}\n")).unwrap();
    let mut opts = Options {
        extra_toml: jwt_toml(&format!("hs256_secret_file = \"{}\"", path.display())),
        gateway_workers: workers,
        ..Options::default()
    };
    if let Some(s) = msn2_secret {
        opts.msn2_secret = s.into();
    }
    (spawn_app_with(opts).await, secret)
}

/// Sends a request with an optional bearer token (or a raw Authorization value).
pub async fn call(
    app: &TestApp,
    method: Method,
    path: &str,
    authorization: Option<&str>,
    body: Option<&Value>,
) -> Answer {
    let mut req = app.client.request(method, app.url(path));
    if let Some(a) = authorization {
        req = req.insert_header(("authorization", a));
    }
    match body {
        Some(b) => answer(req.send_json(b).await).await,
        None => answer(req.send().await).await,
    }
}

pub fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

fn receipt_path(msn: &str, order: &str) -> String {
    format!("/v1/merchants/{msn}/orders/{order}/receipt")
}

#[track_caller]
fn assert_401(a: &Answer, label: &str) {
    assert_eq!(a.status, 401, "{label}: {}", a.body);
    a.problem(401);
    assert!(
        a.body["type"].as_str().unwrap().ends_with("/unauthorized"),
        "{label}"
    );
    assert_eq!(
        a.headers
            .get("www-authenticate")
            .and_then(|v| v.to_str().ok()),
        Some("Bearer"),
        "{label}"
    );
}

/// The problem without the fields that differ per request.
fn sans_instance(body: &Value) -> Value {
    let mut b = body.clone();
    let o = b.as_object_mut().unwrap();
    o.remove("instance");
    o.remove("requestId");
    b
}

#[actix_web::test]
async fn msns_claim_grants_merchants_and_403_reveals_nothing() {
    let (app, secret) = spawn_hs256(1, None).await;
    let only_first = bearer(&hs256(&secret, &claims(json!([MSN]))));
    let a = call(
        &app,
        Method::POST,
        &receipt_path(MSN, "o-1"),
        Some(&only_first),
        Some(&spec_receipt()),
    )
    .await;
    assert_eq!(a.status, 201, "{}", a.body);
    let calls = app.upstream_call_count().await;

    // Not granted: a configured MSN, an unconfigured one and a malformed
    // one all get the same 403, on every route, before any upstream call.
    let mut bodies = Vec::new();
    for msn in [MSN2, UNKNOWN_MSN, "12ab"] {
        for (method, path, body) in [
            (Method::POST, receipt_path(msn, "o-1"), Some(spec_receipt())),
            (Method::GET, format!("/v1/merchants/{msn}/orders/o-1"), None),
            (
                Method::PUT,
                format!("/v1/merchants/{msn}/orders/o-1/category"),
                Some(json!({"category": "GENERAL", "url": "https://shop.example/o/1"})),
            ),
            (
                Method::POST,
                format!("/v1/merchants/{msn}/images"),
                Some(json!({"data": "x"})),
            ),
        ] {
            let a = call(&app, method, &path, Some(&only_first), body.as_ref()).await;
            let p = a.problem(403);
            assert!(p["type"].as_str().unwrap().ends_with("/forbidden"));
            // Only `instance` (the caller's own path) holds the MSN.
            let rest = sans_instance(&a.body);
            assert!(
                !rest.to_string().contains(msn),
                "the 403 names no MSN: {rest}"
            );
            bodies.push(rest);
        }
    }
    assert!(bodies.windows(2).all(|w| w[0] == w[1]), "{bodies:?}");
    assert_eq!(app.upstream_call_count().await, calls, "no upstream call");

    // "*" grants every merchant; existence is checked after the grant.
    let all = bearer(&hs256(&secret, &claims(json!("*"))));
    let a = call(
        &app,
        Method::POST,
        &receipt_path(MSN2, "o-2"),
        Some(&all),
        Some(&spec_receipt()),
    )
    .await;
    assert_eq!(a.status, 201, "{}", a.body);
    let a = call(
        &app,
        Method::GET,
        &format!("/v1/merchants/{UNKNOWN_MSN}/orders/o-1"),
        Some(&all),
        None,
    )
    .await;
    a.problem(404);
    // Probes stay open without a token.
    let a = call(&app, Method::GET, "/healthz", None, None).await;
    assert_eq!(a.status, 200);
}

#[actix_web::test]
async fn missing_or_invalid_tokens_are_401_with_www_authenticate() {
    let (app, secret) = spawn_hs256(1, None).await;
    let good = claims(json!([MSN]));
    let with = |f: &dyn Fn(&mut serde_json::Map<String, Value>)| {
        let mut c = good.clone();
        f(c.as_object_mut().unwrap());
        c
    };
    let other_secret = random_secret();
    let header_none = json!({"alg": "none", "typ": "JWT"});
    let valid = hs256(&secret, &good);
    let valid_signature = valid.rsplit('.').next().unwrap().to_owned();
    let cases: Vec<(&str, Option<String>)> = vec![
        ("no Authorization header", None),
        ("Basic scheme", Some("Basic b3JkZXJzOnNlY3JldA==".into())),
        ("Bearer without a token", Some("Bearer ".into())),
        ("not a JWT", Some(bearer("not-a-jwt"))),
        (
            "signed with another secret",
            Some(bearer(&hs256(&other_secret, &good))),
        ),
        (
            "expired beyond the leeway",
            Some(bearer(&hs256(
                &secret,
                &with(&|c| {
                    c.insert("exp".into(), json!(now() - 120));
                }),
            ))),
        ),
        (
            "not valid before beyond the leeway",
            Some(bearer(&hs256(
                &secret,
                &with(&|c| {
                    c.insert("nbf".into(), json!(now() + 120));
                }),
            ))),
        ),
        (
            "another issuer",
            Some(bearer(&hs256(
                &secret,
                &with(&|c| {
                    c.insert("iss".into(), json!("https://evil.example/"));
                }),
            ))),
        ),
        (
            "another audience",
            Some(bearer(&hs256(
                &secret,
                &with(&|c| {
                    c.insert("aud".into(), json!("another-service"));
                }),
            ))),
        ),
        (
            "no exp",
            Some(bearer(&hs256(
                &secret,
                &with(&|c| {
                    c.remove("exp");
                }),
            ))),
        ),
        (
            "no iss",
            Some(bearer(&hs256(
                &secret,
                &with(&|c| {
                    c.remove("iss");
                }),
            ))),
        ),
        (
            "no aud",
            Some(bearer(&hs256(
                &secret,
                &with(&|c| {
                    c.remove("aud");
                }),
            ))),
        ),
        (
            "no msns claim",
            Some(bearer(&hs256(
                &secret,
                &with(&|c| {
                    c.remove("msns");
                }),
            ))),
        ),
        (
            "msns not an array",
            Some(bearer(&hs256(
                &secret,
                &with(&|c| {
                    c.insert("msns".into(), json!(MSN));
                }),
            ))),
        ),
        (
            "alg none, unsigned",
            Some(bearer(&crafted(&header_none, &good, ""))),
        ),
        (
            "alg none with a valid token's signature",
            Some(bearer(&crafted(&header_none, &good, &valid_signature))),
        ),
        (
            "claims altered after signing",
            Some(bearer(&crafted(
                &json!({"alg": "HS256", "typ": "JWT"}),
                &with(&|c| {
                    c.insert("msns".into(), json!("*"));
                }),
                &valid_signature,
            ))),
        ),
        (
            "RS256 where HS256 is configured",
            Some(bearer(&signed(
                Algorithm::RS256,
                "rsa-private.pem",
                None,
                &good,
            ))),
        ),
        ("two tokens", Some(format!("Bearer {valid} {valid}"))),
    ];
    for (label, auth) in &cases {
        let a = call(
            &app,
            Method::POST,
            &receipt_path(MSN, "o-1"),
            auth.as_deref(),
            Some(&spec_receipt()),
        )
        .await;
        assert_401(&a, label);
        // The refusal never echoes the token.
        if let Some(auth) = auth {
            let token = auth.trim_start_matches("Bearer ").trim();
            if token.len() > 8 {
                assert!(!a.raw.contains(token), "{label}: {}", a.raw);
            }
        }
    }
    // A 401 comes before the body is looked at, and before a 403.
    let a = call(
        &app,
        Method::POST,
        &receipt_path(UNKNOWN_MSN, ".."),
        None,
        Some(&json!({"nonsense": true})),
    )
    .await;
    assert_401(&a, "unauthenticated bad request");
    assert_eq!(app.upstream_call_count().await, 0, "no upstream call");

    // Clock skew within the leeway (30 s) is tolerated both ways.
    for (label, c) in [
        (
            "expired 10 s ago",
            with(&|c| {
                c.insert("exp".into(), json!(now() - 10));
            }),
        ),
        (
            "valid from 10 s from now",
            with(&|c| {
                c.insert("nbf".into(), json!(now() + 10));
            }),
        ),
    ] {
        let a = call(
            &app,
            Method::GET,
            &format!("/v1/merchants/{MSN}/orders/o-1"),
            Some(&bearer(&hs256(&secret, &c))),
            None,
        )
        .await;
        // Granted: the order does not exist upstream, so 404 from Vipps.
        assert_eq!(a.status, 404, "{label}: {}", a.body);
        assert!(a.body["type"]
            .as_str()
            .unwrap()
            .ends_with("/order-not-found"));
    }
}

async fn spawn_with_key(source: &str) -> TestApp {
    spawn_app_with(Options {
        extra_toml: jwt_toml(source),
        ..Options::default()
    })
    .await
}

async fn status_with(app: &TestApp, token: &str) -> u16 {
    let a = call(
        app,
        Method::GET,
        &format!("/v1/merchants/{MSN}/orders/o-1"),
        Some(&bearer(token)),
        None,
    )
    .await;
    if a.status == 401 {
        assert_401(&a, "refused token");
    }
    a.status.as_u16()
}

#[actix_web::test]
async fn a_pem_public_key_fixes_the_algorithm_rs256_or_es256() {
    let good = claims(json!([MSN]));
    let rsa_pem = std::fs::read(fixture("rsa-public.pem")).unwrap();
    let rsa = spawn_with_key(&format!(
        "public_key_file = \"{}\"",
        fixture("rsa-public.pem").display()
    ))
    .await;
    assert_eq!(
        status_with(
            &rsa,
            &signed(Algorithm::RS256, "rsa-private.pem", None, &good)
        )
        .await,
        404,
        "RS256 with the configured key is granted"
    );
    // The classic confusion: HS256 keyed with the RSA public key's bytes.
    let confused = encode(
        &Header::new(Algorithm::HS256),
        &good,
        &EncodingKey::from_secret(&rsa_pem),
    )
    .unwrap();
    assert_eq!(status_with(&rsa, &confused).await, 401, "HS256 confusion");
    assert_eq!(
        status_with(
            &rsa,
            &signed(Algorithm::ES256, "ec-private.pem", None, &good)
        )
        .await,
        401,
        "ES256 against an RSA key"
    );
    assert_eq!(
        status_with(
            &rsa,
            &signed(Algorithm::RS256, "rsa2-private.pem", None, &good)
        )
        .await,
        401,
        "another RSA key"
    );

    let ec = spawn_with_key(&format!(
        "public_key_file = \"{}\"",
        fixture("ec-public.pem").display()
    ))
    .await;
    assert_eq!(
        status_with(
            &ec,
            &signed(Algorithm::ES256, "ec-private.pem", None, &good)
        )
        .await,
        404,
        "ES256 with the configured key is granted"
    );
    assert_eq!(
        status_with(
            &ec,
            &signed(Algorithm::RS256, "rsa-private.pem", None, &good)
        )
        .await,
        401,
        "RS256 against an EC key"
    );
    // Only the granted calls went upstream: a token fetch and the order
    // read (the v2 order and its v3 links).
    assert_eq!(rsa.upstream_call_count().await, 3);
    assert_eq!(ec.upstream_call_count().await, 3);
}

fn jwk(pem: &str, alg: Algorithm, kid: &str) -> Value {
    let bytes = std::fs::read(fixture(pem)).unwrap();
    let key = match alg {
        Algorithm::RS256 => EncodingKey::from_rsa_pem(&bytes).unwrap(),
        _ => EncodingKey::from_ec_pem(&bytes).unwrap(),
    };
    let mut jwk =
        serde_json::to_value(jsonwebtoken::jwk::Jwk::from_encoding_key(&key, alg).unwrap())
            .unwrap();
    jwk["kid"] = json!(kid);
    // Only public parameters leave this function.
    for private in ["d", "p", "q", "dp", "dq", "qi"] {
        assert!(jwk.get(private).is_none(), "{private} in a JWK");
    }
    jwk
}

#[actix_web::test]
async fn jwks_keys_are_chosen_by_kid_and_rotate_on_reload() {
    let dir = temp_dir("jwks");
    let jwks = dir.join("jwks.json");
    std::fs::write(
        &jwks,
        json!({"keys": [jwk("rsa-private.pem", Algorithm::RS256, "rsa-1"),
                        jwk("ec-private.pem", Algorithm::ES256, "ec-1")]})
        .to_string(),
    )
    .unwrap();
    let app = spawn_with_key(&format!("jwks_file = \"{}\"", jwks.display())).await;
    let good = claims(json!([MSN]));
    let rsa1 = signed(Algorithm::RS256, "rsa-private.pem", Some("rsa-1"), &good);
    let ec1 = signed(Algorithm::ES256, "ec-private.pem", Some("ec-1"), &good);
    assert_eq!(status_with(&app, &rsa1).await, 404);
    assert_eq!(status_with(&app, &ec1).await, 404);
    for (label, token) in [
        (
            "unknown kid",
            signed(Algorithm::RS256, "rsa-private.pem", Some("rsa-9"), &good),
        ),
        (
            "no kid with two keys",
            signed(Algorithm::RS256, "rsa-private.pem", None, &good),
        ),
        (
            "EC signature under the RSA key's kid",
            signed(Algorithm::ES256, "ec-private.pem", Some("rsa-1"), &good),
        ),
        (
            "RSA signature under the EC key's kid",
            signed(Algorithm::RS256, "rsa-private.pem", Some("ec-1"), &good),
        ),
        (
            "another RSA key under a known kid",
            signed(Algorithm::RS256, "rsa2-private.pem", Some("rsa-1"), &good),
        ),
    ] {
        assert_eq!(status_with(&app, &token).await, 401, "{label}");
    }

    // Rotation: the set now holds only a new key; SIGHUP's reload applies it.
    std::fs::write(
        &jwks,
        json!({"keys": [jwk("rsa2-private.pem", Algorithm::RS256, "rsa-2")]}).to_string(),
    )
    .unwrap();
    app.reloader.reload(&|_| None).await.expect("reload");
    let rsa2 = signed(Algorithm::RS256, "rsa2-private.pem", Some("rsa-2"), &good);
    assert_eq!(status_with(&app, &rsa2).await, 404, "the new key works");
    assert_eq!(
        status_with(&app, &rsa1).await,
        401,
        "the retired key is refused"
    );

    // A broken key file on reload keeps the keys in use.
    std::fs::write(&jwks, "{not json").unwrap();
    let err = app
        .reloader
        .reload(&|_| None)
        .await
        .expect_err("broken JWKS");
    assert!(err.to_string().contains("jwks.json"), "{err}");
    assert_eq!(
        status_with(&app, &rsa2).await,
        404,
        "still the last good keys"
    );
}

fn auth_settings(toml: &str) -> Result<Authenticator, String> {
    let s = Settings::from_toml(toml, []).map_err(|e| e.to_string())?;
    Authenticator::load(&s.auth).map_err(|e| e.to_string())
}

#[actix_web::test]
async fn unusable_auth_settings_stop_the_start_naming_the_file_not_its_content() {
    let dir = temp_dir("config");
    let short = dir.join("short-secret");
    std::fs::write(&short, "too-short-secret-value\n").unwrap();
    let garbage = dir.join("garbage.pem");
    std::fs::write(&garbage, "-----BEGIN PUBLIC KEY-----\nnot-base64-content\n").unwrap();
    let cases = [
        (
            "jwt without [auth.jwt]",
            "[auth]\nmode = \"jwt\"\n".to_owned(),
            "[auth.jwt]",
        ),
        (
            "two key sources",
            jwt_toml(&format!(
                "hs256_secret_file = \"{0}\"\njwks_file = \"{0}\"",
                short.display()
            )),
            "exactly one",
        ),
        ("no key source", jwt_toml(""), "exactly one"),
        (
            "a short HS256 secret",
            jwt_toml(&format!("hs256_secret_file = \"{}\"", short.display())),
            "32 bytes",
        ),
        (
            "a private key as the public key",
            jwt_toml(&format!(
                "public_key_file = \"{}\"",
                fixture("rsa-private.pem").display()
            )),
            "private key",
        ),
        (
            "a P-384 key",
            jwt_toml(&format!(
                "public_key_file = \"{}\"",
                fixture("ec384-public.pem").display()
            )),
            "P-256",
        ),
        (
            "not a key",
            jwt_toml(&format!("public_key_file = \"{}\"", garbage.display())),
            "garbage.pem",
        ),
        (
            "a missing file",
            jwt_toml(&format!(
                "jwks_file = \"{}\"",
                dir.join("missing.json").display()
            )),
            "missing.json",
        ),
        (
            "a JWKS that is not JSON",
            jwt_toml(&format!("jwks_file = \"{}\"", short.display())),
            "JSON Web Key Set",
        ),
        (
            "an unknown mode",
            "[auth]\nmode = \"basic\"\n".to_owned(),
            "basic",
        ),
    ];
    for (label, toml, needle) in &cases {
        let err = auth_settings(toml).expect_err(label);
        assert!(err.contains(needle), "{label}: {err}");
        assert!(!err.contains("too-short-secret-value"), "{label}: {err}");
        assert!(!err.contains("not-base64-content"), "{label}: {err}");
    }
    // The example values from the environment work too.
    let ok = Settings::from_toml(
        "",
        [
            ("VOG_AUTH__MODE".to_owned(), "jwt".to_owned()),
            ("VOG_AUTH__JWT__ISSUER".to_owned(), ISSUER.to_owned()),
            ("VOG_AUTH__JWT__AUDIENCE".to_owned(), AUDIENCE.to_owned()),
            (
                "VOG_AUTH__JWT__PUBLIC_KEY_FILE".to_owned(),
                fixture("ec-public.pem").display().to_string(),
            ),
        ],
    )
    .expect("jwt settings from the environment");
    let auth = Authenticator::load(&ok.auth).expect("keys load");
    assert!(!format!("{auth:?}").contains("BEGIN"));
}

#[actix_web::test]
async fn none_mode_warns_at_start_and_grants_every_merchant() {
    let logs = LogCapture::start();
    let app = spawn_app_with(Options::default()).await;
    let a = call(
        &app,
        Method::POST,
        &receipt_path(MSN2, "o-1"),
        None,
        Some(&spec_receipt()),
    )
    .await;
    assert_eq!(a.status, 201, "{}", a.body);
    let text = logs.text();
    assert!(
        text.lines()
            .any(|l| l.contains("WARN") && l.contains("caller authentication is off")),
        "no warning in the log"
    );
}
