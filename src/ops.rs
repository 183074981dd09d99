//! Operational endpoints: liveness, readiness, the OpenAPI document and the
//! pages that problem `type` URIs point to.

use actix_web::http::Method;
use actix_web::{web, HttpResponse};
use serde_json::json;

use crate::error::{ApiError, Kind};
use crate::facade::resource;
use crate::state::AppState;
use crate::vipps::Upstream;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(resource("/healthz", Method::GET, healthz))
        .service(resource("/readyz", Method::GET, readyz))
        .service(resource("/openapi.json", Method::GET, openapi))
        .service(resource("/problems/{kind}", Method::GET, problem));
}

/// What a problem kind means: its entry of `docs/problems.md`, in Markdown.
async fn problem(kind: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let page = crate::error::problem_page(&kind).ok_or_else(|| {
        ApiError::new(
            Kind::NotFound,
            "No problem type has this name; docs/problems.md lists them.",
        )
    })?;
    Ok(HttpResponse::Ok()
        .content_type("text/markdown; charset=utf-8")
        .body(page))
}

/// The gateway's OpenAPI 3.1 document, as kept in `openapi/`.
pub const OPENAPI: &str = include_str!("../openapi/vipps-order-gateway.json");

async fn openapi() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(OPENAPI)
}

/// `/metrics`, on the API listener and on the metrics-only one.
pub fn metrics_routes(cfg: &mut web::ServiceConfig) {
    cfg.service(resource("/metrics", Method::GET, metrics));
}

/// The Prometheus text exposition.
async fn metrics(upstream: web::Data<Upstream>) -> Result<HttpResponse, ApiError> {
    let text = upstream
        .metrics
        .render(upstream.tokens.expiries())
        .map_err(|e| {
            tracing::error!(error = %e, "cannot encode metrics");
            ApiError::new(Kind::Internal, "The metrics could not be encoded.")
        })?;
    Ok(HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(text))
}

/// Alive: the process answers.
async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "ok"}))
}

/// Ready: the configuration is loaded and the server serves. Deliberately
/// not tied to Vipps being reachable: a Vipps outage must not take every
/// replica out of the load balancer.
async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok().json(json!({
        "status": "ready",
        "merchants": state.merchants.snapshot().len(),
    }))
}

/// `check-config`: validates the file, reads every secret, and with
/// `connect` fetches one token per merchant. Prints no secret.
pub async fn check_config(path: &std::path::Path, connect: bool) -> Result<(), String> {
    let settings =
        crate::config::Settings::load(path, std::env::vars()).map_err(|e| e.to_string())?;
    let merchants = settings
        .load_merchants(&|k| std::env::var(k).ok())
        .map_err(|e| e.to_string())?;
    let auth = crate::auth::Authenticator::load(&settings.auth).map_err(|e| e.to_string())?;
    let otlp = &settings.telemetry.otlp;
    if let Some(path) = &otlp.headers_file {
        crate::trace::read_headers(path)?;
    }
    println!(
        "config ok: {} merchant(s), upstream {} (Order Management {}), caller auth {:?}, traces {}",
        merchants.len(),
        settings.upstream.base_url,
        settings.upstream.api_version.as_str(),
        auth.mode(),
        otlp.endpoint.as_deref().unwrap_or("not exported"),
    );
    if !connect {
        return Ok(());
    }
    let _ = rustls::crypto::ring::default_provider().install_default();
    let guards = std::sync::Arc::new(crate::vipps::resilience::Guards::new(
        settings.resilience.clone(),
    ));
    let metrics = std::sync::Arc::new(crate::metrics::Metrics::new().map_err(|e| e.to_string())?);
    let upstream = std::sync::Arc::new(crate::vipps::Upstream::new(&settings, guards, metrics)?);
    let client = crate::vipps::VippsClient::new(upstream);
    let mut msns: Vec<_> = merchants.keys().cloned().collect();
    msns.sort();
    let mut failed = 0;
    for msn in msns {
        let Some(m) = merchants.get(&msn) else {
            continue;
        };
        match client.token(m).await {
            Ok(_) => println!("merchant {msn}: token ok"),
            Err(e) => {
                failed += 1;
                println!("merchant {msn}: token failed: {e}");
            }
        }
    }
    if failed == 0 {
        Ok(())
    } else {
        Err(format!("{failed} merchant(s) could not fetch a token"))
    }
}
