//! One worker's HTTP/1.1 connections to Vipps, on hyper-util's pooled
//! client with rustls, and the gateway's policies on top of it: a total
//! time per exchange, a size limit on answers, idle and lifetime limits on
//! connections, no redirects, and failures sorted into "nothing was sent"
//! and "the outcome is unknown".

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper_rustls::{ConfigBuilderExt as _, HttpsConnector};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

/// An idle connection older than this is closed instead of reused.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(15);
/// No connection is reused once it has been open this long, so a changed
/// DNS answer or a drained upstream node is picked up.
pub const MAX_LIFETIME: Duration = Duration::from_secs(75);
/// Most idle connections a worker keeps.
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
    /// No connection could be opened: nothing was sent.
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
type PooledClient = Client<Connector, Full<Bytes>>;

/// One worker's pooled connections. Cheap to clone (shared).
#[derive(Clone)]
pub struct Transport {
    inner: Arc<Inner>,
}

struct Inner {
    connector: Connector,
    idle_timeout: Duration,
    /// How long one pool hands out connections at most (each pool a random
    /// quarter less or not). A connection is opened in the current pool and
    /// is never taken from it after the pool's time is up, so its last use
    /// comes before `MAX_LIFETIME`.
    pool_lifetime: Duration,
    current: Mutex<Generation>,
}

/// The pool requests take connections from, until `until`. Once replaced,
/// a pool closes its idle connections when the last request using it ends.
struct Generation {
    client: PooledClient,
    until: Instant,
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
        // A connection may idle up to the idle timeout after its pool's
        // last use of it, and must not be used again past its lifetime.
        let pool_lifetime = max_lifetime.saturating_sub(idle_timeout);
        let current = Mutex::new(Generation::new(&connector, idle_timeout, pool_lifetime));
        Self {
            inner: Arc::new(Inner {
                connector,
                idle_timeout,
                pool_lifetime,
                current,
            }),
        }
    }

    /// Sends `req` and reads the whole answer, at most `limit` body bytes.
    /// The caller bounds the time.
    pub async fn send(
        &self,
        req: Request<Full<Bytes>>,
        limit: usize,
    ) -> Result<RawResponse, SendError> {
        let sent = {
            let inner = &*self.inner;
            let mut current = inner.current.lock().unwrap_or_else(PoisonError::into_inner);
            if Instant::now() >= current.until {
                *current =
                    Generation::new(&inner.connector, inner.idle_timeout, inner.pool_lifetime);
            }
            current.client.request(req)
        };
        let resp = sent.await.map_err(|e| {
            if e.is_connect() {
                SendError::Connect(cause(&e))
            } else {
                SendError::Broken(cause(&e))
            }
        })?;
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
        Ok(RawResponse {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    }
}

#[cfg(test)]
impl Transport {
    /// Ends the current pool's time now, as the clock would.
    fn end_current_pool(&self) {
        self.inner
            .current
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .until = Instant::now();
    }
}

impl Generation {
    fn new(connector: &Connector, idle_timeout: Duration, lifetime: Duration) -> Self {
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(idle_timeout)
            .pool_max_idle_per_host(MAX_IDLE)
            .build(connector.clone());
        Self {
            client,
            until: Instant::now() + jittered(lifetime),
        }
    }
}

/// `lifetime` less up to a quarter of it, at random: workers started
/// together then replace their pools, and reopen their connections, at
/// different moments.
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

    #[actix_rt::test]
    async fn connections_are_reused_until_their_lifetime_is_over() {
        let (port, accepted, _) = upstream().await;
        let url = format!("http://127.0.0.1:{port}/x");
        let hour = Duration::from_secs(3600);
        let minute = Duration::from_secs(60);
        let keep = Transport::with_reuse(plain_tls(), hour, minute, hour);
        for _ in 0..3 {
            let a = keep.send(get(&url), 1024).await.unwrap();
            assert_eq!((a.status, &a.body[..]), (StatusCode::OK, &b"ok"[..]));
        }
        assert_eq!(accepted.get(), 1, "one connection for three calls");
        // A lifetime no longer than the idle timeout: a connection could
        // idle past its lifetime before its next use, so none is reused.
        let fresh = Transport::with_reuse(plain_tls(), hour, minute, minute);
        for _ in 0..3 {
            fresh.send(get(&url), 1024).await.unwrap();
        }
        assert_eq!(accepted.get(), 4, "a new connection for each call");
    }

    #[actix_rt::test]
    async fn a_pool_past_its_time_is_replaced_and_its_idle_connections_closed() {
        let (port, accepted, closed) = upstream().await;
        let url = format!("http://127.0.0.1:{port}/x");
        // Connections may idle for an hour: only the pool's time ending can
        // close one.
        let hour = Duration::from_secs(3600);
        let t = Transport::with_reuse(plain_tls(), hour, hour, hour * 2);
        for _ in 0..2 {
            t.send(get(&url), 1024).await.unwrap();
        }
        assert_eq!(accepted.get(), 1, "reused within the pool's time");
        assert_eq!(closed.get(), 0);
        t.end_current_pool();
        t.send(get(&url), 1024).await.unwrap();
        assert_eq!(accepted.get(), 2, "a new pool opens a new connection");
        // The replaced pool closes the connection it held idle.
        for _ in 0..200 {
            if closed.get() == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(closed.get(), 1, "the old pool's connection is closed");
        t.send(get(&url), 1024).await.unwrap();
        assert_eq!(accepted.get(), 2, "the new pool's connection is reused");
    }

    #[test]
    fn a_pool_hands_out_connections_for_three_quarters_to_all_of_its_time() {
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
