//! The evidence trail: RFC 6962 / transparency-dev vectors, proofs for random trees, a
//! tamper suite over a real exported bundle, and no personal data in any leaf.

use std::path::{Path, PathBuf};

use doorstep::audit::bundle::{self, VerifyFailure};
use doorstep::audit::tree::{self, Hash};
use proptest::prelude::*;
use sha2::Sha256;

use crate::harness;

// ---- Known answers -------------------------------------------------------------------
// Leaves and expected proofs copied from transparency-dev/merkle, testonly/reference_test.go
// (commit e739733c8ca2b89cfc49f35b161e81e16b5957d7), the RFC 6962 reference vectors.

const LEAVES: &[&str] = &[
    "",
    "00",
    "10",
    "2021",
    "3031",
    "40414243",
    "5051525354555657",
    "606162636465666768696a6b6c6d6e6f",
];

const INCLUSION: &[(u64, u64, &str)] = &[
    (1, 0, ""),
    (
        2,
        0,
        "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
    ),
    (
        2,
        1,
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    ),
    (
        3,
        2,
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    ),
    (
        5,
        1,
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031ebc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
    ),
    (
        8,
        0,
        "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc75f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
    ),
    (
        8,
        5,
        "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6bca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    ),
];

const CONSISTENCY: &[(u64, u64, &str)] = &[
    (1, 1, ""),
    (
        1,
        8,
        "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc75f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
    ),
    (
        2,
        5,
        "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031ebc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
    ),
    (
        6,
        8,
        "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6aca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    ),
];

/// Tree roots of the first n of LEAVES (same source, RFC 6962 §2.1 vectors).
const ROOTS: &[(u64, &str)] = &[
    (
        1,
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    ),
    (
        2,
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    ),
    (
        8,
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
    ),
];

fn stored_tree(leaves: &[Vec<u8>], steps: usize) -> tree::MemoryTree {
    let hashes: Vec<Hash> = leaves.iter().map(|l| tree::leaf_hash(l)).collect();
    let mut t = tree::MemoryTree::default();
    // Built in several appends, as ingest batches do.
    for chunk in hashes.chunks((leaves.len() / steps).max(1)) {
        t.append(chunk).unwrap();
    }
    t
}

fn proof_of(t: &tree::MemoryTree, ranges: &[(u64, u64)]) -> Vec<Hash> {
    tree::assemble(ranges, &t.nodes(&tree::nodes_for(ranges))).unwrap()
}

#[test]
fn rfc6962_vectors() {
    let leaves: Vec<Vec<u8>> = LEAVES.iter().map(|l| hex::decode(l).unwrap()).collect();
    let t = stored_tree(&leaves, 3);
    for &(n, want) in ROOTS {
        assert_eq!(hex::encode(t.root(n).unwrap()), want, "root of {n}");
    }
    for &(n, m, want) in INCLUSION {
        let proof = proof_of(&t, &tree::inclusion_ranges(m, n));
        assert_eq!(hex::encode(proof.concat()), want, "inclusion of {m} in {n}");
    }
    for &(m, n, want) in CONSISTENCY {
        let proof = proof_of(&t, &tree::consistency_ranges(m, n));
        assert_eq!(hex::encode(proof.concat()), want, "consistency {m} to {n}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    /// Proofs built from stored nodes verify with an independent verifier (ct-merkle), and a
    /// proof for one index does not verify another.
    #[test]
    fn proofs_verify_for_random_sizes(n in 1u64..400, m_seed in any::<u64>(), old_seed in any::<u64>(), steps in 1usize..5) {
        let leaves: Vec<Vec<u8>> = (0..n).map(|i| format!("leaf {i}").into_bytes()).collect();
        let t = stored_tree(&leaves, steps);
        let m = m_seed % n;
        let r = ct_merkle::RootHash::<Sha256>::new(t.root(n).unwrap().into(), n);
        let proof = proof_of(&t, &tree::inclusion_ranges(m, n)).concat();
        let proof = ct_merkle::InclusionProof::<Sha256>::try_from_bytes(proof).unwrap();
        prop_assert!(r.verify_inclusion(&leaves[m as usize], m, &proof).is_ok());
        if n > 1 {
            let other = (m + 1) % n;
            prop_assert!(r.verify_inclusion(&leaves[other as usize], m, &proof).is_err());
        }
        // The remembering verifier agrees: every leaf, in a scrambled order, then a forgery.
        // Every node of every proof read at once, as an export does.
        let every: Vec<(u64, u64)> = (0..n).flat_map(|i| tree::inclusion_ranges(i, n)).collect();
        let nodes = t.nodes(&tree::nodes_for(&every));
        let mut proven = tree::ProofVerifier::new(t.root(n).unwrap(), n);
        for k in 0..n {
            let i = (k * 7 + m) % n;
            let p = tree::assemble(&tree::inclusion_ranges(i, n), &nodes).unwrap();
            prop_assert!(proven.verify(i, &leaves[i as usize], p.as_slice()).is_ok(), "leaf {} of {}", i, n);
        }
        let p = proof_of(&t, &tree::inclusion_ranges(m, n));
        prop_assert!(proven.verify(m, b"forged", p.as_slice()).is_err());
        if let Some(first) = p.first() {
            let mut bad = p.clone();
            bad[0] = [first[0] ^ 1; 32];
            let mut fresh = tree::ProofVerifier::new(t.root(n).unwrap(), n);
            prop_assert!(fresh.verify(m, &leaves[m as usize], bad.as_slice()).is_err());
        }
        let old = 1 + old_seed % n;
        let old_root = ct_merkle::RootHash::<Sha256>::new(t.root(old).unwrap().into(), old);
        let cproof = proof_of(&t, &tree::consistency_ranges(old, n)).concat();
        let cproof = ct_merkle::ConsistencyProof::<Sha256>::try_from_bytes(cproof).unwrap();
        prop_assert!(r.verify_consistency(&old_root, &cproof).is_ok());
    }
}

// ---- A real bundle ---------------------------------------------------------------------

struct Exported {
    _d: harness::Deployment,
    bundle: PathBuf,
    verifier: String,
}

/// Ingests the valid and policy fixtures, with a signing key, and exports CELT school 136401.
fn exported(pseudonymise: bool) -> Exported {
    let mut d = harness::Deployment::new();
    let verifier = d.with_signing_key();
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(d.path("keys/log.key"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(
        mode & 0o777,
        0o600,
        "the private key is readable by its owner only"
    );
    // The verifier key is PATH.pub, as the README says: keys/log.key.pub, not keys/log.pub.
    let public = std::fs::read_to_string(d.path("keys/log.key.pub")).unwrap();
    assert_eq!(public.trim(), verifier);
    assert!(!d.path("keys/log.pub").exists());
    for dir in ["valid", "policy/celt"] {
        d.run("ingest", &[harness::fixture(dir).to_str().unwrap()])
            .code(0);
    }
    // A later revision, so that an exception is resolved too.
    let mut v = harness::read_fixture("policy/celt/08-no-buddy.json");
    v["revision"] = serde_json::json!(2);
    v["buddy"] =
        serde_json::json!({"staff_id": "PEN-050", "name": "Tom Rowe", "code_word_agreed": true});
    std::fs::write(d.path("rev2.json"), v.to_string()).unwrap();
    d.run("ingest", &["rev2.json"]).code(0);
    // Deliver them: CSV logs written, the paused webhooks' deliveries held.
    d.run("sync", &[]).code(0);
    let mut args = vec![
        "--trust",
        "celt",
        "--school",
        "136401",
        "--from",
        "2026-01-01",
        "--to",
        "2030-12-31",
        "--out",
        "bundle",
    ];
    if pseudonymise {
        args.push("--pseudonymise");
    }
    d.run("audit export", &args).code(0);
    let bundle = d.path("bundle");
    Exported {
        _d: d,
        bundle,
        verifier,
    }
}

fn copy_bundle(from: &Path) -> tempfile::TempDir {
    let to = tempfile::tempdir().unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.path().join(e.file_name())).unwrap();
    }
    to
}

fn edit(dir: &Path, file: &str, f: impl FnOnce(String) -> String) {
    let p = dir.join(file);
    let text = std::fs::read_to_string(&p).unwrap();
    let new = f(text.clone());
    assert_ne!(text, new, "the edit of {file} changed nothing");
    std::fs::write(p, new).unwrap();
}

/// Changes one character of line `n` (1-based) at byte `at` of that line.
fn flip_char(text: &str, n: usize, at: usize) -> String {
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    let line = &mut lines[n - 1];
    let at = at.min(line.len() - 1);
    let c = line.as_bytes()[at];
    // Never a change of case only: hex digits decode the same in either case.
    let replacement = match c {
        b'0' => '1',
        b'1'..=b'9' | b'a'..=b'f' => '0',
        b'A' => 'B',
        _ => 'A',
    };
    line.replace_range(at..at + 1, &replacement.to_string());
    lines.join("\n") + "\n"
}

fn failure(dir: &Path) -> VerifyFailure {
    bundle::verify(dir, &bundle::VerifyOptions::default(), &bundle::Quiet)
        .expect_err("the tampered bundle must not verify")
}

#[test]
fn an_exported_bundle_verifies_and_every_tamper_is_caught() {
    let e = exported(false);
    let report =
        bundle::verify(&e.bundle, &bundle::VerifyOptions::default(), &bundle::Quiet).unwrap();
    assert!(report.entries > 20, "{report:?}");
    assert!(report.records > 10);
    // The same with the trust's key given, which the report then says.
    let with_key = bundle::verify(
        &e.bundle,
        &bundle::VerifyOptions {
            key: Some(&e.verifier),
            ..Default::default()
        },
        &bundle::Quiet,
    )
    .unwrap();
    assert!(with_key.key_given && !report.key_given);
    assert_eq!(
        bundle::VerifyReport {
            key_given: false,
            ..with_key
        },
        report
    );
    // The CLI agrees, with and without a key.
    harness::doorstep()
        .args(["audit", "verify"])
        .arg(&e.bundle)
        .assert()
        .code(0);
    harness::doorstep()
        .args(["audit", "verify", "--key", &e.verifier])
        .arg(&e.bundle)
        .assert()
        .code(0);
    let entries = std::fs::read_to_string(e.bundle.join("entries.jsonl")).unwrap();
    assert!(entries.contains("\"proof\":[\""));

    let case = |name: &str, tamper: &dyn Fn(&Path), want_what: &str| {
        let dir = copy_bundle(&e.bundle);
        tamper(dir.path());
        let f = failure(dir.path());
        assert!(f.what.contains(want_what), "{name}: got {f}");
        // The CLI names it too and exits 1.
        let out = harness::doorstep()
            .args(["audit", "verify"])
            .arg(dir.path())
            .assert()
            .code(1)
            .get_output()
            .stdout
            .clone();
        assert!(String::from_utf8_lossy(&out).contains(want_what), "{name}");
    };
    // Leaves and proofs: the entry is named.
    case(
        "leaf byte",
        &|d| edit(d, "entries.jsonl", |t| flip_char(&t, 3, 40)),
        "line 3 (entry",
    );
    case(
        "proof byte",
        &|d| {
            edit(d, "entries.jsonl", |t| {
                let at = t.lines().nth(1).unwrap().find("\"proof\":[\"").unwrap() + 12;
                flip_char(&t, 2, at)
            })
        },
        "line 2 (entry",
    );
    // The top hash of a proof whose neighbour's proof already reached the same nodes.
    case(
        "last proof byte",
        &|d| {
            edit(d, "entries.jsonl", |t| {
                let at = t.lines().nth(2).unwrap().rfind("\"]").unwrap() - 5;
                flip_char(&t, 3, at)
            })
        },
        "line 3 (entry",
    );
    case(
        "reorder",
        &|d| {
            edit(d, "entries.jsonl", |t| {
                let mut l: Vec<&str> = t.lines().collect();
                l.swap(4, 5);
                l.join("\n") + "\n"
            })
        },
        // Line 5 now skips a sequence number (line 6 then goes back in index order).
        "line 5 (entry",
    );
    case(
        "drop an entry",
        &|d| {
            edit(d, "entries.jsonl", |t| {
                let mut l: Vec<&str> = t.lines().collect();
                l.remove(7);
                l.join("\n") + "\n"
            })
        },
        "entries.jsonl",
    );
    // The checkpoint: any line, or the signature; or another key.
    for (line, what) in [(1, "origin"), (2, "size"), (3, "root"), (5, "signature")] {
        case(
            what,
            &|d| {
                edit(d, "checkpoint", |t| {
                    flip_char(&t, line, if line == 5 { 30 } else { 3 })
                })
            },
            "checkpoint",
        );
    }
    case(
        "swap the key",
        &|d| {
            let other = doorstep::audit::NoteSigner::generate("trail.example").unwrap();
            std::fs::write(d.join("log.pub"), other.verifier().to_text() + "\n").unwrap();
        },
        "checkpoint",
    );
    // Records and CSV files.
    case(
        "record byte",
        &|d| {
            edit(d, "records.json", |t| {
                t.replacen(
                    "\"outcome\":\"completed\"",
                    "\"outcome\":\"no_one_home\"",
                    1,
                )
            })
        },
        "records.json record",
    );
    case(
        "drop a record",
        &|d| {
            edit(d, "records.json", |t| {
                let mut v: Vec<serde_json::Value> = serde_json::from_str(&t).unwrap();
                v.remove(0);
                serde_json::to_string(&v).unwrap()
            })
        },
        "records.json",
    );
    // Re-formatted records still read (and match their hashes), but the file is not the one
    // the manifest hashed.
    let reformatted = copy_bundle(&e.bundle);
    edit(reformatted.path(), "records.json", |t| {
        let v: serde_json::Value = serde_json::from_str(&t).unwrap();
        serde_json::to_string_pretty(&v).unwrap()
    });
    let f = failure(reformatted.path());
    assert_eq!(
        (f.what.as_str(), f.reason.as_str()),
        ("records.json", "its SHA-256 differs from the manifest's")
    );
    for file in ["records.csv", "exceptions.csv", "deliveries.csv"] {
        case(file, &|d| edit(d, file, |t| t.replacen(',', ";", 1)), file);
    }
    // The manifest: a file's hash, the school, the size, the pseudonymised flag.
    case(
        "manifest file hash",
        &|d| {
            edit(d, "manifest.json", |t| {
                let i = t.find("\"records.csv\": \"").unwrap() + 17;
                let mut s = t.clone();
                s.replace_range(i..i + 1, if &t[i..i + 1] == "0" { "1" } else { "0" });
                s
            })
        },
        "records.csv",
    );
    case(
        "manifest school",
        &|d| {
            edit(d, "manifest.json", |t| {
                t.replace("\"school\": \"136401\"", "\"school\": \"136402\"")
            })
        },
        "entries.jsonl line 1",
    );
    case(
        "manifest size",
        &|d| {
            edit(d, "manifest.json", |t| {
                t.replace("\"tree_size\": ", "\"tree_size\": 1")
            })
        },
        "manifest.json",
    );
    case(
        "manifest pseudonymised",
        &|d| {
            edit(d, "manifest.json", |t| {
                t.replace("\"pseudonymised\": false", "\"pseudonymised\": true")
            })
        },
        "records.json record",
    );
}

#[test]
fn a_bundle_carries_every_delivery_attempt_and_its_events() {
    use base64::Engine as _;
    let e = exported(false);
    let csv = std::fs::read_to_string(e.bundle.join("deliveries.csv")).unwrap();
    let mut lines = csv.lines();
    assert_eq!(
        lines.next(),
        Some("destination,kind,record_id,revision,attempt,at,outcome,status,error,state,target_id")
    );
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split(',').collect()).collect();
    let delivered = rows
        .iter()
        .filter(|r| {
            r[0] == "contact_log" && r[4] == "1" && r[6] == "delivered" && r[9] == "delivered"
        })
        .count();
    assert!(
        delivered > 0,
        "attempts to the contact log, delivered: {csv}"
    );
    assert!(
        rows.iter()
            .any(|r| r[0] == "cpoms" && r[4].is_empty() && r[9] == "pending"),
        "a delivery never attempted (paused destination) is listed with its state: {csv}"
    );
    let entries = std::fs::read_to_string(e.bundle.join("entries.jsonl")).unwrap();
    let delivered_events = entries
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .map(|v| {
            let leaf = base64::engine::general_purpose::STANDARD
                .decode(v["leaf"].as_str().unwrap())
                .unwrap();
            serde_json::from_slice::<serde_json::Value>(&leaf).unwrap()
        })
        .filter(|ev| ev["event"] == "delivered" && ev["state"] == "delivered")
        .count();
    let delivered_attempts = rows.iter().filter(|r| r[6] == "delivered").count();
    assert_eq!(
        delivered_events, delivered_attempts,
        "one `delivered` trail event per delivered attempt of the school's records"
    );
    bundle::verify(&e.bundle, &bundle::VerifyOptions::default(), &bundle::Quiet).unwrap();
}

#[test]
fn a_pseudonymised_bundle_hides_names_and_still_verifies() {
    let e = exported(true);
    bundle::verify(&e.bundle, &bundle::VerifyOptions::default(), &bundle::Quiet).unwrap();
    let records = std::fs::read_to_string(e.bundle.join("records.json")).unwrap();
    for name in [
        "Mark Pascoe",
        "Rachel Tonkin",
        "Chapel Street",
        "TR7 1XX",
        "07700 900123",
    ] {
        assert!(
            !records.contains(name),
            "{name} left in a pseudonymised export"
        );
    }
    assert!(records.contains(bundle::PSEUDONYM_PREFIX));
    // Consistent within one export: the same staff member has one pseudonym everywhere.
    let v: Vec<serde_json::Value> = serde_json::from_str(&records).unwrap();
    let leads: std::collections::BTreeSet<&str> = v
        .iter()
        .filter(|r| r["kind"] == "visit_report" && r["staff"][0]["staff_id"] == "PEN-040")
        .map(|r| r["staff"][0]["name"].as_str().unwrap())
        .collect();
    assert_eq!(leads.len(), 1, "{leads:?}");
    let csv = std::fs::read_to_string(e.bundle.join("records.csv")).unwrap();
    assert!(
        !csv.contains("H908"),
        "UPNs are pseudonymised in records.csv"
    );
}

/// No leaf of a full fixture run carries a personal value: names, addresses, descriptions,
/// summaries, dates of birth, phone numbers, UPNs.
#[test]
fn no_leaf_carries_personal_data() {
    let e = exported(false);
    let entries = std::fs::read_to_string(e.bundle.join("entries.jsonl")).unwrap();
    let mut leaves = String::new();
    use base64::Engine as _;
    for line in entries.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let leaf = base64::engine::general_purpose::STANDARD
            .decode(v["leaf"].as_str().unwrap())
            .unwrap();
        leaves.push_str(&String::from_utf8(leaf).unwrap());
        leaves.push('\n');
    }
    let mut personal = std::collections::BTreeSet::new();
    let records: Vec<serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(e.bundle.join("records.json")).unwrap())
            .unwrap();
    fn collect(
        v: &serde_json::Value,
        personal_key: bool,
        out: &mut std::collections::BTreeSet<String>,
    ) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, c) in m {
                    let p = personal_key
                        || [
                            "given_name",
                            "family_name",
                            "date_of_birth",
                            "upn",
                            "name",
                            "address",
                            "staff_mobiles",
                            "summary",
                            "description",
                            "vehicle_registration",
                            "expected_to_see",
                            "purpose_detail",
                            "emergency_reason",
                        ]
                        .contains(&k.as_str());
                    collect(c, p, out);
                }
            }
            serde_json::Value::Array(a) => a.iter().for_each(|i| collect(i, personal_key, out)),
            serde_json::Value::String(s) if personal_key && s.len() > 3 => {
                out.insert(s.clone());
            }
            _ => {}
        }
    }
    for r in &records {
        collect(r, false, &mut personal);
    }
    assert!(personal.len() > 20);
    for value in &personal {
        assert!(!leaves.contains(value.as_str()), "a leaf carries {value:?}");
    }
}

#[test]
fn checkpoint_and_consistency_from_the_cli() {
    let mut d = harness::Deployment::new();
    d.add_config("[audit]\nsigning_key = { env = \"DOORSTEP_TEST_KEY\" }\n");
    let key = doorstep::audit::NoteSigner::generate("trail.example").unwrap();
    let run = |args: &[&str]| {
        harness::doorstep()
            .current_dir(d.dir.path())
            .env("DOORSTEP_TEST_KEY", key.to_text())
            .args(args)
            .arg("--config")
            .arg(d.config())
            .assert()
    };
    run(&["ingest", harness::fixture("policy/celt").to_str().unwrap()]).code(0);
    let old = run(&["audit", "checkpoint", "--trust", "celt"])
        .code(0)
        .get_output()
        .stdout
        .clone();
    std::fs::write(d.path("old.note"), &old).unwrap();
    run(&["ingest", harness::fixture("valid").to_str().unwrap()]).code(0);
    let new = run(&["audit", "checkpoint", "--trust", "celt"])
        .code(0)
        .get_output()
        .stdout
        .clone();
    std::fs::write(d.path("new.note"), &new).unwrap();
    let text = String::from_utf8(new.clone()).unwrap();
    assert!(text.starts_with("trail.example/celt\n"), "{text}");
    let out = run(&["audit", "consistency", "old.note", "new.note"])
        .code(0)
        .get_output()
        .stdout
        .clone();
    assert!(String::from_utf8_lossy(&out).starts_with("consistent"));
    // Backwards is not a consistency proof.
    run(&["audit", "consistency", "new.note", "old.note"]).code(1);
    // Without a signing key, export and checkpoint are config errors.
    harness::doorstep()
        .current_dir(d.dir.path())
        .args(["audit", "checkpoint", "--config"])
        .arg(d.config())
        .assert()
        .code(2);
}

/// A signing key group or others can read is refused, as ssh refuses an open private key,
/// unless DOORSTEP_ALLOW_OPEN_SECRETS=1 says otherwise.
#[test]
fn an_open_signing_key_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let mut d = harness::Deployment::new();
    d.add_config("[audit]\nsigning_key = { file = \"keys/log.key\" }\n");
    d.run("audit keygen", &["--out", "keys/log.key"]).code(0);
    std::fs::set_permissions(
        d.path("keys/log.key"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let out = d.run("audit checkpoint", &[]).code(2).get_output().clone();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("readable by group or others (mode 644)"),
        "{err}"
    );
    assert!(out.stdout.is_empty());
    // Allowed, the key is read: nothing is logged yet, so there is no checkpoint to sign.
    d.env("DOORSTEP_ALLOW_OPEN_SECRETS", "1");
    let out = d.run("audit checkpoint", &[]).code(1).get_output().clone();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no evidence-trail log yet"), "{err}");
}
