//! A deployment tunes a destination without editing shipped files (`[destinations.<trust>.
//! <name>]` in `doorstep.toml`): vars, each school's vars, limits and credentials — checked
//! by `config check` — and a `url` moved to another host while the token service stays put
//! is refused, naming both hosts.

use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::delivery::{VISIT_MAP, api_connector, visit};
use crate::harness::Deployment;

/// A bearer API whose visit path names the school's id in the target
/// (`/api/{{ vars.school_id }}/visits`), up to 3 attempts.
fn school_api() -> String {
    api_connector("bearer", 1, 5.0, 3).replace(
        "path = \"/api/visits\"",
        "path = \"/api/{{ vars.school_id }}/visits\"",
    )
}

/// Routes visits to `api`; the mapping gives a school id and a token the deployment
/// replaces.
const ROUTES: &str = r#"[destinations.api]
connector = "api"
token = { env = "MAPPING_TOKEN" }
vars = { school_id = "from-mapping" }

[[route]]
name = "visits"
kinds = ["visit_report"]
to = "api"
map = "visit_json"
"#;

fn deployment(overrides: &str) -> Deployment {
    let mut d = Deployment::thrive_only();
    d.max_wait(2.0);
    d.connector("api", &school_api());
    d.routes(ROUTES);
    d.map("visit_json", VISIT_MAP);
    d.env("MAPPING_TOKEN", "mapping-token");
    d.env("DEPLOYMENT_TOKEN", "deployment-token");
    d.add_config(overrides);
    d
}

#[tokio::test(flavor = "multi_thread")]
async fn vars_school_vars_limits_and_secrets_are_the_deployments_to_set() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/api/SCH-117800/visits"))
        .respond_with(ResponseTemplate::new(503).insert_header("retry-after", "0"))
        .mount(&server)
        .await;
    let d = deployment(&format!(
        r#"[destinations.thrive.api]
url = "{}"
token = {{ env = "DEPLOYMENT_TOKEN" }}
vars = {{ region = "north" }}
schools."117800" = {{ school_id = "SCH-117800" }}
limits = {{ max_attempts = 1 }}
"#,
        server.uri()
    ));
    d.run("config check", &[]).code(0);
    d.drop_records("v.json", &[visit("ov-1", 1, "Seen.")]);
    let run = d.sync().await;
    // One attempt, not the connector's three: the deployment's limit.
    assert_eq!(run.count("dead"), 1, "{:?}", run.lines);
    let requests = server.received_requests().await.unwrap();
    assert_eq!(requests.len(), 1, "max_attempts = 1 from the deployment");
    // The school's id from the deployment; its token, not the mapping's.
    assert_eq!(requests[0].url.path(), "/api/SCH-117800/visits");
    assert_eq!(
        requests[0].headers.get("authorization").unwrap(),
        "Bearer deployment-token"
    );
}

#[test]
fn a_bad_override_is_refused_by_config_check_naming_the_key() {
    for (overrides, expected) in [
        (
            "[destinations.thrive.api]\nurl = \"https://api.example.org\"\nlimits = { concurrency = 0 }\n",
            "limits] concurrency: from 1 to 1024",
        ),
        (
            "[destinations.thrive.api]\nurl = \"https://api.example.org\"\nlimits = { retries = 2 }\n",
            "retries",
        ),
        (
            "[destinations.thrive.api]\nurl = \"https://api.example.org\"\ntoken = \"inline-secret\"\n",
            "key `token`",
        ),
    ] {
        let d = deployment(overrides);
        let out = d.run("config check", &[]).code(2).get_output().clone();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(expected), "{overrides}: {err}");
        assert!(
            !err.contains("inline-secret"),
            "a value was repeated: {err}"
        );
    }
}

/// The Ed-Fi trap: the mapping's `url` and `token_url` on production; the deployment points
/// `url` at staging only. The client key and secret would go to production's token service:
/// refused, naming both hosts, until `token_url` moves too.
#[test]
fn moving_url_to_another_host_without_its_token_service_is_refused() {
    let routes = r#"[destinations.api]
connector = "api"
url = "https://ods.example.org/api"
token_url = "https://ods.example.org/api/oauth/token"
client_id = { env = "EDFI_KEY" }
client_secret = { env = "EDFI_SECRET" }

[[route]]
name = "visits"
kinds = ["visit_report"]
to = "api"
map = "visit_json"
"#;
    let setup = |overrides: &str| {
        let mut d = Deployment::thrive_only();
        d.connector(
            "api",
            &api_connector("oauth2_client_credentials", 1, 5.0, 3),
        );
        d.routes(routes);
        d.map("visit_json", VISIT_MAP);
        d.env("EDFI_KEY", "key").env("EDFI_SECRET", "secret");
        d.add_config(overrides);
        d
    };
    let staging = "[destinations.thrive.api]\nurl = \"https://staging.example.org/api\"\n";
    let out = setup(staging)
        .run("config check", &[])
        .code(2)
        .get_output()
        .clone();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("staging.example.org:443") && err.contains("ods.example.org:443"),
        "{err}"
    );
    assert!(err.contains("token-host-mismatch"), "{err}");
    setup(&format!(
        "{staging}token_url = \"https://staging.example.org/api/oauth/token\"\n"
    ))
    .run("config check", &[])
    .code(0);
    // Another path on the same host needs no second override.
    setup("[destinations.thrive.api]\nurl = \"https://ods.example.org/v2\"\n")
        .run("config check", &[])
        .code(0);
}
