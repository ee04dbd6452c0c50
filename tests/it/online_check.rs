//! `doorstep config check --online` (issue 7): every destination reached as a sync would
//! reach it — credentials, token, one read per school — a line each, exit 1 if any fails.

use serde_json::json;
use wiremock::matchers::{header, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::harness::Deployment;

/// `config check --online` is human output: run it and keep stdout.
async fn check(live: &Deployment) -> (i32, String) {
    let mut cmd = live.command("config check --online", &[]);
    cmd.env("THRIVE_ARBOR_USERNAME", "doorstep-app")
        .env("THRIVE_ARBOR_PASSWORD", "s3cret-pass")
        .env("CELT_WONDE_TOKEN", "wonde-token-1");
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn each_destination_is_reached_with_its_credentials_per_school() {
    let arbor = MockServer::start().await;
    // Basic doorstep-app:s3cret-pass
    Mock::given(method("GET"))
        .and(path("/rest-v2/attendance-marks"))
        .and(header(
            "authorization",
            "Basic ZG9vcnN0ZXAtYXBwOnMzY3JldC1wYXNz",
        ))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"attendanceMarks": []})))
        .mount(&arbor)
        .await;
    let wonde = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/v1.0/schools/A1930499544"))
        .and(header("authorization", "Bearer wonde-token-1"))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(json!({"data": {"id": "A1930499544"}})),
        )
        .mount(&wonde)
        .await;
    // The second school's id is not known to this Wonde app.
    Mock::given(method("GET"))
        .and(path("/v1.0/schools/A2032141745"))
        .respond_with(ResponseTemplate::new(403).set_body_json(json!({"error": {"message": "School A2032141745 has not approved access for pupil Grace Gilbert"}})))
        .mount(&wonde)
        .await;
    let mut live = Deployment::copy_of("mappings");
    live.destination("thrive", "arbor_notes", &arbor.uri())
        .destination("thrive", "arbor_register", &arbor.uri())
        .destination("celt", "wonde", &wonde.uri());
    let (code, out) = check(&live).await;
    assert_eq!(code, 1, "one school fails: {out}");
    assert!(out.contains("online thrive/arbor_notes: ok"), "{out}");
    assert!(out.contains("online thrive/arbor_register: ok"), "{out}");
    assert!(out.contains("online celt/wonde school 136401: ok"), "{out}");
    assert!(
        out.contains("online celt/wonde school 136402: FAILED: 403 Forbidden"),
        "{out}"
    );
    // The target's words are not repeated (they may quote a pupil).
    assert!(!out.contains("Grace"), "{out}");
    // Paused (no URL given here) destinations are checked too: Xporter has no password.
    assert!(out.contains("online celt/xporter: FAILED: password: environment variable `CELT_XPORTER_PASSWORD` is not set"), "{out}");
    assert!(out.contains("online celt/cpoms: not reached"), "{out}");
    assert!(out.contains("online thrive/contact_log: ok"), "{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn refused_credentials_are_a_failed_line() {
    let arbor = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(
            ResponseTemplate::new(401)
                .set_body_json(json!({"response": {"code": 401, "reason": "Unauthorized"}})),
        )
        .mount(&arbor)
        .await;
    let mut live = Deployment::copy_of("mappings");
    live.destination("thrive", "arbor_notes", &arbor.uri());
    let (code, out) = check(&live).await;
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("online thrive/arbor_notes: FAILED: 401 Unauthorized"),
        "{out}"
    );
    // Nothing but reads was made.
    let posts = arbor
        .received_requests()
        .await
        .unwrap()
        .iter()
        .filter(|r| r.method != wiremock::http::Method::GET)
        .count();
    assert_eq!(posts, 0);
}
