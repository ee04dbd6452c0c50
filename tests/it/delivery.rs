//! The delivery engine end to end (SPEC §3, §4, §6): the real `doorstep` binary syncs a
//! throwaway deployment into `wiremock` receivers over real HTTP (and into CSV files).
//!
//! Each test writes its own deployment: `doorstep.toml` (SQLite store, a small
//! `[delivery] max_wait_seconds`, the receiver's URL as a `[destinations.thrive.<name>]`
//! override), a connector file, and a `thrive` mapping (the shipped `trust.toml`, a
//! `routes.toml` and one map). Records are the shipped valid Thrive visit with its `id`,
//! `revision` and `summary` changed.
//!
//! The fakes are generic receivers, not models of a named product: a Standard Webhooks
//! receiver (verifying with the reference `standardwebhooks` crate), a JSON API with a bearer
//! token, and an OAuth2 client-credentials token endpoint shaped like Ed-Fi's
//! (`POST /oauth/token`, HTTP Basic client auth, form `grant_type=client_credentials`; see
//! ../shared/TARGETS.md). Status codes are chosen by each test, not guessed from a product.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::{Value, json};
use wiremock::matchers::{body_partial_json, body_string_contains, header, method, path};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

use crate::harness::{self, Deployment};

// ---------------------------------------------------------------------------------------
// Records, maps, connectors.

/// The shipped Thrive attendance visit as record `id`, revision `revision`.
pub(crate) fn visit(id: &str, revision: u32, summary: &str) -> Value {
    let text = std::fs::read_to_string(
        harness::root().join("fixtures/valid/thrive-attendance-illness.json"),
    )
    .unwrap();
    let mut v: Value = serde_json::from_str(&text).unwrap();
    v["id"] = id.into();
    v["revision"] = revision.into();
    v["summary"] = summary.into();
    v
}

/// A JSON body with a few fields; the pupil's name, date of birth and address are not mapped.
pub(crate) const VISIT_MAP: &str = r#"
[body]
event = "visit_report"
record_id = { field = "id" }
revision = { field = "revision" }
school_urn = { field = "school.urn" }
outcome = { field = "outcome" }
summary = { field = "summary" }

[body.student]
upn = { field = "pupil.upn" }
"#;

/// What `VISIT_MAP` builds from `visit(id, revision, summary)`.
fn visit_body(id: &str, revision: u32, summary: &str) -> Value {
    json!({
        "event": "visit_report",
        "record_id": id,
        "revision": revision,
        "school_urn": "117800",
        "outcome": "completed",
        "summary": summary,
        "student": {"upn": "R810229121001"},
    })
}

/// An `http_json` connector posting visits to `/api/visits`, the created id at `/id`.
pub(crate) fn api_connector(
    auth: &str,
    concurrency: usize,
    timeout: f64,
    max_attempts: u32,
) -> String {
    format!(
        r#"description = "a test JSON API"
transport = "http_json"
auth = "{auth}"

[limits]
concurrency = {concurrency}
timeout_seconds = {timeout:?}
max_attempts = {max_attempts}
backoff_min_seconds = 0.05
backoff_max_seconds = 0.2

[request]
idempotency_header = "Idempotency-Key"

[endpoints.visit_report]
method = "POST"
path = "/api/visits"

[response]
target_id = {{ pointer = "/id" }}
"#
    )
}

/// Routes every visit to destination `api` (connector `api`) through `VISIT_MAP`; `extra`
/// is added to the destination's table (its credentials).
pub(crate) fn api_routes(extra: &str) -> String {
    format!(
        r#"[destinations.api]
connector = "api"
{extra}

[[route]]
name = "visits"
kinds = ["visit_report"]
to = "api"
map = "visit_json"
"#
    )
}

/// A deployment sending visits to a bearer-token JSON API at `server`.
pub(crate) fn api_deploy(
    server: &MockServer,
    concurrency: usize,
    timeout: f64,
    max_attempts: u32,
) -> Deployment {
    let mut d = Deployment::thrive_only();
    d.max_wait(5.0).destination("thrive", "api", &server.uri());
    d.connector(
        "api",
        &api_connector("bearer", concurrency, timeout, max_attempts),
    );
    d.routes(&api_routes(r#"token = { env = "TEST_API_TOKEN" }"#));
    d.map("visit_json", VISIT_MAP);
    d.env("TEST_API_TOKEN", "tok-123");
    d
}

pub(crate) fn created(id: &str) -> ResponseTemplate {
    ResponseTemplate::new(201).set_body_json(json!({ "id": id }))
}

fn header_of(r: &Request, name: &str) -> Option<String> {
    r.headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

fn body_of(r: &Request) -> Value {
    serde_json::from_slice(&r.body).unwrap_or_else(|e| {
        panic!(
            "request body is not JSON ({e}): {}",
            String::from_utf8_lossy(&r.body)
        )
    })
}

/// Answers by the number of the request (0, 1, …) and keeps the time each arrived.
struct Script<F> {
    times: Arc<Mutex<Vec<Instant>>>,
    answer: F,
}

impl<F: Fn(usize, &Request) -> ResponseTemplate + Send + Sync> Script<F> {
    fn new(answer: F) -> (Script<F>, Arc<Mutex<Vec<Instant>>>) {
        let times = Arc::new(Mutex::new(Vec::new()));
        (
            Script {
                times: times.clone(),
                answer,
            },
            times,
        )
    }
}

impl<F: Fn(usize, &Request) -> ResponseTemplate + Send + Sync> Respond for Script<F> {
    fn respond(&self, r: &Request) -> ResponseTemplate {
        let n = {
            let mut t = self.times.lock().unwrap();
            t.push(Instant::now());
            t.len() - 1
        };
        (self.answer)(n, r)
    }
}

fn whsec(byte: u8) -> String {
    format!("whsec_{}", B64.encode([byte; 32]))
}

// ---------------------------------------------------------------------------------------
// 1. Webhooks.

/// A Standard Webhooks receiver that knows only `secret`: 204 when the signature verifies
/// with the reference crate, 401 with the reason otherwise.
struct Verifying {
    secret: String,
}

impl Respond for Verifying {
    fn respond(&self, r: &Request) -> ResponseTemplate {
        let wh = standardwebhooks::Webhook::new(&self.secret).unwrap();
        match wh.verify(&r.body, &r.headers) {
            Ok(()) => ResponseTemplate::new(204),
            Err(e) => ResponseTemplate::new(401).set_body_string(e.to_string()),
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn webhook_is_signed_with_every_secret_and_sends_only_the_mapped_body() {
    let server = MockServer::start().await;
    let (old, new) = (whsec(7), whsec(42));
    // The receiver has already moved to the new secret; doorstep still holds both.
    Mock::given(method("POST"))
        .and(path("/hooks/doorstep"))
        .respond_with(Verifying {
            secret: new.clone(),
        })
        .mount(&server)
        .await;
    let mut d = Deployment::thrive_only();
    d.max_wait(5.0).destination(
        "thrive",
        "cpoms",
        &format!("{}/hooks/doorstep", server.uri()),
    );
    d.connector(
        "hook",
        r#"transport = "webhook"
[limits]
concurrency = 2
timeout_seconds = 5
max_attempts = 3
backoff_min_seconds = 0.05
backoff_max_seconds = 0.2
[request]
idempotency_header = "Idempotency-Key"
[endpoints.default]
path = ""
"#,
    );
    d.routes(
        r#"[destinations.cpoms]
connector = "hook"
secrets = [{ env = "TEST_HOOK_OLD" }, { env = "TEST_HOOK_NEW" }]

[[route]]
name = "visits"
kinds = ["visit_report"]
to = "cpoms"
map = "visit_json"
"#,
    );
    d.map("visit_json", VISIT_MAP);
    d.env("TEST_HOOK_OLD", &old);
    d.env("TEST_HOOK_NEW", &new);
    d.drop_records(
        "visits.json",
        &[
            visit("wh-1", 1, "First visit."),
            visit("wh-2", 1, "Second visit."),
        ],
    );

    let run = d.sync().await;
    assert_eq!(run.code, 0, "{:?}\n{}", run.lines, run.stderr);
    assert_eq!(run.count("delivered"), 2, "{}", run.summary());

    let got = server.received_requests().await.unwrap();
    assert_eq!(got.len(), 2, "one request per record");
    let mut keys = BTreeSet::new();
    for r in &got {
        // Both signatures are there, and each secret alone verifies the message.
        let sig = header_of(r, "webhook-signature").expect("webhook-signature");
        assert_eq!(
            sig.split(' ').filter(|s| s.starts_with("v1,")).count(),
            2,
            "one v1 signature per secret: {sig}"
        );
        for secret in [&old, &new] {
            standardwebhooks::Webhook::new(secret)
                .unwrap()
                .verify(&r.body, &r.headers)
                .unwrap_or_else(|e| panic!("does not verify with {secret}: {e}"));
        }
        assert!(
            standardwebhooks::Webhook::new(&whsec(1))
                .unwrap()
                .verify(&r.body, &r.headers)
                .is_err(),
            "a secret doorstep does not hold must not verify"
        );
        let id = header_of(r, "webhook-id").expect("webhook-id");
        assert_eq!(
            header_of(r, "idempotency-key").as_deref(),
            Some(id.as_str()),
            "webhook-id is the idempotency key"
        );
        assert!(keys.insert(id), "two records share a webhook-id");
        assert_eq!(
            header_of(r, "content-type").as_deref(),
            Some("application/json")
        );
        // The body is the map's output and nothing else.
        let body = body_of(r);
        let id = body["record_id"].as_str().unwrap().to_owned();
        let summary = if id == "wh-1" {
            "First visit."
        } else {
            "Second visit."
        };
        assert_eq!(body, visit_body(&id, 1, summary));
        let text = String::from_utf8_lossy(&r.body);
        for personal in ["Ben", "Bolitho", "2017-02-11", "Beacon Close", "HU5"] {
            assert!(
                !text.contains(personal),
                "unmapped `{personal}` sent: {text}"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------
// 2–5. Retries.

#[tokio::test(flavor = "multi_thread")]
async fn a_503_is_retried_and_then_delivered() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(503).set_body_string("busy"))
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/api/visits"))
        .and(header("authorization", "Bearer tok-123"))
        .respond_with(created("T-503"))
        .mount(&server)
        .await;
    let d = api_deploy(&server, 4, 5.0, 5);
    d.drop_records("v.json", &[visit("r503", 1, "Seen.")]);

    let run = d.sync().await;
    assert_eq!(run.code, 0, "{:?}\n{}", run.lines, run.stderr);
    assert_eq!(run.count("delivered"), 1);
    assert_eq!(run.count("retrying"), 0);

    let got = server.received_requests().await.unwrap();
    assert_eq!(got.len(), 2, "one 503, one success");
    assert_eq!(
        header_of(&got[0], "idempotency-key"),
        header_of(&got[1], "idempotency-key"),
        "a retry keeps its idempotency key"
    );
    assert_eq!(got[0].body, got[1].body);

    let show = d.show(1).await;
    assert_eq!(show["record_id"], "r503");
    assert_eq!(show["state"], "delivered");
    assert_eq!(show["attempts"], 2);
    assert_eq!(show["target_id"], "T-503", "the created id is kept");
    let log = show["attempt_log"].as_array().unwrap();
    assert_eq!(log.len(), 2, "{log:?}");
    assert_eq!(log[0]["status"], 503);
    assert_eq!(log[1]["outcome"], "delivered");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_429_waits_for_retry_after() {
    let server = MockServer::start().await;
    let (script, times) = Script::new(|n, _: &Request| {
        if n == 0 {
            ResponseTemplate::new(429).insert_header("Retry-After", "1")
        } else {
            created("T-429")
        }
    });
    Mock::given(method("POST"))
        .respond_with(script)
        .mount(&server)
        .await;
    // The backoff alone would retry within 0.2 s.
    let d = api_deploy(&server, 4, 5.0, 5);
    d.drop_records("v.json", &[visit("r429", 1, "Seen.")]);

    let run = d.sync().await;
    assert_eq!(run.code, 0, "{:?}\n{}", run.lines, run.stderr);
    assert_eq!(run.count("delivered"), 1);
    let times = times.lock().unwrap().clone();
    assert_eq!(times.len(), 2, "one 429, one success");
    let waited = times[1] - times[0];
    assert!(
        waited >= Duration::from_secs(1),
        "Retry-After: 1 was not honoured: retried after {waited:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_timeout_is_retried() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(created("T-slow").set_delay(Duration::from_millis(1500)))
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .respond_with(created("T-fast"))
        .mount(&server)
        .await;
    let d = api_deploy(&server, 4, 0.3, 5);
    d.drop_records("v.json", &[visit("rslow", 1, "Seen.")]);

    let started = Instant::now();
    let run = d.sync().await;
    assert_eq!(run.code, 0, "{:?}\n{}", run.lines, run.stderr);
    assert_eq!(run.count("delivered"), 1);
    assert_eq!(server.received_requests().await.unwrap().len(), 2);
    let show = d.show(1).await;
    assert_eq!(show["attempts"], 2);
    assert_eq!(show["target_id"], "T-fast");
    assert_eq!(show["attempt_log"][0]["outcome"], "failed");
    assert!(
        show["attempt_log"][0]["error"]
            .as_str()
            .unwrap_or_default()
            .contains("timed out"),
        "{show}"
    );
    assert!(
        started.elapsed() < Duration::from_millis(1500) + Duration::from_secs(3),
        "the timeout did not cut the slow request short"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refused_connection_is_retried_then_dead_after_max_attempts() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let url = format!("http://127.0.0.1:{port}");
    let mut d = Deployment::thrive_only();
    d.connector("api", &api_connector("bearer", 2, 2.0, 3));
    d.routes(&api_routes(r#"token = { env = "TEST_API_TOKEN" }"#));
    d.map("visit_json", VISIT_MAP);
    d.env("TEST_API_TOKEN", "tok-123");
    d.drop_records("v.json", &[visit("refused", 1, "Seen.")]);

    // No waiting: one attempt, then the delivery waits for its retry.
    d.max_wait(0.0).destination("thrive", "api", &url);
    let run = d.sync().await;
    assert_eq!(run.code, 1, "undelivered is exit 1: {}", run.stderr);
    assert_eq!(run.count("retrying"), 1, "{}", run.summary());
    assert_eq!(run.count("delivered"), 0);
    let show = d.show(1).await;
    assert_eq!(show["state"], "retrying");
    assert_eq!(show["attempts"], 1);
    assert!(
        show["last_error"]
            .as_str()
            .unwrap_or_default()
            .contains("connection"),
        "{show}"
    );

    // Waiting long enough: attempts 2 and 3, then dead.
    d.max_wait(3.0).destination("thrive", "api", &url);
    let run = d.sync().await;
    assert_eq!(run.code, 1);
    assert_eq!(run.count("dead"), 1, "{}", run.summary());
    assert_eq!(run.count("retrying"), 0);
    let show = d.show(1).await;
    assert_eq!(show["state"], "dead");
    assert_eq!(show["attempts"], 3);
}

/// SPEC §4/§6: `sync` delivers "what is due" and keeps going while retries fall due
/// within `max_wait_seconds`, so one 503 followed by a 200 is delivered by one run (exit 0).
/// (A driver once stopped while the outcome of its last attempt was not yet committed; a
/// race, so it is tried a few times.)
#[tokio::test(flavor = "multi_thread")]
async fn one_sync_waits_for_the_retry_of_its_last_delivery() {
    for round in 0..8 {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .respond_with(ResponseTemplate::new(503))
            .up_to_n_times(1)
            .with_priority(1)
            .mount(&server)
            .await;
        Mock::given(method("POST"))
            .respond_with(created("T-1"))
            .mount(&server)
            .await;
        let d = api_deploy(&server, 4, 5.0, 5);
        d.drop_records("v.json", &[visit("once", 1, "Seen.")]);
        let run = d.sync().await;
        assert_eq!(
            (run.code, run.count("delivered"), run.count("retrying")),
            (0, 1, 0),
            "round {round}: one sync did not make the retry due 0.05-0.2 s later: {}\n{}",
            run.summary(),
            run.stderr
        );
        assert_eq!(server.received_requests().await.unwrap().len(), 2);
    }
}

// ---------------------------------------------------------------------------------------
// 6. Dead letters.

#[tokio::test(flavor = "multi_thread")]
async fn a_422_is_dead_at_once_and_replays_with_the_same_key() {
    let server = MockServer::start().await;
    let refusal = r#"{"response":{"code":422,"reason":"Unprocessable","errors":[{"exception":"Validation","message":"student not found"}]}}"#;
    Mock::given(method("POST"))
        .respond_with(
            ResponseTemplate::new(422)
                .insert_header("content-type", "application/json")
                .set_body_string(refusal),
        )
        .mount(&server)
        .await;
    let d = api_deploy(&server, 4, 5.0, 10);
    d.drop_records("v.json", &[visit("r422", 1, "Seen.")]);

    let run = d.sync().await;
    assert_eq!(run.code, 1, "a dead letter is exit 1");
    assert_eq!(run.count("dead"), 1, "{}", run.summary());
    let first = server.received_requests().await.unwrap();
    assert_eq!(first.len(), 1, "a 422 is not retried");
    let key = header_of(&first[0], "idempotency-key").expect("Idempotency-Key");

    let list = d.run_json("deadletter list", &[]).await;
    assert_eq!(list.code, 0);
    assert_eq!(list.lines.len(), 1, "{:?}", list.lines);
    let dead = &list.lines[0];
    assert_eq!(dead["kind"], "dead_letter");
    assert_eq!(dead["record_id"], "r422");
    assert_eq!(dead["last_status"], 422);
    assert!(
        dead["last_error"]
            .as_str()
            .unwrap_or_default()
            .contains("422"),
        "{dead}"
    );
    assert_eq!(dead["idempotency_key"], key.as_str());
    let id = dead["id"].as_i64().unwrap();
    let show = d.show(id).await;
    assert_eq!(show["response"], refusal, "the response is saved");
    assert_eq!(show["attempts"], 1);

    // The target is fixed; the dead letter is replayed and the next sync sends it.
    server.reset().await;
    Mock::given(method("POST"))
        .respond_with(created("T-422"))
        .mount(&server)
        .await;
    let replay = d.run_json("deadletter replay", &[&id.to_string()]).await;
    assert_eq!(replay.code, 0, "{:?} {}", replay.lines, replay.stderr);
    assert_eq!(replay.lines[0]["ids"], json!([id]));
    let run = d.sync().await;
    assert_eq!(run.code, 0, "{:?}\n{}", run.lines, run.stderr);
    assert_eq!(run.count("delivered"), 1);
    assert_eq!(run.count("dead"), 0);
    let again = server.received_requests().await.unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(
        header_of(&again[0], "idempotency-key").as_deref(),
        Some(key.as_str()),
        "a replay keeps the idempotency key"
    );
    assert_eq!(again[0].body, first[0].body);
    let list = d.run_json("deadletter list", &[]).await;
    assert!(list.lines.is_empty(), "{:?}", list.lines);
    assert_eq!(d.show(id).await["target_id"], "T-422");
}

// ---------------------------------------------------------------------------------------
// 7. OAuth2 client credentials.

/// The API: the first three requests with `t1` are taken; then `t1` has been revoked
/// (401); `t2` is taken.
struct RevokesT1 {
    t1_seen: AtomicUsize,
}

impl Respond for RevokesT1 {
    fn respond(&self, r: &Request) -> ResponseTemplate {
        match header_of(r, "authorization").as_deref() {
            Some("Bearer t1") if self.t1_seen.fetch_add(1, Ordering::SeqCst) < 3 => created("T-ok"),
            Some("Bearer t2") => created("T-ok"),
            _ => ResponseTemplate::new(401).insert_header("WWW-Authenticate", "Bearer"),
        }
    }
}

/// Visits to an OAuth2 client-credentials API at `server` (token at `/oauth/token`, client
/// `doorstep-client` with `secret`), one request at a time.
fn oauth_api(server: &MockServer, secret: &str, max_wait: f64) -> Deployment {
    let mut d = Deployment::thrive_only();
    d.max_wait(max_wait)
        .destination("thrive", "api", &server.uri());
    d.connector(
        "api",
        &api_connector("oauth2_client_credentials", 1, 5.0, 3),
    );
    d.routes(&api_routes(&format!(
        "client_id = {{ env = \"TEST_OAUTH_ID\" }}\n\
         client_secret = {{ env = \"TEST_OAUTH_SECRET\" }}\n\
         token_url = \"{}/oauth/token\"",
        server.uri()
    )));
    d.map("visit_json", VISIT_MAP);
    d.env("TEST_OAUTH_ID", "doorstep-client");
    d.env("TEST_OAUTH_SECRET", secret);
    d
}

#[tokio::test(flavor = "multi_thread")]
async fn oauth2_token_is_cached_and_refreshed_once_on_401() {
    let server = MockServer::start().await;
    let basic = format!("Basic {}", B64.encode("doorstep-client:s3cret"));
    let (tokens, token_times) = Script::new(|n, _: &Request| {
        ResponseTemplate::new(200).set_body_json(json!({
            "access_token": format!("t{}", n + 1),
            "token_type": "bearer",
            "expires_in": 3600,
        }))
    });
    Mock::given(method("POST"))
        .and(path("/oauth/token"))
        .and(header("authorization", basic.as_str()))
        .and(body_string_contains("grant_type=client_credentials"))
        .respond_with(tokens)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/api/visits"))
        .respond_with(RevokesT1 {
            t1_seen: AtomicUsize::new(0),
        })
        .mount(&server)
        .await;
    // One request at a time, so which request meets the revoked token is known.
    let d = oauth_api(&server, "s3cret", 5.0);
    let records: Vec<Value> = (1..=5)
        .map(|i| visit(&format!("oa-{i}"), 1, "Seen."))
        .collect();
    d.drop_records("v.json", &records);

    let run = d.sync().await;
    assert_eq!(run.code, 0, "{:?}\n{}", run.lines, run.stderr);
    assert_eq!(run.count("delivered"), 5);

    let got = server.received_requests().await.unwrap();
    let token_requests: Vec<&Request> = got
        .iter()
        .filter(|r| r.url.path() == "/oauth/token")
        .collect();
    assert_eq!(
        token_times.lock().unwrap().len(),
        2,
        "one token for the first requests, one after the 401; token requests: {}",
        token_requests.len()
    );
    for t in &token_requests {
        let form = String::from_utf8_lossy(&t.body);
        assert!(form.contains("grant_type=client_credentials"), "{form}");
        assert!(
            !form.contains("s3cret"),
            "the secret goes in the Basic header"
        );
    }
    let auth: Vec<String> = got
        .iter()
        .filter(|r| r.url.path() == "/api/visits")
        .map(|r| header_of(r, "authorization").unwrap_or_default())
        .collect();
    assert_eq!(
        auth,
        [
            "Bearer t1",
            "Bearer t1",
            "Bearer t1",
            "Bearer t1",
            "Bearer t2",
            "Bearer t2"
        ],
        "three taken with the cached t1; the 401 fetches t2 and retries at once; t2 is cached"
    );
    // The 401 and its retry are one attempt.
    let api: Vec<&Request> = got
        .iter()
        .filter(|r| r.url.path() == "/api/visits")
        .collect();
    assert_eq!(
        header_of(api[3], "idempotency-key"),
        header_of(api[4], "idempotency-key")
    );
    let record = body_of(api[3])["record_id"].as_str().unwrap().to_owned();
    for id in 1..=5 {
        let show = d.show(id).await;
        if show["record_id"] == record.as_str() {
            assert_eq!(show["attempts"], 1, "{show}");
        }
    }
}

/// A token service that is down (503) and then rate-limits (429 with `Retry-After: 1`) is
/// retried with the destination's backoff, honouring `Retry-After`: the delivery arrives,
/// nothing is dead.
#[tokio::test(flavor = "multi_thread")]
async fn a_token_service_that_fails_first_is_retried_not_dead_lettered() {
    let server = MockServer::start().await;
    let (tokens, token_times) = Script::new(|n, _: &Request| match n {
        0 => ResponseTemplate::new(503).set_body_json(json!({"error": "temporarily_unavailable"})),
        1 => ResponseTemplate::new(429)
            .insert_header("retry-after", "1")
            .set_body_json(json!({"error": "slow_down"})),
        _ => ResponseTemplate::new(200).set_body_json(json!({
            "access_token": "t-ok", "token_type": "bearer", "expires_in": 3600,
        })),
    });
    Mock::given(method("POST"))
        .and(path("/oauth/token"))
        .respond_with(tokens)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/api/visits"))
        .respond_with(created("T-1"))
        .mount(&server)
        .await;
    let d = oauth_api(&server, "s3cret", 10.0);
    d.drop_records("v.json", &[visit("tok-retry", 1, "Seen.")]);
    let run = d.sync().await;
    assert_eq!(run.code, 0, "{:?}\n{}", run.lines, run.stderr);
    assert_eq!(run.count("delivered"), 1);
    let times = token_times.lock().unwrap().clone();
    assert_eq!(times.len(), 3, "503, 429, then a token");
    assert!(
        times[2] - times[1] >= Duration::from_millis(950),
        "Retry-After: 1 was not honoured: {:?}",
        times[2] - times[1]
    );
    assert!(
        !run.stderr.contains("temporarily_unavailable") && !run.stderr.contains("slow_down"),
        "the service's words in a log line: {}",
        run.stderr
    );
}

// ---------------------------------------------------------------------------------------
// 8–9. Order, and a failing record holding up no other.

#[tokio::test(flavor = "multi_thread")]
async fn revisions_arrive_in_order() {
    let server = MockServer::start().await;
    // Record B's first revision fails once.
    Mock::given(method("POST"))
        .and(body_partial_json(
            json!({"record_id": "ord-b", "revision": 1}),
        ))
        .respond_with(ResponseTemplate::new(503))
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .respond_with(created("T-ord"))
        .mount(&server)
        .await;
    // Eight slots: nothing but the engine's ordering keeps the revisions apart.
    let d = api_deploy(&server, 8, 5.0, 5);
    let mut records = Vec::new();
    for rev in 1..=3 {
        for id in ["ord-a", "ord-b"] {
            records.push(visit(id, rev, &format!("{id} revision {rev}")));
        }
    }
    d.drop_records("v.json", &records);

    let run = d.sync().await;
    assert_eq!(run.code, 0, "{:?}\n{}", run.lines, run.stderr);
    assert_eq!(run.count("delivered"), 6, "{}", run.summary());
    let got = server.received_requests().await.unwrap();
    let order = |id: &str| -> Vec<u64> {
        got.iter()
            .map(body_of)
            .filter(|b| b["record_id"] == id)
            .map(|b| b["revision"].as_u64().unwrap())
            .collect()
    };
    assert_eq!(order("ord-a"), [1, 2, 3]);
    assert_eq!(
        order("ord-b"),
        [1, 1, 2, 3],
        "the 503, its retry, then 2 and 3"
    );
    for b in got.iter().map(body_of) {
        let (id, rev) = (
            b["record_id"].as_str().unwrap(),
            b["revision"].as_u64().unwrap(),
        );
        assert_eq!(
            b["summary"],
            format!("{id} revision {rev}"),
            "each revision's own body"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_poisoned_record_does_not_hold_up_the_others() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(body_partial_json(json!({"record_id": "poison"})))
        .respond_with(ResponseTemplate::new(500).set_body_string("boom"))
        .with_priority(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .respond_with(created("T-ok"))
        .mount(&server)
        .await;
    // One slot: a record retried in place would block every other.
    let mut d = api_deploy(&server, 1, 5.0, 1000);
    d.max_wait(1.5).destination("thrive", "api", &server.uri());
    let mut records = vec![visit("poison", 1, "Always refused.")];
    records.extend((1..=5).map(|i| visit(&format!("fine-{i}"), 1, "Seen.")));
    d.drop_records("v.json", &records);

    let run = d.sync().await;
    assert_eq!(run.code, 1, "the poisoned record is still undelivered");
    assert_eq!(run.count("delivered"), 5, "{}", run.summary());
    assert_eq!(run.count("retrying"), 1, "{}", run.summary());
    let got = server.received_requests().await.unwrap();
    let poison = got
        .iter()
        .filter(|r| body_of(r)["record_id"] == "poison")
        .count();
    // Retried within the run too, while the others went through.
    assert!(
        poison >= 2,
        "the poisoned record was not retried in the run"
    );
    let fine: BTreeSet<String> = got
        .iter()
        .map(body_of)
        .filter(|b| b["record_id"] != "poison")
        .map(|b| b["record_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(fine.len(), 5);
    assert_eq!(got.len() - poison, 5, "each other record is sent once");
}

// ---------------------------------------------------------------------------------------
// 10. A crash mid-sync.

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_sync_loses_nothing_and_resends_only_what_was_in_flight() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(created("T-slow").set_delay(Duration::from_millis(300)))
        .mount(&server)
        .await;
    let d = api_deploy(&server, 3, 5.0, 10);
    let records: Vec<Value> = (1..=20)
        .map(|i| visit(&format!("crash-{i:02}"), 1, "Seen."))
        .collect();
    d.drop_records("v.json", &records);

    let mut child = d
        .command("sync", &["--format", "json"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let waited = Instant::now();
    loop {
        let n = server.received_requests().await.unwrap().len();
        if n >= 5 {
            break;
        }
        assert!(
            waited.elapsed() < Duration::from_secs(20),
            "the first sync sent only {n} requests"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    child.kill().unwrap();
    let _ = child.wait();
    let before_kill = server.received_requests().await.unwrap().len();
    assert!(before_kill < 20, "the kill came too late to test anything");

    // What the store holds after the kill: delivered or still to go, by key.
    let mut state_at_kill = BTreeMap::new();
    for id in 1..=20 {
        let show = d.show(id).await;
        state_at_kill.insert(
            show["idempotency_key"].as_str().unwrap().to_owned(),
            show["state"].as_str().unwrap().to_owned(),
        );
    }
    assert_eq!(state_at_kill.len(), 20);
    let received_at_kill: BTreeSet<String> = server.received_requests().await.unwrap()
        [..before_kill]
        .iter()
        .map(|r| header_of(r, "idempotency-key").unwrap())
        .collect();

    let run = d.sync().await;
    assert_eq!(run.code, 0, "{:?}\n{}", run.lines, run.stderr);
    assert_eq!(run.count("delivered"), 20, "{}", run.summary());

    let mut times: BTreeMap<String, usize> = BTreeMap::new();
    for r in server.received_requests().await.unwrap() {
        *times
            .entry(header_of(&r, "idempotency-key").unwrap())
            .or_default() += 1;
    }
    assert_eq!(
        times.keys().cloned().collect::<BTreeSet<_>>(),
        state_at_kill.keys().cloned().collect::<BTreeSet<_>>(),
        "every record reached the receiver"
    );
    for (key, n) in &times {
        assert!(*n <= 2, "{key} received {n} times");
        if *n == 2 {
            assert!(
                received_at_kill.contains(key) && state_at_kill[key] != "delivered",
                "{key} was sent again though it was not in flight at the kill (state {})",
                state_at_kill[key]
            );
        }
        if state_at_kill[key] == "delivered" {
            assert_eq!(*n, 1, "{key} was delivered before the kill and sent again");
        }
    }
    let status = d.delivered().await;
    assert_eq!(
        status["api"],
        BTreeMap::from([("delivered".to_owned(), 20)]),
        "{status:?}"
    );
}

// ---------------------------------------------------------------------------------------
// 11. CSV files.

#[tokio::test(flavor = "multi_thread")]
async fn csv_rows_are_written_once_with_formulas_neutralised() {
    let mut d = Deployment::thrive_only();
    d.max_wait(2.0);
    d.connector(
        "csvlog",
        r#"transport = "csv_file"
[limits]
concurrency = 1
backoff_min_seconds = 0.05
backoff_max_seconds = 0.2
"#,
    );
    d.routes(
        r#"[destinations.contact_log]
connector = "csvlog"
file = "{{ school.urn }}/contacts.csv"
holds = "contacts"

[[route]]
name = "visits"
kinds = ["visit_report"]
to = "contact_log"
map = "contact_row"
"#,
    );
    d.map(
        "contact_row",
        r#"[[column]]
header = "Visit"
value = { field = "id" }

[[column]]
header = "Date"
value = { field = "visit.arrived_at", format = "%d/%m/%Y" }

[[column]]
header = "Summary"
value = { field = "summary" }
"#,
    );
    let records = vec![
        visit("csv-1", 1, "Plain note, with a comma"),
        visit("csv-2", 1, "=HYPERLINK(\"http://evil.example\",\"click\")"),
        visit("csv-3", 1, "@SUM(A1)"),
    ];
    d.drop_records("v.json", &records);

    let run = d.sync().await;
    assert_eq!(run.code, 0, "{:?}\n{}", run.lines, run.stderr);
    assert_eq!(run.count("delivered"), 3);
    let file = d.path("out/thrive/117800/contacts.csv");
    let first = std::fs::read(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));

    // Nothing new: nothing written.
    let run = d.sync().await;
    assert_eq!(run.code, 0, "{:?}\n{}", run.lines, run.stderr);
    assert_eq!(run.count("accepted"), 0);
    assert_eq!(run.count("routed"), 0);
    assert_eq!(run.count("delivered"), 3);
    // The same file dropped again: unchanged records, still nothing written.
    d.drop_records("again.json", &records);
    let run = d.sync().await;
    assert_eq!(run.code, 0, "{:?}\n{}", run.lines, run.stderr);
    assert_eq!(run.count("unchanged"), 3);
    assert_eq!(std::fs::read(&file).unwrap(), first, "the file changed");

    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .from_reader(first.as_slice());
    let rows: Vec<Vec<String>> = reader
        .records()
        .map(|r| r.unwrap().iter().map(str::to_owned).collect())
        .collect();
    assert_eq!(rows[0], ["Visit", "Date", "Summary"]);
    assert_eq!(
        rows.iter().filter(|r| r[0] == "Visit").count(),
        1,
        "one header"
    );
    let mut body: Vec<Vec<String>> = rows[1..].to_vec();
    body.sort();
    assert_eq!(
        body,
        [
            ["csv-1", "02/03/2026", "Plain note, with a comma"],
            [
                "csv-2",
                "02/03/2026",
                "'=HYPERLINK(\"http://evil.example\",\"click\")"
            ],
            ["csv-3", "02/03/2026", "'@SUM(A1)"],
        ]
    );
}

// ---------------------------------------------------------------------------------------
// 12. Urgency decides the order.

/// SPEC §8: an urgent safeguarding flag is not stuck behind routine records. With one slot
/// and six routine visits dropped before it, the immediate flag is the first request sent.
#[tokio::test(flavor = "multi_thread")]
async fn an_immediate_flag_goes_before_routine_visits() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(created("T"))
        .mount(&server)
        .await;
    let mut d = Deployment::thrive_only();
    d.max_wait(5.0).destination("thrive", "api", &server.uri());
    d.connector(
        "api",
        &api_connector("bearer", 1, 5.0, 3)
            .replace("[endpoints.visit_report]", "[endpoints.default]"),
    );
    d.routes(
        "[destinations.api]\nconnector = \"api\"\ntoken = { env = \"TEST_API_TOKEN\" }\n\n\
         [[route]]\nname = \"all\"\nto = \"api\"\nmap = \"any\"\n",
    );
    d.map(
        "any",
        "[body]\nkind = { field = \"kind\" }\nrecord_id = { field = \"id\" }\n",
    );
    d.env("TEST_API_TOKEN", "tok-123");
    let mut records: Vec<Value> = (1..=6)
        .map(|i| visit(&format!("routine-{i}"), 1, "Seen."))
        .collect();
    let mut flag: Value = serde_json::from_str(
        &std::fs::read_to_string(
            harness::root().join("fixtures/valid/thrive-flag-disclosure.json"),
        )
        .unwrap(),
    )
    .unwrap();
    flag["id"] = "urgent-flag".into();
    flag["urgency"] = "immediate".into();
    records.push(flag);
    d.drop_records("day.json", &records);
    let run = d.sync().await;
    assert_eq!(run.code, 0, "{}\n{}", run.summary(), run.stderr);
    assert_eq!(run.count("delivered"), 7, "{}", run.summary());
    let got = server.received_requests().await.unwrap();
    let order: Vec<String> = got
        .iter()
        .map(|r| body_of(r)["record_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(order[0], "urgent-flag", "sent in this order: {order:?}");
}

// ---------------------------------------------------------------------------------------
// 13. Batching.

/// SPEC §4 "batch size where the system batches": with `batch_size = 3` and the list at
/// `/marks`, seven records go as three requests (3, 3, 1 items), each item the map's own,
/// and every record is delivered.
#[tokio::test(flavor = "multi_thread")]
async fn a_batching_endpoint_takes_several_records_a_request() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"ok": true})))
        .mount(&server)
        .await;
    let mut d = Deployment::thrive_only();
    d.max_wait(5.0).destination("thrive", "api", &server.uri());
    d.connector(
        "api",
        &api_connector("bearer", 1, 5.0, 3).replace(
            "path = \"/api/visits\"",
            "path = \"/api/marks\"\nbatch_size = 3\nbatch_pointer = \"/marks\"",
        ),
    );
    d.routes(&api_routes(r#"token = { env = "TEST_API_TOKEN" }"#));
    d.map(
        "visit_json",
        "[body]\nsource = \"doorstep\"\n[[body.marks]]\nrecord_id = { field = \"id\" }\nupn = { field = \"pupil.upn\" }\n",
    );
    d.env("TEST_API_TOKEN", "tok-123");
    let records: Vec<Value> = (1..=7)
        .map(|i| visit(&format!("mark-{i}"), 1, "Seen."))
        .collect();
    d.drop_records("day.json", &records);
    let run = d.sync().await;
    assert_eq!(run.code, 0, "{}\n{}", run.summary(), run.stderr);
    assert_eq!(run.count("delivered"), 7, "{}", run.summary());
    let got = server.received_requests().await.unwrap();
    let sizes: Vec<usize> = got
        .iter()
        .map(|r| body_of(r)["marks"].as_array().unwrap().len())
        .collect();
    assert_eq!(sizes, [3, 3, 1]);
    let ids: Vec<String> = got
        .iter()
        .flat_map(|r| {
            let b = body_of(r);
            assert_eq!(b["source"], "doorstep");
            b["marks"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| m["record_id"].as_str().unwrap().to_owned())
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(
        ids,
        (1..=7).map(|i| format!("mark-{i}")).collect::<Vec<_>>()
    );
    let keys: std::collections::BTreeSet<_> = got
        .iter()
        .map(|r| header_of(r, "idempotency-key").unwrap())
        .collect();
    assert_eq!(keys.len(), 3, "one key per batch");
}

// ---------------------------------------------------------------------------------------
// 14. Updates, 200-with-an-error, rate limits.

/// A JSON API whose create answers with target id `id` and whose endpoint updates by
/// `PUT {{ target_id }}` (answering 200), and a deployment sending visits to it.
async fn updating_api(id: &str) -> (MockServer, Deployment) {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(created(id))
        .mount(&server)
        .await;
    Mock::given(method("PUT"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({})))
        .mount(&server)
        .await;
    let d = api_deploy(&server, 4, 5.0, 3);
    d.connector(
        "api",
        &api_connector("bearer", 4, 5.0, 3).replace(
            "path = \"/api/visits\"",
            "path = \"/api/visits\"\nupdate_method = \"PUT\"\nupdate_path = \"{{ target_id }}\"",
        ),
    );
    (server, d)
}

/// SPEC §4 "a new revision updates the target record where the system allows" and "a stored
/// target id is never created twice": revision 1 is created (POST) and its id kept; revision 2
/// goes to `PUT {target_id}`, never to a second create.
#[tokio::test(flavor = "multi_thread")]
async fn a_later_revision_updates_the_created_record() {
    let (server, d) = updating_api("/api/visits/77").await;
    d.drop_records("v1.json", &[visit("upd", 1, "first")]);
    assert_eq!(d.sync().await.code, 0);
    d.drop_records("v2.json", &[visit("upd", 2, "second")]);
    let run = d.sync().await;
    assert_eq!(run.code, 0, "{}\n{}", run.summary(), run.stderr);
    let got = server.received_requests().await.unwrap();
    let calls: Vec<(String, String, u64)> = got
        .iter()
        .map(|r| {
            (
                r.method.to_string(),
                r.url.path().to_owned(),
                body_of(r)["revision"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        calls,
        [
            ("POST".to_owned(), "/api/visits".to_owned(), 1),
            ("PUT".to_owned(), "/api/visits/77".to_owned(), 2)
        ]
    );
}

/// `update_body = "changed"`: an update carries only the fields that changed since the
/// revision the target has; a revision that changes nothing the target sees makes no
/// request, and its delivery says so (`unchanged` in its attempt log).
#[tokio::test(flavor = "multi_thread")]
async fn an_update_sends_only_what_changed_and_nothing_when_nothing_did() {
    let (server, d) = updating_api("/api/visits/77").await;
    d.connector(
        "api",
        &api_connector("bearer", 4, 5.0, 3).replace(
            "path = \"/api/visits\"",
            "path = \"/api/visits\"\nupdate_method = \"PUT\"\nupdate_path = \"{{ target_id }}\"\n\
             update_body = \"changed\"",
        ),
    );
    // No revision in the body: what the target sees is the record id, summary and pupil.
    d.map(
        "visit_json",
        "[body]\nrecord_id = { field = \"id\" }\nsummary = { field = \"summary\" }\n\
         [body.student]\nupn = { field = \"pupil.upn\" }\n",
    );
    d.drop_records("v1.json", &[visit("chg", 1, "first")]);
    assert_eq!(d.sync().await.code, 0);
    // Revision 2 changes only what is not mapped: nothing to send.
    let mut r2 = visit("chg", 2, "first");
    r2["outcome"] = "no_one_home".into();
    d.drop_records("v2.json", &[r2]);
    let run = d.sync().await;
    assert_eq!(run.code, 0, "{}\n{}", run.summary(), run.stderr);
    assert_eq!(server.received_requests().await.unwrap().len(), 1);
    let r2 = d.delivery("api", "chg", 2).await;
    assert_eq!(r2["state"], "delivered");
    assert_eq!(r2["target_id"], "/api/visits/77");
    assert_eq!(r2["attempt_log"][0]["outcome"], "unchanged", "{r2}");
    // Revision 3 changes the summary: a PUT with the summary alone.
    d.drop_records("v3.json", &[visit("chg", 3, "third")]);
    assert_eq!(d.sync().await.code, 0);
    let got = server.received_requests().await.unwrap();
    assert_eq!(got.len(), 2);
    assert_eq!(got[1].method.as_str(), "PUT");
    assert_eq!(got[1].url.path(), "/api/visits/77");
    assert_eq!(body_of(&got[1]), json!({"summary": "third"}));
}

/// A create whose answer is lost, at a target with no idempotency key and no way to find
/// what it made: held as a dead letter naming rule `needs-check`, never sent a second time
/// on its own; after a person has checked, a replay sends it again.
#[tokio::test(flavor = "multi_thread")]
async fn a_lost_create_with_no_way_to_find_it_waits_for_a_check() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(created("T-1").set_delay(Duration::from_secs(3)))
        .up_to_n_times(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .respond_with(created("T-1"))
        .mount(&server)
        .await;
    let d = api_deploy(&server, 1, 1.0, 5);
    d.connector(
        "api",
        &api_connector("bearer", 1, 1.0, 5)
            .replace("idempotency_header = \"Idempotency-Key\"\n", ""),
    );
    d.drop_records("v.json", &[visit("lost-1", 1, "Seen.")]);
    let run = d.sync().await;
    assert_eq!(run.count("dead"), 1, "{:?}\n{}", run.lines, run.stderr);
    assert_eq!(
        server.received_requests().await.unwrap().len(),
        1,
        "sent once"
    );
    let dead = d.dead_letters().await;
    let reason = dead[0]["last_error"].as_str().unwrap();
    assert!(reason.contains("(rule: needs-check)"), "{reason}");
    // Another sync sends nothing.
    d.sync().await;
    assert_eq!(server.received_requests().await.unwrap().len(), 1);
    // Checked: not there. Replayed, it is sent and delivered.
    let id = dead[0]["id"].as_i64().unwrap().to_string();
    let r = d.run_json("deadletter replay", &[&id]).await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    let run = d.sync().await;
    assert_eq!(run.count("delivered"), 1, "{:?}", run.lines);
    assert_eq!(server.received_requests().await.unwrap().len(), 2);
}

/// The same for a batch: a batched create whose answer is lost is not sent again as a batch
/// — each of its records is held for a check on its own.
#[tokio::test(flavor = "multi_thread")]
async fn a_lost_batch_is_held_for_a_check_record_by_record() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"ok": true}))
                .set_delay(Duration::from_secs(3)),
        )
        .mount(&server)
        .await;
    let mut d = Deployment::thrive_only();
    d.max_wait(5.0).destination("thrive", "api", &server.uri());
    d.connector(
        "api",
        &api_connector("bearer", 1, 1.0, 5)
            .replace("idempotency_header = \"Idempotency-Key\"\n", "")
            .replace(
                "path = \"/api/visits\"",
                "path = \"/api/marks\"\nbatch_size = 3\nbatch_pointer = \"/marks\"",
            ),
    );
    d.routes(&api_routes(r#"token = { env = "TEST_API_TOKEN" }"#));
    d.map(
        "visit_json",
        "[body]\n[[body.marks]]\nrecord_id = { field = \"id\" }\n",
    );
    d.env("TEST_API_TOKEN", "tok-123");
    let records: Vec<Value> = (1..=3)
        .map(|i| visit(&format!("lost-mark-{i}"), 1, "Seen."))
        .collect();
    d.drop_records("day.json", &records);
    let run = d.sync().await;
    assert_eq!(run.count("dead"), 3, "{}\n{}", run.summary(), run.stderr);
    assert_eq!(
        server.received_requests().await.unwrap().len(),
        1,
        "one request"
    );
    for dead in d.dead_letters().await {
        let reason = dead["last_error"].as_str().unwrap();
        assert!(reason.contains("(rule: needs-check)"), "{reason}");
    }
}

/// A target's answer never redirects a request (SPEC §4): the id a create returns is data.
/// Hostile ids that would have sent revision 2's update — with the bearer token and the
/// record — to another host or port are dead letters naming the rule; the other server
/// hears nothing.
#[tokio::test(flavor = "multi_thread")]
async fn a_hostile_target_id_is_a_dead_letter_not_a_redirect() {
    let other = MockServer::start().await;
    let port = other.address().port();
    for hostile in [
        format!("@127.0.0.1:{port}/steal"),
        format!("//127.0.0.1:{port}/steal"),
        format!(":{port}/steal"),
        "/api/visits/../../steal".to_owned(),
    ] {
        let (server, d) = updating_api(&hostile).await;
        d.drop_records("v1.json", &[visit("hostile", 1, "first")]);
        assert_eq!(d.sync().await.code, 0, "{hostile}");
        d.drop_records("v2.json", &[visit("hostile", 2, "second")]);
        let run = d.sync().await;
        assert_eq!(run.code, 1, "{hostile}: {}", run.summary());
        let dead = d.dead_letters().await;
        assert_eq!(dead.len(), 1, "{hostile}: {dead:?}");
        let error = dead[0]["last_error"].as_str().unwrap_or_default();
        assert!(error.contains("(rule: target-id-"), "{hostile}: {error}");
        let puts = server
            .received_requests()
            .await
            .unwrap()
            .into_iter()
            .filter(|r| r.method.as_str() == "PUT")
            .count();
        assert_eq!(puts, 0, "{hostile}: no update was sent anywhere");
    }
    assert!(
        other.received_requests().await.unwrap().is_empty(),
        "the other server was reached"
    );
}

/// TLS or loopback (SPEC §4): a destination over plain http:// to a host that is not
/// loopback is refused at `config check` (exit 2, rule `plain-http`) unless it says
/// `allow_plain_http = true`, and then the start warns.
#[tokio::test(flavor = "multi_thread")]
async fn plain_http_beyond_loopback_is_refused_unless_allowed() {
    let server = MockServer::start().await;
    let mut d = api_deploy(&server, 4, 5.0, 3);
    d.run("config check", &[]).code(0);
    d.destination("thrive", "api", "http://records.example.org/api");
    let out = d
        .run("config check", &[])
        .code(2)
        .get_output()
        .stderr
        .clone();
    let err = String::from_utf8_lossy(&out);
    assert!(
        err.contains("(rule: plain-http)") && err.contains("records.example.org"),
        "{err}"
    );
    d.run("sync", &[]).code(2);
    d.routes(&api_routes(
        "token = { env = \"TEST_API_TOKEN\" }\nallow_plain_http = true",
    ));
    let out = d
        .run("config check", &[])
        .code(0)
        .get_output()
        .stderr
        .clone();
    let err = String::from_utf8_lossy(&out);
    assert!(err.contains("plain http:// allowed"), "{err}");
}

/// One writer per store (SPEC §4): cron starts a second `sync` while the first is still
/// sending to a slow target. The second exits 75 at once with a clear line and touches
/// nothing; a third with `--wait` waits for the first and then finds nothing left to send.
/// No idempotency key reaches the target twice.
#[tokio::test(flavor = "multi_thread")]
async fn a_second_sync_on_one_store_waits_or_gives_up_and_never_sends_twice() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(created("T-1").set_delay(Duration::from_millis(150)))
        .mount(&server)
        .await;
    let d = api_deploy(&server, 1, 5.0, 3);
    let records: Vec<Value> = (0..20)
        .map(|i| visit(&format!("lock-{i}"), 1, "Seen."))
        .collect();
    d.drop_records("v.json", &records);
    // The first: about 3 s of sending, one request at a time.
    let mut first = d.command("sync", &[]).spawn().unwrap();
    // Wait until it has taken the lock (its first request has arrived).
    let started = Instant::now();
    while server.received_requests().await.unwrap().is_empty() {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the first sync never sent"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let second = d.run_json("sync", &[]).await;
    assert_eq!(second.code, 75, "{}", second.stderr);
    assert!(
        second
            .stderr
            .contains("another doorstep sync or ingest is writing to this store"),
        "{}",
        second.stderr
    );
    assert!(
        second.lines.is_empty(),
        "the second printed {:?}",
        second.lines
    );
    // Reading verbs work beside the running sync.
    for verb in ["status", "deadletter list"] {
        let r = d.run_json(verb, &[]).await;
        assert_eq!(r.code, 0, "{verb} beside a sync: {}", r.stderr);
    }
    let third = d.run_json("sync", &["--wait", "60"]).await;
    let first = tokio::task::spawn_blocking(move || first.wait().unwrap())
        .await
        .unwrap();
    assert_eq!(first.code(), Some(0));
    assert_eq!(third.code, 0, "{}", third.stderr);
    assert_eq!(third.count("routed"), 0, "{:?}", third.summary());
    assert_eq!(third.count("delivered"), 20, "{:?}", third.summary());
    let keys: Vec<String> = server
        .received_requests()
        .await
        .unwrap()
        .iter()
        .filter_map(|r| header_of(r, "idempotency-key"))
        .collect();
    let unique: BTreeSet<&String> = keys.iter().collect();
    assert_eq!(keys.len(), 20, "every record sent once");
    assert_eq!(unique.len(), 20, "no key sent twice");
}

/// No secret leaves in an error (SPEC §4): a token endpoint whose refusal echoes the
/// request — the client secret in its own error code and description — is classified, never
/// quoted: the canary is in no output line, no log, no dead letter and no attempt row.
#[tokio::test(flavor = "multi_thread")]
async fn a_token_refusal_that_echoes_the_secret_is_never_quoted() {
    const CANARY: &str = "s3cret-canary-7f3a";
    for (status, error) in [
        (400, format!("client_secret={CANARY}")),
        (401, "invalid_client".to_owned()),
    ] {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .and(path("/oauth/token"))
            .respond_with(ResponseTemplate::new(status).set_body_json(json!({
                "error": error,
                "error_description": format!("bad client_secret {CANARY}"),
            })))
            .mount(&server)
            .await;
        let d = oauth_api(&server, CANARY, 0.0);
        d.drop_records("v.json", &[visit("canary", 1, "Seen.")]);
        let run = d.sync().await;
        assert_eq!(run.code, 1, "{status}: {}", run.stderr);
        let dead = d.dead_letters().await;
        assert_eq!(dead.len(), 1, "{status}: {dead:?}");
        let error = dead[0]["last_error"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        assert!(error.contains("refused the client credentials"), "{error}");
        if status == 401 {
            assert!(error.contains("(invalid_client)"), "{error}");
        }
        let show = d.show(dead[0]["id"].as_i64().unwrap()).await;
        // The service's words are kept for whoever fixes it, with the secret taken out.
        let response = show["response"].as_str().unwrap_or_default();
        assert!(
            response.contains("bad client_secret [redacted]"),
            "{status}: {show}"
        );
        let seen = format!("{:?}\n{}\n{dead:?}\n{show}", run.lines, run.stderr);
        assert!(
            !seen.contains(CANARY),
            "{status}: the secret leaked: {seen}"
        );
        let db = std::fs::read(d.db()).unwrap();
        assert!(
            !String::from_utf8_lossy(&db).contains(CANARY),
            "{status}: the secret is in the store"
        );
    }
}

/// TARGETS.md (Xporter): "a 200 is not success until the body says so". With
/// `error_pointers = ["/ExceptionType"]`, a 200 carrying an exception is a dead letter with
/// the body saved; a 200 with an empty one is delivered.
#[tokio::test(flavor = "multi_thread")]
async fn a_200_whose_body_reports_an_error_is_not_success() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(body_partial_json(json!({"record_id": "refused"})))
        .respond_with(ResponseTemplate::new(200).set_body_json(
            json!({"ExceptionType": "InvalidMark", "ExceptionMessage": "no such pupil"}),
        ))
        .with_priority(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(json!({"ExceptionType": null, "id": "ok"})),
        )
        .mount(&server)
        .await;
    let d = api_deploy(&server, 2, 5.0, 3);
    d.connector(
        "api",
        &api_connector("bearer", 2, 5.0, 3).replace(
            "[response]",
            "[response]\nerror_pointers = [\"/ExceptionType\"]",
        ),
    );
    d.drop_records(
        "v.json",
        &[visit("refused", 1, "x"), visit("accepted", 1, "y")],
    );
    let run = d.sync().await;
    assert_eq!(run.code, 1);
    assert_eq!(
        (run.count("delivered"), run.count("dead")),
        (1, 1),
        "{}",
        run.summary()
    );
    let dead = d.run_json("deadletter list", &[]).await;
    assert_eq!(dead.lines.len(), 1, "{:?}", dead.lines);
    assert_eq!(dead.lines[0]["record_id"], "refused");
    let error = dead.lines[0]["last_error"].as_str().unwrap();
    assert!(error.contains("/ExceptionType"), "{error}");
    let id = dead.lines[0]["id"].as_i64().unwrap();
    let shown = d.show(id).await;
    assert!(
        shown["response"]
            .as_str()
            .unwrap()
            .contains("no such pupil"),
        "{shown}"
    );
}

/// SPEC §4 "per destination: … rate limit": at 4 requests a second, 10 records take about
/// 1.5 s after the first burst of 4 (GCRA), however many slots there are.
#[tokio::test(flavor = "multi_thread")]
async fn a_rate_limit_spaces_the_requests() {
    let server = MockServer::start().await;
    let (script, times) = Script::new(|_, _| created("T"));
    Mock::given(method("POST"))
        .respond_with(script)
        .mount(&server)
        .await;
    let d = api_deploy(&server, 8, 5.0, 3);
    d.connector(
        "api",
        &api_connector("bearer", 8, 5.0, 3).replace("[limits]", "[limits]\nrate_per_second = 4"),
    );
    let records: Vec<Value> = (1..=10)
        .map(|i| visit(&format!("rl-{i}"), 1, "Seen."))
        .collect();
    d.drop_records("v.json", &records);
    let run = d.sync().await;
    assert_eq!(run.code, 0, "{}", run.summary());
    let t = times.lock().unwrap().clone();
    assert_eq!(t.len(), 10);
    let span = t[9].duration_since(t[0]);
    assert!(
        span >= Duration::from_millis(1300),
        "10 requests at 4/s spread over at least 1.5 s (less a little): {span:?}"
    );
}
