//! The README's demo ("Two commands") end to end: `doorstep sync --config
//! examples/doorstep.toml` on a copy of the example deployment exits 0, writes the CSV logs
//! under `out/` and holds the paused webhooks' deliveries; run again, everything is
//! `unchanged` and nothing is sent twice.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

use serde_json::Value;

use crate::harness::{copy_dir, doorstep, json_lines, root};

/// `path` with its `.` and `..` taken out, without asking the file system.
fn normal(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => assert!(out.pop(), "{} leaves its root", path.display()),
            c => out.push(c),
        }
    }
    out
}

/// A copy of the example deployment laid out as in the repository: `examples/doorstep.toml`
/// and what it points to (`connectors`, `mappings`, the drop folder) at the same places
/// relative to it, so its relative paths are used as they are. Every path the config names
/// (its store, archive, `out/`, signing key too) must land inside the copy.
fn example_copy() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(root().join("examples/doorstep.toml")).unwrap();
    let config: toml::Table = toml::from_str(&text).unwrap();
    let here = Path::new("examples");
    let named = |keys: &[&str]| -> PathBuf {
        let mut v = &config[keys[0]];
        for k in &keys[1..] {
            v = &v[k];
        }
        let p = v.as_str().unwrap_or_else(|| panic!("{keys:?}: {v}"));
        normal(&here.join(p))
    };
    // Where the demo writes: inside the copy whatever `normal` makes of them.
    for keys in [
        &["store", "sqlite"][..],
        &["intake", "archive"],
        &["intake", "rejected"],
        &["delivery", "out"],
    ] {
        named(keys);
    }
    named(&["audit", "signing_key", "file"]);
    // What it reads: copied.
    std::fs::create_dir_all(dir.path().join(here)).unwrap();
    std::fs::write(dir.path().join("examples/doorstep.toml"), &text).unwrap();
    for keys in [&["connectors"][..], &["mappings"], &["intake", "drop"]] {
        let p = named(keys);
        copy_dir(&root().join(&p), &dir.path().join(&p));
    }
    dir
}

/// Every CSV file under `dir` (relative name → contents), leaving out hidden files (the
/// CSV connector's journals).
fn csv_files(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    fn walk(base: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, Vec<u8>>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            let name = p.file_name().unwrap().to_string_lossy();
            if p.is_dir() {
                walk(base, &p, out);
            } else if !name.starts_with('.') && name.ends_with(".csv") {
                let bytes = std::fs::read(&p).unwrap();
                out.insert(p.strip_prefix(base).unwrap().to_owned(), bytes);
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

/// `doorstep sync --config examples/doorstep.toml --format json` from the copy's top, as
/// the README runs it from the repository's: exit code and JSON lines.
fn sync(dir: &Path) -> (i32, Vec<Value>) {
    let out = doorstep()
        .current_dir(dir)
        .args([
            "sync",
            "--config",
            "examples/doorstep.toml",
            "--format",
            "json",
        ])
        .output()
        .unwrap();
    let code = out.status.code().unwrap_or(-1);
    assert_eq!(
        code,
        0,
        "the demo exits 0: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (code, json_lines(&out.stdout))
}

#[test]
fn the_readme_demo_syncs_then_finds_everything_unchanged() {
    let dir = example_copy();
    let (code, lines) = sync(dir.path());
    assert_eq!(code, 0);
    let summary = lines.last().unwrap().clone();
    assert_eq!(summary["kind"], "summary", "{summary}");
    let accepted = summary["accepted"].as_u64().unwrap();
    assert!(accepted > 20, "the example records are taken: {summary}");
    for key in ["rejected", "conflicts", "pending", "retrying", "dead"] {
        assert_eq!(summary[key], 0, "{key}: {summary}");
    }
    assert!(summary["routed"].as_u64().unwrap() > 0, "{summary}");
    assert!(summary["delivered"].as_u64().unwrap() > 0, "{summary}");
    assert!(summary["paused"].as_u64().unwrap() > 0, "{summary}");

    // The paused webhooks' deliveries are held, not sent or lost; what is delivered went to
    // destinations that are not paused (the CSV logs).
    let rows: Vec<&Value> = lines.iter().filter(|l| l["kind"] == "deliveries").collect();
    for (trust, destination) in [("thrive", "cpoms"), ("celt", "cpoms")] {
        let held: Vec<&&Value> = rows
            .iter()
            .filter(|r| r["trust"] == trust && r["destination"] == destination)
            .collect();
        assert!(!held.is_empty(), "{trust}/{destination}: {rows:?}");
        for r in held {
            assert_eq!(r["paused"], true, "{r}");
            assert_ne!(r["state"], "delivered", "{r}");
        }
    }
    for r in &rows {
        if r["paused"] == true {
            assert_ne!(
                r["state"], "delivered",
                "nothing reaches a paused destination: {r}"
            );
        }
    }
    let held: u64 = rows
        .iter()
        .filter(|r| r["paused"] == true)
        .map(|r| r["count"].as_u64().unwrap())
        .sum();
    assert_eq!(summary["paused"].as_u64(), Some(held), "{summary}");

    // The CSV logs under out/, each trust's, each with a header and rows.
    let out = dir.path().join("out");
    let logs = csv_files(&out);
    assert!(!logs.is_empty(), "nothing under out/");
    for trust in ["thrive", "celt"] {
        assert!(
            logs.keys().any(|p| p.starts_with(trust)),
            "no CSV log of {trust}: {:?}",
            logs.keys()
        );
    }
    let mut rows_written = 0;
    for (name, bytes) in &logs {
        let mut csv = csv::Reader::from_reader(bytes.as_slice());
        let n = csv.records().collect::<Result<Vec<_>, _>>().unwrap().len();
        assert!(n > 0, "{}: a header and no rows", name.display());
        rows_written += n;
    }
    assert_eq!(
        rows_written as u64,
        summary["delivered"].as_u64().unwrap(),
        "a row for each delivery"
    );

    // Again: every record unchanged, nothing routed or sent again.
    let (code, again) = sync(dir.path());
    assert_eq!(code, 0);
    let second = again.last().unwrap();
    assert_eq!(second["accepted"], 0, "{second}");
    assert_eq!(second["unchanged"].as_u64(), Some(accepted), "{second}");
    assert_eq!(second["routed"], 0, "{second}");
    for key in ["delivered", "paused", "pending", "retrying", "dead"] {
        assert_eq!(second[key], summary[key], "{key}: {second}");
    }
    assert_eq!(
        csv_files(&out),
        logs,
        "the CSV logs are as the first run left them"
    );
}

/// The README's evidence-trail demo, command for command: a checkpoint published, life going
/// on, a pack exported with the proof from that checkpoint, verified offline against it —
/// complete for its school and period, and anchored.
#[test]
fn the_readme_audit_demo_is_complete_and_anchored() {
    let dir = example_copy();
    sync(dir.path());
    let run = |args: &[&str]| {
        let out = doorstep()
            .current_dir(dir.path())
            .args(args)
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&out.stdout).into_owned();
        assert_eq!(
            out.status.code(),
            Some(0),
            "{args:?}: {said}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        said
    };
    let config = ["--config", "examples/doorstep.toml"];
    run(&["audit", "keygen", "--out", "var/log.key"]);
    let published = run(&[&["audit", "checkpoint"][..], &config, &["--trust", "celt"]].concat());
    std::fs::write(dir.path().join("var/published.cp"), published).unwrap();
    sync(dir.path());
    run(&[
        &["audit", "export"][..],
        &config,
        &[
            "--trust",
            "celt",
            "--school",
            "136401",
            "--from",
            "2026-01-01",
            "--to",
            "2026-12-31",
            "--out",
            "var/bundle",
            "--prove-from",
            "var/published.cp",
        ],
    ]
    .concat());
    let said = run(&[
        "audit",
        "verify",
        "var/bundle",
        "--trusted-checkpoint",
        "var/published.cp",
    ]);
    assert!(
        said.lines()
            .any(|l| l.starts_with("complete:") && l.contains("school 136401")),
        "{said}"
    );
    assert!(said.contains("anchored: the tree at size"), "{said}");
    assert!(said.contains("checked in full"), "{said}");

    // Records out, and retention.
    let year = ["--from", "2026-01-01", "--to", "2026-12-31"];
    let grace = ["--trust", "celt", "--pupil", "W908401221030"];
    for (format, out, reason) in [
        ("html", "var/chronology.html", "referral"),
        ("chronology", "var/chronology.csv", "referral"),
    ] {
        let args = ["--format", format, "--out", out, "--reason", reason];
        let said = run(&[&["export"][..], &config, &grace, &year, &args].concat());
        assert!(said.contains(&format!("wrote {out}")), "{said}");
    }
    let chronology = std::fs::read_to_string(dir.path().join("var/chronology.csv")).unwrap();
    assert!(chronology.lines().count() > 1, "{chronology}");
    assert!(
        chronology
            .lines()
            .skip(1)
            .all(|l| l.contains("W908401221030"))
    );
    let csv = [
        "--school",
        "136401",
        "--format",
        "csv",
        "--out",
        "var/celt-csv",
    ];
    run(&[
        &["export", "--trust", "celt"][..],
        &config,
        &year,
        &csv,
        &["--reason", "migration"],
    ]
    .concat());
    assert!(dir.path().join("var/celt-csv/visit_report.csv").is_file());
    let jsonl = [
        "--format",
        "jsonl",
        "--out",
        "var/celt.jsonl",
        "--reason",
        "migration",
    ];
    run(&[&["export", "--trust", "celt"][..], &config, &year, &jsonl].concat());
    let said = run(&[&["purge"][..], &config, &["--content-days", "0"]].concat());
    assert!(
        said.contains("trust celt: purged the content of 0"),
        "{said}"
    );
    let first = std::fs::read_to_string(dir.path().join("var/celt.jsonl")).unwrap();
    let first = first.lines().next().unwrap();
    std::fs::write(dir.path().join("var/held.json"), format!("{first}\n")).unwrap();
    let said = run(&[
        &["audit", "prove"][..],
        &config,
        &["--record", "var/held.json"],
    ]
    .concat());
    assert!(said.starts_with("proven:"), "{said}");
}
