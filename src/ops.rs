//! Operational endpoints: liveness and readiness.

use actix_web::{web, HttpResponse};
use serde_json::json;

use crate::facade::{resource, AppState};

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(resource("/healthz").route(web::get().to(healthz)))
        .service(resource("/readyz").route(web::get().to(readyz)));
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
    println!(
        "config ok: {} merchant(s), upstream {}, caller auth {:?}",
        merchants.len(),
        settings.upstream.base_url,
        auth.mode()
    );
    if !connect {
        return Ok(());
    }
    let _ = rustls::crypto::ring::default_provider().install_default();
    let upstream = std::sync::Arc::new(crate::vipps::Upstream::new(&settings)?);
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
