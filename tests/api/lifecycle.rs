//! The process lifecycle with the real binary: graceful shutdown on
//! SIGTERM, secrets reloaded on SIGHUP and when their files change.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use futures_util::future::{select, Either};
use serde_json::{json, Value};

use crate::helpers::{poll_until, spawn_app, spec_receipt};

pub const BIN: &str = env!("CARGO_BIN_EXE_vipps-order-gateway");

/// A running gateway process whose log lines arrive on a channel (read on
/// a thread, so the pipe never fills and the test's runtime never blocks).
pub struct Process {
    pub child: Child,
    lines: mpsc::Receiver<String>,
}

impl Process {
    pub fn start(cmd: &mut Command) -> Self {
        let mut child = cmd
            .env_remove("RUST_LOG")
            .env("VOG_LOG__FORMAT", "text")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self { child, lines }
    }

    /// Waits (without blocking the runtime) for a log line containing `what`
    /// and returns the value after `key=` on it.
    pub async fn value_after(&self, what: &str, key: &str) -> String {
        for _ in 0..200 {
            while let Ok(line) = self.lines.try_recv() {
                if line.contains(what) {
                    if let Some(v) = line.rsplit(&format!("{key}=")).next() {
                        return v
                            .split_whitespace()
                            .next()
                            .unwrap_or("")
                            .trim_matches('"')
                            .to_owned();
                    }
                }
            }
            actix_rt::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("no log line with {what:?}");
    }

    /// Waits (without blocking the runtime) for a log line containing
    /// `what` and returns it.
    pub async fn line_with(&self, what: &str) -> String {
        for _ in 0..200 {
            while let Ok(line) = self.lines.try_recv() {
                if line.contains(what) {
                    return line;
                }
            }
            actix_rt::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("no log line with {what:?}");
    }

    pub async fn saw(&self, what: &str) -> bool {
        for _ in 0..200 {
            while let Ok(line) = self.lines.try_recv() {
                if line.contains(what) {
                    return true;
                }
            }
            actix_rt::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
    }
}

impl Process {
    /// How many of the log lines that arrived since the last look contain
    /// `what` (the lines are consumed).
    pub fn count_new(&self, what: &str) -> usize {
        self.lines.try_iter().filter(|l| l.contains(what)).count()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[actix_web::test]
async fn sigterm_finishes_in_flight_requests_then_exits_zero() {
    let mut p =
        Process::start(Command::new(BIN).args(["serve", "--simulator", "--listen", "127.0.0.1:0"]));
    let sim = p
        .value_after("running against the built-in simulator", "upstream")
        .await;
    let port = p.value_after("gateway listening", "port").await;
    let client = awc::Client::builder()
        .timeout(Duration::from_secs(10))
        .finish();
    client
        .post(format!("{sim}/_simulator/faults"))
        .send_json(&json!({"endpoint": "order", "delayMs": 3000}))
        .await
        .unwrap();
    let url = format!("http://127.0.0.1:{port}/v1/merchants/123456/orders/slow");
    let in_flight = Box::pin(client.get(url.clone()).send());
    let (p_ref, client_ref, sim, port) = (&p, &client, sim.as_str(), port.as_str());
    let terminate = Box::pin(async move {
        // The request is in flight: its upstream call is held at the simulator.
        poll_until("the slow call at the simulator", || async move {
            let mut resp = client_ref
                .get(format!("{sim}/_simulator/counters"))
                .send()
                .await
                .ok()?;
            let counters: Value = resp.json().await.ok()?;
            (counters["calls"]["order"].as_u64() >= Some(1)).then_some(())
        })
        .await;
        p_ref.signal("-TERM");
        // No new connections once stopping (each try on a new connection).
        poll_until("a new connection refused", || async move {
            awc::Client::new()
                .get(format!("http://127.0.0.1:{port}/healthz"))
                .send()
                .await
                .is_err()
                .then_some(())
        })
        .await;
    });
    // Refused while the request is still in flight, which is then answered.
    let answer = match select(in_flight, terminate).await {
        Either::Right(((), in_flight)) => in_flight.await,
        Either::Left(_) => {
            panic!("the in-flight request ended before new connections were refused")
        }
    };
    assert_eq!(
        answer.expect("the in-flight request is answered").status(),
        404
    );
    // The outbox stops with the server, before the runtime ends: its
    // worker and store connections are not dropped by a runtime going away.
    assert!(p.saw("outbox stopped").await, "the outbox was stopped");
    let status = actix_rt::task::spawn_blocking(move || p.child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status:?}");
}

#[actix_web::test]
async fn secrets_reload_on_sighup_and_on_file_change_dropping_changed_tokens() {
    let app = spawn_app().await;
    let dir = std::env::temp_dir().join(format!("vog-reload-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let secret = dir.join("client_secret");
    let key = dir.join("subscription_key");
    std::fs::write(&secret, "demo-client-secret\n").unwrap();
    std::fs::write(&key, "demo-subscription-key\n").unwrap();
    let config = dir.join("gateway.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:0\"\n[log]\nformat = \"text\"\n[upstream]\nbase_url = \"{}\"\n[resilience]\nsecret_poll = \"{}\"\n[[merchants]]\nmsn = \"123456\"\nclient_id = \"demo-client-id\"\nclient_secret_file = \"{}\"\nsubscription_key_file = \"{}\"\n",
            app.sim_address, "300ms", secret.display(), key.display()
        ),
    )
    .unwrap();
    let p = Process::start(
        Command::new(BIN)
            .args(["serve", "--config"])
            .arg(&config)
            .env("SECOND_MERCHANT_KEY", "second-key"),
    );
    let port = p.value_after("gateway listening", "port").await;
    let client = awc::Client::builder()
        .timeout(Duration::from_secs(10))
        .finish();
    let post = |order: &'static str| {
        let client = client.clone();
        let url = format!("http://127.0.0.1:{port}/v1/merchants/123456/orders/{order}/receipt");
        async move {
            client
                .post(url)
                .send_json(&spec_receipt())
                .await
                .unwrap()
                .status()
        }
    };
    assert_eq!(post("r-1").await, 201);

    // Rotate the secret at Vipps and in the mounted file, then SIGHUP.
    let rotate = |new: &'static str| {
        let client = client.clone();
        let url = format!("{}/_simulator/merchants", app.sim_address);
        async move {
            let resp = client
                .post(url)
                .send_json(&json!({"msn": "123456", "clientId": "demo-client-id", "clientSecret": new, "subscriptionKey": "demo-subscription-key"}))
                .await
                .unwrap();
            assert!(resp.status().is_success());
        }
    };
    rotate("rotated-secret-1").await;
    std::fs::write(&secret, "rotated-secret-1\n").unwrap();
    p.signal("-HUP");
    assert!(p.saw("secrets reloaded").await);
    assert_eq!(post("r-2").await, 201);
    let tokens = app.sim_requests_to("token").await;
    assert_eq!(tokens.len(), 2, "the changed merchant's token was dropped");
    assert_eq!(tokens[1]["headers"]["client_secret"], "rotated-secret-1");

    // Without a signal: the file change is noticed by the poll.
    rotate("rotated-secret-2").await;
    std::fs::write(&secret, "rotated-secret-2\n").unwrap();
    assert!(p.saw("file change").await);
    assert_eq!(post("r-3").await, 201);
    let tokens = app.sim_requests_to("token").await;
    assert_eq!(tokens.len(), 3);
    assert_eq!(tokens[2]["headers"]["client_secret"], "rotated-secret-2");

    // A broken secret file keeps the previous secrets in use.
    std::fs::write(&secret, "").unwrap();
    p.signal("-HUP");
    assert!(p.saw("secret reload failed").await);
    assert_eq!(post("r-4").await, 201);

    // A merchant added to the config file serves after a reload.
    std::fs::write(&secret, "rotated-secret-2\n").unwrap();
    let second = dir.join("second_secret");
    std::fs::write(&second, "second-secret\n").unwrap();
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str(&format!(
        "[[merchants]]\nmsn = \"654321\"\nclient_id = \"second-client\"\nclient_secret_file = \"{}\"\nsubscription_key_env = \"SECOND_MERCHANT_KEY\"\n",
        second.display()
    ));
    std::fs::write(&config, text).unwrap();
    let url = format!("http://127.0.0.1:{port}/v1/merchants/654321/orders/r-5/receipt");
    assert_eq!(
        client
            .post(url.clone())
            .send_json(&spec_receipt())
            .await
            .unwrap()
            .status(),
        404
    );
    p.signal("-HUP");
    assert!(p.saw("secrets reloaded").await);
    assert_eq!(
        client
            .post(url)
            .send_json(&spec_receipt())
            .await
            .unwrap()
            .status(),
        201
    );
    let _ = std::fs::remove_dir_all(&dir);
}
