//! The CLI as scripts and cron see it: verbs, `--format json` lines, exit codes 0/1/2.

use std::os::unix::fs::PermissionsExt;

use serde_json::json;

use crate::harness::{Deployment, doorstep, fixture, json_lines, read_fixture};

#[test]
fn check_needs_no_config_and_exits_zero_on_valid_files() {
    let dir = tempfile::tempdir().unwrap();
    doorstep()
        .current_dir(dir.path())
        .arg("check")
        .arg(fixture("valid"))
        .assert()
        .code(0)
        .stdout(predicates::str::contains("0 rejected"));
}

#[test]
fn check_json_lines_name_file_line_record_pointer_and_rule() {
    let dir = tempfile::tempdir().unwrap();
    let mut bad = read_fixture("valid/celt-attendance-caring.json");
    bad["staff"][1]["role"] = json!("driver");
    let good = read_fixture("valid/thrive-attendance-illness.json");
    let file = dir.path().join("day.jsonl");
    std::fs::write(&file, format!("{good}\n{bad}\nnot json\n")).unwrap();
    let out = doorstep()
        .current_dir(dir.path())
        .args(["check", "--format", "json"])
        .arg(&file)
        .assert()
        .code(1)
        .get_output()
        .stdout
        .clone();
    let lines = json_lines(&out);
    assert_eq!(lines.len(), 3, "{lines:?}");
    assert_eq!(
        lines[0],
        json!({
            "kind": "rejection", "file": file.display().to_string(), "line": 2,
            "record_id": "celt-visit-030", "path": "/staff/1/role", "rule": "unknown-enum-value",
            "message": lines[0]["message"],
        })
    );
    assert_eq!(lines[1]["line"], 3);
    assert_eq!(lines[1]["rule"], "json-syntax");
    assert_eq!(lines[1]["record_id"], serde_json::Value::Null);
    assert_eq!(
        lines[2],
        json!({"kind": "summary", "accepted": 1, "rejected": 2, "exceptions": 0, "unchanged": 0, "conflicts": 0})
    );
}

#[test]
fn ingest_stores_durably_then_is_idempotent_and_reports_conflicts() {
    let d = Deployment::new();
    let visit = read_fixture("valid/thrive-attendance-illness.json");
    std::fs::write(d.path("drop/a.json"), visit.to_string()).unwrap();
    // No PATH: the config's drop folder.
    let out = d
        .run("ingest", &["--format", "json"])
        .code(0)
        .get_output()
        .stdout
        .clone();
    assert_eq!(json_lines(&out).last().unwrap()["accepted"], 1);
    let mode = std::fs::metadata(d.db()).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the store is readable by its owner only");

    // The same content again: a no-op.
    let out = d
        .run("ingest", &["--format", "json"])
        .code(0)
        .get_output()
        .stdout
        .clone();
    let summary = json_lines(&out).pop().unwrap();
    assert_eq!(
        (summary["accepted"].as_u64(), summary["unchanged"].as_u64()),
        (Some(0), Some(1))
    );

    // Same revision, other content: a conflict, kept out, exit 1.
    let mut changed = visit.clone();
    changed["summary"] = json!("A different account");
    std::fs::write(d.path("changed.json"), changed.to_string()).unwrap();
    let out = d
        .run("ingest", &["--format", "json", "changed.json"])
        .code(1)
        .get_output()
        .stdout
        .clone();
    let lines = json_lines(&out);
    assert_eq!(lines[0]["kind"], "conflict");
    assert_eq!(lines[0]["record_id"], "thr-visit-001");
    assert_eq!(lines[0]["rule"], "revision-conflict");
    assert_eq!(lines[1]["conflicts"], 1);

    // A higher revision supersedes.
    changed["revision"] = json!(2);
    std::fs::write(d.path("changed.json"), changed.to_string()).unwrap();
    d.run("ingest", &["changed.json"]).code(0);

    let out = d
        .run("status", &["--format", "json"])
        .code(0)
        .get_output()
        .stdout
        .clone();
    let lines = json_lines(&out);
    let rows: Vec<_> = lines.iter().filter(|l| l["kind"] == "records").collect();
    assert!(
        rows.iter()
            .any(|r| r["state"] == "current" && r["count"] == 1 && r["school"] == "117800")
    );
    assert!(
        rows.iter()
            .any(|r| r["state"] == "superseded" && r["count"] == 1)
    );
    assert!(
        lines
            .iter()
            .any(|l| l["kind"] == "conflict" && l["rule"] == "revision-conflict")
    );
    let summary = lines.last().unwrap();
    assert_eq!(summary["kind"], "summary");
    assert_eq!(
        (summary["records"].as_u64(), summary["revisions"].as_u64()),
        (Some(1), Some(2))
    );
}

#[test]
fn ingest_takes_the_valid_records_of_a_file_and_reports_the_rest() {
    let d = Deployment::new();
    let out = doorstep()
        .args([
            "gen",
            "--count",
            "300",
            "--seed",
            "9",
            "--invalid-share",
            "0.1",
        ])
        .assert()
        .code(0)
        .get_output()
        .stdout
        .clone();
    std::fs::write(d.path("gen.jsonl"), &out).unwrap();
    let out = d
        .run("ingest", &["--format", "json", "gen.jsonl"])
        .code(1)
        .get_output()
        .stdout
        .clone();
    let lines = json_lines(&out);
    let summary = lines.last().unwrap();
    let rejected = lines.iter().filter(|l| l["kind"] == "rejection").count() as u64;
    assert!(rejected > 0);
    assert_eq!(summary["rejected"].as_u64(), Some(rejected));
    assert_eq!(summary["accepted"].as_u64().unwrap() + rejected, 300);
    let out = d
        .run("status", &["--format", "json"])
        .code(0)
        .get_output()
        .stdout
        .clone();
    let status = json_lines(&out);
    assert_eq!(status.last().unwrap()["records"], summary["accepted"]);
    assert_eq!(status.last().unwrap()["rejected"].as_u64(), Some(rejected));
}

#[test]
fn gen_is_the_same_for_the_same_seed_and_valid_when_asked() {
    let run = |seed: &str| {
        doorstep()
            .args(["gen", "--count", "200", "--seed", seed])
            .assert()
            .code(0)
            .get_output()
            .stdout
            .clone()
    };
    let a = run("5");
    assert_eq!(a, run("5"));
    assert_ne!(a, run("6"));
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("g.jsonl"), &a).unwrap();
    let out = doorstep()
        .current_dir(dir.path())
        .args(["check", "--format", "json", "g.jsonl"])
        .assert()
        .code(0)
        .get_output()
        .stdout
        .clone();
    let summary = json_lines(&out).pop().unwrap();
    assert_eq!(summary["accepted"], 200);
    let text = String::from_utf8(a).unwrap();
    for kind in [
        "visit_report",
        "incident",
        "safeguarding_flag",
        "\"thrive\"",
        "\"celt\"",
    ] {
        assert!(text.contains(kind), "gen writes {kind}");
    }
}

#[test]
fn bad_usage_and_bad_config_exit_two() {
    let dir = tempfile::tempdir().unwrap();
    doorstep()
        .current_dir(dir.path())
        .arg("frobnicate")
        .assert()
        .code(2);
    doorstep()
        .current_dir(dir.path())
        .arg("check")
        .assert()
        .code(2);
    // ingest with no config anywhere.
    doorstep()
        .current_dir(dir.path())
        .arg("ingest")
        .assert()
        .code(2)
        .stderr(predicates::str::contains("no config"));
    // A config with an unknown key names the file and the key.
    let cfg = dir.path().join("bad.toml");
    std::fs::write(&cfg, "[store]\nsqlite = \"x.db\"\nsqlit = 1\n").unwrap();
    doorstep()
        .current_dir(dir.path())
        .args(["config", "check", "--config"])
        .arg(&cfg)
        .assert()
        .code(2)
        .stderr(predicates::str::contains("bad.toml").and(predicates::str::contains("sqlit")));
    // Named explicitly, a missing config is an error even for check.
    doorstep()
        .current_dir(dir.path())
        .args(["check", "--config", "missing.toml"])
        .arg(fixture("valid"))
        .assert()
        .code(2);
    // The environment variable names it too.
    doorstep()
        .current_dir(dir.path())
        .env("DOORSTEP_CONFIG", &cfg)
        .args(["config", "check"])
        .assert()
        .code(2);
}

#[test]
fn config_relative_paths_are_taken_from_its_folder() {
    let d = Deployment::new();
    std::fs::write(
        d.path("drop/a.json"),
        read_fixture("valid/celt-incident-animal.json").to_string(),
    )
    .unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    doorstep()
        .current_dir(elsewhere.path())
        .arg("ingest")
        .arg("--config")
        .arg(d.config())
        .assert()
        .code(0);
    assert!(
        d.db().exists(),
        "the store sits beside the config, not in the working folder"
    );
    doorstep()
        .current_dir(elsewhere.path())
        .args(["config", "check", "--config"])
        .arg(d.config())
        .assert()
        .code(0);
}

#[test]
fn unreadable_and_unsupported_files_are_rejections() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("notes.txt"), "hello").unwrap();
    let out = doorstep()
        .current_dir(dir.path())
        .args(["check", "--format", "json", "notes.txt", "missing.json"])
        .assert()
        .code(1)
        .get_output()
        .stdout
        .clone();
    let lines = json_lines(&out);
    assert_eq!(lines[0]["rule"], "unsupported-file-type");
    assert_eq!(lines[1]["rule"], "unreadable-file");
    assert_eq!(lines[1]["file"], "missing.json");
    assert_eq!(lines[2]["rejected"], 2);
}

use predicates::prelude::*;

/// A FIFO, a link and a folder loop in the drop folder: `sync` neither hangs nor follows
/// them, rejects each with a line of its own, and still takes the good file beside them.
#[test]
fn a_fifo_or_link_in_the_drop_folder_cannot_hang_or_redirect_sync() {
    let d = Deployment::new();
    d.drop_records(
        "good.json",
        &[read_fixture("valid/celt-attendance-caring.json")],
    );
    let drop = d.path("drop");
    assert!(
        std::process::Command::new("mkfifo")
            .arg(drop.join("pipe.jsonl"))
            .status()
            .unwrap()
            .success()
    );
    std::os::unix::fs::symlink(fixture("valid"), drop.join("elsewhere")).unwrap();
    std::os::unix::fs::symlink(&drop, drop.join("loop")).unwrap();
    let out = assert_cmd::Command::from_std(d.command("sync", &["--format", "json"]))
        .timeout(std::time::Duration::from_secs(60))
        .assert()
        .code(1)
        .get_output()
        .stdout
        .clone();
    let lines = json_lines(&out);
    let rejected: Vec<&str> = lines
        .iter()
        .filter(|l| l["kind"] == "rejection")
        .map(|l| l["file"].as_str().unwrap())
        .collect();
    assert_eq!(rejected.len(), 3, "{lines:?}");
    for name in ["pipe.jsonl", "elsewhere", "loop"] {
        assert!(
            rejected.iter().any(|f| f.ends_with(name)),
            "{name}: {rejected:?}"
        );
    }
    let summary = lines.last().unwrap();
    assert_eq!(summary["accepted"], 1, "{summary}");
    assert_eq!(summary["rejected"], 3, "{summary}");
}
