//! The upstream HTTP/1.1 client: one worker's keep-alive connections to the
//! one upstream origin, spoken through actix-http's own HTTP/1 client codec.
//!
//! The gateway talks to a single origin (`upstream.base_url`) with requests
//! it builds itself, so it needs no redirects, compression, HTTP/2 or
//! per-host pools. Each worker keeps its idle connections in a stack (the
//! most recently used first), checks that one is still open before reusing
//! it, and shares one codec configuration, so a request costs no task,
//! timer or buffer beyond its own exchange.

use std::cell::RefCell;
use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use actix_codec::{Framed, FramedParts};
use actix_http::body::BodySize;
use actix_http::h1::{ClientCodec, Message, MessageType};
use actix_http::{RequestHead, RequestHeadType, ServiceConfig};
use actix_web::http::header::{self, HeaderMap, HeaderValue};
use actix_web::http::{Method, StatusCode, Uri};
use actix_web::web::{Bytes, BytesMut};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

/// An idle connection older than this is closed instead of reused.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(15);
/// A connection is not reused once it has been open this long, so a
/// changed DNS answer or a drained upstream node is picked up.
pub const MAX_LIFETIME: Duration = Duration::from_secs(75);
/// Most idle connections a worker keeps; more are closed when released.
pub const MAX_IDLE: usize = 128;
/// A request body larger than this is written straight from its own buffer.
const BUFFERED_BODY: usize = 16 * 1024;

/// The scheme, host and port every call goes to, and the base URL's path.
#[derive(Debug, Clone)]
pub struct Origin {
    host: String,
    /// "" or "/prefix": put before every call's path.
    path: String,
    port: u16,
    /// The `Host` header: the host, and the port unless it is the scheme's.
    host_header: HeaderValue,
    tls: Option<(Arc<rustls::ClientConfig>, ServerName<'static>)>,
}

impl Origin {
    /// The origin of an `http://` or `https://` base URL, with its path (see
    /// [`Origin::path`]). HTTPS verifies the server against the Mozilla root
    /// certificates bundled with the gateway.
    pub fn parse(base_url: &str) -> Result<Self, String> {
        let uri: Uri = base_url
            .parse()
            .map_err(|_| format!("upstream.base_url is not a URL: {base_url}"))?;
        let tls = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            _ => return Err("upstream.base_url must be an http or https URL".into()),
        };
        let host = uri
            .host()
            .ok_or_else(|| "upstream.base_url has no host".to_string())?;
        // `Uri` keeps IPv6 literals bracketed; sockets and SNI want them bare.
        let bare = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
        let host_header = match uri.port_u16() {
            Some(p) => HeaderValue::from_str(&format!("{host}:{p}")),
            None => HeaderValue::from_str(host),
        }
        .map_err(|_| "upstream.base_url host is not a valid Host header".to_string())?;
        let tls = if tls {
            let name = ServerName::try_from(bare.clone())
                .map_err(|_| format!("upstream.base_url host is not a TLS server name: {bare}"))?;
            Some((Arc::new(default_tls_config()), name))
        } else {
            None
        };
        Ok(Self {
            host: bare,
            path: uri.path().trim_end_matches('/').to_owned(),
            port,
            host_header,
            tls,
        })
    }

    /// The base URL's path without a trailing `/` ("" for none), which the
    /// caller puts before each call's path.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The same origin, verified against `config` instead of the bundled roots.
    pub fn with_tls_config(mut self, config: rustls::ClientConfig) -> Self {
        if let Some((c, _)) = &mut self.tls {
            *c = Arc::new(config);
        }
        self
    }
}

fn default_tls_config() -> rustls::ClientConfig {
    let roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    tls_config(roots)
}

/// A client configuration trusting `roots` and offering only HTTP/1.1.
pub fn tls_config(roots: rustls::RootCertStore) -> rustls::ClientConfig {
    let mut config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config
}

/// Why an exchange produced no answer.
#[derive(Debug)]
pub enum SendError {
    /// No connection could be opened: nothing was sent.
    Connect(String),
    /// No complete answer within the call's time.
    Timeout,
    /// The connection closed before an answer began: the request may have
    /// arrived and been handled.
    Closed,
    /// The exchange broke after sending (write or read error, malformed
    /// answer, answer over the size limit): the outcome is unknown.
    Broken(String),
}

impl std::fmt::Display for SendError {
    /// Never includes a header value or a body.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Connect(c) => write!(f, "connect: {c}"),
            Self::Timeout => f.write_str("timeout"),
            Self::Closed => f.write_str("connection closed without an answer"),
            Self::Broken(b) => f.write_str(b),
        }
    }
}

/// A complete answer.
#[derive(Debug)]
pub struct Response {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// One upstream request.
pub struct Request<'a> {
    pub method: Method,
    /// Path and query, starting with `/`.
    pub path: &'a str,
    pub headers: HeaderMap,
    pub body: Option<Bytes>,
    /// For the whole exchange, connecting included.
    pub timeout: Duration,
    /// Most body bytes accepted.
    pub limit: usize,
}

/// One worker's connections to the origin. Cheap to clone (shared).
#[derive(Clone)]
pub struct Client(Rc<Inner>);

struct Inner {
    origin: Origin,
    connect_timeout: Duration,
    idle_timeout: Duration,
    max_lifetime: Duration,
    /// The codecs' shared settings (one `Date` header clock per worker).
    config: ServiceConfig,
    idle: RefCell<Vec<Idle>>,
}

type Conn = Framed<Stream, ClientCodec>;

struct Idle {
    /// Kept apart, so the next exchange starts with a fresh `Framed` that
    /// reads before it decodes (buffers and codec are reused).
    conn: FramedParts<Stream, ClientCodec>,
    created: Instant,
    since: Instant,
}

impl Client {
    pub fn new(origin: Origin, connect_timeout: Duration) -> Self {
        Self::with_reuse(origin, connect_timeout, IDLE_TIMEOUT, MAX_LIFETIME)
    }

    /// A client that closes connections idle for `idle_timeout` or open for
    /// `max_lifetime` instead of the defaults.
    pub fn with_reuse(
        origin: Origin,
        connect_timeout: Duration,
        idle_timeout: Duration,
        max_lifetime: Duration,
    ) -> Self {
        Self(Rc::new(Inner {
            origin,
            connect_timeout,
            idle_timeout,
            max_lifetime,
            config: ServiceConfig::default(),
            idle: RefCell::new(Vec::new()),
        }))
    }

    /// Idle connections held now.
    pub fn idle_connections(&self) -> usize {
        self.0.idle.borrow().len()
    }

    /// Sends `req` and reads the whole answer, within `req.timeout`.
    pub async fn send(&self, req: Request<'_>) -> Result<Response, SendError> {
        let timeout = req.timeout;
        // Boxed: callers' futures nest this one several levels deep, and a
        // kilobyte inline would be copied at every level's start.
        match tokio::time::timeout(timeout, Box::pin(self.exchange(req))).await {
            Ok(result) => result,
            Err(_) => Err(SendError::Timeout),
        }
    }

    async fn exchange(&self, req: Request<'_>) -> Result<Response, SendError> {
        let (mut conn, created) = match self.take_idle() {
            Some(idle) => (Framed::from_parts(idle.conn), idle.created),
            // Boxed: opening a TLS connection holds kilobytes of state,
            // which every exchange's future would otherwise carry and move.
            None => (Box::pin(self.connect()).await?, Instant::now()),
        };
        let uri = Uri::try_from(req.path)
            .map_err(|_| SendError::Broken("invalid request path".into()))?;
        let mut head = RequestHead::default();
        head.method = req.method;
        head.uri = uri;
        head.headers = req.headers;
        head.headers
            .insert(header::HOST, self.0.origin.host_header.clone());
        let size = match &req.body {
            Some(b) => BodySize::Sized(b.len() as u64),
            None if matches!(head.method, Method::POST | Method::PUT | Method::PATCH) => {
                BodySize::Sized(0)
            }
            None => BodySize::None,
        };
        let broken = |e: io::Error| SendError::Broken(format!("send failed: {}", e.kind()));
        Pin::new(&mut conn)
            .write(Message::Item((RequestHeadType::Owned(head), size)))
            .map_err(broken)?;
        // A large body (an image) goes from its own buffer to the socket,
        // not copied into the connection's write buffer first.
        let body = req.body.filter(|b| !b.is_empty());
        let (small, large) = match body {
            Some(b) if b.len() > BUFFERED_BODY => (None, Some(b)),
            other => (other, None),
        };
        if let Some(body) = small {
            Pin::new(&mut conn)
                .write(Message::Chunk(Some(body)))
                .map_err(broken)?;
        }
        poll_fn(|cx| Pin::new(&mut conn).flush::<Message<(RequestHeadType, BodySize)>>(cx))
            .await
            .map_err(broken)?;
        if let Some(body) = large {
            let io = conn.io_mut();
            io.write_all(&body).await.map_err(broken)?;
            io.flush().await.map_err(broken)?;
        }

        let mut head = match poll_fn(|cx| Pin::new(&mut conn).next_item(cx)).await {
            Some(Ok(head)) => head,
            Some(Err(e)) => return Err(SendError::Broken(format!("bad response: {e}"))),
            None => return Err(SendError::Closed),
        };
        let status = head.status;
        let headers = std::mem::take(&mut head.headers);
        if conn.codec_ref().message_type() == MessageType::None {
            let keep = conn.codec_ref().keep_alive();
            self.release(conn, created, keep);
            return Ok(Response {
                status,
                headers,
                body: Bytes::new(),
            });
        }
        let mut conn = conn.into_map_codec(|c| c.into_payload_codec());
        let mut first: Option<Bytes> = None;
        let mut rest = BytesMut::new();
        let mut total = 0usize;
        let mut complete = false;
        loop {
            match poll_fn(|cx| Pin::new(&mut conn).next_item(cx)).await {
                Some(Ok(Some(chunk))) => {
                    total += chunk.len();
                    if total > req.limit {
                        return Err(SendError::Broken("payload reached size limit".into()));
                    }
                    match &first {
                        None => first = Some(chunk),
                        Some(f) => {
                            if rest.is_empty() {
                                rest.reserve(f.len() + chunk.len());
                                rest.extend_from_slice(f);
                            }
                            rest.extend_from_slice(&chunk);
                        }
                    }
                }
                Some(Ok(None)) => {
                    complete = true;
                    break;
                }
                // The connection ended. That ends a body without a declared
                // length; one with a length or chunks was cut short.
                None if headers.contains_key(header::CONTENT_LENGTH)
                    || headers.contains_key(header::TRANSFER_ENCODING) =>
                {
                    return Err(SendError::Broken("answer ended before its end".into()));
                }
                None => break,
                Some(Err(e)) => return Err(SendError::Broken(format!("bad response body: {e}"))),
            }
        }
        if complete {
            let keep = conn.codec_ref().keep_alive();
            self.release(
                conn.into_map_codec(|c| c.into_message_codec()),
                created,
                keep,
            );
        }
        let body = if rest.is_empty() {
            first.unwrap_or_default()
        } else {
            rest.freeze()
        };
        Ok(Response {
            status,
            headers,
            body,
        })
    }

    /// The most recently used idle connection that is still open and young
    /// enough; older ones are closed on the way.
    fn take_idle(&self) -> Option<Idle> {
        let mut idle = self.0.idle.borrow_mut();
        let now = Instant::now();
        while let Some(mut c) = idle.pop() {
            if now.duration_since(c.since) > self.0.idle_timeout {
                // The rest have been idle longer still.
                idle.clear();
                return None;
            }
            if now.duration_since(c.created) <= self.0.max_lifetime && still_open(&mut c.conn.io) {
                return Some(c);
            }
        }
        None
    }

    fn release(&self, conn: Conn, created: Instant, keep_alive: bool) {
        if !keep_alive || !conn.is_read_buf_empty() {
            return;
        }
        let mut idle = self.0.idle.borrow_mut();
        if idle.len() < MAX_IDLE {
            let old = conn.into_parts();
            let mut parts = FramedParts::new(old.io, old.codec);
            parts.read_buf = old.read_buf;
            parts.write_buf = old.write_buf;
            idle.push(Idle {
                conn: parts,
                created,
                since: Instant::now(),
            });
        }
    }

    async fn connect(&self) -> Result<Conn, SendError> {
        let origin = &self.0.origin;
        let open = async {
            let tcp = TcpStream::connect((origin.host.as_str(), origin.port))
                .await
                .map_err(|e| SendError::Connect(format!("{}: {}", origin.host, e.kind())))?;
            let _ = tcp.set_nodelay(true);
            let stream = match &origin.tls {
                None => Stream::Plain(tcp),
                Some((config, name)) => {
                    let tls = tokio_rustls::TlsConnector::from(config.clone())
                        .connect(name.clone(), tcp)
                        .await
                        .map_err(|e| SendError::Connect(format!("TLS: {e}")))?;
                    Stream::Tls(Box::new(tls))
                }
            };
            Ok(Framed::new(stream, ClientCodec::new(self.0.config.clone())))
        };
        match tokio::time::timeout(self.0.connect_timeout, open).await {
            Ok(conn) => conn,
            Err(_) => Err(SendError::Connect("connect timed out".into())),
        }
    }
}

/// Whether an idle connection can take a request: no end of stream, error
/// or unexpected bytes waiting on it. Never waits.
fn still_open(io: &mut Stream) -> bool {
    let mut byte = [0u8; 1];
    let mut buf = ReadBuf::new(&mut byte);
    let mut cx = Context::from_waker(Waker::noop());
    matches!(Pin::new(io).poll_read(&mut cx, &mut buf), Poll::Pending)
}

/// A plain or TLS connection.
enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;
    use std::rc::Rc;

    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;

    use super::*;

    /// What the test upstream does with its n-th request (counted over all
    /// connections, from 0): answer with these bytes, then maybe close.
    struct Reply {
        bytes: Vec<u8>,
        close: bool,
    }

    fn ok(body: &str) -> Reply {
        Reply {
            bytes: format!(
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nx-upstream: yes\r\n\r\n{body}",
                body.len()
            )
            .into_bytes(),
            close: false,
        }
    }

    /// A plain HTTP/1.1 upstream on a loopback port: reads each request's
    /// head (and a `content-length` body), answers with `reply`. Returns its
    /// port, the connections it accepted and the request heads it read.
    async fn upstream(
        reply: impl Fn(usize) -> Reply + 'static,
    ) -> (u16, Rc<Cell<usize>>, Rc<RefCell<Vec<String>>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = Rc::new(Cell::new(0));
        let heads = Rc::new(RefCell::new(Vec::new()));
        let reply = Rc::new(reply);
        let (a, h) = (accepted.clone(), heads.clone());
        actix_rt::spawn(async move {
            loop {
                let (mut sock, _) = listener.accept().await.unwrap();
                a.set(a.get() + 1);
                let (h, reply) = (h.clone(), reply.clone());
                actix_rt::spawn(async move {
                    let mut buf = Vec::new();
                    loop {
                        let end = loop {
                            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                                break i + 4;
                            }
                            let mut chunk = [0u8; 4096];
                            match sock.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                        };
                        let head = String::from_utf8_lossy(&buf[..end]).to_string();
                        let length = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length: "))
                            .map_or(0, |v| v.trim().parse::<usize>().unwrap());
                        while buf.len() < end + length {
                            let mut chunk = [0u8; 4096];
                            match sock.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                        }
                        let body = String::from_utf8_lossy(&buf[end..end + length]).to_string();
                        buf.drain(..end + length);
                        let n = {
                            let mut heads = h.borrow_mut();
                            heads.push(head + &body);
                            heads.len() - 1
                        };
                        let r = reply(n);
                        if sock.write_all(&r.bytes).await.is_err() || r.close {
                            return;
                        }
                    }
                });
            }
        });
        (port, accepted, heads)
    }

    fn client(port: u16) -> Client {
        let origin = Origin::parse(&format!("http://127.0.0.1:{port}")).unwrap();
        Client::new(origin, Duration::from_secs(2))
    }

    fn get(path: &str) -> Request<'_> {
        Request {
            method: Method::GET,
            path,
            headers: HeaderMap::new(),
            body: None,
            timeout: Duration::from_secs(5),
            limit: 1024,
        }
    }

    #[actix_rt::test]
    async fn sequential_calls_share_one_connection() {
        let (port, accepted, heads) = upstream(|n| ok(&format!("answer {n}"))).await;
        let c = client(port);
        for n in 0..3 {
            let r = c.send(get("/order-management/v2/ecom/o-1")).await.unwrap();
            assert_eq!(r.status, StatusCode::OK);
            assert_eq!(r.body, format!("answer {n}"));
            assert_eq!(r.headers.get("x-upstream").unwrap(), "yes");
        }
        assert_eq!(accepted.get(), 1);
        assert_eq!(c.idle_connections(), 1);
        let head = &heads.borrow()[0];
        assert!(
            head.starts_with("GET /order-management/v2/ecom/o-1 HTTP/1.1\r\n"),
            "{head}"
        );
        assert!(
            head.contains(&format!("host: 127.0.0.1:{port}\r\n")),
            "{head}"
        );
        // A GET without a body says nothing about a body.
        assert!(!head.contains("content-length"), "{head}");
    }

    #[actix_rt::test]
    async fn a_body_is_sent_with_its_length_and_an_empty_post_says_zero() {
        let (port, _, heads) = upstream(|_| ok("{}")).await;
        let c = client(port);
        let mut req = get("/receipts");
        req.method = Method::POST;
        req.body = Some(Bytes::from_static(b"{\"a\":1}"));
        c.send(req).await.unwrap();
        let mut req = get("/accesstoken/get");
        req.method = Method::POST;
        c.send(req).await.unwrap();
        let heads = heads.borrow();
        assert!(heads[0].contains("content-length: 7\r\n"), "{}", heads[0]);
        assert!(heads[1].contains("content-length: 0\r\n"), "{}", heads[1]);
    }

    #[actix_rt::test]
    async fn large_bodies_go_whole_both_ways_on_a_reused_connection() {
        let answer = "a".repeat(100_000);
        let (port, accepted, heads) = upstream(move |_| ok(&answer)).await;
        let c = client(port);
        let sent: String = (0..200_000)
            .map(|i| char::from(b'a' + (i % 26) as u8))
            .collect();
        for _ in 0..2 {
            let mut req = get("/images");
            req.method = Method::POST;
            req.body = Some(Bytes::from(sent.clone()));
            req.limit = 1 << 20;
            let r = c.send(req).await.unwrap();
            assert_eq!(r.body.len(), 100_000);
        }
        let heads = heads.borrow();
        for h in heads.iter() {
            assert!(h.contains("content-length: 200000\r\n"), "{}", &h[..200]);
            assert!(h.ends_with(&format!("\r\n\r\n{sent}")));
        }
        assert_eq!(accepted.get(), 1);
        assert_eq!(c.idle_connections(), 1);
    }

    #[actix_rt::test]
    async fn a_connection_the_upstream_closed_while_idle_is_not_used() {
        // Every answer is followed by a close, as an upstream whose idle
        // timeout passed between two calls.
        let (port, accepted, _) = upstream(|n| Reply {
            close: true,
            ..ok(&n.to_string())
        })
        .await;
        let c = client(port);
        for n in 0..3 {
            let r = c.send(get("/x")).await.unwrap();
            assert_eq!(r.body, n.to_string());
            // Let the close arrive before the next call.
            actix_rt::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(accepted.get(), 3);
    }

    #[actix_rt::test]
    async fn connections_idle_or_open_too_long_are_not_reused() {
        let (port, accepted, _) = upstream(|_| ok("ok")).await;
        let origin = || Origin::parse(&format!("http://127.0.0.1:{port}")).unwrap();
        let ms = Duration::from_millis;
        let c = Client::with_reuse(origin(), ms(2000), ms(100), ms(10_000));
        c.send(get("/x")).await.unwrap();
        c.send(get("/x")).await.unwrap();
        assert_eq!(accepted.get(), 1);
        actix_rt::time::sleep(ms(200)).await;
        c.send(get("/x")).await.unwrap();
        assert_eq!(
            accepted.get(),
            2,
            "idle for 200 ms with a 100 ms idle timeout"
        );

        let c = Client::with_reuse(origin(), ms(2000), ms(10_000), ms(300));
        c.send(get("/x")).await.unwrap();
        actix_rt::time::sleep(ms(150)).await;
        c.send(get("/x")).await.unwrap();
        assert_eq!(accepted.get(), 3, "150 ms old: reused");
        actix_rt::time::sleep(ms(200)).await;
        c.send(get("/x")).await.unwrap();
        assert_eq!(accepted.get(), 4, "350 ms old with a 300 ms lifetime");
    }

    #[actix_rt::test]
    async fn connection_close_is_honoured() {
        let (port, accepted, _) = upstream(|_| Reply {
            bytes: b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok".to_vec(),
            close: false,
        })
        .await;
        let c = client(port);
        for _ in 0..2 {
            assert_eq!(c.send(get("/x")).await.unwrap().body, "ok");
        }
        assert_eq!(accepted.get(), 2);
        assert_eq!(c.idle_connections(), 0);
    }

    #[actix_rt::test]
    async fn chunked_and_empty_bodies_are_read_whole() {
        let (port, accepted, _) = upstream(|n| Reply {
            bytes: if n == 0 {
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n4\r\ndefg\r\n0\r\n\r\n".to_vec()
            } else {
                b"HTTP/1.1 204 No Content\r\n\r\n".to_vec()
            },
            close: false,
        })
        .await;
        let c = client(port);
        assert_eq!(c.send(get("/x")).await.unwrap().body, "abcdefg");
        let r = c.send(get("/x")).await.unwrap();
        assert_eq!(r.status, StatusCode::NO_CONTENT);
        assert!(r.body.is_empty());
        assert_eq!(accepted.get(), 1);
    }

    #[actix_rt::test]
    async fn a_cut_short_answer_is_broken_and_one_without_a_length_ends_with_the_connection() {
        let (port, _, _) = upstream(|n| Reply {
            bytes: match n {
                0 => b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc".to_vec(),
                1 => b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n".to_vec(),
                // HTTP/1.0 without a length: the body runs to the close.
                _ => b"HTTP/1.0 200 OK\r\n\r\nuntil the end".to_vec(),
            },
            close: true,
        })
        .await;
        let c = client(port);
        for _ in 0..2 {
            let e = c.send(get("/x")).await.unwrap_err();
            assert!(
                matches!(&e, SendError::Broken(m) if m.contains("ended")),
                "{e:?}"
            );
        }
        let r = c.send(get("/x")).await.unwrap();
        assert_eq!(r.body, "until the end");
        assert_eq!(c.idle_connections(), 0);
    }

    #[actix_rt::test]
    async fn an_answer_over_the_limit_is_broken_and_its_connection_dropped() {
        let big = "x".repeat(2000);
        let (port, accepted, _) = upstream(move |_| ok(&big)).await;
        let c = client(port);
        let e = c.send(get("/x")).await.unwrap_err();
        assert!(
            matches!(&e, SendError::Broken(m) if m.contains("size limit")),
            "{e:?}"
        );
        assert_eq!(c.idle_connections(), 0);
        let mut req = get("/x");
        req.limit = 4096;
        assert_eq!(c.send(req).await.unwrap().body.len(), 2000);
        assert_eq!(accepted.get(), 2);
    }

    #[actix_rt::test]
    async fn a_close_without_an_answer_and_a_silent_upstream_are_told_apart() {
        let (port, _, _) = upstream(|n| Reply {
            bytes: Vec::new(),
            close: n == 0,
        })
        .await;
        let c = client(port);
        assert!(matches!(c.send(get("/x")).await, Err(SendError::Closed)));
        let mut req = get("/x");
        req.timeout = Duration::from_millis(200);
        assert!(matches!(c.send(req).await, Err(SendError::Timeout)));
    }

    #[actix_rt::test]
    async fn a_closed_port_is_a_connect_error() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let e = client(port).send(get("/x")).await.unwrap_err();
        assert!(matches!(e, SendError::Connect(_)), "{e:?}");
    }

    fn fixture(name: &str) -> Vec<u8> {
        std::fs::read(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/fixtures")
                .join(name),
        )
        .unwrap()
    }

    /// A TLS upstream with the test certificate for `localhost` and
    /// 127.0.0.1, answering one request per connection.
    async fn tls_upstream() -> u16 {
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let _ = rustls::crypto::ring::default_provider().install_default();
        let key = PrivateKeyDer::try_from(fixture("tls-key.der")).unwrap();
        let config = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(vec![CertificateDer::from(fixture("tls-cert.der"))], key)
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        actix_rt::spawn(async move {
            loop {
                let (sock, _) = listener.accept().await.unwrap();
                let acceptor = acceptor.clone();
                actix_rt::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(sock).await else {
                        return;
                    };
                    let mut buf = [0u8; 4096];
                    if tls.read(&mut buf).await.is_ok() {
                        let _ = tls
                            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\ntls")
                            .await;
                        let _ = tls.flush().await;
                    }
                });
            }
        });
        port
    }

    #[actix_rt::test]
    async fn https_verifies_the_upstream_certificate() {
        let port = tls_upstream().await;
        let origin = Origin::parse(&format!("https://localhost:{port}")).unwrap();
        // The bundled public roots do not trust the test CA: nothing is sent.
        let e = Client::new(origin.clone(), Duration::from_secs(2))
            .send(get("/x"))
            .await
            .unwrap_err();
        assert!(
            matches!(&e, SendError::Connect(m) if m.contains("certificate")),
            "{e:?}"
        );
        // Trusting it, the exchange goes over TLS.
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(rustls::pki_types::CertificateDer::from(fixture(
                "tls-ca.der",
            )))
            .unwrap();
        let trusted = Client::new(
            origin.with_tls_config(tls_config(roots)),
            Duration::from_secs(2),
        );
        let r = trusted.send(get("/x")).await.unwrap();
        assert_eq!(r.body, "tls");
    }

    #[test]
    fn origins() {
        let o = Origin::parse("https://api.vipps.no").unwrap();
        assert_eq!(
            (o.host.as_str(), o.port, o.tls.is_some()),
            ("api.vipps.no", 443, true)
        );
        assert_eq!(o.host_header, "api.vipps.no");
        let o = Origin::parse("http://[::1]:8080/prefix").unwrap();
        assert_eq!(
            (o.host.as_str(), o.port, o.tls.is_some()),
            ("::1", 8080, false)
        );
        assert_eq!(o.host_header, "[::1]:8080");
        assert_eq!(o.path(), "/prefix");
        assert_eq!(Origin::parse("https://api.vipps.no/").unwrap().path(), "");
        assert!(Origin::parse("ftp://x").is_err());
        assert!(Origin::parse("http://").is_err());
    }
}
