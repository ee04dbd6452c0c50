//! No secret ever leaves in an error (SPEC §7): every auth scheme, against a target and a
//! token service that echo the whole request back (headers and body) on every failure path —
//! refused, 4xx, 5xx, malformed JSON, timeout. The canary secrets are then looked for, in
//! every form they were sent in, in the run's output and debug log, the dead letters, the
//! store's file and an audit bundle. Each case also checks that the failure was recorded, so
//! the search is over something.

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::{Value, json};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

use crate::delivery::{VISIT_MAP, api_connector, api_routes, visit};
use crate::harness::Deployment;

/// A secret with characters that encode differently in a form, a URL and JSON.
const SECRET: &str = "Canary+S3cr3t/x=y&\"z";
const ACCESS_TOKEN: &str = "Canary-access-token-77f1";

/// What a failing service answers.
#[derive(Clone, Copy, Debug)]
enum Failure {
    Status(u16),
    MalformedJson,
    Timeout,
}

/// Echoes the request — every header and the body — in an answer of `failure`.
struct Echo(Failure);

impl Respond for Echo {
    fn respond(&self, r: &Request) -> ResponseTemplate {
        let headers: Vec<String> = r
            .headers
            .iter()
            .map(|(k, v)| format!("{k}: {}", v.to_str().unwrap_or_default()))
            .collect();
        let echo = json!({
            "error": format!("invalid request {}", String::from_utf8_lossy(&r.body)),
            "error_description": headers.join("; "),
            "message": format!("you sent {headers:?}"),
            "id": ACCESS_TOKEN,
        });
        match self.0 {
            Failure::Status(s) => ResponseTemplate::new(s)
                .set_body_json(echo)
                .insert_header("retry-after", "0"),
            Failure::MalformedJson => ResponseTemplate::new(200)
                .set_body_raw(format!("{{\"token\": {echo}"), "application/json"),
            Failure::Timeout => ResponseTemplate::new(500)
                .set_body_json(echo)
                .set_delay(Duration::from_secs(3)),
        }
    }
}

/// Every form a secret was sent in.
fn forms(secret: &str, user: &str) -> Vec<String> {
    let form: String = url::form_urlencoded::byte_serialize(secret.as_bytes()).collect();
    let user_form: String = url::form_urlencoded::byte_serialize(user.as_bytes()).collect();
    vec![
        secret.to_owned(),
        form.clone(),
        serde_json::to_string(secret)
            .unwrap()
            .trim_matches('"')
            .to_owned(),
        B64.encode(format!("{user}:{secret}")),
        B64.encode(format!("{user_form}:{form}")),
    ]
}

/// Runs `sync`, then looks for every form of the secrets everywhere a run leaves text.
async fn assert_no_leak(d: &mut Deployment, case: &str, secrets: &[String]) {
    d.env("DOORSTEP_LOG", "debug");
    d.drop_records("v.json", &[visit("canary-1", 1, "Seen.")]);
    let run = d.sync().await;
    assert_ne!(
        run.code, 0,
        "{case}: the failure was not a failure: {}",
        run.stderr
    );
    let deliveries = d.deliveries().await;
    let failed: Vec<&Value> = deliveries
        .iter()
        .filter(|v| v["last_error"].as_str().is_some_and(|e| !e.is_empty()))
        .collect();
    assert!(
        !failed.is_empty(),
        "{case}: no error recorded: {deliveries:?}"
    );
    let status = d.run("status", &[]).get_output().stdout.clone();
    d.run(
        "audit export",
        &[
            "--trust",
            "thrive",
            "--school",
            "117800",
            "--from",
            "2020-01-01",
            "--to",
            "2035-12-31",
            "--out",
            "bundle",
        ],
    )
    .code(0);
    let mut seen = format!(
        "{:?}\n{}\n{deliveries:?}\n{}",
        run.lines,
        run.stderr,
        String::from_utf8_lossy(&status)
    );
    seen.push_str(&String::from_utf8_lossy(&std::fs::read(d.db()).unwrap()));
    for f in std::fs::read_dir(d.path("bundle")).unwrap() {
        seen.push_str(&String::from_utf8_lossy(
            &std::fs::read(f.unwrap().path()).unwrap(),
        ));
    }
    for s in secrets {
        assert!(
            !seen.contains(s.as_str()),
            "{case}: `{s}` leaked: {seen:.3000}"
        );
    }
}

fn deployment(server: &MockServer, auth: &str, credentials: &str) -> Deployment {
    let mut d = Deployment::thrive_only();
    d.max_wait(1.0).destination("thrive", "api", &server.uri());
    d.connector("api", &api_connector(auth, 1, 1.0, 2));
    d.routes(&api_routes(credentials));
    d.map("visit_json", VISIT_MAP);
    d.env("TEST_SECRET", SECRET);
    d.env("TEST_USER", "doorstep-user");
    d.add_config("[audit]\nsigning_key = { file = \"keys/log.key\" }\n");
    d.run(
        "audit keygen",
        &["--name", "trail.example", "--out", "keys/log.key"],
    )
    .code(0);
    d
}

const FAILURES: [Failure; 6] = [
    Failure::Status(400),
    Failure::Status(401),
    Failure::Status(422),
    Failure::Status(503),
    Failure::MalformedJson,
    Failure::Timeout,
];

/// Basic and bearer: the target echoes the request, Authorization header included.
#[tokio::test(flavor = "multi_thread")]
async fn basic_and_bearer_credentials_echoed_by_the_target_are_redacted() {
    for (auth, credentials) in [
        (
            "basic",
            "username = { env = \"TEST_USER\" }\npassword = { env = \"TEST_SECRET\" }",
        ),
        ("bearer", "token = { env = \"TEST_SECRET\" }"),
    ] {
        // A 2xx is a delivery whatever its body: malformed JSON is a token service's case.
        for failure in FAILURES
            .into_iter()
            .filter(|f| !matches!(f, Failure::MalformedJson))
        {
            let server = MockServer::start().await;
            Mock::given(method("POST"))
                .respond_with(Echo(failure))
                .mount(&server)
                .await;
            let mut d = deployment(&server, auth, credentials);
            let case = format!("{auth} {failure:?}");
            assert_no_leak(&mut d, &case, &forms(SECRET, "doorstep-user")).await;
        }
    }
}

/// OAuth2 client credentials: the token endpoint echoes the form body (the client secret)
/// and the Basic client authentication on every failure; then, with a token issued, the API
/// echoes the access token.
#[tokio::test(flavor = "multi_thread")]
async fn oauth2_secrets_and_tokens_echoed_anywhere_are_redacted() {
    let credentials = |uri: &str| {
        format!(
            "client_id = {{ env = \"TEST_USER\" }}\nclient_secret = {{ env = \"TEST_SECRET\" }}\n\
             token_url = \"{uri}/oauth/token\""
        )
    };
    for failure in FAILURES {
        let server = MockServer::start().await;
        Mock::given(path("/oauth/token"))
            .respond_with(Echo(failure))
            .mount(&server)
            .await;
        let mut d = deployment(
            &server,
            "oauth2_client_credentials",
            &credentials(&server.uri()),
        );
        let case = format!("token endpoint {failure:?}");
        assert_no_leak(&mut d, &case, &forms(SECRET, "doorstep-user")).await;
    }
    for failure in [Failure::Status(400), Failure::Status(503)] {
        let server = MockServer::start().await;
        Mock::given(path("/oauth/token"))
            .respond_with(ResponseTemplate::new(200).set_body_json(json!({
                "access_token": ACCESS_TOKEN, "token_type": "bearer", "expires_in": 3600
            })))
            .mount(&server)
            .await;
        Mock::given(path("/api/visits"))
            .respond_with(Echo(failure))
            .mount(&server)
            .await;
        let mut d = deployment(
            &server,
            "oauth2_client_credentials",
            &credentials(&server.uri()),
        );
        let mut secrets = forms(SECRET, "doorstep-user");
        secrets.push(ACCESS_TOKEN.to_owned());
        let case = format!("api with a token {failure:?}");
        assert_no_leak(&mut d, &case, &secrets).await;
    }
}

/// A connector's `[token]` exchange: the token service echoes the JSON body holding the
/// password.
#[tokio::test(flavor = "multi_thread")]
async fn a_token_exchange_echoed_by_its_service_is_redacted() {
    for failure in FAILURES {
        let server = MockServer::start().await;
        Mock::given(path("/token"))
            .respond_with(Echo(failure))
            .mount(&server)
            .await;
        let connector = format!(
            "{}\n[token]\nbody = {{ user = \"{{{{ username }}}}\", password = \"{{{{ password }}}}\" }}\n\
             token_pointer = \"/token\"\nscheme = \"Idaas\"\n",
            api_connector("token_exchange", 1, 1.0, 2)
        );
        let mut d = deployment(
            &server,
            "token_exchange",
            &format!(
                "username = {{ env = \"TEST_USER\" }}\npassword = {{ env = \"TEST_SECRET\" }}\n\
                 token_url = \"{}/token\"",
                server.uri()
            ),
        );
        d.connector("api", &connector);
        let case = format!("token exchange {failure:?}");
        assert_no_leak(&mut d, &case, &forms(SECRET, "doorstep-user")).await;
    }
}

/// A target that answers with an id quoting the access token: refused, never stored as the
/// record's id there (and so never sent back in a later update's path).
#[tokio::test(flavor = "multi_thread")]
async fn an_id_quoting_a_credential_is_refused() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(201).set_body_json(json!({ "id": SECRET })))
        .mount(&server)
        .await;
    let mut d = deployment(&server, "bearer", "token = { env = \"TEST_SECRET\" }");
    assert_no_leak(
        &mut d,
        "id quoting the token",
        &forms(SECRET, "doorstep-user"),
    )
    .await;
}
