//! A PostgreSQL store that goes down and comes back, for real: a cluster
//! of the test's own (`GATEWAY_TEST_POSTGRES_BIN`), stopped and started
//! again under a gateway. While it is down an asynchronous request is
//! answered `503` within a second; once it is back, requests are accepted
//! again within two, whether the gateway had the store open before or
//! never opened it.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::auth::temp_dir;
use crate::helpers::{deliveries, spawn_app_with, spec_receipt, Options, TestApp, MSN};

/// A PostgreSQL cluster of one test, on a loopback port; stopped when dropped.
struct Cluster {
    bin: PathBuf,
    dir: PathBuf,
    port: u16,
}

/// The server refuses to run as root: as root, it runs as Debian's
/// `postgres` user (as in `scripts/test`).
fn as_postgres(program: &Path) -> Command {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    if root {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

fn run(mut c: Command, what: &str) {
    let out = c.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Cluster {
    fn create() -> Self {
        let bin = PathBuf::from(std::env::var("GATEWAY_TEST_POSTGRES_BIN").expect(
            "GATEWAY_TEST_POSTGRES_BIN names the directory of PostgreSQL's initdb and pg_ctl; \
             scripts/test sets it",
        ));
        let dir = temp_dir("pg-down");
        // Readable by the postgres user when the tests run as root.
        let _ = Command::new("chown").arg("postgres").arg(&dir).output();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut initdb = as_postgres(&bin.join("initdb"));
        initdb
            .arg("-D")
            .arg(dir.join("data"))
            .args(["-A", "trust", "-U", "vog"]);
        run(initdb, "initdb");
        let cluster = Self { bin, dir, port };
        cluster.start();
        cluster
    }

    fn url(&self) -> String {
        format!("postgres://vog@127.0.0.1:{}/postgres", self.port)
    }

    fn pg_ctl(&self, args: &[&str]) -> Command {
        let mut c = as_postgres(&self.bin.join("pg_ctl"));
        c.arg("-D").arg(self.dir.join("data")).args(args);
        c
    }

    /// Starts the server and returns once it accepts connections.
    fn start(&self) {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1",
            self.port,
            self.dir.display()
        );
        let mut c = self.pg_ctl(&["-w", "-o", &options, "start"]);
        c.arg("-l").arg(self.dir.join("log"));
        run(c, "pg_ctl start");
    }

    /// Stops the server at once, as a crash would.
    fn stop(&self) {
        run(
            self.pg_ctl(&["-m", "immediate", "-w", "stop"]),
            "pg_ctl stop",
        );
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self.pg_ctl(&["-m", "immediate", "-w", "stop"]).output();
    }
}

async fn gateway(cluster: &Cluster) -> TestApp {
    spawn_app_with(Options {
        extra_toml: format!("[outbox]\nurl = \"{}\"\n", cluster.url()),
        ..Options::default()
    })
    .await
}

/// Posts an asynchronous receipt for `order`: its status and how long
/// the answer took.
async fn post(app: &TestApp, order: &str) -> (u16, Duration, Value) {
    let started = Instant::now();
    let mut resp = app
        .client
        .post(app.url(&format!("/v1/merchants/{MSN}/orders/{order}/receipt")))
        .insert_header(("Prefer", "respond-async"))
        // A connection of its own: one kept from before a long pause may
        // have been closed by the gateway as idle just as it is reused.
        .force_close()
        .send_json(&spec_receipt())
        .await
        .expect("the gateway answers");
    let took = started.elapsed();
    let body = resp.json().await.unwrap_or(Value::Null);
    (resp.status().as_u16(), took, body)
}

/// Five requests while the store is down: each a 503 within a second.
async fn refused_fast(app: &TestApp, label: &str) -> Duration {
    let mut slowest = Duration::ZERO;
    for i in 0..5 {
        let (status, took, body) = post(app, &format!("{label}-down-{i}")).await;
        assert_eq!(status, 503, "{body}");
        assert_eq!(body["type"], "/problems/outbox-unavailable");
        slowest = slowest.max(took);
    }
    assert!(
        slowest <= Duration::from_secs(1),
        "{label}: a 503 took {slowest:?}"
    );
    slowest
}

/// Posts until one is accepted, from when the database was back: how long
/// that took.
async fn accepted_again(app: &TestApp, label: &str, back: Instant) -> Duration {
    for i in 0.. {
        let (status, _, body) = post(app, &format!("{label}-back-{i}")).await;
        if status == 202 {
            return back.elapsed();
        }
        assert_eq!(status, 503, "{body}");
        assert!(back.elapsed() < Duration::from_secs(10), "never accepted");
        actix_rt::time::sleep(Duration::from_millis(20)).await;
    }
    unreachable!()
}

#[actix_rt::test]
async fn a_postgres_store_that_stops_answers_503_within_a_second_and_accepts_within_two_once_back()
{
    let cluster = Cluster::create();
    let app = gateway(&cluster).await;
    let (status, _, body) = post(&app, "before").await;
    assert_eq!(status, 202, "{body}");

    cluster.stop();
    let slowest = refused_fast(&app, "open").await;
    cluster.start();
    let back = accepted_again(&app, "open", Instant::now()).await;
    println!("store open, then down: slowest 503 {slowest:?}; accepted again {back:?} after the database was back");
    assert!(
        back <= Duration::from_secs(2),
        "accepted again after {back:?}"
    );
}

#[actix_rt::test]
async fn a_postgres_store_down_at_start_answers_503_within_a_second_and_accepts_within_two_once_up()
{
    let cluster = Cluster::create();
    cluster.stop();
    let app = gateway(&cluster).await;
    let slowest = refused_fast(&app, "never").await;
    // Long enough for the reopen backoff to reach its longest pause.
    actix_rt::time::sleep(Duration::from_secs(3)).await;
    cluster.start();
    let back = accepted_again(&app, "never", Instant::now()).await;
    println!(
        "store down at start: slowest 503 {slowest:?}; accepted {back:?} after the database was up"
    );
    assert!(back <= Duration::from_secs(2), "accepted after {back:?}");
}

/// What the [`CutProxy`] does with the `COMMIT` it is told to cut.
const PASS: u8 = 0;
/// Forward it, let the server commit, and break the connection instead of
/// passing its answer on: the entry is stored, but the gateway cannot know.
const CUT_AFTER: u8 = 1;
/// Break the connection instead of forwarding it: nothing is stored.
const CUT_BEFORE: u8 = 2;

/// A TCP relay between the gateway and PostgreSQL that breaks the
/// connection on the `COMMIT` (a simple-query message) of the transaction
/// that sent a given marker (an order id among its values), once, as a
/// network fault in the middle of a commit would. Other transactions, such
/// as the worker's claims, pass.
struct CutProxy {
    port: u16,
    cut: PlannedCut,
}

/// What to do, and the bytes that mark the transaction to do it to.
type PlannedCut = std::sync::Arc<std::sync::Mutex<Option<(u8, Vec<u8>)>>>;

impl CutProxy {
    async fn start(upstream_port: u16) -> Self {
        use std::sync::atomic::Ordering;
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let cut = PlannedCut::default();
        let shared = cut.clone();
        actix_rt::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = tokio::net::TcpStream::connect(("127.0.0.1", upstream_port)).await
                else {
                    continue;
                };
                let planned = shared.clone();
                let (mut client_rx, mut client_tx) = client.into_split();
                let (mut server_rx, mut server_tx) = server.into_split();
                let cut = std::sync::Arc::new(tokio::sync::Notify::new());
                let cut_up = cut.clone();
                // Set while the server's answer to a cut COMMIT is being
                // swallowed; `answered` fires once the server said it is
                // ready again (the COMMIT done), or closed.
                let swallow = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
                let swallow_down = swallow.clone();
                let answered = std::sync::Arc::new(tokio::sync::Notify::new());
                let answered_down = answered.clone();
                actix_rt::spawn(async move {
                    let mut buf = vec![0u8; 64 * 1024];
                    // This connection's transaction sent the marker.
                    let mut marked = false;
                    loop {
                        let n = match client_rx.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        let chunk = &buf[..n];
                        let commit = chunk.windows(7).any(|w| w == b"COMMIT\0");
                        // A transaction that rolled back took its marker
                        // with it.
                        if chunk.windows(9).any(|w| w == b"ROLLBACK\0") {
                            marked = false;
                        }
                        let action = {
                            let mut planned = planned.lock().unwrap();
                            marked |= planned.as_ref().is_some_and(|(_, marker)| {
                                chunk.windows(marker.len()).any(|w| w == marker.as_slice())
                            });
                            if commit && marked {
                                marked = false;
                                planned.take().map_or(PASS, |(mode, _)| mode)
                            } else {
                                if commit {
                                    marked = false;
                                }
                                PASS
                            }
                        };
                        if action == CUT_BEFORE {
                            break;
                        }
                        if action == CUT_AFTER {
                            // Nothing the server answers reaches the gateway.
                            swallow.store(true, Ordering::SeqCst);
                        }
                        if server_tx.write_all(chunk).await.is_err() {
                            break;
                        }
                        if action == CUT_AFTER {
                            // The server has committed when it answers;
                            // only then is the connection cut.
                            answered.notified().await;
                            break;
                        }
                    }
                    cut_up.notify_one();
                });
                actix_rt::spawn(async move {
                    let mut buf = vec![0u8; 64 * 1024];
                    loop {
                        tokio::select! {
                            biased;
                            _ = cut.notified() => break,
                            read = server_rx.read(&mut buf) => match read {
                                Ok(0) | Err(_) => break,
                                Ok(n) => {
                                    if swallow_down.load(Ordering::SeqCst) {
                                        // ReadyForQuery: 'Z', length 5.
                                        if buf[..n].windows(5).any(|w| w == b"Z\0\0\0\x05") {
                                            answered_down.notify_one();
                                        }
                                        continue;
                                    }
                                    if client_tx.write_all(&buf[..n]).await.is_err() {
                                        break;
                                    }
                                }
                            },
                        }
                    }
                    answered_down.notify_one();
                    // Dropping both halves closes the gateway's connection.
                });
            }
        });
        Self { port, cut }
    }

    /// Cuts, as `mode` says, the commit of the next transaction that
    /// sends `marker`.
    fn cut_commit_of(&self, marker: &str, mode: u8) {
        *self.cut.lock().unwrap() = Some((mode, marker.as_bytes().to_vec()));
    }
}

/// The merchant's deliveries of `order`.
async fn deliveries_of(app: &TestApp, order: &str) -> Vec<Value> {
    deliveries(app)
        .await
        .into_iter()
        .filter(|d| d["orderId"] == order)
        .collect()
}

#[actix_rt::test]
async fn a_commit_whose_outcome_is_unknown_says_so_and_the_identical_repost_stores_it_once() {
    let cluster = Cluster::create();
    let proxy = CutProxy::start(cluster.port).await;
    // One failed delivery opens the breaker for a minute: the worker then
    // leaves the merchant's entries alone (its claims still commit, and
    // the proxy lets them pass: it cuts the commit of the request's order).
    let app = spawn_app_with(Options {
        extra_toml: format!(
            "[resilience]\nmax_attempts = 1\nbreaker_failures = 1\nbreaker_open = \"60s\"\n\
             [outbox]\nurl = \"postgres://vog@127.0.0.1:{}/postgres\"\n",
            proxy.port
        ),
        ..Options::default()
    })
    .await;
    // Opened and idle: the first receipt delivered, nothing pending.
    let (status, _, body) = post(&app, "warm").await;
    assert_eq!(status, 202, "{body}");
    crate::helpers::poll_until("the first delivery", || async {
        let d = deliveries_of(&app, "warm").await;
        (d.first().is_some_and(|d| d["state"] == "delivered")).then_some(())
    })
    .await;

    app.add_fault(serde_json::json!({"endpoint": "receipt", "status": 503}))
        .await;
    for (mode, order, stored) in [
        (CUT_AFTER, "cut-after", true),
        (CUT_BEFORE, "cut-before", false),
    ] {
        proxy.cut_commit_of(order, mode);
        let (status, _, body) = post(&app, order).await;
        assert_eq!(status, 503, "{order}: {body}");
        assert_eq!(body["type"], "/problems/outbox-unavailable");
        let detail = body["detail"].as_str().unwrap();
        assert!(detail.contains("may or may not be stored"), "{detail}");
        assert!(detail.contains("identical request again"), "{detail}");
        assert_eq!(
            deliveries_of(&app, order).await.len(),
            usize::from(stored),
            "{order}: stored as the cut left it"
        );
        // The identical request again: the same delivery if it was stored,
        // a new one if not; one either way.
        let (status, _, again) = post(&app, order).await;
        assert_eq!(status, 202, "{order}: {again}");
        let all = deliveries_of(&app, order).await;
        assert_eq!(all.len(), 1, "{order}: {all:?}");
        assert_eq!(all[0]["deliveryId"], again["deliveryId"]);
        if mode == CUT_AFTER {
            // Its one attempt fails and opens the breaker: once that is
            // recorded, the worker stays idle.
            crate::helpers::poll_until("the attempt recorded", || async {
                let d = deliveries_of(&app, order).await;
                (d[0]["attempts"] == 1).then_some(())
            })
            .await;
        }
    }
}
