//! The shipped trusts' policies on the shipped policy fixtures: each record raises exactly the
//! set of rule ids `fixtures/policy/expected.toml` gives it. Plus: evaluation never panics and
//! is deterministic, and exceptions are stored, reported and resolved by later revisions.

use std::collections::BTreeMap;

use doorstep::audit::TrailedStore;
use doorstep::mapping::Trusts;
use doorstep::pipeline::{self, policy_exceptions};
use doorstep::records::{Kind, parse_submission};
use doorstep::store::{IntakeBatch, NewRecord, SqliteStore, Store};
use proptest::prelude::*;
use serde_json::json;

use crate::harness;

fn shipped_trusts() -> Trusts {
    Trusts::load(&harness::root().join("mappings"), chrono_tz::Europe::London).unwrap()
}

#[derive(serde::Deserialize)]
struct Expected {
    rules: Vec<String>,
}

#[test]
fn each_trust_raises_exactly_the_expected_rules() {
    let trusts = shipped_trusts();
    let dir = harness::fixture("policy");
    let text = std::fs::read_to_string(dir.join("expected.toml")).unwrap();
    let expected: BTreeMap<String, Expected> = toml::from_str(&text).unwrap();
    for trust in ["thrive", "celt"] {
        let n = expected
            .keys()
            .filter(|k| k.starts_with(&format!("{trust}/")))
            .count();
        assert!(n >= 30, "{trust}: at least 30 table cases, found {n}");
    }
    let mut seen_rules = std::collections::BTreeSet::new();
    for (file, want) in &expected {
        let path = dir.join(file);
        let mut got = harness::Collect::default();
        let summary = pipeline::check(std::slice::from_ref(&path), &trusts, &mut got);
        assert!(got.rejections.is_empty(), "{file}: {:?}", got.rejections);
        assert_eq!(summary.accepted, 1, "{file}");
        let mut rules: Vec<String> = got.exceptions.iter().map(|e| e.rule.to_string()).collect();
        rules.sort();
        assert_eq!(rules, want.rules, "{file}: {:?}", got.exceptions);
        assert_eq!(summary.exceptions as usize, rules.len());
        seen_rules.extend(rules);
    }
    // Every rule of SPEC §2 is exercised by some case.
    for rule in doorstep::policy::RuleId::ALL {
        assert!(
            seen_rules.contains(rule.as_str()),
            "no table case raises {rule}"
        );
    }
}

#[test]
fn check_with_a_config_prints_exception_lines() {
    let d = harness::Deployment::new();
    let file = harness::fixture("policy/celt/07-lone-visit-not-approved.json");
    let out = d
        .run("check", &["--format", "json", file.to_str().unwrap()])
        .code(0)
        .get_output()
        .stdout
        .clone();
    let lines = harness::json_lines(&out);
    assert_eq!(
        lines[0],
        json!({"kind": "exception", "record_id": "celt-visit-306", "revision": 1, "rule": "pair-required",
               "severity": "error", "message": lines[0]["message"]})
    );
    assert_eq!(lines[1]["exceptions"], 1);
    // Without a config, `check` runs the record rules only.
    let out = harness::doorstep()
        .args(["check", "--format", "json"])
        .arg(&file)
        .current_dir(d.path("drop"))
        .assert()
        .code(0)
        .get_output()
        .stdout
        .clone();
    assert_eq!(harness::json_lines(&out)[0]["exceptions"], 0);
}

#[tokio::test]
async fn exceptions_are_stored_and_resolved_by_a_later_revision() {
    let trusts = shipped_trusts();
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("s.db")).await.unwrap();
    let ingest = |v: serde_json::Value| {
        let parsed = parse_submission(v).unwrap().remove(0);
        let exceptions = policy_exceptions(&parsed.record, &trusts);
        IntakeBatch {
            records: vec![NewRecord::from_parsed(parsed, exceptions, "t.json", None)],
            rejections: vec![],
        }
    };
    let mut v = harness::read_fixture("policy/celt/24-headteacher-lone-no-buddy.json");
    store.ingest(&ingest(v.clone())).await.unwrap();
    // Revision 2 fixes the buddy but is still a lone visit under a headteacher.
    v["revision"] = json!(2);
    v["buddy"] = json!({"staff_id": "PEN-050", "name": "Tom Rowe", "code_word_agreed": true});
    store.ingest(&ingest(v.clone())).await.unwrap();
    let got = store
        .exceptions_of("celt", Kind::VisitReport, "celt-visit-323")
        .await
        .unwrap();
    let row = |rev: u32, rule: &str| {
        got.iter()
            .find(|e| e.revision == rev && e.rule == rule)
            .map(|e| (e.state.as_str(), e.closed_by_revision))
    };
    assert_eq!(row(1, "buddy-assigned"), Some(("resolved", Some(2))));
    assert_eq!(row(1, "pair-required"), Some(("superseded", Some(2))));
    assert_eq!(row(2, "pair-required"), Some(("open", None)));
    assert_eq!(row(2, "buddy-assigned"), None);
    let status = store.status().await.unwrap();
    let open: Vec<_> = status
        .exceptions
        .iter()
        .map(|e| (e.school.as_str(), e.rule.as_str(), e.count))
        .collect();
    assert_eq!(
        open,
        [
            ("136401", "authorised-before-visit", 1),
            ("136401", "pair-required", 1)
        ]
    );
}

#[test]
fn config_check_reports_a_bad_policy_file_by_file_and_key() {
    let d = harness::Deployment::with_mappings("mappings");
    std::fs::create_dir_all(d.path("mappings/acme")).unwrap();
    std::fs::write(d.path("mappings/acme/trust.toml"), "name = \"Acme\"\n").unwrap();
    std::fs::write(
        d.path("mappings/acme/policy.toml"),
        "[rules.pair-required]\nmode = \"always\"\ngrace = 1\n",
    )
    .unwrap();
    let err = harness::doorstep()
        .current_dir(d.dir.path())
        .args(["config", "check", "--config"])
        .arg(d.config())
        .assert()
        .code(2)
        .get_output()
        .stderr
        .clone();
    let err = String::from_utf8(err).unwrap();
    assert!(
        err.contains("mappings/acme/policy.toml") && err.contains("grace"),
        "{err}"
    );
    // The same error stops ingest before anything is stored.
    std::fs::write(
        d.path("drop/a.json"),
        harness::read_fixture("valid/celt-incident-animal.json").to_string(),
    )
    .unwrap();
    d.run("ingest", &[]).code(2);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Any generated record, under either trust's policy: no panic, the same answer twice.
    #[test]
    fn evaluation_never_panics_and_is_deterministic(seed in any::<u64>()) {
        let trusts = shipped_trusts();
        let mut out = Vec::new();
        doorstep::synthetic::write_records(
            doorstep::synthetic::GenOptions { count: 20, seed, invalid_share: 0.0 },
            &mut out,
        ).unwrap();
        for line in String::from_utf8(out).unwrap().lines() {
            let value: serde_json::Value = serde_json::from_str(line).unwrap();
            for parsed in parse_submission(value).unwrap() {
                let a = policy_exceptions(&parsed.record, &trusts);
                let b = policy_exceptions(&parsed.record, &trusts);
                prop_assert_eq!(a, b);
            }
        }
    }
}
