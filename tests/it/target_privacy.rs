//! Privacy at the targets (issue 7): what a target says back may quote the record (a
//! pupil's name in a validation message). It is kept in the dead letter for the people
//! who fix it, and never written to the logs; a pupil the target does not have is named by
//! the record's id, never by UPN or name.

use serde_json::json;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::harness::{Deployment, case_record};

#[tokio::test(flavor = "multi_thread")]
async fn target_messages_stay_out_of_logs_and_lookups_name_only_the_record() {
    let arbor = MockServer::start().await;
    // Student lookup: the first pupil exists, the second does not.
    let record = case_record("mappings/thrive", "01-illness-visit.toml");
    let upn = record["pupil"]["upn"].as_str().unwrap().to_owned();
    Mock::given(method("GET"))
        .and(path("/rest-v2/students"))
        .respond_with(move |r: &wiremock::Request| {
            let found = r.url.query().is_some_and(|q| q.contains(&upn));
            let students = if found {
                json!([{"entityType": "Student", "href": "/rest-v2/students/12"}])
            } else {
                json!([])
            };
            ResponseTemplate::new(200).set_body_json(json!({ "students": students }))
        })
        .mount(&arbor)
        .await;
    Mock::given(method("GET"))
        .and(path("/rest-v2/attendance-marks"))
        .respond_with(ResponseTemplate::new(200).set_body_json(
            json!({"attendanceMarks": [{"href": "/rest-v2/attendance-marks/9", "code": "I"}]}),
        ))
        .mount(&arbor)
        .await;
    // Every create is refused, quoting the pupil.
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(422).set_body_json(json!({"response": {
            "code": 422, "reason": "Unprocessable",
            "errors": [{"exception": "ValidationException", "message": "Note for Zebedee Quarrington-Canary is invalid"}]
        }})))
        .mount(&arbor)
        .await;
    let mut other = record.clone();
    other["id"] = "thr-visit-901".into();
    other["pupil"]["upn"] = "A123456789012".into();
    other["pupil"]["given_name"] = "Ottoline".into();
    let mut live = Deployment::copy_of("mappings");
    live.destination("thrive", "arbor_notes", &arbor.uri())
        .destination("thrive", "arbor_register", &arbor.uri())
        .env("THRIVE_ARBOR_USERNAME", "app")
        .env("THRIVE_ARBOR_PASSWORD", "pw")
        .env("DOORSTEP_LOG", "trace");
    live.drop_records("visits.json", &[record.clone(), other]);
    let run = live.sync().await;
    assert_eq!(run.code, 1, "dead letters exit 1: {}", run.stderr);
    assert!(
        !run.stderr.contains("Zebedee"),
        "the target's words were logged"
    );
    assert!(!run.stderr.contains("Ottoline"));
    assert!(
        !run.stderr.contains("A123456789012"),
        "a UPN looked up was logged"
    );
    let dead = live.dead_letters().await;
    let reasons: Vec<String> = dead
        .iter()
        .map(|d| d["last_error"].as_str().unwrap_or_default().to_owned())
        .collect();
    // The refusal's message is kept for whoever fixes it…
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("422") && r.contains("Zebedee")),
        "{reasons:?}"
    );
    // …and the pupil Arbor does not have is named by the record, not the UPN.
    let missing: Vec<&String> = reasons
        .iter()
        .filter(|r| r.contains("look-up `student`"))
        .collect();
    assert!(!missing.is_empty(), "{reasons:?}");
    for r in missing {
        assert!(r.contains("thr-visit-901"), "{r}");
        assert!(
            !r.contains("A123456789012") && !r.contains("Ottoline"),
            "{r}"
        );
    }
}
