//! Secret hygiene: with every log line captured at `trace` level, every
//! operation run on its success and failure paths, no secret the gateway
//! holds and no token it sees or issues appears in a log line, a response
//! (headers and body) or the metrics.

use awc::http::Method;
use serde_json::json;
use vipps_order_gateway::simulator::{DEMO_CLIENT_SECRET, DEMO_SUBSCRIPTION_KEY};

use crate::auth::{bearer, call, claims, hs256, now, spawn_hs256};
use crate::helpers::{b64, png, poll_until, spec_receipt, Answer, LogCapture, MSN, MSN2};

/// Everything a caller could read from an answer.
fn visible(a: &Answer) -> String {
    let mut out = format!("{}\n", a.status);
    for (name, value) in &a.headers {
        out.push_str(&format!(
            "{name}: {}\n",
            String::from_utf8_lossy(value.as_bytes())
        ));
    }
    out.push_str(&a.raw);
    out
}

#[actix_web::test]
async fn no_secret_or_token_reaches_logs_responses_or_metrics() {
    let logs = LogCapture::start();
    // The second merchant's secret is one the simulator refuses: its token
    // endpoint rejects the credentials on every call.
    let refused_secret = "refused-client-secret-5d1f0c";
    let (app, jwt_secret) = spawn_hs256(2, Some(refused_secret)).await;
    let all = hs256(&jwt_secret, &claims(json!("*")));
    let only_first = hs256(&jwt_secret, &claims(json!([MSN])));
    let mut expired_claims = claims(json!("*"));
    expired_claims["exp"] = json!(now() - 3600);
    let expired = hs256(&jwt_secret, &expired_claims);
    let forged = hs256(&format!("{jwt_secret}x"), &claims(json!("*")));
    let auth = bearer(&all);

    let mut answers: Vec<(String, Answer)> = Vec::new();
    let mut run = |label: &str, a: Answer, status: u16| {
        assert_eq!(a.status, status, "{label}: {}", a.body);
        answers.push((label.to_owned(), a));
    };
    let receipt = |msn: &str, order: &str| format!("/v1/merchants/{msn}/orders/{order}/receipt");
    let order = |msn: &str, order: &str| format!("/v1/merchants/{msn}/orders/{order}");
    let images = format!("/v1/merchants/{MSN}/images");
    let a = Some(auth.as_str());

    // Successes, replays and conflicts.
    run(
        "receipt",
        call(
            &app,
            Method::POST,
            &receipt(MSN, "s-1"),
            a,
            Some(&spec_receipt()),
        )
        .await,
        201,
    );
    run(
        "replayed receipt",
        call(
            &app,
            Method::POST,
            &receipt(MSN, "s-1"),
            a,
            Some(&spec_receipt()),
        )
        .await,
        201,
    );
    let mut different = spec_receipt();
    different["tip"] = json!("1.00");
    different.as_object_mut().unwrap().remove("expectedTotal");
    run(
        "conflicting receipt",
        call(
            &app,
            Method::POST,
            &receipt(MSN, "s-1"),
            a,
            Some(&different),
        )
        .await,
        409,
    );
    let mut bad = spec_receipt();
    bad["lines"][0]["taxPercent"] = json!("12.555");
    run(
        "untranslatable receipt",
        call(&app, Method::POST, &receipt(MSN, "s-2"), a, Some(&bad)).await,
        422,
    );
    run(
        "category with inline image",
        call(
            &app,
            Method::PUT,
            &format!("{}/category", order(MSN, "s-1")),
            a,
            Some(
                &json!({"category": "RECEIPT", "url": "https://shop.example/o/1",
                         "image": {"data": b64(&png(300))}}),
            ),
        )
        .await,
        200,
    );
    run(
        "named image",
        call(
            &app,
            Method::POST,
            &images,
            a,
            Some(&json!({"data": b64(&png(200)), "imageId": "logo"})),
        )
        .await,
        201,
    );
    run(
        "named image again",
        call(
            &app,
            Method::POST,
            &images,
            a,
            Some(&json!({"data": b64(&png(200)), "imageId": "logo"})),
        )
        .await,
        409,
    );
    run(
        "order",
        call(&app, Method::GET, &order(MSN, "s-1"), a, None).await,
        200,
    );
    run(
        "unknown order",
        call(&app, Method::GET, &order(MSN, "none"), a, None).await,
        404,
    );

    // The token endpoint rejects the second merchant's credentials.
    run(
        "refused credentials",
        call(
            &app,
            Method::POST,
            &receipt(MSN2, "s-3"),
            a,
            Some(&spec_receipt()),
        )
        .await,
        502,
    );
    // A 401 upstream, then the token endpoint down: the token is refetched and fails.
    app.add_fault(json!({"endpoint": "order", "status": 401, "times": 1}))
        .await;
    app.add_fault(json!({"endpoint": "token", "status": 500, "times": 1}))
        .await;
    run(
        "token endpoint down",
        call(&app, Method::GET, &order(MSN, "s-1"), a, None).await,
        503,
    );
    // Token fetches back off for a second after the failure: until then a
    // request fails at once, then a token is fetched again.
    let (app_ref, s1) = (&app, order(MSN, "s-1"));
    let s1 = s1.as_str();
    let after_backoff = poll_until("a token after the backoff", || async move {
        let b = call(app_ref, Method::GET, s1, a, None).await;
        (b.status != 503).then_some(b)
    })
    .await;
    run("order after the token backoff", after_backoff, 200);
    // Three attempts (the first and two retries) all fail.
    app.add_fault(json!({"endpoint": "receipt", "status": 500, "times": 3}))
        .await;
    run(
        "upstream 500",
        call(
            &app,
            Method::POST,
            &receipt(MSN, "s-4"),
            a,
            Some(&spec_receipt()),
        )
        .await,
        502,
    );
    app.add_fault(json!({"endpoint": "receipt", "drop": true, "times": 3}))
        .await;
    run(
        "dropped connection",
        call(
            &app,
            Method::POST,
            &receipt(MSN, "s-5"),
            a,
            Some(&spec_receipt()),
        )
        .await,
        502,
    );
    app.add_fault(json!({"endpoint": "order", "status": 400,
                         "body": {"title": "Bad", "invalidParams": [{"name": "orderId", "reason": "bad"}]},
                         "times": 1}))
        .await;
    run(
        "upstream 400",
        call(&app, Method::GET, &order(MSN, "s-1"), a, None).await,
        400,
    );

    let stored_receipt = call(&app, Method::GET, &order(MSN, "s-1"), a, None)
        .await
        .body["receipt"]
        .clone();
    // Category links (2.1): added, listed, an add whose answer was lost
    // (settled by reading back), deleted.
    let links = format!("{}/categories", order(MSN, "s-1"));
    let link = json!({"category": "TICKET", "url": "https://shop.example/t/1"});
    let added = call(&app, Method::POST, &links, a, Some(&link)).await;
    let id = added.body["categoryId"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    run("category link", added, 201);
    app.add_fault(
        json!({"endpoint": "v3-category-post", "drop": true, "afterStore": true, "times": 1}),
    )
    .await;
    run(
        "category link whose answer was lost",
        call(
            &app,
            Method::POST,
            &links,
            a,
            Some(&json!({"category": "DELIVERY", "url": "https://shop.example/d/1"})),
        )
        .await,
        201,
    );
    run(
        "category links",
        call(&app, Method::GET, &links, a, None).await,
        200,
    );
    run(
        "category link deleted",
        call(&app, Method::DELETE, &format!("{links}/{id}"), a, None).await,
        204,
    );

    // The reverse proxy, with a caller that sends credentials of its own:
    // they are dropped, and the gateway's are never shown.
    let proxied = |method: Method, path: &str| {
        app.client
            .request(method, app.url(&format!("/vipps/order-management{path}")))
            .insert_header(("authorization", auth.as_str()))
            .insert_header(("Merchant-Serial-Number", MSN))
            .insert_header(("Ocp-Apim-Subscription-Key", "caller-supplied-key-0c9e"))
    };
    run(
        "proxied order read",
        crate::helpers::answer(proxied(Method::GET, "/v2/ecom/s-1").send().await).await,
        200,
    );
    run(
        "proxied receipt conflict",
        crate::helpers::answer(
            proxied(Method::POST, "/v2/ecom/receipts/s-1")
                .send_json(&stored_receipt)
                .await,
        )
        .await,
        409,
    );
    run(
        "proxied category links",
        crate::helpers::answer(
            proxied(Method::GET, "/v3/categories?orderId=s-1")
                .send()
                .await,
        )
        .await,
        200,
    );

    // Callers refused.
    for (label, token, status) in [
        ("expired caller token", expired.as_str(), 401),
        ("forged caller token", forged.as_str(), 401),
        (
            "caller token for another merchant",
            only_first.as_str(),
            403,
        ),
    ] {
        let path = receipt(MSN2, "s-6");
        run(
            label,
            call(
                &app,
                Method::POST,
                &path,
                Some(&bearer(token)),
                Some(&spec_receipt()),
            )
            .await,
            status,
        );
    }
    run(
        "no caller token",
        call(&app, Method::GET, &order(MSN, "s-1"), None, None).await,
        401,
    );
    // Metrics, when the gateway serves them, are searched like any answer.
    let metrics = call(&app, Method::GET, "/metrics", None, None).await;
    answers.push(("metrics".into(), metrics));

    // The access tokens the simulator issued, as the gateway sent them.
    let mut access_tokens: Vec<String> = app
        .sim_requests()
        .await
        .iter()
        .filter_map(|r| r["headers"]["authorization"].as_str())
        .filter_map(|h| h.strip_prefix("Bearer "))
        .map(str::to_owned)
        .collect();
    access_tokens.sort();
    access_tokens.dedup();
    assert!(
        access_tokens.len() >= 2,
        "a refetch happened: {access_tokens:?}"
    );

    let signature = |t: &str| t.rsplit('.').next().unwrap().to_owned();
    let mut secrets: Vec<(String, String)> = vec![
        ("client secret".into(), DEMO_CLIENT_SECRET.into()),
        ("subscription key".into(), DEMO_SUBSCRIPTION_KEY.into()),
        ("second subscription key".into(), "second-key".into()),
        ("refused client secret".into(), refused_secret.into()),
        ("caller-auth HS256 secret".into(), jwt_secret.clone()),
    ];
    for (label, t) in [
        ("caller token", &all),
        ("narrow caller token", &only_first),
        ("expired caller token", &expired),
        ("forged caller token", &forged),
    ] {
        secrets.push((label.into(), t.clone()));
        secrets.push((format!("{label} signature"), signature(t)));
    }
    for (i, t) in access_tokens.iter().enumerate() {
        secrets.push((format!("access token #{i}"), t.clone()));
    }

    // The capture worked: trace lines, the gateway's own lines, both
    // merchants, refused callers. The workers write on their own threads:
    // wait for them.
    let expected = [
        "TRACE",
        "fetched access token",
        "token endpoint refused",
        "caller refused",
    ];
    let logs = &logs;
    let log = poll_until(
        &format!("log lines with each of {expected:?}"),
        || async move {
            let log = logs.text();
            expected.iter().all(|l| log.contains(l)).then_some(log)
        },
    )
    .await;

    for (what, secret) in &secrets {
        assert!(secret.len() >= 10, "{what} is too short to search for");
        let lines: Vec<&str> = log
            .lines()
            .filter(|l| l.contains(secret.as_str()))
            .collect();
        assert!(
            lines.is_empty(),
            "the {what} is in {} log line(s)",
            lines.len()
        );
        for (label, a) in &answers {
            assert!(
                !visible(a).contains(secret.as_str()),
                "the {what} is in the answer to {label}"
            );
        }
    }
}

/// `Debug` of every type holding a secret redacts it.
#[test]
fn debug_output_redacts_secrets() {
    use secrecy::SecretString;
    use std::sync::Arc;
    use std::time::Duration;
    use tokio::time::Instant;
    use vipps_order_gateway::config::{InlineSecrets, Merchant};
    use vipps_order_gateway::domain::Msn;
    use vipps_order_gateway::vipps::token::AccessToken;

    let m = Merchant {
        msn: Msn::parse(MSN).unwrap(),
        client_id: "id".into(),
        client_secret: SecretString::from("client-secret-value"),
        subscription_key: SecretString::from("subscription-key-value"),
    };
    let t = Arc::new(AccessToken::new(
        SecretString::from("access-token-value"),
        Instant::now(),
        Duration::from_secs(1),
        http::HeaderMap::new(),
    ));
    let i = InlineSecrets {
        client_secret: SecretString::from("client-secret-value"),
        subscription_key: SecretString::from("subscription-key-value"),
    };
    let text = format!("{m:?} {t:?} {i:?} {:?}", m.client_secret);
    for s in [
        "client-secret-value",
        "subscription-key-value",
        "access-token-value",
    ] {
        assert!(!text.contains(s), "{s} in {text}");
    }
}
