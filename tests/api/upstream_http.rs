//! The upstream client against an upstream that bends HTTP/1.1: interim
//! answers before the final one, a length where no body may be, bodies
//! framed by the connection's close, unasked-for compression, mixed or
//! cut-short framing, an answer before the upload was read, connections
//! closed just as they are reused, and oversized heads and bodies.
//!
//! A scripted raw-socket upstream answers the token endpoint itself and
//! every other request with the bytes a test chose, and records what
//! reached it, so each test can say how often a call was sent.

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use awc::http::Method;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

use crate::helpers::{answer, spawn_gateway_against, spec_receipt, LogCapture, TestApp, MSN};

/// The proxy's prefix.
const P: &str = "/vipps/order-management";
/// Where the proxy's paths start upstream.
const UP: &str = "/order-management";
/// The upstream settings of every test: long enough that an answer waited
/// for until the timeout fails the test's status assertions.
const UPSTREAM: &str = "timeout = \"5s\"\n";

/// One request as the upstream read it.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    path: String,
    /// Names in lower case, values trimmed, in the order received.
    headers: Vec<(String, String)>,
    /// Body bytes read (0 when the reply did not read the body).
    body_len: usize,
    /// Which connection, counted from 1 in the order accepted.
    connection: usize,
    /// Requests (token calls included) served earlier on its connection.
    on_connection: usize,
}

impl Seen {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// What the upstream does with one request.
#[derive(Clone)]
struct Reply {
    /// Written as they are: status lines, heads and body, interim answers
    /// or garbage included.
    bytes: Vec<u8>,
    /// Read the request's body before answering (otherwise the answer goes
    /// out first and the connection is closed in stages after it).
    read_body: bool,
    /// Filler bytes written after `bytes`, 64 KiB at a time, never held whole.
    stream: usize,
    /// Close the connection after answering instead of reading the next request.
    close: bool,
}

impl Reply {
    fn raw(bytes: impl Into<Vec<u8>>) -> Self {
        Self {
            bytes: bytes.into(),
            read_body: true,
            stream: 0,
            close: false,
        }
    }

    /// A complete answer with a JSON body and its length.
    fn json(status_line: &str, body: &str) -> Self {
        Self::raw(format!(
            "HTTP/1.1 {status_line}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ))
    }

    /// Reads the request, then closes the connection without a word.
    fn silent_close() -> Self {
        Self::raw(Vec::new()).then_close()
    }

    fn then_close(mut self) -> Self {
        self.close = true;
        self
    }

    fn before_reading_the_body(mut self) -> Self {
        self.read_body = false;
        self.close = true;
        self
    }

    fn streaming(mut self, filler: usize) -> Self {
        self.stream = filler;
        self
    }
}

/// The answer of a well-behaved upstream: `200` with `{"path": …}`.
fn well_behaved(seen: &Seen) -> Reply {
    Reply::json("200 OK", &json!({ "path": seen.path }).to_string())
}

/// A token answer as Vipps documents it, with `expires_in` as given (raw JSON).
fn token_answer(expires_in: &str) -> Vec<u8> {
    let body = format!(
        "{{\"token_type\":\"Bearer\",\"expires_in\":{expires_in},\"ext_expires_in\":\"3600\",\
         \"expires_on\":\"4102444800\",\"not_before\":\"1700000000\",\
         \"resource\":\"00000002-0000-0000-c000-000000000000\",\"access_token\":\"tok\"}}"
    );
    Reply::json("200 OK", &body).bytes
}

struct Shared {
    script: Box<dyn Fn(&Seen) -> Reply>,
    token: Vec<u8>,
    seen: RefCell<Vec<Seen>>,
    accepted: Cell<usize>,
    /// Filler bytes the peer accepted, over every streamed answer.
    streamed: Cell<usize>,
}

/// A scripted HTTP/1.1 upstream on a loopback port 0, served on the test's
/// runtime.
struct Upstream {
    base_url: String,
    shared: Rc<Shared>,
}

impl Upstream {
    /// Answers `POST /accesstoken/get` with a token (`expires_in: "3600"`)
    /// and every other request as `script` says.
    async fn start(script: impl Fn(&Seen) -> Reply + 'static) -> Self {
        Self::start_with_token(token_answer("\"3600\""), script).await
    }

    /// Answers `reply` to every request whose path ends with `suffix`, and
    /// every other request as a well-behaved upstream would.
    async fn odd_at(suffix: &'static str, reply: Reply) -> Self {
        Self::start(move |seen| {
            if seen.path.ends_with(suffix) {
                reply.clone()
            } else {
                well_behaved(seen)
            }
        })
        .await
    }

    /// The gateway against this upstream, with the tests' upstream settings.
    async fn gateway(&self) -> TestApp {
        spawn_gateway_against(&self.base_url, UPSTREAM).await
    }

    async fn start_with_token(token: Vec<u8>, script: impl Fn(&Seen) -> Reply + 'static) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind upstream");
        let port = listener.local_addr().expect("upstream address").port();
        let shared = Rc::new(Shared {
            script: Box::new(script),
            token,
            seen: RefCell::new(Vec::new()),
            accepted: Cell::new(0),
            streamed: Cell::new(0),
        });
        let s = shared.clone();
        actix_rt::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                s.accepted.set(s.accepted.get() + 1);
                actix_rt::spawn(serve(sock, s.accepted.get(), s.clone()));
            }
        });
        Self {
            base_url: format!("http://127.0.0.1:{port}"),
            shared,
        }
    }

    /// Every request but the token calls, in the order read.
    fn requests(&self) -> Vec<Seen> {
        self.shared
            .seen
            .borrow()
            .iter()
            .filter(|s| !s.path.ends_with("/accesstoken/get"))
            .cloned()
            .collect()
    }

    /// The requests with this method and upstream path.
    fn calls(&self, method: &str, path: &str) -> Vec<Seen> {
        self.requests()
            .into_iter()
            .filter(|s| s.method == method && s.path == path)
            .collect()
    }

    fn connections(&self) -> usize {
        self.shared.accepted.get()
    }

    fn streamed(&self) -> usize {
        self.shared.streamed.get()
    }
}

/// Serves one connection: each request's head, its body when the reply
/// says so, then the reply.
async fn serve(mut sock: TcpStream, connection: usize, shared: Rc<Shared>) {
    let mut buf = Vec::new();
    let mut on_connection = 0;
    loop {
        let Some(end) = read_head(&mut sock, &mut buf).await else {
            return;
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        buf.drain(..end);
        let mut lines = head.split("\r\n");
        let mut request_line = lines.next().unwrap_or_default().split(' ');
        let method = request_line.next().unwrap_or_default().to_owned();
        let path = request_line.next().unwrap_or_default().to_owned();
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        let mut seen = Seen {
            method,
            path,
            headers,
            body_len: 0,
            connection,
            on_connection,
        };
        on_connection += 1;
        let reply = if seen.path.ends_with("/accesstoken/get") {
            Reply::raw(shared.token.clone())
        } else {
            (shared.script)(&seen)
        };
        let body = if reply.read_body {
            read_body(&mut sock, &mut buf, &seen).await
        } else {
            Some(0)
        };
        seen.body_len = body.unwrap_or_default();
        shared.seen.borrow_mut().push(seen);
        if body.is_none() || sock.write_all(&reply.bytes).await.is_err() {
            return;
        }
        static FILLER: [u8; 64 * 1024] = [b'a'; 64 * 1024];
        let mut left = reply.stream;
        while left > 0 {
            let n = left.min(FILLER.len());
            if sock.write_all(&FILLER[..n]).await.is_err() {
                return;
            }
            shared.streamed.set(shared.streamed.get() + n);
            left -= n;
        }
        if !reply.read_body {
            // A staged close (RFC 9112 §9.6): the answer and a FIN first,
            // then the rest of the upload read and dropped, so the client
            // is not reset before it has read the answer.
            let _ = sock.shutdown().await;
            let mut sink = [0u8; 64 * 1024];
            let mut drained = 0usize;
            while drained < 8 << 20 {
                match sock.read(&mut sink).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => drained += n,
                }
            }
            return;
        }
        if reply.close {
            return;
        }
    }
}

/// Reads into `buf` until it holds `len` bytes; `None` when the peer is gone.
async fn fill(sock: &mut TcpStream, buf: &mut Vec<u8>, len: usize) -> Option<()> {
    let mut chunk = [0u8; 16 * 1024];
    while buf.len() < len {
        match sock.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    Some(())
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The length of the next request head (with its blank line) in `buf`.
async fn read_head(sock: &mut TcpStream, buf: &mut Vec<u8>) -> Option<usize> {
    loop {
        if let Some(i) = find(buf, b"\r\n\r\n") {
            return Some(i + 4);
        }
        if buf.len() > 1 << 20 {
            return None;
        }
        let want = buf.len() + 1;
        fill(sock, buf, want).await?;
    }
}

/// Reads and drops the request's body, framed by `Content-Length` or
/// chunked; returns its length.
async fn read_body(sock: &mut TcpStream, buf: &mut Vec<u8>, seen: &Seen) -> Option<usize> {
    let chunked = seen
        .header("transfer-encoding")
        .is_some_and(|te| te.to_ascii_lowercase().contains("chunked"));
    if !chunked {
        let len: usize = seen
            .header("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        fill(sock, buf, len).await?;
        buf.drain(..len);
        return Some(len);
    }
    let mut total = 0;
    loop {
        let line_end = loop {
            if let Some(i) = find(buf, b"\r\n") {
                break i;
            }
            let want = buf.len() + 1;
            fill(sock, buf, want).await?;
        };
        let line = String::from_utf8_lossy(&buf[..line_end]).into_owned();
        buf.drain(..line_end + 2);
        let size = usize::from_str_radix(line.split(';').next()?.trim(), 16).ok()?;
        if size == 0 {
            // Trailer fields, up to the blank line.
            loop {
                let end = loop {
                    if let Some(i) = find(buf, b"\r\n") {
                        break i;
                    }
                    let want = buf.len() + 1;
                    fill(sock, buf, want).await?;
                };
                buf.drain(..end + 2);
                if end == 0 {
                    return Some(total);
                }
            }
        }
        fill(sock, buf, size + 2).await?;
        buf.drain(..size + 2);
        total += size;
    }
}

/// The caller's next request on the same client: a read the upstream
/// answers normally comes back as it was sent.
async fn next_call_is_answered_normally(app: &TestApp) {
    let a = app.proxy(Method::GET, "/v2/ecom/o-next", None).await;
    assert_eq!(a.status, 200, "the next call: {}", a.raw);
    assert_eq!(a.body, json!({ "path": format!("{UP}/v2/ecom/o-next") }));
}

fn vipps_category() -> Value {
    json!({"category": "RECEIPT", "orderDetailsUrl": "https://shop.example/o/1"})
}

/// The largest buffer the kernel gives a TCP socket (`tcp_rmem` or
/// `tcp_wmem`, their third field). Read, not guessed: a guess above the
/// 50 MB body would let the bound that uses it pass whatever happened.
fn socket_buffer_max(which: &str) -> usize {
    std::fs::read_to_string(format!("/proc/sys/net/ipv4/{which}"))
        .ok()
        .and_then(|t| t.split_whitespace().nth(2).and_then(|n| n.parse().ok()))
        .unwrap_or_else(|| panic!("no third field in /proc/sys/net/ipv4/{which}"))
}

/// The process's peak resident memory so far, in KiB.
fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .expect("/proc/self/status")
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/self/status")
}

#[actix_web::test]
async fn an_interim_100_continue_is_skipped_and_the_final_answer_reaches_the_caller() {
    let body = r#"{"final":true}"#;
    let up = Upstream::odd_at(
        "/o-100",
        Reply::raw(format!(
            "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )),
    )
    .await;
    let app = up.gateway().await;
    let a = app.proxy(Method::GET, "/v2/ecom/o-100", None).await;
    assert_eq!(a.status, 200, "{}", a.raw);
    assert_eq!(a.body, json!({"final": true}));
    assert_eq!(up.calls("GET", &format!("{UP}/v2/ecom/o-100")).len(), 1);
    next_call_is_answered_normally(&app).await;
}

#[actix_web::test]
async fn an_interim_103_early_hints_is_skipped_and_the_final_201_reaches_the_caller() {
    let body = r#"{"created":true}"#;
    let up = Upstream::odd_at(
        "/receipts/o-103",
        Reply::raw(format!(
            "HTTP/1.1 103 Early Hints\r\nLink: </receipt.css>; rel=preload\r\n\r\n\
             HTTP/1.1 201 Created\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )),
    )
    .await;
    let app = up.gateway().await;
    let receipt = json!({"orderLines": [], "bottomLine": {"currency": "NOK"}});
    let a = app
        .proxy(Method::POST, "/v2/ecom/receipts/o-103", Some(&receipt))
        .await;
    assert_eq!(a.status, 201, "{}", a.raw);
    assert_eq!(a.body, json!({"created": true}));
    assert_eq!(
        up.calls("POST", &format!("{UP}/v2/ecom/receipts/o-103"))
            .len(),
        1
    );
    next_call_is_answered_normally(&app).await;
}

#[actix_web::test]
async fn a_receipt_answered_after_interim_answers_is_created() {
    let up = Upstream::start(|seen| {
        if seen.path.contains("/receipts/") {
            Reply::raw(
                "HTTP/1.1 100 Continue\r\n\r\n\
                 HTTP/1.1 103 Early Hints\r\nLink: </r.css>; rel=preload\r\n\r\n\
                 HTTP/1.1 201 Created\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}",
            )
        } else {
            well_behaved(seen)
        }
    })
    .await;
    let app = up.gateway().await;
    let a = app.post_receipt(MSN, "o-1", &spec_receipt()).await;
    assert_eq!(a.status, 201, "{}", a.raw);
    assert_eq!(a.body["replayed"], false);
    assert_eq!(
        up.calls("POST", &format!("{UP}/v2/ecom/receipts/o-1"))
            .len(),
        1
    );
}

#[actix_web::test]
async fn a_304_with_a_content_length_but_no_body_is_answered_at_once_and_sent_once() {
    // RFC 9112 §6.3: a 304 has no body, whatever its Content-Length says.
    let up = Upstream::odd_at(
        "/o-304",
        Reply::raw("HTTP/1.1 304 Not Modified\r\nETag: \"v1\"\r\nContent-Length: 5\r\n\r\n"),
    )
    .await;
    let app = up.gateway().await;
    let a = app.proxy(Method::GET, "/v2/ecom/o-304", None).await;
    assert_eq!(a.status, 304, "{}", a.raw);
    assert!(a.raw.is_empty(), "{:?}", a.raw);
    assert_eq!(
        up.calls("GET", &format!("{UP}/v2/ecom/o-304")).len(),
        1,
        "answered, so never resent"
    );
    next_call_is_answered_normally(&app).await;
}

#[actix_web::test]
async fn a_204_with_a_content_length_but_no_body_is_answered_at_once_and_sent_once() {
    // RFC 9112 §6.3: a 204 has no body, whatever its Content-Length says.
    let up = Upstream::odd_at(
        "/categories/o-204",
        Reply::raw("HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n"),
    )
    .await;
    let app = up.gateway().await;
    let a = app
        .proxy(
            Method::PUT,
            "/v2/ecom/categories/o-204",
            Some(&vipps_category()),
        )
        .await;
    assert_eq!(a.status, 204, "{}", a.raw);
    assert!(a.raw.is_empty(), "{:?}", a.raw);
    assert_eq!(
        up.calls("PUT", &format!("{UP}/v2/ecom/categories/o-204"))
            .len(),
        1,
        "answered, so never resent"
    );
    next_call_is_answered_normally(&app).await;
}

#[actix_web::test]
async fn a_body_delimited_by_the_connection_close_reaches_the_caller_whole() {
    let body =
        json!({"category": {"category": "GENERAL"}, "receipt": null, "pad": "x".repeat(20_000)});
    let text = body.to_string();
    let text_len = text.len();
    // HTTP/1.1, no Content-Length, no Transfer-Encoding: the body runs to the close.
    let up = Upstream::odd_at(
        "/o-close",
        Reply::raw(format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n{text}"
        ))
        .then_close(),
    )
    .await;
    let app = up.gateway().await;
    let a = app.proxy(Method::GET, "/v2/ecom/o-close", None).await;
    assert_eq!(a.status, 200, "{}", a.raw);
    assert!(
        a.body == body,
        "not the whole body, up to the close: {} bytes of {}: {:.200}",
        a.raw.len(),
        text_len,
        a.raw
    );
    next_call_is_answered_normally(&app).await;
}

/// A gzip member holding `data` in one stored (uncompressed) deflate block.
fn gzip_stored(data: &[u8]) -> Vec<u8> {
    let crc = data.iter().fold(!0u32, |mut crc, &b| {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
        crc
    });
    let len = u16::try_from(data.len()).expect("one stored block");
    let mut out = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff, 1];
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&(!len).to_le_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(&(!crc).to_le_bytes());
    out.extend_from_slice(&u32::from(len).to_le_bytes());
    out
}

#[actix_web::test]
async fn a_gzip_body_the_gateway_did_not_ask_for_reaches_the_caller_with_its_content_encoding() {
    let gz = gzip_stored(br#"{"category":null,"receipt":null}"#);
    let mut bytes = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Encoding: gzip\r\nContent-Length: {}\r\n\r\n",
        gz.len()
    )
    .into_bytes();
    bytes.extend_from_slice(&gz);
    let up = Upstream::odd_at("/o-gzip", Reply::raw(bytes)).await;
    let app = up.gateway().await;
    let mut resp = app
        .client
        .get(app.url(&format!("{P}/v2/ecom/o-gzip")))
        .insert_header(("Merchant-Serial-Number", MSN))
        .send()
        .await
        .expect("gateway answers");
    let status = resp.status();
    let encoding = resp
        .headers()
        .get("content-encoding")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = resp.body().await.expect("body");

    // The gateway asks for no encoding ...
    let seen = up.calls("GET", &format!("{UP}/v2/ecom/o-gzip"));
    assert_eq!(seen.len(), 1);
    assert_eq!(
        seen[0].header("accept-encoding"),
        Some("identity"),
        "{:?}",
        seen[0].headers
    );
    // ... and what comes anyway is passed on with the header that says how
    // to read it: never gzip bytes without their Content-Encoding.
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(encoding.as_deref(), Some("gzip"));
    assert_eq!(body.as_ref(), gz.as_slice(), "the bytes Vipps sent");
    next_call_is_answered_normally(&app).await;
}

#[actix_web::test]
async fn a_token_whose_expires_in_is_a_json_number_is_accepted() {
    let up = Upstream::start_with_token(token_answer("3600"), |seen| {
        Reply::json("201 Created", &json!({ "path": seen.path }).to_string())
    })
    .await;
    let app = up.gateway().await;
    let a = app.post_receipt(MSN, "o-1", &spec_receipt()).await;
    assert_eq!(a.status, 201, "{}", a.raw);
    let seen = up.calls("POST", &format!("{UP}/v2/ecom/receipts/o-1"));
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].header("authorization"), Some("Bearer tok"));
}

#[actix_web::test]
async fn a_body_cut_short_is_logged_with_its_cause() {
    const ID: &str = "upstream-http-cut-short-log";
    let logs = LogCapture::start();
    let up = Upstream::odd_at(
        "/o-cut",
        Reply::raw(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"a\":\"1234",
        )
        .then_close(),
    )
    .await;
    // The test binary's capture writes text lines with the request's span
    // (its id among the fields) on every line written while it is served.
    let app = up.gateway().await;
    let a = answer(
        app.client
            .get(app.url(&format!("{P}/v2/ecom/o-cut")))
            .insert_header(("Merchant-Serial-Number", MSN))
            .insert_header(("X-Request-Id", ID))
            .send()
            .await,
    )
    .await;
    a.problem(502);
    // The gateway's own lines at an operator's level (info and above), not
    // a library's trace of its socket: what comes after the span's fields.
    let text = logs.text();
    let ours: Vec<&str> = text
        .lines()
        .filter(|l| l.contains(ID))
        .filter(|l| {
            l.split_whitespace()
                .nth(1)
                .is_some_and(|level| ["INFO", "WARN", "ERROR"].contains(&level))
        })
        .filter_map(|l| l.split_once("}: ").map(|(_, event)| event))
        .filter(|event| event.starts_with("vipps_order_gateway"))
        .collect();
    // The wording is hyper's: any of these says why the exchange broke
    // (not words of the gateway's own message, such as "answer body").
    let causes = [
        "closed",
        "incomplete",
        "cut short",
        "eof",
        "end of file",
        "premature",
        "truncated",
        "before message length",
    ];
    assert!(
        ours.iter().any(|event| causes
            .iter()
            .any(|c| event.to_ascii_lowercase().contains(c))),
        "no line of the gateway's says why the exchange broke:\n{}",
        ours.join("\n")
    );
    next_call_is_answered_normally(&app).await;
}

#[actix_web::test]
async fn bytes_after_a_204_never_reach_a_caller() {
    // Left on the connection after a bodiless answer: not the next answer.
    let up = Upstream::odd_at(
        "/categories/o-204",
        Reply::raw("HTTP/1.1 204 No Content\r\n\r\nGARBAGE"),
    )
    .await;
    let app = up.gateway().await;
    let a = app
        .proxy(
            Method::PUT,
            "/v2/ecom/categories/o-204",
            Some(&vipps_category()),
        )
        .await;
    assert_eq!(a.status, 204, "{}", a.raw);
    assert!(a.raw.is_empty(), "{:?}", a.raw);
    next_call_is_answered_normally(&app).await;
    // Answered by its own answer, the first time it was sent.
    assert_eq!(up.calls("GET", &format!("{UP}/v2/ecom/o-next")).len(), 1);
}

#[actix_web::test]
async fn chunked_framing_wins_over_a_content_length_or_the_answer_is_refused() {
    let framed = "b\r\n{\"ok\":true}\r\n0\r\n\r\n";
    // The length covers the chunk framing, so a client that
    // believed it would stay in step and pass the framing on.
    let up = Upstream::odd_at(
        "/o-te",
        Reply::raw(format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nTransfer-Encoding: chunked\r\n\r\n{framed}",
            framed.len()
        )),
    )
    .await;
    let app = up.gateway().await;
    let a = app.proxy(Method::GET, "/v2/ecom/o-te", None).await;
    if a.status.is_success() {
        assert!(
            !a.raw.contains("\r\n0\r\n") && !a.raw.starts_with("b\r\n"),
            "chunk framing passed on as the body: {:?}",
            a.raw
        );
        assert_eq!(a.status, 200);
        assert_eq!(a.body, json!({"ok": true}));
    } else {
        a.problem(502);
    }
    next_call_is_answered_normally(&app).await;
}

#[actix_web::test]
async fn a_body_cut_short_of_its_content_length_is_a_502() {
    let up = Upstream::odd_at(
        "/o-cut",
        Reply::raw(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"a\":\"1234",
        )
        .then_close(),
    )
    .await;
    let app = up.gateway().await;
    let a = app.proxy(Method::GET, "/v2/ecom/o-cut", None).await;
    a.problem(502);
    next_call_is_answered_normally(&app).await;
}

#[actix_web::test]
async fn a_chunked_body_cut_short_is_a_502() {
    // One chunk, then the close: no terminating zero-size chunk.
    let up = Upstream::odd_at(
        "/o-cut",
        Reply::raw(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\na\r\n{\"a\":\"123\r\n",
        )
        .then_close(),
    )
    .await;
    let app = up.gateway().await;
    let a = app.proxy(Method::GET, "/v2/ecom/o-cut", None).await;
    a.problem(502);
    next_call_is_answered_normally(&app).await;
}

#[actix_web::test]
async fn an_early_413_before_the_upload_was_read_reaches_the_caller() {
    let problem = r#"{"type":"about:blank","title":"Payload Too Large","status":413}"#;
    // Answered right after the head; the body is never read.
    let up = Upstream::odd_at(
        "/v1/images",
        Reply::raw(format!(
            "HTTP/1.1 413 Payload Too Large\r\nContent-Type: application/problem+json\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{problem}",
            problem.len()
        ))
        .before_reading_the_body(),
    )
    .await;
    let app = up.gateway().await;
    let image = json!({"imageId": "big-1", "src": "A".repeat(1_500_000), "type": "base64"});
    let a = app.proxy(Method::POST, "/v1/images", Some(&image)).await;
    assert_eq!(a.status, 413, "{}", a.raw);
    assert_eq!(a.content_type, "application/problem+json");
    assert_eq!(a.body["title"], "Payload Too Large");
    assert_eq!(up.calls("POST", &format!("{UP}/v1/images")).len(), 1);
    next_call_is_answered_normally(&app).await;
}

#[actix_web::test]
async fn a_read_on_a_connection_closed_as_it_is_reused_is_retried_on_a_new_connection() {
    let dropped = Cell::new(false);
    let up = Upstream::start(move |seen| {
        // The upstream's idle timeout strikes just as the connection is reused.
        if seen.path.ends_with("/o-2") && seen.on_connection > 0 && !dropped.replace(true) {
            Reply::silent_close()
        } else {
            well_behaved(seen)
        }
    })
    .await;
    let app = up.gateway().await;
    let first = app.proxy(Method::GET, "/v2/ecom/o-1", None).await;
    assert_eq!(first.status, 200, "{}", first.raw);
    let a = app.proxy(Method::GET, "/v2/ecom/o-2", None).await;
    assert_eq!(a.status, 200, "{}", a.raw);
    assert_eq!(a.body, json!({ "path": format!("{UP}/v2/ecom/o-2") }));
    let sent = up.calls("GET", &format!("{UP}/v2/ecom/o-2"));
    assert_eq!(
        sent.len(),
        2,
        "sent on the reused connection, then once more: {sent:?}"
    );
    assert!(sent[0].on_connection > 0, "{sent:?}");
    assert_ne!(sent[1].connection, sent[0].connection, "{sent:?}");
    assert!(up.connections() >= 2);
    next_call_is_answered_normally(&app).await;
}

#[actix_web::test]
async fn a_proxied_post_on_a_connection_closed_as_it_is_reused_is_not_resent() {
    let dropped = Cell::new(false);
    let up = Upstream::start(move |seen| {
        if seen.path.ends_with("/receipts/o-1") && seen.on_connection > 0 && !dropped.replace(true)
        {
            Reply::silent_close()
        } else {
            well_behaved(seen)
        }
    })
    .await;
    let app = up.gateway().await;
    let first = app.proxy(Method::GET, "/v2/ecom/o-1", None).await;
    assert_eq!(first.status, 200, "{}", first.raw);
    let receipt = json!({"orderLines": [], "bottomLine": {"currency": "NOK"}});
    let a = app
        .proxy(Method::POST, "/v2/ecom/receipts/o-1", Some(&receipt))
        .await;
    // It arrived: Vipps may have acted on it, so it is not sent again.
    a.problem(502);
    let sent = up.calls("POST", &format!("{UP}/v2/ecom/receipts/o-1"));
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert!(sent[0].body_len > 0, "the whole receipt arrived");
    next_call_is_answered_normally(&app).await;
}

/// Most the peak resident memory may grow while a test refuses an oversized answer.
const MEMORY_GROWTH_KIB: u64 = 30 * 1024;

#[actix_web::test]
async fn a_1_mb_response_header_is_a_502() {
    let up = Upstream::odd_at(
        "/o-big",
        Reply::raw(format!(
            "HTTP/1.1 200 OK\r\nX-Padding: {}\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{{}}",
            "a".repeat(1 << 20)
        ))
        .then_close(),
    )
    .await;
    let app = up.gateway().await;
    let before = peak_rss_kib();
    let a = app.proxy(Method::GET, "/v2/ecom/o-big", None).await;
    a.problem(502);
    let grown = peak_rss_kib().saturating_sub(before);
    assert!(grown < MEMORY_GROWTH_KIB, "peak memory grew {grown} KiB");
    next_call_is_answered_normally(&app).await;
}

#[actix_web::test]
async fn a_50_mb_response_body_is_a_502_and_never_held_whole() {
    const SIZE: usize = 50 << 20;
    let up = Upstream::odd_at(
        "/o-big",
        Reply::raw(format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {SIZE}\r\n\r\n"
        ))
        .streaming(SIZE)
        .then_close(),
    )
    .await;
    let app = up.gateway().await;
    let before = peak_rss_kib();
    let a = app.proxy(Method::GET, "/v2/ecom/o-big", None).await;
    a.problem(502);
    let grown = peak_rss_kib().saturating_sub(before);
    assert!(grown < MEMORY_GROWTH_KIB, "peak memory grew {grown} KiB");
    // The gateway stopped reading at its 8 MiB limit: the upstream could
    // hand over no more than that plus what the kernel's socket buffers on
    // both ends hold.
    let buffers = socket_buffer_max("tcp_rmem") + socket_buffer_max("tcp_wmem");
    let streamed = up.streamed();
    assert!(
        streamed <= (8 << 20) + buffers + (1 << 20),
        "{streamed} bytes of {SIZE} were taken; buffers hold {buffers}"
    );
    next_call_is_answered_normally(&app).await;
}

#[actix_web::test]
async fn every_call_names_the_upstream_host_once_and_keeps_the_base_urls_path() {
    let up = Upstream::start(well_behaved).await;
    let app = spawn_gateway_against(&format!("{}/prefix/", up.base_url), UPSTREAM).await;
    let a = app.proxy(Method::GET, "/v2/ecom/o-host", None).await;
    assert_eq!(a.status, 200, "{}", a.raw);
    let calls = up.calls("GET", &format!("/prefix{UP}/v2/ecom/o-host"));
    assert_eq!(calls.len(), 1, "{:?}", up.requests());
    let host = up.base_url.trim_start_matches("http://");
    let hosts: Vec<&str> = calls[0]
        .headers
        .iter()
        .filter(|(n, _)| n == "host")
        .map(|(_, v)| v.as_str())
        .collect();
    assert_eq!(hosts, [host], "the port is named: it is not 80");
    let seen = up.shared.seen.borrow();
    let token_calls: Vec<&Seen> = seen
        .iter()
        .filter(|s| s.path.ends_with("/accesstoken/get"))
        .collect();
    assert!(!token_calls.is_empty());
    for call in token_calls {
        assert_eq!(call.path, "/prefix/accesstoken/get");
        assert_eq!(call.header("host"), Some(host));
    }
}
