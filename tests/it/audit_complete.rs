//! The auditor's pack proves it is complete (SPEC §5): each school's events numbered without a
//! gap, the period closed by the entries around it, the tree anchored to a checkpoint the
//! auditor already holds, a pseudonymised pack checked on every non-personal field — and
//! every tamper a school with a motive might try is caught, with a reason naming it.

use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use doorstep::audit::bundle::{self, Anchor, Completeness, VerifyOptions};
use doorstep::audit::{Event, EventType};
use doorstep::records::personal::PERSONAL_KEYS;
use doorstep::store::{SqliteStore, Store};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::harness::{self, Deployment};

const SCHOOL: &str = "136401";

/// A deployment with a signing key whose log for CELT starts with three events of January
/// (two of school 136401, one of another school), then the fixtures ingested and synced
/// today.
fn with_history() -> (Deployment, String) {
    let mut d = Deployment::new();
    let verifier = d.with_signing_key();
    let january = |at: &str, school: &str| {
        let mut e = Event::new(EventType::Delivered, at, "celt");
        e.school = Some(school.to_owned());
        e.kind = Some("visit_report".into());
        e.record_id = Some("celt-visit-jan".into());
        e.revision = Some(1);
        e.destination = Some("contact_log".into());
        e.state = Some("delivered".into());
        e
    };
    let db = d.db();
    runtime().block_on(async {
        let store = SqliteStore::open(&db).await.unwrap();
        store
            .audit_append(&[
                january("2026-01-05T10:00:00.000000Z", SCHOOL),
                january("2026-01-05T11:00:00.000000Z", "999999"),
                january("2026-01-06T10:00:00.000000Z", SCHOOL),
            ])
            .await
            .unwrap();
        store.close().await;
    });
    for dir in ["valid", "policy/celt"] {
        d.run("ingest", &[harness::fixture(dir).to_str().unwrap()])
            .code(0);
    }
    d.run("sync", &[]).code(0);
    (d, verifier)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Today in the deployment's time zone (Europe/London).
fn today() -> String {
    chrono::Utc::now()
        .with_timezone(&chrono_tz::Europe::London)
        .date_naive()
        .to_string()
}

/// `--trust celt --school 136401 --from FROM --to TO`.
fn period_args<'a>(from: &'a str, to: &'a str) -> Vec<&'a str> {
    vec![
        "--trust", "celt", "--school", SCHOOL, "--from", from, "--to", to,
    ]
}

fn export(d: &Deployment, out: &str, from: &str, to: &str, extra: &[&str]) -> std::path::PathBuf {
    let mut args = period_args(from, to);
    args.extend_from_slice(&["--out", out]);
    args.extend_from_slice(extra);
    d.run("audit export", &args).code(0);
    d.path(out)
}

fn verify(
    dir: &Path,
    options: &VerifyOptions<'_>,
) -> Result<bundle::VerifyReport, bundle::VerifyFailure> {
    bundle::verify(dir, options, &bundle::Quiet)
}

fn copy(from: &Path) -> tempfile::TempDir {
    let to = tempfile::tempdir().unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.path().join(e.file_name())).unwrap();
    }
    to
}

/// The event of each line of `entries.jsonl`.
pub(crate) fn leaves(dir: &Path) -> Vec<Value> {
    std::fs::read_to_string(dir.join("entries.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let entry: Value = serde_json::from_str(l).unwrap();
            let leaf = B64.decode(entry["leaf"].as_str().unwrap()).unwrap();
            serde_json::from_slice(&leaf).unwrap()
        })
        .collect()
}

/// Re-hashes every file into the manifest and recounts the entries, as a tamperer would.
fn rehash(dir: &Path) {
    let path = dir.join("manifest.json");
    let mut m: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let names: Vec<String> = m["files"].as_object().unwrap().keys().cloned().collect();
    for name in names {
        let bytes = std::fs::read(dir.join(&name)).unwrap();
        m["files"][&name] = Value::String(hex::encode(Sha256::digest(bytes)));
    }
    let lines = std::fs::read_to_string(dir.join("entries.jsonl"))
        .unwrap()
        .lines()
        .count();
    m["entries"] = lines.into();
    std::fs::write(path, serde_json::to_string_pretty(&m).unwrap()).unwrap();
}

/// Rewrites each record of `records.json` (kept in export's one-a-line layout).
fn edit_records(dir: &Path, mut f: impl FnMut(&mut Vec<Value>)) {
    let path = dir.join("records.json");
    let mut records: Vec<Value> =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    f(&mut records);
    let lines: Vec<String> = records
        .iter()
        .map(doorstep::records::canonical_json)
        .collect();
    let text = if lines.is_empty() {
        "[]\n".to_owned()
    } else {
        format!("[\n{}\n]\n", lines.join(",\n"))
    };
    std::fs::write(path, text).unwrap();
}

/// Removes line `n` (1-based) of `entries.jsonl` and, when it received a record, that record
/// with its rows in the CSV files — everything a school hiding one event would remove — and
/// re-hashes the manifest.
fn drop_entry(dir: &Path, n: usize) {
    let event = leaves(dir)[n - 1].clone();
    let path = dir.join("entries.jsonl");
    let text = std::fs::read_to_string(&path).unwrap();
    let mut lines: Vec<&str> = text.lines().collect();
    lines.remove(n - 1);
    std::fs::write(
        &path,
        lines.join("\n") + if lines.is_empty() { "" } else { "\n" },
    )
    .unwrap();
    if event["event"] == "received" {
        let (kind, id, rev) = (
            event["kind"].as_str().unwrap().to_owned(),
            event["record_id"].as_str().unwrap().to_owned(),
            event["revision"].as_u64().unwrap(),
        );
        edit_records(dir, |records| {
            records.retain(|r| {
                !(r["kind"] == kind.as_str() && r["id"] == id.as_str() && r["revision"] == rev)
            });
        });
        for (file, kind_col) in [
            ("records.csv", 0),
            ("deliveries.csv", 1),
            ("exceptions.csv", 0),
        ] {
            let p = dir.join(file);
            let text = std::fs::read_to_string(&p).unwrap();
            let kept: Vec<&str> = text
                .lines()
                .filter(|l| {
                    let cells: Vec<&str> = l.split(',').collect();
                    !(cells.get(kind_col) == Some(&kind.as_str())
                        && cells.get(kind_col + 1) == Some(&id.as_str())
                        && cells.get(kind_col + 2) == Some(&rev.to_string().as_str()))
                })
                .collect();
            std::fs::write(&p, kept.join("\n") + "\n").unwrap();
        }
    }
    rehash(dir);
}

/// The tampered copy fails, naming `what` with a reason containing `why`; the CLI exits 1.
fn caught(dir: &Path, what: &str, why: &str) {
    let f = verify(dir, &VerifyOptions::default()).expect_err("a tampered pack must not verify");
    assert!(
        f.what.contains(what) && f.reason.contains(why),
        "want {what} / {why}; got {f}"
    );
    let out = harness::doorstep()
        .args(["audit", "verify"])
        .arg(dir)
        .assert()
        .code(1)
        .get_output()
        .stdout
        .clone();
    assert!(String::from_utf8_lossy(&out).contains(why));
}

fn cli_verify(dir: &Path, args: &[&str]) -> (i32, String) {
    let out = harness::doorstep()
        .args(["audit", "verify"])
        .arg(dir)
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn a_pack_proves_its_period_complete_and_every_dropped_entry_is_caught() {
    let (d, _) = with_history();
    let today = today();

    // A period from February to today: the January event before it opens it, the export's
    // own event closes it.
    let feb = export(&d, "feb", "2026-02-01", &today, &[]);
    let events = leaves(&feb);
    assert!(events.len() > 20);
    assert_eq!(
        events[0]["at"], "2026-01-06T10:00:00.000000Z",
        "the entry before the period"
    );
    assert_eq!(events[0]["school_seq"], 1);
    let last = events.last().unwrap();
    assert_eq!(last["event"], "exported");
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e["school_seq"], i as u64 + 1, "{e}");
    }
    let report = verify(&feb, &VerifyOptions::default()).unwrap();
    let n = events.len() as u64;
    assert_eq!(
        report.completeness,
        Completeness::Complete {
            seqs: Some((2, n)),
            until_end: Some(bundle::TreeEnd {
                at: last["at"].as_str().unwrap().to_owned(),
                exported: true
            }),
        }
    );
    assert_eq!(report.anchor, Anchor::NotAnchored { proves_from: None });
    let (code, said) = cli_verify(&feb, &[]);
    assert_eq!(code, 0, "{said}");
    assert!(
        said.contains(&format!(
            "complete: every event of school {SCHOOL} from 2026-02-01 to {today}"
        )) && said.contains(&format!("seq 2..{n}")),
        "{said}"
    );
    assert!(said.contains("not anchored"), "{said}");
    assert!(
        said.contains("signed: by trail.example+") && said.contains("compare it with the trust's"),
        "without --key it says the key is the bundle's own: {said}"
    );
    assert!(said.contains("checked in full"), "{said}");

    // January alone: no entry before it (the school's first event is seq 0), the first
    // event of today closes it.
    let jan = export(&d, "jan", "2026-01-01", "2026-01-31", &[]);
    let events = leaves(&jan);
    assert_eq!(events.len(), 3, "{events:?}");
    assert_eq!(events[2]["school_seq"], 2);
    let report = verify(&jan, &VerifyOptions::default()).unwrap();
    assert_eq!(
        report.completeness,
        Completeness::Complete {
            seqs: Some((0, 1)),
            until_end: None
        }
    );
    // A period with no event of the school: proven empty by the entries around it.
    let empty = export(&d, "empty", "2026-01-07", "2026-01-31", &[]);
    assert_eq!(leaves(&empty).len(), 2);
    let (code, said) = cli_verify(&empty, &[]);
    assert_eq!(code, 0, "{said}");
    assert!(said.contains("has no event from 2026-01-07"), "{said}");

    // Tampers, each with the records and CSV rows that went with the entry, re-hashed.
    let received_in_middle = leaves(&feb)
        .iter()
        .enumerate()
        .skip(events.len() / 2 + 5)
        .find(|(_, e)| e["event"] == "received")
        .map(|(i, _)| i + 1)
        .unwrap();
    let lines = leaves(&feb).len();
    for (name, line, what, why) in [
        (
            "the entry before the period",
            1,
            "line 1 ",
            "last entry before the period is missing",
        ),
        (
            "the first in-period entry",
            2,
            "line 2 ",
            "missing from the bundle",
        ),
        (
            "a middle received entry",
            received_in_middle,
            "",
            "missing from the bundle",
        ),
        (
            "the last in-period entry",
            lines - 1,
            "",
            "missing from the bundle",
        ),
        (
            "the closing entry",
            lines,
            "",
            "first entry after the period is missing",
        ),
    ] {
        let t = copy(&feb);
        drop_entry(t.path(), line);
        eprintln!("{name}");
        caught(t.path(), what, why);
    }
    // A hostile manifest of megabytes is refused, not read into memory.
    let t = copy(&jan);
    std::fs::write(t.path().join("manifest.json"), " ".repeat(2 << 20)).unwrap();
    caught(t.path(), "manifest.json", "larger than 1 MiB");
    let t = copy(&jan);
    drop_entry(t.path(), 3);
    caught(
        t.path(),
        "line 2 ",
        "first entry after the period is missing",
    );
    // Shrinking the period in the manifest to hide the last events proves only the shorter
    // period — and must still be closed: without an entry after it, it fails.
    let t = copy(&jan);
    let manifest = std::fs::read_to_string(t.path().join("manifest.json")).unwrap();
    std::fs::write(
        t.path().join("manifest.json"),
        manifest
            .replace("\"to_utc\": \"2026-02-01", "\"to_utc\": \"2026-01-06")
            .replace("\"to\": \"2026-01-31\"", "\"to\": \"2026-01-05\""),
    )
    .unwrap();
    caught(t.path(), "line 3 ", "lies after the period");
}

#[test]
fn a_pack_is_anchored_to_a_checkpoint_the_auditor_holds_and_a_rewritten_log_is_caught() {
    let (d, verifier) = with_history();
    // Someone with the key will rewrite the log from here: a copy of the store as it is now.
    let forked = Deployment::new();
    std::fs::create_dir_all(forked.path("var")).unwrap();
    std::fs::create_dir_all(forked.path("keys")).unwrap();
    for f in ["doorstep.db", "doorstep.db-wal", "doorstep.db-shm"] {
        let from = d.path(&format!("var/{f}"));
        if from.exists() {
            std::fs::copy(&from, forked.path(&format!("var/{f}"))).unwrap();
        }
    }
    std::fs::copy(d.path("keys/log.key"), forked.path("keys/log.key")).unwrap();
    let revision = |d: &Deployment, n: u32, outcome: &str| {
        let mut v = harness::read_fixture("policy/celt/08-no-buddy.json");
        v["revision"] = serde_json::json!(n);
        v["outcome"] = serde_json::json!(outcome);
        v["buddy"] = serde_json::json!({"staff_id": "PEN-050", "name": "Tom Rowe", "code_word_agreed": true});
        std::fs::write(d.path("rev.json"), v.to_string()).unwrap();
        d.run("ingest", &["rev.json"]).code(0);
    };
    // The true log goes on; the auditor takes a checkpoint (published, or handed to a
    // witness); more happens.
    revision(&d, 2, "no_one_home");
    // Every trust's, as `audit checkpoint` prints them: export and verify find the log's own.
    let out = d
        .run("audit checkpoint", &[])
        .code(0)
        .get_output()
        .stdout
        .clone();
    assert!(String::from_utf8_lossy(&out).contains("trail.example/thrive"));
    std::fs::write(d.path("early.cp"), &out).unwrap();
    revision(&d, 3, "no_one_home");

    let today = today();
    let anchored = export(
        &d,
        "anchored",
        "2026-02-01",
        &today,
        &["--prove-from", d.path("early.cp").to_str().unwrap()],
    );
    let early = std::fs::read_to_string(d.path("early.cp")).unwrap();
    let with_trust = VerifyOptions {
        trusted_checkpoint: Some(&early),
        ..Default::default()
    };
    let report = verify(&anchored, &with_trust).unwrap();
    let early_size: u64 = early.lines().nth(1).unwrap().parse().unwrap();
    assert_eq!(report.anchor, Anchor::Anchored { size: early_size });
    assert!(report.tree_size > early_size);
    let (code, said) = cli_verify(
        &anchored,
        &[
            "--trusted-checkpoint",
            d.path("early.cp").to_str().unwrap(),
            "--key",
            &verifier,
        ],
    );
    assert_eq!(code, 0, "{said}");
    assert!(said.contains("the key given with --key"), "{said}");
    assert!(
        said.contains(&format!(
            "anchored: the tree at size {} extends the trusted checkpoint at size {early_size}",
            report.tree_size
        )),
        "{said}"
    );
    // Without the trusted checkpoint it says what it would prove.
    let (_, said) = cli_verify(&anchored, &[]);
    assert!(
        said.contains(&format!(
            "not anchored: the bundle proves its tree extends the checkpoint at size {early_size}"
        )),
        "{said}"
    );
    // A bundle without a proof cannot be anchored to an earlier checkpoint.
    let plain = export(&d, "plain", "2026-02-01", &today, &[]);
    let f = verify(&plain, &with_trust).unwrap_err();
    assert_eq!(f.what, "--trusted-checkpoint", "{f}");
    assert!(f.reason.contains("no consistency proof"), "{f}");

    // The rewritten log: another history from the fork, signed with the same key. Its
    // export cannot prove it extends the early checkpoint…
    let mut forked = forked;
    forked.add_config("[audit]\nsigning_key = { file = \"keys/log.key\" }\n");
    revision(&forked, 2, "completed");
    revision(&forked, 3, "completed");
    let early_cp = d.path("early.cp");
    let mut args = period_args("2026-02-01", &today);
    args.extend([
        "--out",
        "forged",
        "--prove-from",
        early_cp.to_str().unwrap(),
    ]);
    let refused = forked.command("audit export", &args).output().unwrap();
    assert_ne!(refused.status.code(), Some(0));
    // …and a forged bundle carrying the true log's proof, re-hashed, is caught.
    let forged = export(&forked, "forged2", "2026-02-01", &today, &[]);
    std::fs::copy(
        anchored.join("consistency.json"),
        forged.join("consistency.json"),
    )
    .unwrap();
    let manifest = std::fs::read_to_string(forged.join("manifest.json")).unwrap();
    let mut m: Value = serde_json::from_str(&manifest).unwrap();
    m["files"]["consistency.json"] = Value::String(String::new());
    std::fs::write(forged.join("manifest.json"), m.to_string()).unwrap();
    rehash(&forged);
    let f = verify(&forged, &with_trust).unwrap_err();
    assert_eq!(f.what, "consistency.json", "{f}");
    assert!(f.reason.contains("the log was rewritten"), "{f}");
    // A checkpoint of the forked log given as trusted, against the true log's bundle.
    let out = forked
        .run("audit checkpoint", &["--trust", "celt"])
        .code(0)
        .get_output()
        .stdout
        .clone();
    let other = String::from_utf8(out).unwrap();
    let f = verify(
        &anchored,
        &VerifyOptions {
            trusted_checkpoint: Some(&other),
            ..Default::default()
        },
    )
    .unwrap_err();
    assert!(
        f.what == "--trusted-checkpoint" || f.what == "consistency.json" || f.what == "checkpoint",
        "{f}"
    );
}

/// Replaces every personal value with a pseudonym, as `--pseudonymise` would.
fn pseudonymise(v: &mut Value) {
    match v {
        Value::Object(m) => {
            for (k, child) in m.iter_mut() {
                if PERSONAL_KEYS.contains(&k.as_str()) {
                    *child = Value::String("pseudonym:0000".into());
                } else {
                    pseudonymise(child);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(pseudonymise),
        _ => {}
    }
}

#[test]
fn a_pseudonymised_pack_proves_every_non_personal_field_and_says_what_it_did_not_check() {
    let (d, _) = with_history();
    let today = today();
    let pack = export(&d, "pseudo", "2026-02-01", &today, &["--pseudonymise"]);
    let report = verify(&pack, &VerifyOptions::default()).unwrap();
    assert_eq!(report.content.full, 0);
    assert_eq!(report.content.non_personal, report.records);
    assert!(report.records > 10);
    let (code, said) = cli_verify(&pack, &[]);
    assert_eq!(code, 0, "{said}");
    assert!(
        said.contains("pseudonymised and checked on every field but the personal ones"),
        "{said}"
    );
    assert!(said.contains("not checked: given_name"), "{said}");
    let (code, said) = cli_verify(&pack, &["--require-content"]);
    assert_eq!(code, 1, "{said}");
    assert!(said.contains("--require-content"), "{said}");
    let records = std::fs::read_to_string(pack.join("records.json")).unwrap();
    for leak in ["mother", "Mark Pascoe", "TR7 1XX"] {
        assert!(!records.contains(leak), "{leak} in a pseudonymised pack");
    }

    // A pseudonymised pack's non-personal content edited: caught.
    let t = copy(&pack);
    let mut edited = false;
    edit_records(t.path(), |records| {
        let r = records
            .iter_mut()
            .find(|r| r["kind"] == "visit_report" && r["outcome"] != "completed")
            .unwrap();
        r["outcome"] = "completed".into();
        r["child_seen"] = true.into();
        edited = true;
    });
    assert!(edited);
    rehash(t.path());
    caught(
        t.path(),
        "records.json record",
        "non-personal fields differ",
    );

    // A plain pack turned "pseudonymised" by hand to hide an edit: caught.
    let plain = export(&d, "plain", "2026-02-01", &today, &[]);
    let t = copy(&plain);
    edit_records(t.path(), |records| {
        records.iter_mut().for_each(pseudonymise)
    });
    let manifest = std::fs::read_to_string(t.path().join("manifest.json")).unwrap();
    std::fs::write(
        t.path().join("manifest.json"),
        manifest.replace("\"pseudonymised\": false", "\"pseudonymised\": true"),
    )
    .unwrap();
    rehash(t.path());
    // Hand-pseudonymised but otherwise true: it verifies, and says only the non-personal
    // fields were checked — the flag cannot make it pass unsaid.
    let report = verify(t.path(), &VerifyOptions::default()).unwrap();
    assert_eq!(report.content.non_personal, report.records);
    assert!(
        verify(
            t.path(),
            &VerifyOptions {
                require_content: true,
                ..Default::default()
            }
        )
        .is_err()
    );
    edit_records(t.path(), |records| {
        let r = records
            .iter_mut()
            .find(|r| r["kind"] == "visit_report" && r["outcome"] == "cancelled")
            .or(None);
        if let Some(r) = r {
            r["outcome"] = "completed".into();
        }
        records
            .iter_mut()
            .find(|r| r["kind"] == "visit_report")
            .unwrap()["child_seen"] = true.into();
    });
    rehash(t.path());
    caught(
        t.path(),
        "records.json record",
        "non-personal fields differ",
    );
}

/// Cron overlapping itself and an auditor exporting meanwhile: two ingests and two exports at
/// once on one store. Every number is handed out once — each pack verifies complete — and a
/// pack of the whole period afterwards runs without a gap through all of it.
#[test]
fn processes_appending_at_once_never_share_or_skip_a_number() {
    let (d, _) = with_history();
    for (seed, file) in [("1", "a.jsonl"), ("2", "b.jsonl")] {
        let out = d
            .command("gen", &["--count", "150", "--seed", seed])
            .output()
            .unwrap();
        let text = String::from_utf8(out.stdout)
            .unwrap()
            .replace("\"trust\":\"thrive\"", "\"trust\":\"celt\"")
            .lines()
            .map(|l| {
                // Every record at school 136401.
                let mut v: Value = serde_json::from_str(l).unwrap();
                v["school"]["urn"] = SCHOOL.into();
                v.to_string() + "\n"
            })
            .collect::<String>();
        std::fs::write(d.path(file), text).unwrap();
    }
    let today = today();
    let mut running = Vec::new();
    for args in [
        // The second ingest waits for the first's writer lock (alone it would exit 75).
        vec!["ingest", "a.jsonl", "--wait", "30"],
        vec!["ingest", "b.jsonl", "--wait", "30"],
        vec!["audit export", "--out", "x1"],
        vec!["audit export", "--out", "x2"],
    ] {
        let (verb, rest) = args.split_first().unwrap();
        let mut all: Vec<&str> = rest.to_vec();
        if verb.starts_with("audit") {
            all.extend(period_args("2026-02-01", &today));
        }
        // Built first, all of them: building one rewrites the config file the others read.
        running.push((verb.to_string(), d.command(verb, &all)));
    }
    let running: Vec<_> = running
        .into_iter()
        .map(|(verb, mut cmd)| (verb, cmd.spawn().unwrap()))
        .collect();
    for (verb, mut child) in running {
        let code = child.wait().unwrap().code();
        let ok = if verb == "ingest" {
            [Some(0), Some(1)].contains(&code)
        } else {
            code == Some(0)
        };
        assert!(ok, "{verb} exited {code:?}");
    }
    for pack in ["x1", "x2"] {
        let report = verify(&d.path(pack), &VerifyOptions::default()).unwrap();
        assert!(
            matches!(report.completeness, Completeness::Complete { .. }),
            "{pack}: {report:?}"
        );
    }
    let all = export(&d, "after", "2026-01-01", &today, &[]);
    let report = verify(&all, &VerifyOptions::default()).unwrap();
    let events = leaves(&all);
    assert!(events.len() > 300, "both ingests' events are there");
    assert_eq!(
        report.completeness,
        Completeness::Complete {
            seqs: Some((0, events.len() as u64 - 1)),
            until_end: Some(bundle::TreeEnd {
                at: events.last().unwrap()["at"].as_str().unwrap().to_owned(),
                exported: true
            }),
        }
    );
    assert_eq!(
        events.iter().filter(|e| e["event"] == "exported").count(),
        3,
        "both exports made during the ingests, and this one"
    );
}

/// Nothing panics on a bundle, however it is damaged: bytes flipped, cut or doubled anywhere
/// in any of its files, each run ends in a verdict (almost always a failure naming a file).
#[test]
fn a_damaged_bundle_gets_a_verdict_never_a_panic() {
    let (d, _) = with_history();
    let pack = export(&d, "pack", "2026-02-01", &today(), &[]);
    let files = [
        "manifest.json",
        "checkpoint",
        "log.pub",
        "entries.jsonl",
        "records.json",
        "records.csv",
    ];
    let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move |n: usize| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed % n.max(1) as u64) as usize
    };
    let mut failed = 0;
    for round in 0..120 {
        let t = copy(&pack);
        let file = files[next(files.len())];
        let path = t.path().join(file);
        let mut bytes = std::fs::read(&path).unwrap();
        let at = next(bytes.len());
        match round % 4 {
            0 => bytes[at] ^= 1 << next(8),
            1 => bytes.truncate(at),
            2 => {
                let piece = bytes[at..(at + 1 + next(200)).min(bytes.len())].to_vec();
                bytes.splice(at..at, piece);
            }
            _ => bytes[at] = [b'"', b'\\', b'\n', b'{', b'0', 0xFF][next(6)],
        }
        std::fs::write(&path, &bytes).unwrap();
        let verdict = std::panic::catch_unwind(|| verify(t.path(), &VerifyOptions::default()));
        match verdict {
            Ok(Err(_)) => failed += 1,
            Ok(Ok(_)) => {}
            Err(_) => panic!("round {round}: verify panicked on a damaged {file}"),
        }
    }
    assert!(failed > 100, "damage is caught: {failed} of 120");
}

/// `audit prove --record`: the original text of a received record is proven (laid out any
/// way: it is canonicalised), with a leaf, proof and checkpoint that check out; a one-byte
/// change is refused, exit 1.
#[test]
fn a_record_someone_holds_is_proven_received_and_a_changed_byte_is_not() {
    let (d, verifier) = with_history();
    let original =
        std::fs::read_to_string(harness::fixture("valid/celt-flag-outside-visit.json")).unwrap();
    d.write("held.json", &original);
    let out = d
        .command("audit prove", &["--record", "held.json"])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(0), "{said}");
    assert!(
        said.starts_with("proven: held.json is a revision the log of celt received"),
        "{said}"
    );
    // The checkpoint it prints is signed by the trust's key, and the leaf it names carries the
    // record's content hash.
    let note = &said[said.find("checkpoint:\n").unwrap() + "checkpoint:\n".len()..];
    let key = doorstep::audit::Verifier::parse(&verifier).unwrap();
    let body = key.open(note).unwrap();
    assert!(body.starts_with("trail.example/celt\n"), "{body}");
    let value: Value = serde_json::from_str(&original).unwrap();
    let hash = hex::encode(Sha256::digest(doorstep::records::canonical_json(&value)));
    assert!(
        said.contains(&format!("\"content_hash\":\"{hash}\"")),
        "{said}"
    );
    // Compact, re-ordered by a tool: the same record.
    d.write("compact.json", &value.to_string());
    d.run("audit prove", &["--record", "compact.json"]).code(0);
    // One byte changed.
    let changed = original.replacen("\"revision\": 1", "\"revision\": 2", 1);
    assert_ne!(changed, original);
    d.write("changed.json", &changed);
    let out = d
        .command("audit prove", &["--record", "changed.json"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("not proven"));
    // Not JSON at all: a usage error naming the file.
    d.write("junk.json", "{not json");
    let out = d
        .command("audit prove", &["--record", "junk.json"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("junk.json"));
}
