//! Bad input gets a clear rejection, never a panic: the public JSONTestSuite files, and
//! valid records mutated at random, fed through intake and validation.

use std::path::PathBuf;

use doorstep::intake::{Item, parse_text};
use doorstep::mapping::Trusts;
use doorstep::pipeline::{self, Validated};
use proptest::prelude::*;
use serde_json::{Value, json};

use crate::harness;

fn suite_dir() -> PathBuf {
    harness::root().join("../shared/testdata/JSONTestSuite/test_parsing")
}

/// Every file of the suite, as `.json` and as a one-line `.jsonl`, ends in a rejection
/// with a rule and a message: none of them is a valid record.
#[test]
fn every_json_test_suite_file_is_a_clear_rejection() {
    let dir = suite_dir();
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| {
            panic!(
                "{}: {e} (../shared/ must sit beside the repo)",
                dir.display()
            )
        })
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    assert!(files.len() > 300, "the whole suite is there");
    let tmp = tempfile::tempdir().unwrap();
    for file in files {
        let mut seen = harness::Collect::default();
        let summary = pipeline::check(std::slice::from_ref(&file), &Trusts::default(), &mut seen);
        assert_eq!(summary.accepted, 0, "{}", file.display());
        assert!(
            !seen.rejections.is_empty(),
            "{}: no rejection",
            file.display()
        );
        for r in &seen.rejections {
            assert!(
                !r.message.is_empty() && !r.rule.as_str().is_empty(),
                "{}",
                file.display()
            );
        }
        // The same bytes as a JSON-lines file (newlines inside stay line breaks).
        let as_lines = tmp
            .path()
            .join(file.with_extension("jsonl").file_name().unwrap());
        std::fs::copy(&file, &as_lines).unwrap();
        let mut seen = harness::Collect::default();
        let summary = pipeline::check(
            std::slice::from_ref(&as_lines),
            &Trusts::default(),
            &mut seen,
        );
        assert_eq!(summary.accepted, 0, "{}", as_lines.display());
    }
}

/// The CLI over the whole suite folder exits 1 (rejections), never 101 (a panic).
#[test]
fn cli_over_the_suite_exits_one() {
    harness::doorstep()
        .arg("check")
        .arg(suite_dir())
        .assert()
        .code(1);
}

fn base_records() -> Vec<Value> {
    [
        "valid/thrive-visit-with-embedded-incident-and-flag.json",
        "valid/celt-transport-car-seat.json",
        "valid/celt-incident-prevented-leaving-999.json",
        "valid/celt-flag-immediate-danger-999.json",
    ]
    .iter()
    .map(|p| harness::read_fixture(p))
    .collect()
}

fn odd_values() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        Just(json!(true)),
        Just(json!(-1)),
        Just(json!(0)),
        Just(json!(1.5e300)),
        Just(json!(u64::MAX)),
        Just(json!("")),
        Just(json!("2026-02-30T25:61:00+99:00")),
        Just(json!("Ω\u{0}\u{202e}")),
        Just(json!([])),
        Just(json!({})),
        Just(json!([{"lead": true}])),
        "\\PC{0,20}".prop_map(Value::String),
    ]
}

/// Replaces, removes or adds the value at one randomly chosen place in the tree.
fn mutate(v: &mut Value, path: &[usize], op: u8, new: Value) {
    let Some((&first, rest)) = path.split_first() else {
        *v = new;
        return;
    };
    match v {
        Value::Object(m) if !m.is_empty() => {
            let key = m.keys().nth(first % m.len()).cloned().unwrap();
            if rest.is_empty() && op == 0 {
                m.remove(&key);
            } else if rest.is_empty() && op == 1 {
                m.insert(format!("{key}_x"), new);
            } else {
                mutate(m.get_mut(&key).unwrap(), rest, op, new);
            }
        }
        Value::Array(a) if !a.is_empty() => {
            let i = first % a.len();
            if rest.is_empty() && op == 0 {
                a.remove(i);
            } else {
                mutate(&mut a[i], rest, op, new);
            }
        }
        other => *other = new,
    }
}

fn run_one(bytes: &[u8]) -> usize {
    match pipeline::validate("prop.jsonl", parse_text(bytes, Some(1)), &Trusts::default()) {
        Validated::Accepted { records, .. } => records.len(),
        Validated::Rejected(r) => {
            assert!(!r.is_empty());
            for r in &r {
                assert!(
                    r.path
                        .as_deref()
                        .is_none_or(|p| p.is_empty() || p.starts_with('/'))
                );
            }
            0
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn mutated_records_never_panic(
        which in 0usize..4,
        path in prop::collection::vec(0usize..40, 1..6),
        op in 0u8..3,
        new in odd_values(),
    ) {
        let mut record = base_records().swap_remove(which);
        mutate(&mut record, &path, op, new);
        run_one(record.to_string().as_bytes());
    }

    #[test]
    fn corrupted_bytes_never_panic(
        which in 0usize..4,
        flips in prop::collection::vec((0usize..4000, any::<u8>()), 1..8),
        cut in 0usize..4000,
    ) {
        let mut bytes = base_records().swap_remove(which).to_string().into_bytes();
        for (at, b) in flips {
            let i = at % bytes.len();
            bytes[i] = b;
        }
        bytes.truncate(cut.max(1));
        run_one(&bytes);
        let is_text = matches!(parse_text(&bytes, None), Item::Text { .. });
        prop_assert!(!is_text, "parse_text yields a value or an error");
    }
}
