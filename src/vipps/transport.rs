//! One worker's HTTP/1.1 connections to Vipps, on hyper's connection API
//! (`hyper::client::conn::http1`) with rustls, and the gateway's policies
//! on top of it: a total time per exchange, a size limit on answers, idle
//! and lifetime limits on connections, no redirects, and failures sorted
//! into "nothing was sent" and "the outcome is unknown".
//!
//! actix-web runs one single-threaded runtime per worker, and each worker
//! builds its own client: the pool is the worker's own, with no lock and
//! no task between a request and its connection (docs/decisions.md,
//! "Upstream").

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::{Rc, Weak};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::uri::{Authority, Scheme};
use http::{header, HeaderMap, HeaderValue, Request, StatusCode, Uri};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::client::conn::http1;
use hyper_rustls::{ConfigBuilderExt as _, HttpsConnector};
use hyper_util::client::legacy::connect::HttpConnector;
use tower_service::Service as _;

/// An idle connection older than this is closed instead of reused.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(15);
/// No connection is used once it has been open this long, so a changed DNS
/// answer or a drained upstream node is picked up.
pub const MAX_LIFETIME: Duration = Duration::from_secs(75);
/// Most idle connections a worker keeps to one upstream host.
pub const MAX_IDLE: usize = 128;

/// A complete answer.
#[derive(Debug)]
pub struct RawResponse {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// Why an exchange produced no answer.
#[derive(Debug)]
pub enum SendError {
    /// No connection could be opened, or the request was never written:
    /// nothing was sent.
    Connect(String),
    /// The exchange broke after the request may have been sent (cut short,
    /// unparsable, over the size limit): the outcome is unknown.
    Broken(String),
}

/// A client configuration with rustls' ring provider, still to be told
/// which roots to trust.
fn tls_builder(
) -> Result<rustls::ConfigBuilder<rustls::ClientConfig, rustls::WantsVerifier>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup failed: {e}"))
}

/// A client configuration trusting `roots`, with rustls' ring provider.
pub fn tls_config(roots: rustls::RootCertStore) -> Result<rustls::ClientConfig, String> {
    Ok(tls_builder()?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// A client configuration trusting the Mozilla roots bundled with the
/// gateway (hyper-rustls' webpki roots).
pub fn default_tls_config() -> Result<rustls::ClientConfig, String> {
    Ok(tls_builder()?.with_webpki_roots().with_no_client_auth())
}

type Connector = HttpsConnector<HttpConnector>;
type Sender = http1::SendRequest<Full<Bytes>>;

/// One worker's connections. Cheap to clone (shared within the worker).
#[derive(Clone)]
pub struct Transport {
    inner: Rc<Inner>,
}

struct Inner {
    connector: Connector,
    idle_timeout: Duration,
    max_lifetime: Duration,
    /// Idle connections per upstream host (the gateway has one,
    /// `upstream.base_url`).
    hosts: RefCell<Vec<Host>>,
    /// Whether a task is waiting to close idle connections as they expire.
    reaping: Cell<bool>,
}

struct Host {
    scheme: Scheme,
    authority: Authority,
    /// Oldest idle first; connections are taken from the back, so the most
    /// recently used (warm) one goes first and the front ones expire.
    idle: VecDeque<Idle>,
}

/// A connection and when it may be used until.
struct Conn {
    sender: Sender,
    /// When it was opened plus its lifetime: it is not used from then on.
    expires: Instant,
}

struct Idle {
    conn: Conn,
    /// When its idle time ends: it is not used from then on.
    idle_until: Instant,
}

impl Idle {
    fn usable(&self, now: Instant) -> bool {
        now < self.idle_until && now < self.conn.expires && !self.conn.sender.is_closed()
    }

    fn ends(&self) -> Instant {
        self.idle_until.min(self.conn.expires)
    }
}

impl Transport {
    pub fn new(tls: rustls::ClientConfig, connect_timeout: Duration) -> Self {
        Self::with_reuse(tls, connect_timeout, IDLE_TIMEOUT, MAX_LIFETIME)
    }

    /// A transport that closes connections idle for `idle_timeout` or open
    /// for `max_lifetime` instead of the defaults.
    pub fn with_reuse(
        tls: rustls::ClientConfig,
        connect_timeout: Duration,
        idle_timeout: Duration,
        max_lifetime: Duration,
    ) -> Self {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(connect_timeout));
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        Self {
            inner: Rc::new(Inner {
                connector,
                idle_timeout,
                max_lifetime,
                hosts: RefCell::new(Vec::new()),
                reaping: Cell::new(false),
            }),
        }
    }

    /// Sends `req` and reads the whole answer, at most `limit` body bytes.
    /// The caller bounds the time. An idle connection that turns out to be
    /// closed before the request was written to it is left for the next;
    /// once a request was written, it is never written again here.
    pub async fn send(
        &self,
        mut req: Request<Full<Bytes>>,
        limit: usize,
    ) -> Result<RawResponse, SendError> {
        let uri = std::mem::take(req.uri_mut());
        let (Some(scheme), Some(authority)) = (uri.scheme(), uri.authority()) else {
            return Err(SendError::Connect(format!("not an absolute URL: {uri}")));
        };
        if !req.headers().contains_key(header::HOST) {
            let host = HeaderValue::from_str(authority.as_str())
                .map_err(|_| SendError::Connect("the host is not a valid header value".into()))?;
            req.headers_mut().insert(header::HOST, host);
        }
        // HTTP/1.1 names the target in origin form; the host is in `Host`.
        *req.uri_mut() = match uri.path_and_query() {
            Some(path) => Uri::from(path.clone()),
            None => Uri::from_static("/"),
        };
        while let Some(mut conn) = self.checkout(scheme, authority) {
            if conn.sender.ready().await.is_err() {
                continue;
            }
            match conn.sender.try_send_request(req).await {
                Ok(resp) => return self.read(conn, scheme, authority, resp, limit).await,
                Err(mut e) => match e.take_message() {
                    // Closed before the request was written: try the next.
                    Some(back) => req = back,
                    None => return Err(SendError::Broken(cause(e.error()))),
                },
            }
        }
        let mut conn = self.connect(uri.clone()).await?;
        match conn.sender.try_send_request(req).await {
            Ok(resp) => self.read(conn, scheme, authority, resp, limit).await,
            Err(mut e) => Err(match e.take_message() {
                Some(_) => SendError::Connect(format!(
                    "the new connection closed before the request was written: {}",
                    cause(e.error())
                )),
                None => SendError::Broken(cause(e.error())),
            }),
        }
    }

    /// Reads the answer's body, then keeps the connection for the next
    /// exchange.
    async fn read(
        &self,
        conn: Conn,
        scheme: &Scheme,
        authority: &Authority,
        resp: http::Response<hyper::body::Incoming>,
        limit: usize,
    ) -> Result<RawResponse, SendError> {
        let (parts, body) = resp.into_parts();
        let body = Limited::new(body, limit)
            .collect()
            .await
            .map_err(|e| {
                if e.is::<http_body_util::LengthLimitError>() {
                    SendError::Broken(format!("answer body over {limit} bytes"))
                } else {
                    SendError::Broken(format!("answer body: {}", cause(&*e)))
                }
            })?
            .to_bytes();
        self.checkin(scheme, authority, conn);
        Ok(RawResponse {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    }

    /// The most recently used idle connection to the host that may still
    /// be used; those that may not are closed.
    fn checkout(&self, scheme: &Scheme, authority: &Authority) -> Option<Conn> {
        let mut hosts = self.inner.hosts.borrow_mut();
        let host = hosts
            .iter_mut()
            .find(|h| h.authority == *authority && h.scheme == *scheme)?;
        let now = Instant::now();
        while let Some(idle) = host.idle.pop_back() {
            if idle.usable(now) {
                return Some(idle.conn);
            }
        }
        None
    }

    /// Keeps `conn` idle for the next exchange with the host, unless its
    /// lifetime is over; past `MAX_IDLE`, the oldest idle one is closed.
    fn checkin(&self, scheme: &Scheme, authority: &Authority, conn: Conn) {
        let now = Instant::now();
        if now >= conn.expires || conn.sender.is_closed() {
            return;
        }
        let idle = Idle {
            conn,
            idle_until: now + self.inner.idle_timeout,
        };
        {
            let mut hosts = self.inner.hosts.borrow_mut();
            let i = match hosts
                .iter()
                .position(|h| h.authority == *authority && h.scheme == *scheme)
            {
                Some(i) => i,
                None => {
                    hosts.push(Host {
                        scheme: scheme.clone(),
                        authority: authority.clone(),
                        idle: VecDeque::new(),
                    });
                    hosts.len() - 1
                }
            };
            let host = &mut hosts[i];
            host.idle.push_back(idle);
            if host.idle.len() > MAX_IDLE {
                host.idle.pop_front();
            }
        }
        if !self.inner.reaping.replace(true) {
            actix_rt::spawn(reap(Rc::downgrade(&self.inner)));
        }
    }

    /// A new connection to the host of `uri`, its exchanges driven by a
    /// task of its own on this worker.
    async fn connect(&self, uri: Uri) -> Result<Conn, SendError> {
        let mut connector = self.inner.connector.clone();
        std::future::poll_fn(|cx| connector.poll_ready(cx))
            .await
            .map_err(|e| SendError::Connect(cause(&*e)))?;
        let io = connector
            .call(uri)
            .await
            .map_err(|e| SendError::Connect(cause(&*e)))?;
        let opened = Instant::now();
        let (sender, connection) = http1::handshake(io)
            .await
            .map_err(|e| SendError::Connect(cause(&e)))?;
        // Ends when the connection closes: the peer closed it, an exchange
        // broke, or the pool dropped its sender.
        actix_rt::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %cause(&e), "upstream connection ended");
            }
        });
        Ok(Conn {
            sender,
            expires: opened + jittered(self.inner.max_lifetime),
        })
    }
}

/// Closes idle connections as their idle time or lifetime ends, then ends
/// once none is idle (the next check-in starts it again) or the transport
/// is gone.
async fn reap(inner: Weak<Inner>) {
    loop {
        let next = {
            let Some(inner) = inner.upgrade() else {
                return;
            };
            let now = Instant::now();
            let mut next: Option<Instant> = None;
            for host in inner.hosts.borrow_mut().iter_mut() {
                host.idle.retain(|i| i.usable(now));
                for i in &host.idle {
                    next = Some(next.map_or(i.ends(), |n| n.min(i.ends())));
                }
            }
            match next {
                Some(next) => next,
                None => {
                    inner.reaping.set(false);
                    return;
                }
            }
        };
        tokio::time::sleep_until(tokio::time::Instant::from_std(next)).await;
    }
}

#[cfg(test)]
impl Transport {
    /// How many connections are idle.
    fn idle(&self) -> usize {
        self.inner.hosts.borrow().iter().map(|h| h.idle.len()).sum()
    }
}

/// `lifetime` less up to a quarter of it, at random: connections opened
/// together (a burst at start) are replaced at different moments.
fn jittered(lifetime: Duration) -> Duration {
    lifetime.saturating_sub(lifetime / 4 * fastrand::u32(0..=1000) / 1000)
}

/// An error and its causes in one line, for the log. hyper's messages name
/// what broke ("connection closed before message completed"); none carries
/// a header value or a body.
fn cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let next = s.to_string();
        if !text.contains(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;
    use std::rc::Rc;

    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio::net::TcpListener;

    use super::*;

    /// A keep-alive upstream answering every request `200 ok`; counts the
    /// connections it accepted and those the client closed.
    async fn upstream() -> (u16, Rc<Cell<usize>>, Rc<Cell<usize>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = Rc::new(Cell::new(0));
        let closed = Rc::new(Cell::new(0));
        let (counter, close_counter) = (accepted.clone(), closed.clone());
        actix_rt::spawn(async move {
            loop {
                let (mut sock, _) = listener.accept().await.unwrap();
                counter.set(counter.get() + 1);
                let close_counter = close_counter.clone();
                actix_rt::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    loop {
                        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                            match sock.read(&mut chunk).await {
                                Ok(0) | Err(_) => {
                                    close_counter.set(close_counter.get() + 1);
                                    return;
                                }
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                        }
                        buf.clear();
                        let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                        if sock.write_all(answer).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        (port, accepted, closed)
    }

    fn get(url: &str) -> Request<Full<Bytes>> {
        Request::get(url).body(Full::new(Bytes::new())).unwrap()
    }

    fn plain_tls() -> rustls::ClientConfig {
        default_tls_config().unwrap()
    }

    /// Polls `cond` until it holds, for at most 10 s.
    async fn until(what: &str, cond: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !cond() {
            assert!(Instant::now() < deadline, "never: {what}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    const HOUR: Duration = Duration::from_secs(3600);

    #[actix_rt::test]
    async fn a_connection_is_reused_while_it_is_young_and_not_idle_too_long() {
        let (port, accepted, closed) = upstream().await;
        let url = format!("http://127.0.0.1:{port}/x");
        let t = Transport::with_reuse(plain_tls(), HOUR, HOUR, HOUR);
        for _ in 0..3 {
            let a = t.send(get(&url), 1024).await.unwrap();
            assert_eq!((a.status, &a.body[..]), (StatusCode::OK, &b"ok"[..]));
        }
        assert_eq!(accepted.get(), 1, "one connection for three calls");
        assert_eq!((t.idle(), closed.get()), (1, 0));
    }

    #[actix_rt::test]
    async fn a_connection_past_its_lifetime_is_closed_and_never_used_again() {
        let (port, accepted, closed) = upstream().await;
        let url = format!("http://127.0.0.1:{port}/x");
        // No lifetime at all: a connection serves the exchange it was
        // opened for and is closed after it.
        let t = Transport::with_reuse(plain_tls(), HOUR, HOUR, Duration::ZERO);
        for _ in 0..3 {
            t.send(get(&url), 1024).await.unwrap();
        }
        assert_eq!(accepted.get(), 3, "a new connection for each call");
        until("the three connections are closed", || closed.get() == 3).await;
        assert_eq!(t.idle(), 0);
        // A lifetime of 200 ms: the idle connection is closed once it ends,
        // with no call to notice it, and the next call opens another.
        let (port, accepted, closed) = upstream().await;
        let url = format!("http://127.0.0.1:{port}/x");
        let lifetime = Duration::from_millis(200);
        let t = Transport::with_reuse(plain_tls(), HOUR, HOUR, lifetime);
        let opened = Instant::now();
        t.send(get(&url), 1024).await.unwrap();
        until("the connection is closed", || closed.get() == 1).await;
        assert!(
            opened.elapsed() >= lifetime * 3 / 4,
            "closed after {:?}",
            opened.elapsed()
        );
        t.send(get(&url), 1024).await.unwrap();
        assert_eq!(accepted.get(), 2);
    }

    #[actix_rt::test]
    async fn an_idle_connection_is_closed_when_its_idle_time_ends() {
        let (port, accepted, closed) = upstream().await;
        let url = format!("http://127.0.0.1:{port}/x");
        let idle = Duration::from_millis(100);
        let t = Transport::with_reuse(plain_tls(), HOUR, idle, HOUR);
        t.send(get(&url), 1024).await.unwrap();
        let answered = Instant::now();
        until("the idle connection is closed", || closed.get() == 1).await;
        assert!(
            answered.elapsed() >= idle,
            "closed after {:?}",
            answered.elapsed()
        );
        assert_eq!(t.idle(), 0);
        t.send(get(&url), 1024).await.unwrap();
        assert_eq!(accepted.get(), 2, "a new connection after the idle time");
    }

    #[actix_rt::test]
    async fn at_most_max_idle_connections_are_kept() {
        let (port, accepted, closed) = upstream().await;
        let url = format!("http://127.0.0.1:{port}/x");
        let t = Transport::with_reuse(plain_tls(), HOUR, HOUR, HOUR);
        // Started together, the exchanges find no idle connection: each
        // opens its own.
        let calls: Vec<_> = (0..MAX_IDLE + 2)
            .map(|_| {
                let (t, url) = (t.clone(), url.clone());
                actix_rt::spawn(async move { t.send(get(&url), 1024).await.map(|_| ()) })
            })
            .collect();
        for call in calls {
            call.await.unwrap().unwrap();
        }
        assert_eq!(accepted.get(), MAX_IDLE + 2);
        assert_eq!(t.idle(), MAX_IDLE);
        until("the two oldest are closed", || closed.get() == 2).await;
    }

    #[test]
    fn a_connection_lives_three_quarters_to_all_of_its_lifetime() {
        let lifetime = Duration::from_secs(60);
        for _ in 0..1000 {
            let j = jittered(lifetime);
            assert!(j <= lifetime && j >= lifetime * 3 / 4, "{j:?}");
        }
        assert_eq!(jittered(Duration::ZERO), Duration::ZERO);
    }

    #[actix_rt::test]
    async fn an_answer_over_the_limit_is_broken() {
        let (port, _, _) = upstream().await;
        let t = Transport::new(plain_tls(), Duration::from_secs(2));
        let e = t
            .send(get(&format!("http://127.0.0.1:{port}/x")), 1)
            .await
            .unwrap_err();
        assert!(
            matches!(&e, SendError::Broken(m) if m.contains("over 1 bytes")),
            "{e:?}"
        );
    }

    #[actix_rt::test]
    async fn a_closed_port_is_a_connect_error() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let t = Transport::new(plain_tls(), Duration::from_secs(2));
        let e = t
            .send(get(&format!("http://127.0.0.1:{port}/x")), 1024)
            .await
            .unwrap_err();
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

    /// A TLS upstream with the test certificate for `localhost`, answering
    /// one request per connection.
    async fn tls_upstream() -> u16 {
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let key = PrivateKeyDer::try_from(fixture("tls-key.der")).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
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
        let url = format!("https://localhost:{port}/x");
        // The bundled public roots do not trust the test CA: nothing is sent.
        let e = Transport::new(plain_tls(), Duration::from_secs(2))
            .send(get(&url), 1024)
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
        let trusted = Transport::new(tls_config(roots).unwrap(), Duration::from_secs(2));
        let a = trusted.send(get(&url), 1024).await.unwrap();
        assert_eq!(&a.body[..], b"tls");
    }
}
