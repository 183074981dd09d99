//! The outbox's guarantees with the real binary: receipts accepted during a
//! Vipps outage survive a SIGKILL of the gateway, two gateways on one
//! PostgreSQL share a backlog, taking over the entries of one that died,
//! a second gateway on one SQLite file is refused until the first is
//! gone, and a store that fails every statement is logged once a minute.
//! Each test prints what it counted (accepted, delivered, lost, duplicated).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::json;

use crate::auth::temp_dir;
use crate::helpers::{poll_until, spawn_app, spec_receipt, TestApp, MSN};
use crate::lifecycle::{Process, BIN};

/// A gateway process on `store`, against the test app's simulator, with
/// short backoffs and `lease`. Its rate is set, not left to the defaults:
/// the 202s take nothing from it, and the deliveries go at 200 a second.
fn gateway(app: &TestApp, dir: &Path, name: &str, store: &str, lease: &str) -> Process {
    let config = dir.join(format!("{name}.toml"));
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:0\"\n[log]\nformat = \"text\"\n[upstream]\nbase_url = \"{}\"\n\
             [resilience]\nrate_per_second = 200\nrate_burst = 400\n\
             [outbox]\nurl = \"{store}\"\nbackoff_base = \"500ms\"\nbackoff_max = \"1s\"\nlease = \"{lease}\"\n\
             [[merchants]]\nmsn = \"{MSN}\"\nclient_id = \"demo-client-id\"\n\
             client_secret_env = \"CRASH_CLIENT_SECRET\"\nsubscription_key_env = \"CRASH_SUBSCRIPTION_KEY\"\n",
            app.sim_address
        ),
    )
    .unwrap();
    Process::start(
        Command::new(BIN)
            .args(["serve", "--config"])
            .arg(&config)
            .env("CRASH_CLIENT_SECRET", "demo-client-secret")
            .env("CRASH_SUBSCRIPTION_KEY", "demo-subscription-key"),
    )
}

/// Posts receipts for `orders` with `Prefer: respond-async`, 25 at a time;
/// every one must be answered 202.
async fn accept_all(port: &str, orders: &[String]) {
    let client = awc::Client::builder()
        .timeout(Duration::from_secs(30))
        .finish();
    for chunk in orders.chunks(25) {
        let posts = chunk.iter().map(|order| {
            let url = format!("http://127.0.0.1:{port}/v1/merchants/{MSN}/orders/{order}/receipt");
            let client = client.clone();
            async move {
                let status = client
                    .post(url)
                    .insert_header(("Prefer", "respond-async"))
                    .send_json(&spec_receipt())
                    .await
                    .expect("the gateway answers")
                    .status();
                assert_eq!(status, 202, "{order}");
            }
        });
        futures_util::future::join_all(posts).await;
    }
}

/// Orders whose receipt the simulator stored (answered 201), with how many
/// times; and how many answers were 409.
async fn stored_at_vipps(app: &TestApp) -> (BTreeMap<String, usize>, usize) {
    let mut stored = BTreeMap::new();
    let mut conflicts = 0;
    for r in app.sim_requests_to("receipt").await {
        let order = r["path"]
            .as_str()
            .unwrap()
            .rsplit('/')
            .next()
            .unwrap()
            .to_owned();
        match r["status"].as_u64() {
            Some(201) => *stored.entry(order).or_insert(0) += 1,
            Some(409) => conflicts += 1,
            _ => {}
        }
    }
    (stored, conflicts)
}

/// Waits until the simulator holds a receipt for every order.
async fn wait_for_all(app: &TestApp, orders: &[String]) {
    let want: BTreeSet<&str> = orders.iter().map(String::as_str).collect();
    poll_until("every receipt at Vipps", || async {
        let (stored, _) = stored_at_vipps(app).await;
        want.iter().all(|o| stored.contains_key(*o)).then_some(())
    })
    .await;
}

#[actix_web::test]
async fn receipts_accepted_during_an_outage_survive_a_sigkill_and_reach_vipps_once() {
    let app = spawn_app().await;
    app.add_fault(json!({"endpoint": "receipt", "status": 503}))
        .await;
    let dir = temp_dir("crash");
    let store = format!("sqlite://{}", dir.join("outbox.db").display());
    let orders: Vec<String> = (0..500).map(|i| format!("crash-{i}")).collect();

    // A short lease: an entry the first held when it was killed is taken
    // over within the test's wait.
    let first = gateway(&app, &dir, "first", &store, "3s");
    let port = first.value_after("gateway listening", "port").await;
    accept_all(&port, &orders).await;
    drop(first); // SIGKILL, then reaped
    assert!(
        stored_at_vipps(&app).await.0.is_empty(),
        "nothing reached Vipps during the outage"
    );

    let second = gateway(&app, &dir, "second", &store, "30s");
    second.value_after("gateway listening", "port").await;
    app.clear_faults().await;
    wait_for_all(&app, &orders).await;
    let (stored, conflicts) = stored_at_vipps(&app).await;
    let lost = orders.iter().filter(|o| !stored.contains_key(*o)).count();
    let duplicated = stored.values().filter(|n| **n > 1).count();
    println!(
        "crash: accepted {}, delivered {}, lost {lost}, duplicated {duplicated}, 409s {conflicts}",
        orders.len(),
        stored.len()
    );
    assert_eq!((lost, duplicated), (0, 0));
    assert_eq!(stored.len(), orders.len());
    drop(second);
}

#[actix_web::test]
async fn two_gateways_on_one_postgres_share_a_backlog_and_take_over_a_dead_ones_entries() {
    let app = spawn_app().await;
    app.add_fault(json!({"endpoint": "receipt", "status": 503}))
        .await;
    let dir = temp_dir("replicas");
    let store = crate::outbox_store::postgres_database().await;
    let orders: Vec<String> = (0..1000).map(|i| format!("shared-{i}")).collect();

    let a = gateway(&app, &dir, "a", &store, "3s");
    let port_a = a.value_after("gateway listening", "port").await;
    let b = gateway(&app, &dir, "b", &store, "3s");
    b.value_after("gateway listening", "port").await;
    accept_all(&port_a, &orders).await;
    app.clear_sim_requests().await;

    // Vipps comes back slowly: every receipt takes 200 ms, so each replica
    // has a batch in flight when A is killed.
    app.clear_faults().await;
    app.add_fault(json!({"endpoint": "receipt", "delayMs": 200}))
        .await;
    poll_until("both replicas delivering", || async {
        let (stored, _) = stored_at_vipps(&app).await;
        (stored.len() >= 100).then_some(())
    })
    .await;
    let delivered_by_a = a.count_new("result=\"delivered\"");
    drop(a); // SIGKILL with claims in flight
    app.clear_faults().await;
    wait_for_all(&app, &orders).await;
    let delivered_by_b = b.count_new("result=\"delivered\"");

    let (stored, conflicts) = stored_at_vipps(&app).await;
    let lost = orders.iter().filter(|o| !stored.contains_key(*o)).count();
    let duplicated = stored.values().filter(|n| **n > 1).count();
    println!(
        "two replicas: accepted {}, delivered {}, lost {lost}, duplicated {duplicated}, \
         by A before its kill {delivered_by_a}, by B {delivered_by_b}, 409s settled by reading back {conflicts}",
        orders.len(),
        stored.len()
    );
    assert_eq!((lost, duplicated), (0, 0));
    assert!(delivered_by_a > 0, "A delivered some before it was killed");
    assert!(delivered_by_b > 0, "B delivered some");
    drop(b);
}

/// Posts a receipt for `order` with `Prefer: respond-async`: the answer's
/// status and body.
async fn post_async(port: &str, order: &str) -> (u16, serde_json::Value) {
    let mut resp = awc::Client::builder()
        .timeout(Duration::from_secs(30))
        .finish()
        .post(format!(
            "http://127.0.0.1:{port}/v1/merchants/{MSN}/orders/{order}/receipt"
        ))
        .insert_header(("Prefer", "respond-async"))
        .send_json(&spec_receipt())
        .await
        .expect("the gateway answers");
    let body = resp.json().await.unwrap_or_default();
    (resp.status().as_u16(), body)
}

#[actix_web::test]
async fn a_second_gateway_on_one_sqlite_file_is_refused_and_takes_over_when_the_first_dies() {
    let app = spawn_app().await;
    app.add_fault(json!({"endpoint": "receipt", "status": 503}))
        .await;
    let dir = temp_dir("one-file");
    let file = dir.join("outbox.db");
    let store = format!("sqlite://{}", file.display());

    // A short lease: an entry the first held when it was killed is taken
    // over within the test's wait.
    let first = gateway(&app, &dir, "first", &store, "3s");
    let port_first = first.value_after("gateway listening", "port").await;
    assert_eq!(post_async(&port_first, "one-file-1").await.0, 202);

    let second = gateway(&app, &dir, "second", &store, "3s");
    let port_second = second.value_after("gateway listening", "port").await;
    let refused = second.line_with("held by another process").await;
    assert!(
        refused.contains(&file.display().to_string()),
        "the line names the file: {refused}"
    );
    let (status, body) = post_async(&port_second, "one-file-2").await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["type"], "/problems/outbox-unavailable");
    // The first gateway is not disturbed by the second.
    assert_eq!(post_async(&port_first, "one-file-3").await.0, 202);

    drop(first); // SIGKILL: the lock goes with the process
    app.clear_faults().await;
    poll_until("the second gateway to open the store", || async {
        (post_async(&port_second, "one-file-2").await.0 == 202).then_some(())
    })
    .await;
    let orders: Vec<String> = ["one-file-1", "one-file-2", "one-file-3"]
        .map(String::from)
        .to_vec();
    wait_for_all(&app, &orders).await;
    let (stored, _) = stored_at_vipps(&app).await;
    assert!(stored.values().all(|n| *n == 1), "{stored:?}");
    drop(second);
}

#[actix_web::test]
async fn a_store_failing_every_claim_is_logged_once_a_minute_and_counted_every_time() {
    let app = spawn_app().await;
    let dir = temp_dir("failing-store");
    let store = crate::outbox_store::postgres_database().await;
    let gateway = gateway(&app, &dir, "failing", &store, "30s");
    let port = gateway.value_after("gateway listening", "port").await;
    assert!(gateway.saw("outbox store open").await);
    // Every claim fails from now on, four times a second.
    let db = sqlx::PgPool::connect(&store).await.unwrap();
    sqlx::query("DROP TABLE deliveries")
        .execute(&db)
        .await
        .unwrap();
    db.close().await;
    let logged = gateway.line_with("outbox claim failed").await;
    assert!(logged.contains("store=\"postgres://"), "{logged}");
    assert!(logged.contains("suppressed=0"), "{logged}");

    let errors = || async {
        let body = awc::Client::default()
            .get(format!("http://127.0.0.1:{port}/metrics"))
            .send()
            .await
            .unwrap()
            .body()
            .await
            .unwrap();
        String::from_utf8_lossy(&body)
            .lines()
            .find_map(|l| l.strip_prefix("gateway_outbox_store_errors_total "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let before = errors().await;
    actix_rt::time::sleep(Duration::from_secs(2)).await;
    assert!(
        errors().await >= before + 4.0,
        "every failure is counted: {before} then {}",
        errors().await
    );
    assert_eq!(
        gateway.count_new("outbox claim failed"),
        0,
        "no second line within the minute"
    );
    drop(gateway);
}
