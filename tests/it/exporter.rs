//! The record exporter and retention (SPEC §6): `doorstep export` in every format checked
//! field by field against the stored records, a child's chronology across two schools and
//! a clock change, formula cells, the `exported` event; `doorstep purge` sparing a revision
//! whose delivery is still retrying, and what still works after a purge (status, export,
//! the auditor's bundle, `audit prove`).

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use chrono::{DateTime, Duration, FixedOffset};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use wiremock::matchers::{body_string_contains, method};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::audit_complete::leaves;
use crate::delivery::{api_deploy, created, visit};
use crate::harness::{self, Deployment};
use doorstep::records::{Kind, canonical_json};
use doorstep::store::{SqliteStore, Store};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// The stored text of a record's latest revision, read through the library's store (on a
/// thread of its own, so an async test may call it too).
fn stored(d: &Deployment, trust: &str, kind: Kind, id: &str) -> String {
    let db = d.db();
    std::thread::scope(|s| {
        s.spawn(|| {
            runtime().block_on(async {
                let store = SqliteStore::open_for_reading(&db).await.unwrap();
                let revs = store.revisions(trust, kind, id).await.unwrap();
                store.close().await;
                revs.last().map(|(_, t)| t.clone()).unwrap_or_default()
            })
        })
        .join()
        .unwrap()
    })
}

/// Every RFC 3339 time in `v` moved by `by`, each keeping its own offset.
fn shift(v: &mut Value, by: Duration) {
    match v {
        Value::String(s) => {
            if let Ok(t) = DateTime::<FixedOffset>::parse_from_rfc3339(s)
                && s.contains('T')
            {
                *s = (t + by).to_rfc3339();
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|i| shift(i, by)),
        Value::Object(m) => m.values_mut().for_each(|i| shift(i, by)),
        _ => {}
    }
}

fn time(s: &str) -> DateTime<FixedOffset> {
    DateTime::parse_from_rfc3339(s).unwrap()
}

/// A CELT visit (`id`, school `urn`, pupil `upn`) arriving at `arrival`, every other time of
/// the shipped visit moved with it.
fn celt_visit(id: &str, urn: &str, upn: &str, arrival: &str) -> Value {
    let mut v = harness::read_fixture("valid/celt-safeguarding-visit.json");
    let by = time(arrival) - time(v["visit"]["arrived_at"].as_str().unwrap());
    shift(&mut v, by);
    v["visit"]["arrived_at"] = arrival.into();
    v["id"] = id.into();
    v["school"]["urn"] = urn.into();
    v["pupil"]["upn"] = upn.into();
    v.as_object_mut().unwrap().remove("incidents");
    v.as_object_mut().unwrap().remove("safeguarding_flags");
    v
}

fn celt_incident(id: &str, urn: &str, visit_id: &str, at: &str) -> Value {
    let mut v = harness::read_fixture("valid/celt-incident-animal.json");
    let by = time(at) - time(v["occurred_at"].as_str().unwrap());
    shift(&mut v, by);
    v["occurred_at"] = at.into();
    v["id"] = id.into();
    v["school"]["urn"] = urn.into();
    v["visit_id"] = visit_id.into();
    v
}

fn celt_flag(id: &str, urn: &str, upn: &str, at: &str) -> Value {
    let mut v = harness::read_fixture("valid/celt-flag-child-alone.json");
    let by = time(at) - time(v["raised_at"].as_str().unwrap());
    shift(&mut v, by);
    v["raised_at"] = at.into();
    v["id"] = id.into();
    v["school"]["urn"] = urn.into();
    v["pupil"]["upn"] = upn.into();
    v.as_object_mut().unwrap().remove("visit_id");
    v
}

/// (column, the record field it holds).
type Fields = &'static [(&'static str, &'static str)];

const CHILD: &str = "J908401221038";
const OTHER: &str = "B908401221043";

/// A child with visits at two schools, an incident and a flag around the March clock
/// change (London goes from GMT to BST at 01:00 UTC on 29 March 2026), and records of
/// another child and outside the period beside them.
fn two_schools() -> Deployment {
    let mut d = Deployment::new();
    d.with_signing_key();
    let records = [
        // A week earlier, at the other school.
        celt_visit("chr-v2", "136402", CHILD, "2026-03-10T15:00:00+00:00"),
        // 00:30 UTC, still GMT, though written with a +01:00 offset.
        celt_visit("chr-v1", "136401", CHILD, "2026-03-29T01:30:00+01:00"),
        // 00:45 UTC (GMT).
        celt_incident("chr-i1", "136401", "chr-v1", "2026-03-29T00:45:00+00:00"),
        // 01:15 UTC: 02:15 BST.
        celt_flag("chr-f1", "136402", CHILD, "2026-03-29T01:15:00+00:00"),
        // Another child's visit and its incident, the same night.
        celt_visit("chr-v3", "136401", OTHER, "2026-03-29T00:40:00+00:00"),
        celt_incident("chr-i3", "136401", "chr-v3", "2026-03-29T00:50:00+00:00"),
        // The child, after the period.
        celt_flag("chr-f2", "136401", CHILD, "2026-04-02T09:00:00+01:00"),
    ];
    let text: String = records.iter().map(|r| format!("{r}\n")).collect();
    d.write("chr.jsonl", &text);
    let out = d.command("ingest", &["chr.jsonl"]).output().unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("7 accepted, 0 rejected"), "{said}");
    d
}

fn csv_rows(path: &Path) -> (Vec<String>, Vec<Vec<String>>) {
    let mut r = csv::Reader::from_path(path).unwrap();
    let header = r.headers().unwrap().iter().map(str::to_owned).collect();
    let rows = r
        .records()
        .map(|row| row.unwrap().iter().map(str::to_owned).collect())
        .collect();
    (header, rows)
}

/// `doorstep export --trust celt --format FORMAT --out OUT --reason REASON ARGS…`.
fn export(
    d: &Deployment,
    format: &str,
    out: &str,
    reason: &str,
    args: &[&str],
) -> std::process::Output {
    let head = [
        "--trust", "celt", "--format", format, "--out", out, "--reason", reason,
    ];
    d.command("export", &[&head[..], args].concat())
        .output()
        .unwrap()
}

const MARCH: [&str; 4] = ["--from", "2026-03-01", "--to", "2026-03-31"];

#[test]
fn a_childs_chronology_spans_two_schools_in_date_order_across_the_clock_change() {
    let d = two_schools();
    let child = [&["--pupil", CHILD][..], &MARCH].concat();
    let out = export(&d, "chronology", "chr.csv", "referral", &child);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (header, rows) = csv_rows(&d.path("chr.csv"));
    assert_eq!(header, doorstep::exporter::CHRONOLOGY_HEADER);
    let col = |name: &str| header.iter().position(|h| h == name).unwrap();
    let got: Vec<[&str; 5]> = rows
        .iter()
        .map(|r| {
            [
                r[col("date")].as_str(),
                r[col("time")].as_str(),
                r[col("school_urn")].as_str(),
                r[col("kind")].as_str(),
                r[col("record_id")].as_str(),
            ]
        })
        .collect();
    assert_eq!(
        got,
        vec![
            ["2026-03-10", "15:00", "136402", "visit_report", "chr-v2"],
            ["2026-03-29", "00:30", "136401", "visit_report", "chr-v1"],
            ["2026-03-29", "00:45", "136401", "incident", "chr-i1"],
            [
                "2026-03-29",
                "02:15",
                "136402",
                "safeguarding_flag",
                "chr-f1"
            ],
        ],
        "in date order, in the school's zone; the other child's records and the flag after \
         the period left out; the incident by its visit's pupil"
    );
    for r in &rows {
        assert_eq!(r[col("pupil_upn")], CHILD);
    }
    let flag = &rows[3];
    assert_eq!(flag[col("what")], "child_alone_unsupervised");
    assert_eq!(flag[col("urgency")], "immediate");
    let visit = &rows[1];
    assert_eq!(visit[col("what")], "safeguarding");
    assert_eq!(visit[col("child_seen")], "yes");
    let incident = &rows[2];
    assert_eq!(incident[col("what")], "animal");
    assert_eq!(incident[col("outcome")], "low");

    // The same chronology as one printable page: the rows in the same order, escaped, no
    // script and nothing fetched from elsewhere.
    let out = export(&d, "html", "chr.html", "case_review", &child);
    assert_eq!(out.status.code(), Some(0));
    let html = std::fs::read_to_string(d.path("chr.html")).unwrap();
    let at = |id: &str| {
        html.find(&format!("{id} r1"))
            .unwrap_or_else(|| panic!("{id}"))
    };
    assert!(
        at("chr-v2") < at("chr-v1") && at("chr-v1") < at("chr-i1") && at("chr-i1") < at("chr-f1")
    );
    assert!(!html.contains("chr-v3") && !html.contains("chr-f2"));
    assert!(
        html.contains("Penmorvah Academy (136401)")
            && html.contains("Trevarno Primary Academy (136402)")
    );
    assert!(html.contains("2026-03-01 to 2026-03-31"));
    assert!(html.contains("child-protection data"));
    let lower = html.to_lowercase();
    for banned in ["<script", "src=", "href=", "@import", "url("] {
        assert!(!lower.contains(banned), "{banned}");
    }
}

#[test]
fn every_format_holds_the_stored_records_field_by_field() {
    let d = two_schools();
    let period = ["--from", "2026-01-01", "--to", "2026-12-31"];
    let run = |format: &str, out: &str| {
        let o = export(&d, format, out, "migration", &period);
        assert_eq!(
            o.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    };

    // JSON lines: each line is the stored current revision, byte for byte.
    let said = run("jsonl", "all.jsonl");
    assert!(said.contains("wrote all.jsonl"), "{said}");
    assert!(
        said.contains("3 visit_report, 2 incident, 2 safeguarding_flag"),
        "{said}"
    );
    let text = std::fs::read_to_string(d.path("all.jsonl")).unwrap();
    let mut ids = Vec::new();
    for line in text.lines() {
        let v: Value = serde_json::from_str(line).unwrap();
        let kind = Kind::from_name(v["kind"].as_str().unwrap()).unwrap();
        let id = v["id"].as_str().unwrap();
        assert_eq!(line, stored(&d, "celt", kind, id), "{id}");
        ids.push(id.to_owned());
    }
    ids.sort();
    assert_eq!(
        ids,
        [
            "chr-f1", "chr-f2", "chr-i1", "chr-i3", "chr-v1", "chr-v2", "chr-v3"
        ]
    );

    // CSV: one file per kind, each cell the stored field.
    run("csv", "csv");
    let fields: &[(Kind, &str, Fields)] = &[
        (
            Kind::VisitReport,
            "visit_report.csv",
            &[
                ("record_id", "/id"),
                ("school_urn", "/school/urn"),
                ("pupil_upn", "/pupil/upn"),
                ("pupil_family_name", "/pupil/family_name"),
                ("purpose", "/purpose"),
                ("arrived_at", "/visit/arrived_at"),
                ("outcome", "/outcome"),
                ("child_seen", "/child_seen"),
                ("summary", "/summary"),
                ("recorded_at", "/recorded_at"),
            ],
        ),
        (
            Kind::Incident,
            "incident.csv",
            &[
                ("record_id", "/id"),
                ("visit_id", "/visit_id"),
                ("occurred_at", "/occurred_at"),
                ("type", "/type"),
                ("severity", "/severity"),
                ("description", "/description"),
                ("left_property", "/left_property"),
            ],
        ),
        (
            Kind::SafeguardingFlag,
            "safeguarding_flag.csv",
            &[
                ("record_id", "/id"),
                ("pupil_upn", "/pupil/upn"),
                ("raised_at", "/raised_at"),
                ("category", "/category"),
                ("urgency", "/urgency"),
                ("emergency_services_called", "/emergency_services_called"),
                ("description", "/description"),
            ],
        ),
    ];
    for (kind, file, checks) in fields {
        let path = d.path("csv").join(file);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{file}");
        let (header, rows) = csv_rows(&path);
        assert!(!rows.is_empty(), "{file}");
        let col = |name: &str| {
            header
                .iter()
                .position(|h| h == name)
                .unwrap_or_else(|| panic!("{file}: {name}"))
        };
        for row in &rows {
            let id = &row[col("record_id")];
            let text = stored(&d, "celt", *kind, id);
            let record: Value = serde_json::from_str(&text).unwrap();
            for (column, pointer) in *checks {
                let want = match record.pointer(pointer) {
                    Some(Value::String(s)) => s.clone(),
                    Some(Value::Bool(b)) => b.to_string(),
                    Some(v) => v.to_string(),
                    None => String::new(),
                };
                assert_eq!(row[col(column)], want, "{file} {id} {column}");
            }
            assert_eq!(
                row[col("content_hash")],
                hex::encode(Sha256::digest(text.as_bytes())),
                "{file} {id}"
            );
        }
    }

    // Every export is an `exported` event of each school: who, why, the format, counts —
    // never the pupil.
    let mut args = vec!["--trust", "celt", "--school", "136402", "--out", "bundle"];
    args.extend(period);
    d.run("audit export", &args).code(0);
    let leaves = leaves(&d.path("bundle"));
    let exports: Vec<&Value> = leaves
        .iter()
        .filter(|l| l["event"] == "exported" && l.get("format").is_some())
        .collect();
    assert_eq!(exports.len(), 2, "{leaves:?}");
    assert_eq!(exports[0]["format"], "jsonl");
    assert_eq!(exports[0]["reason"], "migration");
    assert_eq!(exports[0]["school"], "136402");
    assert_eq!(
        exports[0]["counts"],
        json!({"safeguarding_flag": 1, "visit_report": 1})
    );
    assert!(exports[0]["by"].as_str().unwrap().starts_with("os:"));
    assert_eq!(exports[1]["format"], "csv");
    for l in &leaves {
        let text = l.to_string();
        assert!(!text.contains(CHILD) && !text.contains("Gilbert"), "{text}");
    }
}

#[test]
fn formula_cells_are_neutralised_in_csv_and_chronology() {
    let d = Deployment::new();
    let mut v = celt_visit("f-v1", "136401", CHILD, "2026-03-10T15:00:00+00:00");
    v["summary"] = "=HYPERLINK(\"http://evil.example\",\"open\")".into();
    v["purpose_detail"] = "@SUM(A1:A9)".into();
    d.write("f.json", &v.to_string());
    d.run("ingest", &["f.json"]);
    for (format, out, file) in [
        ("csv", "csv", "csv/visit_report.csv"),
        ("chronology", "chr.csv", "chr.csv"),
    ] {
        let o = export(&d, format, out, "audit", &MARCH);
        assert_eq!(
            o.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&o.stderr)
        );
        let (header, rows) = csv_rows(&d.path(file));
        let col = |name: &str| header.iter().position(|h| h == name).unwrap();
        assert_eq!(
            rows[0][col("summary")],
            "'=HYPERLINK(\"http://evil.example\",\"open\")",
            "{file}"
        );
        if format == "csv" {
            assert_eq!(rows[0][col("purpose_detail")], "'@SUM(A1:A9)");
        }
    }
}

#[test]
fn bad_export_requests_are_usage_errors_and_leave_no_file() {
    let d = two_schools();
    for (args, says) in [
        (vec!["--pupil", "J908401221039"], "--pupil"),
        (vec!["--school", "999999"], "--school 999999"),
        (vec!["--from", "2026-04-01"], "after --to"),
    ] {
        let mut all = vec!["--to", "2026-03-31"];
        if !args.contains(&"--from") {
            all.extend(["--from", "2026-03-01"]);
        }
        all.extend(args);
        let o = export(&d, "jsonl", "x.jsonl", "referral", &all);
        assert_eq!(o.status.code(), Some(2));
        assert!(
            String::from_utf8_lossy(&o.stderr).contains(says),
            "{}",
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(!d.path("x.jsonl").exists());
    }
    let o = export(&d, "pdf", "x", "referral", &MARCH);
    assert_eq!(o.status.code(), Some(2));
    let o = export(&d, "jsonl", "x", "curiosity", &MARCH);
    assert_eq!(o.status.code(), Some(2));
    // Nothing half-written is left beside where it would have gone.
    let leftovers: Vec<_> = std::fs::read_dir(d.dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".part"))
        .collect();
    assert!(leftovers.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purge_spares_a_revision_still_retrying_and_every_proof_still_holds() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(body_string_contains("r-slow"))
        .respond_with(ResponseTemplate::new(503).set_body_string("busy"))
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .respond_with(created("T-1"))
        .mount(&server)
        .await;
    let mut d = api_deploy(&server, 2, 5.0, 100);
    d.max_wait(0.3);
    d.with_signing_key();
    let done = visit("r-done", 1, "Seen at the door.");
    let slow = visit("r-slow", 1, "Seen at the door.");
    d.drop_records("v.json", &[done.clone(), slow.clone()]);
    let run = d.sync().await;
    assert_eq!(run.count("delivered"), 1, "{:?}", run.lines);
    assert_eq!(run.count("retrying"), 1, "{:?}", run.lines);

    let purge = d
        .run_json("purge", &["--trust", "thrive", "--content-days", "0"])
        .await;
    assert_eq!(purge.code, 0, "{}", purge.stderr);
    assert_eq!(purge.lines[0]["purged"], 1, "{:?}", purge.lines);
    assert_eq!(
        stored(&d, "thrive", Kind::VisitReport, "r-done"),
        "",
        "purged"
    );
    assert_eq!(
        stored(&d, "thrive", Kind::VisitReport, "r-slow"),
        canonical_json(&slow),
        "a revision whose delivery is retrying keeps its content"
    );

    // Status, export and the auditor's bundle still work.
    let status = d.run_json("status", &[]).await;
    assert_eq!(status.code, 0);
    assert_eq!(status.summary()["purged"], 1, "{:?}", status.lines);
    assert_eq!(status.summary()["records"], 2);
    let o = d
        .command(
            "export",
            &[
                "--trust",
                "thrive",
                "--from",
                "2026-01-01",
                "--to",
                "2026-12-31",
                "--format",
                "jsonl",
                "--out",
                "after.jsonl",
                "--reason",
                "audit",
            ],
        )
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0));
    let text = std::fs::read_to_string(d.path("after.jsonl")).unwrap();
    assert!(
        text.contains("r-slow") && !text.contains("r-done"),
        "{text}"
    );
    assert!(
        String::from_utf8_lossy(&o.stdout)
            .contains("1 record(s) received in the period are purged")
    );

    let bundle = |out: &str| {
        d.run(
            "audit export",
            &[
                "--trust",
                "thrive",
                "--school",
                "117800",
                "--from",
                "2026-01-01",
                "--to",
                "2099-12-31",
                "--out",
                out,
            ],
        )
        .code(0);
        d.path(out)
    };
    let dir = bundle("bundle");
    let listed = std::fs::read_to_string(dir.join("purged.csv")).unwrap();
    assert!(
        listed.contains("r-done") && !listed.contains("r-slow"),
        "{listed}"
    );
    let hash = hex::encode(Sha256::digest(canonical_json(&done).as_bytes()));
    assert!(listed.contains(&hash), "listed by content hash");
    let v = harness::doorstep()
        .args(["audit", "verify"])
        .arg(&dir)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&v.stdout).into_owned();
    assert_eq!(
        v.status.code(),
        Some(0),
        "{said}{}",
        String::from_utf8_lossy(&v.stderr)
    );
    assert!(said.contains("1 purged from the store"), "{said}");
    assert!(said.contains("visit_report r-done revision 1"), "{said}");
    let v = harness::doorstep()
        .args(["audit", "verify", "--require-content"])
        .arg(&dir)
        .output()
        .unwrap();
    assert_eq!(
        v.status.code(),
        Some(1),
        "a pack cannot show purged content"
    );

    // A stub claiming another hash is caught.
    let records = std::fs::read_to_string(dir.join("records.json")).unwrap();
    let forged = records.replace(&hash, &"0".repeat(64));
    assert_ne!(forged, records);
    std::fs::write(dir.join("records.json"), forged).unwrap();
    let v = harness::doorstep()
        .args(["audit", "verify"])
        .arg(&dir)
        .output()
        .unwrap();
    assert_eq!(v.status.code(), Some(1));

    // The record as the MIS holds it is still proven received; one byte changed is not.
    d.write("held.json", &serde_json::to_string_pretty(&done).unwrap());
    d.run("audit prove", &["--record", "held.json"]).code(0);
    let mut changed = done.clone();
    changed["summary"] = "Seen at the door!".into();
    d.write(
        "changed.json",
        &serde_json::to_string_pretty(&changed).unwrap(),
    );
    d.run("audit prove", &["--record", "changed.json"]).code(1);

    // The purge is in the trail: a `purged` event with the content hash.
    let leaves = leaves(&dir);
    let purged: Vec<&Value> = leaves.iter().filter(|l| l["event"] == "purged").collect();
    assert_eq!(purged.len(), 1);
    assert_eq!(purged[0]["record_id"], "r-done");
    assert_eq!(purged[0]["content_hash"], hash.as_str());

    // Once the slow delivery gets through, the next purge takes it too; nothing twice.
    server.reset().await;
    Mock::given(method("POST"))
        .respond_with(created("T-2"))
        .mount(&server)
        .await;
    d.max_wait(5.0);
    let run = d.sync().await;
    assert_eq!(run.code, 0, "{:?} {}", run.lines, run.stderr);
    let purge = d
        .run_json("purge", &["--trust", "thrive", "--content-days", "0"])
        .await;
    assert_eq!(purge.lines[0]["purged"], 1, "{:?}", purge.lines);
    // No byte of either record's text is left anywhere in the store's files: emptied
    // cells are overwritten (secure_delete), and the log is checkpointed at close.
    for file in std::fs::read_dir(d.db().parent().unwrap()).unwrap() {
        let path = file.unwrap().path();
        if path.to_string_lossy().contains("doorstep.db") {
            let bytes = std::fs::read(&path).unwrap();
            let text = String::from_utf8_lossy(&bytes);
            assert!(!text.contains("Seen at the door"), "{}", path.display());
            assert!(
                !text.contains("R810229121001"),
                "the UPN, in {}",
                path.display()
            );
        }
    }
    let purge = d
        .run_json(
            "purge",
            &["--trust", "thrive", "--content-days", "0", "--vacuum"],
        )
        .await;
    assert_eq!(purge.code, 0, "{}", purge.stderr);
    assert_eq!(purge.lines[0]["purged"], 0, "nothing twice");
}

#[test]
fn retention_in_trust_toml_keeps_what_is_younger() {
    let d = two_schools();
    // Nothing routed yet: nothing can be purged, whatever the days.
    let o = d
        .command("purge", &["--content-days", "0"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&o.stdout).contains("trust celt: purged the content of 0"));
    // A trust's own setting is read; an absurd one is refused naming the key.
    let trust = std::fs::read_to_string(harness::root().join("mappings/celt/trust.toml")).unwrap();
    let copy = Deployment::copy_of("mappings");
    copy.write(
        "mappings/celt/trust.toml",
        &format!("{trust}\n[retention]\ncontent_days = 99999\n"),
    );
    let o = copy.command("purge", &[]).output().unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("retention.content_days"));
    copy.write(
        "mappings/celt/trust.toml",
        &format!("{trust}\n[retention]\ncontent_days = 90\n"),
    );
    let o = copy.command("purge", &[]).output().unwrap();
    assert_eq!(o.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&o.stdout).contains("(content_days = 90)"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_exports_for_export_keys_only_and_purges_daily() {
    use crate::serve::{Server, deployment, new_key};
    let target = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(created("T-9"))
        .mount(&target)
        .await;
    let (mut d, write_key, _) = deployment(&target);
    d.with_signing_key();
    let (export_key, export_id) =
        new_key(&d, &["--trust", "thrive", "--school", "117800", "--export"]);
    let trust = std::fs::read_to_string(d.path("mappings/thrive/trust.toml")).unwrap();
    // Kept a day: nothing just delivered expires while the export is tried.
    d.write(
        "mappings/thrive/trust.toml",
        &format!("{trust}\n[retention]\ncontent_days = 1\n"),
    );
    d.add_config("[retention]\npurge_seconds = 1\n");
    let record = visit("r-http", 1, "Seen; all well.");
    let mut server = Server::start(&d);
    let url = server.url.clone();
    let http = reqwest::Client::new();
    let posted = http
        .post(format!("{url}/v1/records"))
        .bearer_auth(&write_key)
        .json(&record)
        .send()
        .await
        .unwrap();
    assert_eq!(posted.status(), 200);
    let until = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while target.received_requests().await.unwrap().is_empty() {
        assert!(std::time::Instant::now() < until, "never delivered");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }

    let get = |key: String, query: &str| {
        let (http, url, query) = (http.clone(), url.clone(), query.to_owned());
        async move {
            let r = http
                .get(format!("{url}/v1/export?{query}"))
                .bearer_auth(key)
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            let headers = r.headers().clone();
            (status, headers, r.text().await.unwrap())
        }
    };
    let q = "trust=thrive&from=2026-01-01&to=2026-12-31&reason=referral";
    let (status, _, body) = get(write_key.clone(), &format!("{q}&format=jsonl")).await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("key-scope"));
    let (status, headers, body) = get(export_key.clone(), &format!("{q}&format=jsonl")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(headers["content-type"], "application/x-ndjson");
    assert_eq!(headers["cache-control"], "no-store");
    assert_eq!(body, format!("{}\n", canonical_json(&record)));
    let (status, headers, body) = get(export_key.clone(), &format!("{q}&format=html")).await;
    assert_eq!(status, 200);
    assert!(
        headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    assert!(body.contains("r-http r1") && body.contains("child-protection data"));
    // The trust may be left out (a key has one); schools may be comma-separated.
    let (status, _, body) = get(
        export_key.clone(),
        "from=2026-01-01&to=2026-12-31&reason=audit&format=jsonl&school=117800,",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, format!("{}\n", canonical_json(&record)));
    let (status, _, body) = get(export_key.clone(), &format!("{q}&format=csv")).await;
    assert_eq!(status, 400);
    assert!(body.contains("/query/kind"), "{body}");
    let (status, _, body) = get(
        export_key.clone(),
        &format!("{q}&format=csv&kind=visit_report"),
    )
    .await;
    assert_eq!(status, 200);
    assert!(body.starts_with("record_id,revision,school_urn"), "{body}");
    for other in [
        "trust=celt&from=2026-01-01&to=2026-12-31&reason=referral&format=jsonl",
        &format!("{q}&format=jsonl&school=117801"),
    ] {
        let (status, _, _) = get(export_key.clone(), other).await;
        assert_eq!(status, 404, "{other}");
    }
    // Nothing of the exports stays on disk.
    let left: Vec<_> = std::fs::read_dir(d.path(".doorstep-exports"))
        .map(|r| r.filter_map(|e| e.ok()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "{left:?}");
    assert_eq!(server.terminate(), Some(0));
    assert_eq!(
        stored(&d, "thrive", Kind::VisitReport, "r-http"),
        canonical_json(&record),
        "delivered a moment ago: kept for the trust's day"
    );

    // The trust keeps nothing once delivered: the next start purges it.
    d.write(
        "mappings/thrive/trust.toml",
        &format!("{trust}\n[retention]\ncontent_days = 0\n"),
    );
    let mut server = Server::start(&d);
    let until = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !stored(&d, "thrive", Kind::VisitReport, "r-http").is_empty() {
        assert!(std::time::Instant::now() < until, "never purged");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(server.terminate(), Some(0));
    // The exports are in the trail under the key's id.
    let out = d
        .command(
            "audit export",
            &[
                "--trust",
                "thrive",
                "--school",
                "117800",
                "--from",
                "2026-01-01",
                "--to",
                "2099-12-31",
                "--out",
                "b",
            ],
        )
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let leaves = leaves(&d.path("b"));
    let by_key = leaves
        .iter()
        .filter(|l| l["by"] == format!("key:{export_id}").as_str())
        .count();
    assert_eq!(by_key, 4, "four exports answered 200");
    assert_eq!(leaves.iter().filter(|l| l["event"] == "purged").count(), 1);
}
