//! `bare-forwarder PORT UPSTREAM`: forwards `GET /vipps/<path>` to
//! `UPSTREAM/<path>` with static Vipps headers, one worker, no checks, logs,
//! metrics or retries. What an actix-web + awc proxy costs at the least, to
//! read the gateway's proxy figures against (bench/bench.py).

use actix_web::http::header::{HeaderName, HeaderValue, CONTENT_TYPE};
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};

struct Upstream {
    client: awc::Client,
    base: String,
    headers: Vec<(HeaderName, HeaderValue)>,
}

async fn forward(req: HttpRequest, up: web::Data<Upstream>) -> HttpResponse {
    let rest = req.path().strip_prefix("/vipps").unwrap_or(req.path());
    let mut out = up.client.get(format!("{}{rest}", up.base));
    // In place: each builder call would move the whole request.
    let headers = out.headers_mut();
    for (name, value) in &up.headers {
        headers.insert(name.clone(), value.clone());
    }
    match out.send().await {
        Ok(mut resp) => match resp.body().await {
            Ok(body) => {
                let mut answer = HttpResponse::build(resp.status());
                if let Some(t) = resp.headers().get(CONTENT_TYPE) {
                    answer.insert_header((CONTENT_TYPE, t.clone()));
                }
                answer.body(body)
            }
            Err(_) => HttpResponse::BadGateway().finish(),
        },
        Err(_) => HttpResponse::BadGateway().finish(),
    }
}

fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(port), Some(base)) = (args.next(), args.next()) else {
        eprintln!("usage: bare-forwarder PORT UPSTREAM");
        std::process::exit(2);
    };
    let port: u16 = port.parse().map_err(std::io::Error::other)?;
    // Static credentials, as nginx injects them: NAME=VALUE arguments.
    let headers: Vec<(HeaderName, HeaderValue)> = args
        .filter_map(|a| {
            let (n, v) = a.split_once('=')?;
            Some((n.parse().ok()?, v.parse().ok()?))
        })
        .collect();
    let _ = rustls::crypto::ring::default_provider().install_default();
    actix_web::rt::System::new().block_on(async move {
        HttpServer::new(move || {
            App::new()
                .app_data(web::Data::new(Upstream {
                    client: awc::Client::default(),
                    base: base.clone(),
                    headers: headers.clone(),
                }))
                .default_service(web::to(forward))
        })
        .workers(1)
        .bind(("127.0.0.1", port))?
        .run()
        .await
    })
}
