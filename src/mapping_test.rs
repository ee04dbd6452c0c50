//! `doorstep mapping test mappings/<trust>`: runs the trust's test cases, each an input
//! submission and exactly what must come out of it — request bodies, CSV rows, their
//! destinations, or nothing at all — through the same validation, policy, routing and
//! rendering a sync uses. A mismatch prints a line diff.
//!
//! A case (`tests/<name>.toml`):
//! ```toml
//! description = "an illness visit goes to the attendance log only"
//! record = '''{ "kind": "visit_report", ... }'''
//! [[expect]]
//! destination = "attendance_log"
//! file = "117800/attendance-2026-03-02.csv"   # CSV destinations
//! row = ["2026-03-02", "A123456789012", "I"]
//! # or: body = '''{ ... }'''   (JSON destinations, compared as JSON)
//! ```
//! `expect = []` says the submission goes nowhere.
//!
//! Sits above `mapping`, `pipeline` and `delivery::plan` (it drives all three); nothing in
//! the library imports it.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;

use crate::connectors::{Connectors, TransportKind};
use crate::delivery::plan::{Outgoing, plan_record};
use crate::mapping::{MappingError, Rendered, Trust, Trusts};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CaseFile {
    #[serde(default)]
    description: String,
    record: String,
    expect: Vec<Expect>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Expect {
    destination: String,
    #[serde(default)]
    record_id: Option<String>,
    #[serde(default)]
    file: Option<String>,
    #[serde(default)]
    header: Option<Vec<String>>,
    #[serde(default)]
    row: Option<Vec<String>>,
    #[serde(default)]
    body: Option<String>,
    /// The destination's output cannot be built: words the reason must contain (the
    /// delivery goes dead in a sync).
    #[serde(default)]
    error: Option<String>,
}

/// One case's result: empty `failures` when it passed.
#[derive(Debug)]
pub struct CaseResult {
    pub file: PathBuf,
    pub description: String,
    pub failures: Vec<String>,
}

/// Runs every `tests/*.toml` of the trust in `folder`, in file-name order.
pub fn run(
    folder: &Path,
    connectors: &Connectors,
    default_tz: chrono_tz::Tz,
) -> Result<Vec<CaseResult>, MappingError> {
    let trust = crate::mapping::load_trust(folder, default_tz)?;
    let dir = folder.join("tests");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map_err(|e| MappingError::Read {
            path: dir.clone(),
            reason: e.kind().to_string(),
        })?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    let trusts = Trusts::single(trust.clone());
    Ok(files
        .into_iter()
        .map(|f| run_case(&f, &trust, &trusts, connectors))
        .collect())
}

fn run_case(file: &Path, trust: &Trust, trusts: &Trusts, connectors: &Connectors) -> CaseResult {
    let mut result = CaseResult {
        file: file.to_path_buf(),
        description: String::new(),
        failures: Vec::new(),
    };
    let case: CaseFile = match std::fs::read_to_string(file)
        .map_err(|e| e.kind().to_string())
        .and_then(|t| toml::from_str(&t).map_err(|e| crate::toml_file::message(&t, &e)))
    {
        Ok(c) => c,
        Err(e) => {
            result.failures.push(format!("cannot read the case: {e}"));
            return result;
        }
    };
    result.description = case.description.clone();
    let item = crate::intake::parse_text(case.record.as_bytes(), None);
    let records = match crate::pipeline::validate(&file.display().to_string(), item, trusts) {
        crate::pipeline::Validated::Accepted { records, .. } => records,
        crate::pipeline::Validated::Rejected(rejections) => {
            for r in rejections {
                result.failures.push(format!(
                    "the record is rejected: {} at {}: {}",
                    r.rule,
                    r.path.as_deref().unwrap_or("/"),
                    r.message
                ));
            }
            return result;
        }
    };
    // Everything the mapping produces, as (record id, destination, output).
    let mut produced: Vec<(String, crate::delivery::plan::Planned)> = Vec::new();
    for checked in &records {
        let of = checked.parsed.record.trust().as_str();
        if of != trust.id {
            result.failures.push(format!(
                "record {} belongs to trust `{of}`: a case in {}'s tests must be {}'s",
                checked.parsed.record.id(),
                trust.id,
                trust.id
            ));
            continue;
        }
        let raised: Vec<crate::mapping::RaisedException> = checked
            .exceptions
            .iter()
            .map(|e| crate::mapping::RaisedException {
                rule: e.rule.as_str().to_owned(),
                severity: e.severity,
            })
            .collect();
        let value: Value = match serde_json::from_str(&checked.parsed.canonical) {
            Ok(v) => v,
            Err(e) => {
                result.failures.push(format!("canonical JSON: {e}"));
                continue;
            }
        };
        // An incident or flag of a visit in the same submission sees that visit.
        let of_visit: Option<Value> = value
            .get("visit_id")
            .and_then(Value::as_str)
            .filter(|_| value.get("kind").and_then(Value::as_str) != Some("visit_report"))
            .and_then(|vid| {
                records.iter().find(|r| {
                    r.parsed.record.id().to_string() == vid
                        && matches!(r.parsed.record.kind(), crate::records::Kind::VisitReport)
                })
            })
            .and_then(|r| serde_json::from_str(&r.parsed.canonical).ok());
        match plan_record(trust, connectors, &value, &raised, of_visit.as_ref()) {
            Ok(outs) => {
                let id = checked.parsed.record.id().to_string();
                produced.extend(outs.into_iter().map(|o| (id.clone(), o)));
            }
            Err(e) => result
                .failures
                .push(format!("record {}: {e}", checked.parsed.record.id())),
        }
    }
    let mut unmatched: Vec<Option<(String, crate::delivery::plan::Planned)>> =
        produced.into_iter().map(Some).collect();
    for (i, want) in case.expect.iter().enumerate() {
        let slot = unmatched.iter_mut().find(|p| {
            p.as_ref().is_some_and(|(id, o)| {
                let dest = match o {
                    Ok(o) => &o.destination,
                    Err(failed) => &failed.0,
                };
                *dest == want.destination && want.record_id.as_ref().is_none_or(|w| w == id)
            })
        });
        let Some((id, got)) = slot.and_then(Option::take) else {
            result.failures.push(format!(
                "expect[{i}]: nothing went to `{}`{}",
                want.destination,
                want.record_id
                    .as_ref()
                    .map(|r| format!(" for record {r}"))
                    .unwrap_or_default()
            ));
            continue;
        };
        match (got.map_err(|b| *b), &want.error) {
            (Ok(got), None) => compare(i, want, &got, connectors, &mut result.failures),
            (Err((_, e)), Some(words)) if e.to_string().contains(words.as_str()) => {}
            (Err((_, e)), Some(words)) => result.failures.push(format!(
                "expect[{i}]: `{}` failed for record {id}, but not with `{words}`: {e}",
                want.destination
            )),
            (Err((_, e)), None) => result.failures.push(format!(
                "expect[{i}]: record {id}: `{}` cannot be built: {e}",
                want.destination
            )),
            (Ok(_), Some(words)) => result.failures.push(format!(
                "expect[{i}]: `{}` was built for record {id}, but the case expects it to fail with `{words}`",
                want.destination
            )),
        }
    }
    for (id, o) in unmatched.into_iter().flatten() {
        let o = match o {
            Ok(o) => o,
            Err(failed) => {
                let (destination, e) = *failed;
                result
                    .failures
                    .push(format!("record {id}: `{destination}` cannot be built: {e}"));
                continue;
            }
        };
        // What it sent, so the case can be completed after checking it by eye.
        let sent = match &o.rendered {
            Rendered::Body(b) => serde_json::to_string_pretty(b).unwrap_or_default(),
            Rendered::Row { header, cells } => format!(
                "file {}\nheader {header:?}\nrow {cells:?}",
                o.file.as_deref().unwrap_or_default()
            ),
        };
        result.failures.push(format!(
            "record {id} also went to `{}`, which no expectation names; it sent:\n{}",
            o.destination,
            sent.lines()
                .map(|l| format!("        {l}"))
                .collect::<Vec<_>>()
                .join("\n")
        ));
    }
    result
}

fn compare(
    i: usize,
    want: &Expect,
    got: &Outgoing,
    connectors: &Connectors,
    failures: &mut Vec<String>,
) {
    let transport = connectors.get(&got.connector).map(|c| c.transport);
    match (&got.rendered, transport) {
        (Rendered::Row { header, cells }, _) => {
            let cells: Vec<String> = cells
                .iter()
                .map(|c| crate::connectors::csv::neutralise(c))
                .collect();
            if want.file.as_deref() != got.file.as_deref() {
                failures.push(format!(
                    "expect[{i}] ({}): file: expected {:?}, got {:?}",
                    want.destination, want.file, got.file
                ));
            }
            if let Some(h) = &want.header
                && h != header
            {
                failures.push(format!(
                    "expect[{i}] ({}): header differs\n{}",
                    want.destination,
                    diff(&h.join("\n"), &header.join("\n"))
                ));
            }
            match &want.row {
                Some(row) if *row != cells => failures.push(format!(
                    "expect[{i}] ({}): row differs (one cell a line)\n{}",
                    want.destination,
                    diff(&row.join("\n"), &cells.join("\n"))
                )),
                Some(_) => {}
                None => failures.push(format!(
                    "expect[{i}] ({}): a CSV destination: give `row`",
                    want.destination
                )),
            }
        }
        (Rendered::Body(body), t) => {
            debug_assert!(t != Some(TransportKind::CsvFile));
            let Some(text) = &want.body else {
                failures.push(format!(
                    "expect[{i}] ({}): a JSON destination: give `body`",
                    want.destination
                ));
                return;
            };
            let expected: Value = match serde_json::from_str(text) {
                Ok(v) => v,
                Err(e) => {
                    failures.push(format!(
                        "expect[{i}] ({}): `body` is not JSON: {e}",
                        want.destination
                    ));
                    return;
                }
            };
            if &expected != body {
                let pretty = |v: &Value| serde_json::to_string_pretty(v).unwrap_or_default();
                failures.push(format!(
                    "expect[{i}] ({}): body differs\n{}",
                    want.destination,
                    diff(&pretty(&expected), &pretty(body))
                ));
            }
        }
    }
}

/// A unified line diff: `-` expected, `+` produced.
fn diff(expected: &str, got: &str) -> String {
    let d = similar::TextDiff::from_lines(expected, got);
    let mut out = String::from("    --- expected\n    +++ produced\n");
    for change in d.iter_all_changes() {
        let sign = match change.tag() {
            similar::ChangeTag::Delete => '-',
            similar::ChangeTag::Insert => '+',
            similar::ChangeTag::Equal => ' ',
        };
        out.push_str(&format!("    {sign}{}", change.value()));
        if !change.value().ends_with('\n') {
            out.push('\n');
        }
    }
    out
}
