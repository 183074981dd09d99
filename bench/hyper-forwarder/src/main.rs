//! `hyper-forwarder PORT UPSTREAM [NAME=VALUE...]`: forwards `GET
//! /vipps/<path>` to `UPSTREAM/<path>` with static headers, on one thread
//! (a current-thread runtime), over a stack of idle keep-alive upstream
//! connections, with no checks, logs, metrics or retries. What a proxy on
//! hyper costs at the least, beside bench/bare-forwarder's actix-web + awc
//! (bench/bench.py).

use std::cell::RefCell;
use std::rc::Rc;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::header::{HeaderName, HeaderValue, CONTENT_TYPE, HOST};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};

struct Upstream {
    /// `host:port` of the upstream.
    addr: String,
    host: HeaderValue,
    headers: Vec<(HeaderName, HeaderValue)>,
    /// Idle keep-alive connections, the most recent on top.
    idle: RefCell<Vec<SendRequest<Empty<Bytes>>>>,
}

async fn connect(up: &Upstream) -> std::io::Result<SendRequest<Empty<Bytes>>> {
    let stream = TcpStream::connect(&up.addr).await?;
    stream.set_nodelay(true)?;
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(std::io::Error::other)?;
    tokio::task::spawn_local(async move {
        let _ = conn.await;
    });
    Ok(send)
}

fn bad_gateway() -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = StatusCode::BAD_GATEWAY;
    r
}

async fn forward(
    up: Rc<Upstream>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, hyper::Error> {
    let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let rest = path.strip_prefix("/vipps").unwrap_or(path);
    let Ok(mut out) = Request::builder().uri(rest).body(Empty::<Bytes>::new()) else {
        return Ok(bad_gateway());
    };
    let headers = out.headers_mut();
    headers.insert(HOST, up.host.clone());
    for (name, value) in &up.headers {
        headers.insert(name.clone(), value.clone());
    }
    let idle = up.idle.borrow_mut().pop();
    let mut send = match idle {
        Some(s) if !s.is_closed() => s,
        _ => match connect(&up).await {
            Ok(s) => s,
            Err(_) => return Ok(bad_gateway()),
        },
    };
    let Ok(resp) = send.send_request(out).await else {
        return Ok(bad_gateway());
    };
    let status = resp.status();
    let content_type = resp.headers().get(CONTENT_TYPE).cloned();
    let Ok(body) = resp.into_body().collect().await else {
        return Ok(bad_gateway());
    };
    up.idle.borrow_mut().push(send);
    let mut answer = Response::new(Full::new(body.to_bytes()));
    *answer.status_mut() = status;
    if let Some(t) = content_type {
        answer.headers_mut().insert(CONTENT_TYPE, t);
    }
    Ok(answer)
}

fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(port), Some(base)) = (args.next(), args.next()) else {
        eprintln!("usage: hyper-forwarder PORT UPSTREAM [NAME=VALUE...]");
        std::process::exit(2);
    };
    let port: u16 = port.parse().map_err(std::io::Error::other)?;
    let addr = base
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_owned();
    // Static credentials, as nginx injects them.
    let headers: Vec<(HeaderName, HeaderValue)> = args
        .filter_map(|a| {
            let (n, v) = a.split_once('=')?;
            Some((n.parse().ok()?, v.parse().ok()?))
        })
        .collect();
    let up = Rc::new(Upstream {
        host: addr.parse().map_err(std::io::Error::other)?,
        addr,
        headers,
        idle: RefCell::new(Vec::new()),
    });
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    tokio::task::LocalSet::new().block_on(&runtime, async move {
        let listener = TcpListener::bind(("127.0.0.1", port)).await?;
        loop {
            let (stream, _) = listener.accept().await?;
            stream.set_nodelay(true)?;
            let up = up.clone();
            tokio::task::spawn_local(async move {
                let service = hyper::service::service_fn(move |req| forward(up.clone(), req));
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    })
}
