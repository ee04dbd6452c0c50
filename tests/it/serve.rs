//! `doorstep serve` (SPEC §6), so far: `POST /v1/records` with API keys, problem JSON,
//! delivery in process woken by the request, `healthz` / `readyz`, SIGTERM. A real server
//! process, real HTTP through reqwest, a wiremock target.

use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use wiremock::matchers::method;
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::delivery::{VISIT_MAP, api_connector, api_routes, visit};
use crate::harness::{Deployment, json_lines};

/// A running `doorstep serve` and its base URL; stopped with SIGTERM when dropped.
pub(crate) struct Server {
    child: Child,
    pub(crate) url: String,
    /// Everything it wrote to standard error (its log).
    log: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Server {
    pub(crate) fn start(d: &Deployment) -> Server {
        let mut child = d
            .command("serve", &["--listen", "127.0.0.1:0"])
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let url = loop {
            let line = lines.next().expect("serve ended before listening").unwrap();
            if let Some(url) = line.strip_prefix("doorstep: listening on ") {
                break url.to_owned();
            }
        };
        // Keep draining standard error so the server never blocks on it.
        let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let kept = log.clone();
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                let mut l = kept.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
        Server { child, url, log }
    }

    pub(crate) fn terminate(&mut self) -> Option<i32> {
        std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        let until = Instant::now() + Duration::from_secs(20);
        while Instant::now() < until {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
    }
}

/// Visits to a bearer JSON API at `server`, and an API key for Thrive's school 117800.
pub(crate) fn deployment(server: &MockServer) -> (Deployment, String, String) {
    let mut d = Deployment::thrive_only();
    d.destination("thrive", "api", &server.uri());
    d.connector("api", &api_connector("bearer", 2, 5.0, 3));
    d.routes(&api_routes(r#"token = { env = "TEST_API_TOKEN" }"#));
    d.map("visit_json", VISIT_MAP);
    d.env("TEST_API_TOKEN", "tok-123");
    d.env("DOORSTEP_LOG", "debug");
    let (key, id) = new_key(&d, &["--trust", "thrive", "--school", "117800"]);
    (d, key, id)
}

/// `doorstep keys create ARGS`: the key, shown once, and its public id.
pub(crate) fn new_key(d: &Deployment, args: &[&str]) -> (String, String) {
    let mut all = args.to_vec();
    all.extend(["--format", "json"]);
    let out = d.run("keys create", &all).code(0).get_output().clone();
    let made = json_lines(&out.stdout).remove(0);
    let field = |name: &str| made[name].as_str().unwrap().to_owned();
    (field("key"), field("id"))
}

/// A `POST /v1/records` written on a bare connection: the head with `header`, then `parts`
/// (stopping when the server stops reading); what the server answered before it closed.
async fn raw_post(url: &str, key: &str, header: &str, parts: &[Vec<u8>]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut conn = tokio::net::TcpStream::connect(url.trim_start_matches("http://"))
        .await
        .unwrap();
    let head = format!(
        "POST /v1/records HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n\
         Content-Type: application/json\r\n{header}\r\n\r\n"
    );
    conn.write_all(head.as_bytes()).await.unwrap();
    for part in parts {
        if conn.write_all(part).await.is_err() {
            break;
        }
    }
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), conn.read_to_end(&mut answer)).await;
    String::from_utf8_lossy(&answer).into_owned()
}

async fn post(
    url: &str,
    key: Option<&str>,
    content_type: &str,
    body: String,
) -> (u16, String, Value) {
    let mut req = reqwest::Client::new()
        .post(format!("{url}/v1/records"))
        .header("content-type", content_type)
        .body(body);
    if let Some(k) = key {
        req = req.bearer_auth(k);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let ct = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let body = resp.json::<Value>().await.unwrap_or(Value::Null);
    (status, ct, body)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_posted_record_is_stored_then_delivered_at_once_and_keys_are_enforced() {
    let target = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(201).set_body_json(json!({"id": "T-1"})))
        .mount(&target)
        .await;
    let (d, key, key_id) = deployment(&target);
    // A file in the drop folder before the start: `serve` sweeps it too.
    d.drop_records("early.json", &[visit("api-0", 1, "Seen.")]);
    let mut server = Server::start(&d);
    let url = server.url.clone();
    let health = reqwest::get(format!("{url}/healthz")).await.unwrap();
    assert_eq!(health.status(), 200);
    let ready = reqwest::get(format!("{url}/readyz")).await.unwrap();
    assert_eq!(ready.status(), 200);
    let ready: Value = ready.json().await.unwrap();
    assert_eq!(
        (&ready["store"], &ready["delivery"]),
        (&json!("ok"), &json!("running")),
        "{ready}"
    );
    let doc: Value = reqwest::get(format!("{url}/v1/openapi.json"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(doc["paths"]["/v1/records"]["post"].is_object(), "{doc}");

    // One record: stored before the answer, delivered within moments (no cron run).
    let sent = Instant::now();
    let (status, _, body) = post(
        &url,
        Some(&key),
        "application/json",
        visit("api-1", 1, "Seen.").to_string(),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["records"][0]["outcome"], "accepted", "{body}");
    loop {
        if !target.received_requests().await.unwrap().is_empty() {
            break;
        }
        assert!(
            sent.elapsed() < Duration::from_secs(10),
            "not delivered in process"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The same again: unchanged.
    let (status, _, body) = post(
        &url,
        Some(&key),
        "application/json",
        visit("api-1", 1, "Seen.").to_string(),
    )
    .await;
    assert_eq!(
        (status, body["records"][0]["outcome"].as_str()),
        (200, Some("unchanged"))
    );

    // A batch with a bad sibling: 207, the good one stored, the bad one's path and rule.
    let mut bad = visit("api-bad", 1, "Seen.");
    bad["pupil"]["upn"] = "not-a-upn".into();
    let batch = json!([visit("api-2", 1, "Seen."), bad]).to_string();
    let (status, _, body) = post(&url, Some(&key), "application/json", batch).await;
    assert_eq!(status, 207, "{body}");
    assert_eq!(body["records"][0]["outcome"], "accepted");
    assert_eq!(body["records"][1]["outcome"], "rejected");
    assert_eq!(
        body["records"][1]["errors"][0]["path"], "/pupil/upn",
        "{body}"
    );
    assert!(
        body["records"][1]["errors"][0]["rule"].is_string(),
        "{body}"
    );

    // JSON lines.
    let ndjson = format!("{}\n{}\n", visit("api-3", 1, "a"), visit("api-4", 1, "b"));
    let (status, _, body) = post(&url, Some(&key), "application/x-ndjson", ndjson).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["records"].as_array().unwrap().len(), 2);

    // Problems: a school the key does not reach, no key, a bad key, a wrong media type,
    // one malformed record.
    let mut elsewhere = visit("api-5", 1, "Seen.");
    elsewhere["school"]["urn"] = "117801".into();
    let (status, ct, body) =
        post(&url, Some(&key), "application/json", elsewhere.to_string()).await;
    assert_eq!(
        (status, ct.as_str()),
        (403, "application/problem+json"),
        "{body}"
    );
    let (status, ct, _) = post(&url, None, "application/json", "{}".into()).await;
    assert_eq!((status, ct.as_str()), (401, "application/problem+json"));
    let forged = format!("{}x", &key[..key.len() - 1]);
    assert_eq!(
        post(&url, Some(&forged), "application/json", "{}".into())
            .await
            .0,
        401
    );
    assert_eq!(
        post(&url, Some(&key), "text/plain", "{}".into()).await.0,
        415
    );
    let (status, _, body) = post(&url, Some(&key), "application/json", "{\"kind\": ".into()).await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["rule"], "json-syntax", "{body}");
    assert_eq!(body["status"], 422);

    // Bodies: over 16 MiB (declared, or streamed without a length) is 413 before it is
    // read whole; one record over the per-record cap is rejected by rule; an empty body
    // and a truncated array are JSON errors. All problem JSON with a rule.
    // Declared too large: 413 from the head alone, before any of the body is read.
    let answer = raw_post(
        &url,
        &key,
        &format!("Content-Length: {}", 17 * 1024 * 1024),
        &[],
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("application/problem+json"), "{answer}");
    assert!(answer.contains("\"rule\":\"body-too-large\""), "{answer}");
    // Chunked, no length: cut off at the limit, still 413.
    let chunk = format!("100000\r\n{}\r\n", " ".repeat(1 << 20)).into_bytes();
    let mut chunks = vec![chunk; 17];
    chunks.push(b"0\r\n\r\n".to_vec());
    let answer = raw_post(&url, &key, "Transfer-Encoding: chunked", &chunks).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    let mut big = visit("api-big", 1, "Seen.");
    big["notes"] = "x".repeat(5 * 1024 * 1024).into();
    let (status, _, body) = post(&url, Some(&key), "application/json", big.to_string()).await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["rule"], "record-too-large", "{body}");
    for sent in ["", "[{\"kind\": \"visit_report\"}, {"] {
        let (status, ct, body) = post(&url, Some(&key), "application/json", sent.into()).await;
        assert_eq!(
            (status, ct.as_str()),
            (422, "application/problem+json"),
            "{sent}: {body}"
        );
        assert!(body["rule"].is_string(), "{sent}: {body}");
    }

    // The record's state: revisions and deliveries, never its content; another school's
    // record or a missing one: 404 alike.
    let get = |path: String, key: String| async move {
        let r = reqwest::Client::new()
            .get(path)
            .bearer_auth(key)
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    };
    let (status, text) = get(
        format!("{url}/v1/records/thrive/visit_report/api-1"),
        key.clone(),
    )
    .await;
    assert_eq!(status, 200, "{text}");
    let state: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(state["revisions"][0]["revision"], 1, "{state}");
    assert_eq!(state["deliveries"][0]["destination"], "api", "{state}");
    assert!(
        !text.contains("Seen.") && !text.contains("given_name"),
        "content shown: {text}"
    );
    let long = "x".repeat(5000);
    for path in [
        "/v1/records/thrive/visit_report/no-such".to_owned(),
        "/v1/records/celt/visit_report/api-1".to_owned(),
        "/v1/records/THRIVE/visit_report/api-1".to_owned(),
        "/v1/records/thrive/nonsense/api-1".to_owned(),
        "/v1/records/thrive/visit_report/api-1%00".to_owned(),
        "/v1/records/thrive/visit_report/..%2Fapi-1".to_owned(),
        "/v1/records/thrive/visit_report/api-1%27%20OR%201=1--".to_owned(),
        format!("/v1/records/thrive/visit_report/{long}"),
    ] {
        let (status, text) = get(format!("{url}{path}"), key.clone()).await;
        assert_eq!(status, 404, "{path}: {text}");
    }
    // A read-only key reads the state and may not post: 403 problem with rule key-scope.
    let (reader, _) = new_key(
        &d,
        &["--trust", "thrive", "--school", "117800", "--read-only"],
    );
    let (status, _) = get(
        format!("{url}/v1/records/thrive/visit_report/api-1"),
        reader.clone(),
    )
    .await;
    assert_eq!(status, 200);
    let (status, ct, body) = post(
        &url,
        Some(&reader),
        "application/json",
        visit("api-ro", 1, "Seen.").to_string(),
    )
    .await;
    assert_eq!((status, ct.as_str()), (403, "application/problem+json"));
    assert_eq!(body["rule"], "key-scope", "{body}");

    // A record of another trust, posted with this trust's key: refused, never stored.
    let mut other_trust = visit("api-celt", 1, "Seen.");
    other_trust["trust"] = "celt".into();
    let (status, _, body) = post(
        &url,
        Some(&key),
        "application/json",
        other_trust.to_string(),
    )
    .await;
    assert_eq!(status, 403, "{body}");

    // Metrics: counted as they went, deliveries from the store; no id of a record in them.
    let text = reqwest::get(format!("{url}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for want in [
        "doorstep_records_received_total{kind=\"visit_report\"}",
        "doorstep_records_refused_total{rule=\"forbidden\"} 2",
        "doorstep_http_request_duration_seconds_bucket{",
        "route=\"/v1/records\"",
        "doorstep_deliveries{trust=\"thrive\",destination=\"api\",state=\"delivered\"}",
        "doorstep_delivery_queue_depth{trust=\"thrive\",destination=\"api\"} 0",
        "doorstep_delivery_queue_waiting{trust=\"thrive\",destination=\"api\"} 0",
        "doorstep_delivery_oldest_due_age_seconds{trust=\"thrive\",destination=\"api\"} 0",
        "doorstep_delivery_retries{trust=\"thrive\",destination=\"api\"} 0",
        "doorstep_audit_log_entries{trust=\"thrive\"} ",
    ] {
        assert!(text.contains(want), "`{want}` not in:\n{text}");
    }
    assert!(!text.contains("api-1"), "{text}");

    // A key's rate: a burst far over it meets 429s with Retry-After.
    let client = reqwest::Client::new();
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..400 {
        let (client, path, key) = (
            client.clone(),
            format!("{url}/v1/records/thrive/visit_report/api-1"),
            key.clone(),
        );
        calls.spawn(async move {
            let r = client.get(path).bearer_auth(key).send().await.unwrap();
            (r.status().as_u16(), r.headers().contains_key("retry-after"))
        });
    }
    let answers = calls.join_all().await;
    let limited = answers.iter().filter(|(s, _)| *s == 429).count();
    assert!(limited > 0, "no 429 in 400 calls at once");
    assert!(
        answers.iter().all(|(s, r)| *s == 200 || (*s == 429 && *r)),
        "{answers:?}"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;

    // Revoked while the server runs: refused within 5 seconds (SPEC §6), never stored.
    d.run("keys revoke", &[&key_id]).code(0);
    let revoked = Instant::now();
    loop {
        let (status, _, _) = post(
            &url,
            Some(&key),
            "application/json",
            visit("api-6", 1, "x").to_string(),
        )
        .await;
        if status == 401 {
            break;
        }
        assert!(
            revoked.elapsed() < Duration::from_secs(5),
            "a revoked key still taken after 5 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // SIGTERM: a clean stop; everything accepted was delivered, each record once.
    assert_eq!(server.terminate(), Some(0));
    let got = target.received_requests().await.unwrap();
    let ids: Vec<String> = got
        .iter()
        .map(|r| {
            serde_json::from_slice::<Value>(&r.body).unwrap()["record_id"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    let mut unique = ids.clone();
    unique.sort();
    unique.dedup();
    // api-6, if taken before the revocation reached the server, is delivered too.
    unique.retain(|id| id != "api-6");
    assert_eq!(
        unique,
        ["api-0", "api-1", "api-2", "api-3", "api-4"],
        "{ids:?}"
    );
    assert_eq!(
        ids.iter().filter(|id| *id != "api-6").count(),
        5,
        "each once: {ids:?}"
    );
    assert!(
        d.path("drop").read_dir().unwrap().next().is_none(),
        "filed away"
    );

    // The log names keys and records by id: never a key, a name or a summary.
    let log = server.log.lock().unwrap().clone();
    assert!(log.contains(&key_id), "{log}");
    let secret = &key[key.len() - 20..];
    let pupil = visit("x", 1, "")["pupil"]["given_name"]
        .as_str()
        .unwrap()
        .to_owned();
    for leak in [secret, pupil.as_str(), "Seen."] {
        assert!(!log.contains(leak), "`{leak}` in the log:\n{log}");
    }
}

/// SIGTERM while deliveries are in flight to a slow target: `serve` finishes them (or leaves
/// them to be sent again), exits 0; after a restart every accepted record has reached the
/// target, and no idempotency key went with two different bodies.
#[tokio::test(flavor = "multi_thread")]
async fn sigterm_mid_delivery_then_restart_loses_nothing() {
    let target = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(
            ResponseTemplate::new(201)
                .set_body_json(json!({"id": "T-1"}))
                .set_delay(Duration::from_millis(400)),
        )
        .mount(&target)
        .await;
    let (d, key, _) = deployment(&target);
    let mut server = Server::start(&d);
    let records: Vec<Value> = (0..12)
        .map(|i| visit(&format!("term-{i}"), 1, "Seen."))
        .collect();
    let (status, _, body) = post(
        &server.url,
        Some(&key),
        "application/json",
        Value::Array(records).to_string(),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    // Wait for the first delivery to be on its way, then stop.
    let started = Instant::now();
    while target.received_requests().await.unwrap().is_empty() {
        assert!(started.elapsed() < Duration::from_secs(10), "nothing sent");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(server.terminate(), Some(0));
    drop(server);

    let mut again = Server::start(&d);
    let started = Instant::now();
    loop {
        let got = target.received_requests().await.unwrap();
        let ids: std::collections::BTreeSet<String> = got
            .iter()
            .map(|r| {
                serde_json::from_slice::<Value>(&r.body).unwrap()["record_id"]
                    .as_str()
                    .unwrap()
                    .to_owned()
            })
            .collect();
        if ids.len() == 12 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "after the restart only {} of 12 arrived",
            ids.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(again.terminate(), Some(0));
    let mut bodies: std::collections::BTreeMap<String, Vec<u8>> = Default::default();
    for r in target.received_requests().await.unwrap() {
        let key = r
            .headers
            .get("idempotency-key")
            .unwrap()
            .to_str()
            .unwrap()
            .to_owned();
        if let Some(before) = bodies.insert(key.clone(), r.body.clone()) {
            assert_eq!(before, r.body, "key {key} sent with two bodies");
        }
    }
    assert_eq!(bodies.len(), 12);
}

/// Slow clients: a request head dribbled past `[server] header_timeout_seconds` loses its
/// connection; a body that stops short is answered 408 after `request_timeout_seconds`;
/// meanwhile the server answers everyone else.
#[tokio::test(flavor = "multi_thread")]
async fn slow_clients_are_cut_off_and_others_are_served() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let target = MockServer::start().await;
    let (mut d, key, _) = deployment(&target);
    d.add_config("[server]\nheader_timeout_seconds = 1\nrequest_timeout_seconds = 1\n");
    let server = Server::start(&d);
    let addr = server.url.trim_start_matches("http://").to_owned();

    // Half a head, then silence: closed after about a second.
    let mut slow = tokio::net::TcpStream::connect(&addr).await.unwrap();
    slow.write_all(b"POST /v1/records HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    let health = reqwest::get(format!("{}/healthz", server.url))
        .await
        .unwrap();
    assert_eq!(health.status(), 200, "others are served meanwhile");
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), slow.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "the slow head's connection was kept open");
    assert!(started.elapsed() < Duration::from_secs(5));

    // A whole head, a body that stops short: 408, problem JSON.
    let answer = raw_post(
        &server.url,
        &key,
        "Content-Length: 1000",
        &[b"{\"kind\":".to_vec()],
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
}

/// Another school's records, within one trust (Celt's three schools, the shipped mappings):
/// a key for 136401 cannot post a record of 136402 (403), and sees one posted by 136402's own
/// key as missing (404) under every id form, while that key reads it.
#[tokio::test(flavor = "multi_thread")]
async fn a_key_never_reaches_another_school_of_its_trust() {
    let mut d = Deployment::new();
    let hook = "whsec_MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";
    for (name, value) in [
        ("CELT_CPOMS_WEBHOOK_SECRET", hook),
        ("CELT_DSL_WEBHOOK_SECRET", hook),
        ("CELT_WONDE_TOKEN", "t"),
        ("CELT_XPORTER_PASSWORD", "p"),
        ("THRIVE_CPOMS_WEBHOOK_SECRET", hook),
        ("THRIVE_ARBOR_USERNAME", "u"),
        ("THRIVE_ARBOR_PASSWORD", "p"),
    ] {
        d.env(name, value);
    }
    let key_for = |school: &str| new_key(&d, &["--trust", "celt", "--school", school]).0;
    let (mine, theirs) = (key_for("136401"), key_for("136402"));
    let server = Server::start(&d);
    let url = server.url.clone();
    let record = std::fs::read_to_string(
        crate::harness::root().join("fixtures/valid/celt-educated-at-home.json"),
    )
    .unwrap();
    let id = serde_json::from_str::<Value>(&record).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();

    let (status, ct, body) = post(&url, Some(&mine), "application/json", record.clone()).await;
    assert_eq!(
        (status, ct.as_str()),
        (403, "application/problem+json"),
        "{body}"
    );
    let (status, _, body) = post(&url, Some(&theirs), "application/json", record).await;
    assert_eq!(status, 200, "{body}");

    let get = |path: String, key: &str| {
        let key = key.to_owned();
        async move {
            let r = reqwest::Client::new()
                .get(path)
                .bearer_auth(key)
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    let (status, text) = get(format!("{url}/v1/records/celt/visit_report/{id}"), &theirs).await;
    assert_eq!(status, 200, "{text}");
    let (_, missing) = get(format!("{url}/v1/records/celt/visit_report/no-such"), &mine).await;
    for path in [
        format!("/v1/records/celt/visit_report/{id}"),
        format!("/v1/records/celt/visit_report/{}", id.to_uppercase()),
        format!("/v1/records/celt/visit_report/{id}%20"),
        format!("/v1/records/celt/visit_report/{}", id.replace('-', "%2D")),
        format!("/v1/records/celt/incident/{id}"),
        format!("/v1/records/thrive/visit_report/{id}"),
    ] {
        let (status, text) = get(format!("{url}{path}"), &mine).await;
        assert_eq!(status, 404, "{path}: {text}");
        assert_eq!(
            text, missing,
            "{path}: a missing record's answer, word for word"
        );
    }
}
