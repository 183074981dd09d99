//! The OpenAPI document and the gateway may not drift apart: every
//! documented operation is routed, every route is documented, other methods
//! are 405 with the documented `Allow`, and every documented example
//! answers its documented status with a body that fits the documented schema.

use std::collections::{BTreeMap, BTreeSet};

use awc::http::Method;
use serde_json::{json, Value};
use vipps_order_gateway::proxy;

use crate::helpers::{answer, spawn_app, Answer, TestApp};

const DOC: &str = include_str!("../../openapi/vipps-order-gateway.json");
const PROXY_PREFIX: &str = "/vipps/order-management";
const METHODS: [&str; 5] = ["get", "put", "post", "delete", "patch"];

fn doc() -> Value {
    serde_json::from_str(DOC).expect("the document is JSON")
}

/// Resolves a local `$ref` (`#/components/...`).
fn deref<'a>(doc: &'a Value, v: &'a Value) -> &'a Value {
    match v.get("$ref").and_then(Value::as_str) {
        Some(r) => deref(doc, doc.pointer(&r[1..]).unwrap_or_else(|| panic!("{r}"))),
        None => v,
    }
}

/// Documented (path, method) pairs, methods upper case.
fn operations(doc: &Value) -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for m in METHODS {
            if item.get(m).is_some() {
                out.insert((path.clone(), m.to_uppercase()));
            }
        }
    }
    out
}

/// The parameters of an operation (path-level ones included).
fn parameters<'a>(doc: &'a Value, path: &str, method: &str) -> Vec<&'a Value> {
    let item = &doc["paths"][path];
    let mut out: Vec<&Value> = Vec::new();
    for list in [&item["parameters"], &item[method]["parameters"]] {
        for p in list.as_array().into_iter().flatten() {
            out.push(deref(doc, p));
        }
    }
    out
}

/// A parameter's value for a named example: its `examples[name]`, else its `example`.
fn param_value(p: &Value, example: Option<&str>) -> Option<String> {
    let v = example
        .and_then(|n| p["examples"].get(n))
        .map(|e| &e["value"])
        .or_else(|| p.get("example"))
        .or_else(|| {
            p["examples"]
                .as_object()
                .and_then(|o| o.values().next())
                .map(|e| &e["value"])
        })?;
    Some(v.as_str().map_or_else(|| v.to_string(), str::to_owned))
}

/// Sends one documented operation with its parameters filled in.
async fn send(
    app: &TestApp,
    doc: &Value,
    path: &str,
    method: &str,
    example: Option<&str>,
    body: Option<(&str, &Value)>,
) -> Answer {
    let mut url = path.to_owned();
    let mut headers = Vec::new();
    for p in parameters(doc, path, method) {
        let name = p["name"].as_str().unwrap();
        let Some(value) = param_value(p, example) else {
            assert_ne!(
                p["required"], true,
                "{method} {path}: {name} has no example"
            );
            continue;
        };
        match p["in"].as_str().unwrap() {
            "path" => url = url.replace(&format!("{{{name}}}"), &value),
            "header" => headers.push((name.to_owned(), value)),
            _ => {}
        }
    }
    let mut req = app.client.request(
        Method::from_bytes(method.to_uppercase().as_bytes()).unwrap(),
        app.url(&url),
    );
    for (n, v) in headers {
        req = req.insert_header((n, v));
    }
    answer(match body {
        Some((media, b)) => {
            req.insert_header(("content-type", media))
                .send_body(b.to_string())
                .await
        }
        None => req.send().await,
    })
    .await
}

/// A small JSON Schema check: `$ref`, `type`, `const`, `enum`, `required`,
/// `properties`, `additionalProperties: false`, `items`, `oneOf`, `anyOf`.
fn check(doc: &Value, schema: &Value, v: &Value, at: &str, errors: &mut Vec<String>) {
    let s = deref(doc, schema);
    if let Some(types) = s.get("type") {
        let types: Vec<&str> = match types {
            Value::String(t) => vec![t.as_str()],
            Value::Array(a) => a.iter().filter_map(Value::as_str).collect(),
            _ => vec![],
        };
        let fits = |t: &str| match t {
            "object" => v.is_object(),
            "array" => v.is_array(),
            "string" => v.is_string(),
            "integer" => v.is_i64() || v.is_u64(),
            "number" => v.is_number(),
            "boolean" => v.is_boolean(),
            "null" => v.is_null(),
            _ => false,
        };
        if !types.iter().any(|t| fits(t)) {
            errors.push(format!("{at}: {v} is not {types:?}"));
            return;
        }
    }
    if let Some(c) = s.get("const") {
        if c != v {
            errors.push(format!("{at}: {v} is not {c}"));
        }
    }
    if let Some(e) = s.get("enum").and_then(Value::as_array) {
        if !e.contains(v) {
            errors.push(format!("{at}: {v} not in {e:?}"));
        }
    }
    for key in ["oneOf", "anyOf"] {
        if let Some(options) = s.get(key).and_then(Value::as_array) {
            let fits = options.iter().any(|o| {
                let mut e = Vec::new();
                check(doc, o, v, at, &mut e);
                e.is_empty()
            });
            if !fits {
                errors.push(format!("{at}: {v} fits no {key} option"));
            }
        }
    }
    if let Some(obj) = v.as_object() {
        for r in s["required"].as_array().into_iter().flatten() {
            if !obj.contains_key(r.as_str().unwrap()) {
                errors.push(format!("{at}: missing {r}"));
            }
        }
        let props = s["properties"].as_object();
        for (k, val) in obj {
            match props.and_then(|p| p.get(k)) {
                Some(ps) => check(doc, ps, val, &format!("{at}.{k}"), errors),
                None if s["additionalProperties"] == false => {
                    errors.push(format!("{at}: unexpected {k}"));
                }
                None => {}
            }
        }
    }
    if let (Some(items), Some(arr)) = (s.get("items"), v.as_array()) {
        for (i, item) in arr.iter().enumerate() {
            check(doc, items, item, &format!("{at}[{i}]"), errors);
        }
    }
}

/// Whether an answer is the gateway's "no such route" or "no such method".
fn route_miss(a: &Answer) -> bool {
    let t = a.body["type"].as_str().unwrap_or("");
    a.status.as_u16() == 405 || (a.status.as_u16() == 404 && t.ends_with("/not-found"))
}

#[actix_rt::test]
async fn the_document_is_served_and_is_openapi_3_1() {
    let app = spawn_app().await;
    let a = app.get("/openapi.json").await;
    assert_eq!(a.status.as_u16(), 200);
    assert_eq!(a.content_type, "application/json");
    assert_eq!(a.body, doc());
    assert_eq!(a.body["openapi"], "3.1.0");
}

#[actix_rt::test]
async fn every_documented_operation_is_routed_and_answers_a_documented_status() {
    let app = spawn_app().await;
    let doc = doc();
    for (path, method) in operations(&doc) {
        let m = method.to_lowercase();
        let op = &doc["paths"][&path][&m];
        let body = op["requestBody"]["content"].as_object().map(|c| {
            let (media, content) = c.iter().next().unwrap();
            let example = content["examples"]
                .as_object()
                .and_then(|e| e.values().next())
                .map_or(json!({}), |e| e["value"].clone());
            (media.clone(), example)
        });
        let a = send(
            &app,
            &doc,
            &path,
            &m,
            None,
            body.as_ref().map(|(m, b)| (m.as_str(), b)),
        )
        .await;
        assert!(!route_miss(&a), "{method} {path} is not routed: {}", a.body);
        let status = a.status.as_u16().to_string();
        assert!(
            op["responses"].get(&status).is_some(),
            "{method} {path} answered undocumented {status}: {}",
            a.body
        );
    }
}

#[actix_rt::test]
async fn undocumented_methods_are_405_with_the_documented_allow() {
    let app = spawn_app().await;
    let doc = doc();
    let ops = operations(&doc);
    let mut by_path: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for (path, method) in &ops {
        by_path.entry(path).or_default().insert(method);
    }
    for (path, documented) in by_path {
        for m in METHODS {
            let upper = m.to_uppercase();
            if documented.contains(upper.as_str()) {
                continue;
            }
            // Parameters from a documented method of the same path.
            let some = documented.iter().next().unwrap().to_lowercase();
            let mut url = path.to_owned();
            for p in parameters(&doc, path, &some) {
                if p["in"] == "path" {
                    let name = p["name"].as_str().unwrap();
                    url = url.replace(&format!("{{{name}}}"), &param_value(p, None).unwrap());
                }
            }
            let resp = app
                .client
                .request(Method::from_bytes(upper.as_bytes()).unwrap(), app.url(&url))
                .insert_header(("Merchant-Serial-Number", crate::helpers::MSN))
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status().as_u16(), 405, "{upper} {path}");
            let allow: BTreeSet<&str> = resp
                .headers()
                .get("allow")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_else(|| panic!("{upper} {path}: no Allow"))
                .split(", ")
                .collect();
            assert_eq!(allow, documented, "{upper} {path}");
        }
    }
    assert_eq!(app.upstream_call_count().await, 0);
}

/// `(path, method)` of every `resource("<path>", Method::<M>, ...)` in the
/// gateway's source, and the bare path of any `web::resource("..")`,
/// `.route("..")` or `web::scope("..")` registered another way.
fn registered_in_source() -> (BTreeSet<(String, String)>, BTreeSet<String>) {
    let mut typed = BTreeSet::new();
    let mut bare = BTreeSet::new();
    let mut stack = vec![std::path::PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/src"
    ))];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let p = entry.unwrap().path();
            if p.is_dir() {
                // The simulator is its own server with its own routes.
                if !p.ends_with("simulator") {
                    stack.push(p);
                }
                continue;
            }
            if p.extension().and_then(|e| e.to_str()) != Some("rs") {
                continue;
            }
            let src = std::fs::read_to_string(&p).unwrap();
            for (needle, is_typed) in [
                ("resource(", true),
                (".route(", false),
                ("web::scope(", false),
            ] {
                for (i, _) in src.match_indices(needle) {
                    let after = src[i + needle.len()..].trim_start();
                    let Some(lit) = after.strip_prefix('"') else {
                        continue;
                    };
                    let Some(end) = lit.find('"') else { continue };
                    let path = lit[..end].to_owned();
                    let rest = lit[end + 1..]
                        .trim_start()
                        .trim_start_matches(',')
                        .trim_start();
                    match rest.strip_prefix("Method::") {
                        Some(m) if is_typed => {
                            let method: String =
                                m.chars().take_while(char::is_ascii_uppercase).collect();
                            typed.insert((path, method));
                        }
                        _ => {
                            bare.insert(path);
                        }
                    }
                }
            }
        }
    }
    (typed, bare)
}

#[actix_rt::test]
async fn every_registered_route_is_documented_and_nothing_more() {
    let doc = doc();
    let documented = operations(&doc);
    let (typed, bare) = registered_in_source();
    assert!(
        typed.len() >= 7,
        "the source scan found too little: {typed:?}"
    );
    let facade: BTreeSet<_> = documented
        .iter()
        .filter(|(p, _)| !p.starts_with(PROXY_PREFIX))
        .cloned()
        .collect();
    assert_eq!(typed, facade, "routes in src/ and in the document differ");
    // The problem pages are named by `ops::problem_route`, the rest by
    // `metrics::route::ALL`.
    let labelled: BTreeSet<&str> = vipps_order_gateway::metrics::route::ALL
        .into_iter()
        .chain([vipps_order_gateway::ops::PROBLEM_ROUTE])
        .collect();
    assert_eq!(
        typed
            .iter()
            .map(|(p, _)| p.as_str())
            .collect::<BTreeSet<_>>(),
        labelled,
        "the route table that labels requests and the registered routes differ"
    );
    for path in &bare {
        assert!(
            path == PROXY_PREFIX || documented.iter().any(|(p, _)| p == path),
            "{path} is registered but not documented"
        );
    }
    // The proxy's allow-list is exactly its documented surface.
    let proxied: BTreeSet<(String, String)> = proxy::ROUTES
        .iter()
        .flat_map(|(path, methods)| {
            methods
                .iter()
                .map(move |m| (format!("{PROXY_PREFIX}{path}"), m.to_string()))
        })
        .collect();
    let documented_proxy: BTreeSet<_> = documented
        .into_iter()
        .filter(|(p, _)| p.starts_with(PROXY_PREFIX))
        .collect();
    assert_eq!(proxied, documented_proxy);
}

#[actix_rt::test]
async fn every_documented_example_gets_its_documented_answer() {
    let app = spawn_app().await;
    let doc = doc();
    // Writes before reads, so the order examples find what the others stored.
    let mut ops: Vec<(String, String)> = operations(&doc).into_iter().collect();
    ops.sort_by_key(|(path, m)| {
        (
            ["PUT", "POST", "GET"].iter().position(|x| x == m),
            path.clone(),
        )
    });
    let mut exercised = 0;
    for (path, method) in ops {
        let m = method.to_lowercase();
        let op = &doc["paths"][&path][&m];
        // Example names: the request body's and the responses'.
        let mut names: BTreeMap<String, Option<(String, Value)>> = BTreeMap::new();
        for (media, content) in op["requestBody"]["content"]
            .as_object()
            .into_iter()
            .flatten()
        {
            for (name, e) in content["examples"].as_object().into_iter().flatten() {
                names.insert(name.clone(), Some((media.clone(), e["value"].clone())));
            }
        }
        let mut expected: BTreeMap<String, (String, Value, Value)> = BTreeMap::new();
        for (status, resp) in op["responses"].as_object().unwrap() {
            let resp = deref(&doc, resp);
            for content in resp["content"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(_, c)| c)
            {
                for (name, e) in content["examples"].as_object().into_iter().flatten() {
                    let prev = expected.insert(
                        name.clone(),
                        (
                            status.clone(),
                            e["value"].clone(),
                            content["schema"].clone(),
                        ),
                    );
                    assert!(prev.is_none(), "{method} {path}: example {name} twice");
                    names.entry(name.clone()).or_insert(None);
                }
            }
        }
        for (name, body) in names {
            let (status, example, schema) = expected.get(&name).unwrap_or_else(|| {
                panic!("{method} {path}: request example {name} has no documented answer")
            });
            let a = send(
                &app,
                &doc,
                &path,
                &m,
                Some(&name),
                body.as_ref().map(|(m, b)| (m.as_str(), b)),
            )
            .await;
            assert_eq!(
                a.status.as_u16().to_string(),
                *status,
                "{method} {path} example {name}: {}",
                a.body
            );
            let mut errors = Vec::new();
            check(&doc, schema, &a.body, "body", &mut errors);
            assert!(
                errors.is_empty(),
                "{method} {path} example {name}: {errors:?}"
            );
            let mut got = a.body.clone();
            let mut want = example.clone();
            // A request id is new for every request.
            for v in [&mut got, &mut want] {
                if let Some(o) = v.as_object_mut() {
                    o.remove("requestId");
                }
            }
            assert_eq!(got, want, "{method} {path} example {name}");
            exercised += 1;
        }
    }
    assert!(exercised >= 15, "only {exercised} examples");
}
