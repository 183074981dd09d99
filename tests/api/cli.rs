//! The command line as an operator uses it: the real binary, real files.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::helpers::spawn_app;

const BIN: &str = env!("CARGO_BIN_EXE_vipps-order-gateway");

fn temp_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("vog-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn write_config(dir: &std::path::Path, base_url: &str) -> std::path::PathBuf {
    let secret = dir.join("client_secret");
    std::fs::write(&secret, "demo-client-secret\n").unwrap();
    let config = dir.join("gateway.toml");
    std::fs::write(
        &config,
        format!(
            r#"listen = "127.0.0.1:0"
[upstream]
base_url = "{base_url}"
[[merchants]]
msn = "123456"
client_id = "demo-client-id"
client_secret_file = "{}"
subscription_key_env = "TEST_DEMO_KEY"
"#,
            secret.display()
        ),
    )
    .unwrap();
    config
}

#[actix_web::test]
async fn check_config_reads_secrets_and_connects() {
    let app = spawn_app().await;
    let dir = temp_dir("check");
    let config = write_config(&dir, &app.sim_address);
    // The child runs on a blocking thread so this test's runtime keeps
    // serving the simulator meanwhile.
    let run = |connect: bool, key: Option<&str>| {
        let mut cmd = Command::new(BIN);
        cmd.arg("check-config").arg("--config").arg(&config);
        if connect {
            cmd.arg("--connect");
        }
        cmd.env_remove("TEST_DEMO_KEY")
            .env_remove("VOG_UPSTREAM__API_VERSION");
        if let Some(k) = key {
            cmd.env("TEST_DEMO_KEY", k);
        }
        async move {
            tokio::task::spawn_blocking(move || cmd.output().unwrap())
                .await
                .unwrap()
        }
    };
    let ok = run(false, Some("demo-subscription-key")).await;
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let out = String::from_utf8_lossy(&ok.stdout);
    assert!(out.contains("1 merchant"), "{out}");
    assert!(
        out.contains("Order Management 2.1"),
        "the default version: {out}"
    );
    let mut old = Command::new(BIN);
    old.arg("check-config")
        .arg("--config")
        .arg(&config)
        .env("TEST_DEMO_KEY", "k")
        .env("VOG_UPSTREAM__API_VERSION", "2.0");
    let old = tokio::task::spawn_blocking(move || old.output().unwrap())
        .await
        .unwrap();
    let out = String::from_utf8_lossy(&old.stdout);
    assert!(out.contains("Order Management 2.0"), "{out}");

    let missing = run(false, None).await;
    assert!(!missing.status.success());
    let err = String::from_utf8_lossy(&missing.stderr);
    assert!(
        err.contains("TEST_DEMO_KEY") && err.contains("123456"),
        "{err}"
    );
    assert!(!err.contains("demo-client-secret"), "{err}");

    let connected = run(true, Some("demo-subscription-key")).await;
    assert!(
        connected.status.success(),
        "{}",
        String::from_utf8_lossy(&connected.stdout)
    );
    assert!(String::from_utf8_lossy(&connected.stdout).contains("merchant 123456: token ok"));
    assert_eq!(app.token_fetches("123456").await, 1);

    let refused = run(true, Some("wrong-key")).await;
    assert!(!refused.status.success());
    let out = String::from_utf8_lossy(&refused.stdout);
    assert!(
        out.contains("token failed") && !out.contains("wrong-key"),
        "{out}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[actix_web::test]
async fn a_missing_secret_file_is_named_at_start() {
    let dir = temp_dir("missing");
    let config = write_config(&dir, "http://127.0.0.1:9");
    std::fs::remove_file(dir.join("client_secret")).unwrap();
    let out = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&config)
        .env("TEST_DEMO_KEY", "k")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("client_secret") && err.contains(&dir.display().to_string()),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[actix_web::test]
async fn serve_with_simulator_adds_a_receipt_out_of_the_box() {
    let mut child = Command::new(BIN)
        .args(["serve", "--simulator", "--listen", "127.0.0.1:0"])
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // The log names the port it listens on.
    let stdout = child.stdout.take().unwrap();
    let port = BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .find_map(|line| {
            line.contains("gateway listening")
                .then(|| {
                    line.rsplit("port=").next().and_then(|p| {
                        p.trim()
                            .trim_matches(|c: char| !c.is_ascii_digit())
                            .parse::<u16>()
                            .ok()
                    })
                })
                .flatten()
        })
        .expect("listening line with port");
    let client = awc::Client::builder()
        .timeout(Duration::from_secs(10))
        .finish();
    let mut resp = client
        .post(format!(
            "http://127.0.0.1:{port}/v1/merchants/123456/orders/demo-1/receipt"
        ))
        .send_json(&crate::helpers::spec_receipt())
        .await
        .unwrap();
    let status = resp.status();
    let body: serde_json::Value = resp.json().await.unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["totals"]["total"], "447.00");
}

#[test]
fn check_config_reads_the_otlp_settings_and_refuses_a_bad_headers_file() {
    let dir = temp_dir("check-otlp");
    let config = write_config(&dir, "http://127.0.0.1:9");
    let headers = dir.join("otlp-headers");
    let mut text = std::fs::read_to_string(&config).unwrap();
    text = text.replace(
        "[[merchants]]",
        &format!(
            "[telemetry]\nsampling_ratio = 0.5\n[telemetry.otlp]\nendpoint = \"http://otel-collector:4318\"\nheaders_file = \"{}\"\n[[merchants]]",
            headers.display()
        ),
    );
    std::fs::write(&config, text).unwrap();
    let run = || {
        Command::new(BIN)
            .arg("check-config")
            .arg("--config")
            .arg(&config)
            .env("TEST_DEMO_KEY", "demo-subscription-key")
            .env_remove("VOG_TELEMETRY__OTLP__ENDPOINT")
            .output()
            .unwrap()
    };
    std::fs::write(&headers, "Authorization: Bearer otlp-s3cret\n").unwrap();
    let ok = run();
    let out = String::from_utf8_lossy(&ok.stdout);
    assert!(
        ok.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(out.contains("traces http://otel-collector:4318"), "{out}");
    assert!(!out.contains("otlp-s3cret"), "{out}");
    std::fs::write(&headers, "Authorization Bearer otlp-s3cret\n").unwrap();
    let bad = run();
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(!bad.status.success());
    assert!(
        err.contains("telemetry.otlp.headers_file") && err.contains("line 1"),
        "{err}"
    );
    assert!(!err.contains("otlp-s3cret"), "a header value in {err}");
    // Settings the gateway cannot use are refused by name.
    for (setting, fix) in [
        ("sampling_ratio = 0.5", "sampling_ratio = 1.5"),
        (
            "endpoint = \"http://otel-collector:4318\"",
            "endpoint = \"otel-collector:4318\"",
        ),
        ("[telemetry.otlp]", "[telemetry.otlp]\nprotocol = \"grpc\""),
    ] {
        let text = std::fs::read_to_string(&config).unwrap();
        std::fs::write(&config, text.replace(setting, fix)).unwrap();
        let refused = run();
        let err = String::from_utf8_lossy(&refused.stderr);
        assert!(!refused.status.success(), "{fix}");
        assert!(
            err.contains("telemetry") || err.contains("grpc"),
            "{fix}: {err}"
        );
        std::fs::write(&config, text).unwrap();
    }
}
