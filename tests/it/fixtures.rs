//! The shipped fixtures: every valid one is accepted; every invalid one is rejected with
//! exactly the pointer and rule `fixtures/invalid/expected.toml` gives it, and nothing else.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use doorstep::mapping::Trusts;
use doorstep::pipeline;

use crate::harness;

fn fixtures(sub: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(sub)
}

fn json_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    files
}

#[test]
fn every_valid_fixture_is_accepted() {
    let files = json_files(&fixtures("valid"));
    assert!(
        files.len() >= 40,
        "at least 40 valid fixtures, found {}",
        files.len()
    );
    for file in files {
        let mut seen = harness::Collect::default();
        let summary = pipeline::check(std::slice::from_ref(&file), &Trusts::default(), &mut seen);
        assert!(
            seen.rejections.is_empty(),
            "{}: {:?}",
            file.display(),
            seen.rejections
        );
        assert!(seen.conflicts.is_empty(), "check never meets conflicts");
        assert!(summary.accepted >= 1, "{}", file.display());
    }
}

#[derive(serde::Deserialize)]
struct Expected {
    path: String,
    rule: String,
}

#[test]
fn every_invalid_fixture_gives_its_exact_rejection() {
    let dir = fixtures("invalid");
    let text = std::fs::read_to_string(dir.join("expected.toml")).unwrap();
    let expected: BTreeMap<String, Expected> = toml::from_str(&text).unwrap();
    let files = json_files(&dir);
    assert!(
        files.len() >= 40,
        "at least 40 invalid fixtures, found {}",
        files.len()
    );
    assert_eq!(
        files.len(),
        expected.len(),
        "every invalid fixture has an expectation and every expectation a fixture"
    );
    for file in files {
        let name = file.file_name().unwrap().to_str().unwrap().to_owned();
        let want = expected
            .get(&name)
            .unwrap_or_else(|| panic!("{name} has no entry in expected.toml"));
        let mut seen = harness::Collect::default();
        let summary = pipeline::check(std::slice::from_ref(&file), &Trusts::default(), &mut seen);
        assert_eq!(summary.accepted, 0, "{name}: nothing may be accepted");
        assert_eq!(summary.rejected, 1, "{name}: one rejected submission");
        assert_eq!(
            seen.rejections.len(),
            1,
            "{name}: exactly one rejection: {:?}",
            seen.rejections
        );
        let got = &seen.rejections[0];
        assert_eq!(
            got.path.as_deref(),
            Some(want.path.as_str()),
            "{name}: pointer"
        );
        assert_eq!(got.rule.as_str(), want.rule, "{name}: rule");
        assert_eq!(
            got.file,
            file.display().to_string(),
            "{name}: the file is named"
        );
        assert!(!got.message.is_empty(), "{name}: a message says why");
    }
}

#[test]
fn embedded_records_are_split_out_and_linked() {
    let file = fixtures("valid").join("thrive-visit-with-embedded-incident-and-flag.json");
    let value: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(file).unwrap()).unwrap();
    let records = doorstep::records::parse_submission(value).unwrap();
    let kinds: Vec<_> = records.iter().map(|r| r.record.kind().as_str()).collect();
    assert_eq!(kinds, ["visit_report", "incident", "safeguarding_flag"]);
    let content: Vec<serde_json::Value> = records
        .iter()
        .map(|r| serde_json::from_str(&r.canonical).unwrap())
        .collect();
    for (r, content) in records[1..].iter().zip(&content[1..]) {
        assert_eq!(r.record.visit_id().unwrap().as_str(), "thr-visit-022");
        assert_eq!(r.record.trust().as_str(), "thrive");
        assert_eq!(r.record.revision().0, 1);
        assert_eq!(
            content["visit_id"], "thr-visit-022",
            "the stored form carries the link"
        );
    }
    // The flag inherited the visit's pupil; the stored visit no longer embeds them.
    assert_eq!(content[2]["pupil"], content[0]["pupil"]);
    assert!(content[0].get("incidents").is_none());
    assert!(content[0].get("safeguarding_flags").is_none());
}

#[test]
fn extensions_are_carried_untouched() {
    let file = fixtures("valid").join("thrive-extensions-carried.json");
    let value: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(file).unwrap()).unwrap();
    let ext = value["extensions"].clone();
    let records = doorstep::records::parse_submission(value).unwrap();
    let content: serde_json::Value = serde_json::from_str(&records[0].canonical).unwrap();
    assert_eq!(content["extensions"], ext);
    assert!(
        records[0]
            .canonical
            .contains(r#""form":{"template":"HV-01"}"#)
    );
}
