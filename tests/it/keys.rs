//! API keys (SPEC §6): made by `doorstep keys create`, shown once, kept as a public id and a
//! hash; listed without a secret; revoked by id; checked against a real SQLite store.

use doorstep::keys::{KeyError, authenticate};
use doorstep::store::SqliteStore;
use doorstep::store::keys::KeyStore;
use serde_json::Value;

use crate::harness::{Deployment, json_lines};

fn create(d: &Deployment, args: &[&str]) -> Value {
    let mut all = vec!["--format", "json"];
    all.extend_from_slice(args);
    let out = d.run("keys create", &all).code(0).get_output().clone();
    let lines = json_lines(&out.stdout);
    assert_eq!(lines.len(), 1, "{lines:?}");
    lines[0].clone()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_key_is_shown_once_kept_as_a_hash_and_revoked_by_id() {
    let d = Deployment::new();
    let made = create(
        &d,
        &[
            "--trust",
            "celt",
            "--school",
            "136401",
            "--name",
            "visit app",
        ],
    );
    let key = made["key"].as_str().unwrap().to_owned();
    let id = made["id"].as_str().unwrap().to_owned();
    assert!(key.starts_with(&format!("dsk_{id}_")), "{made}");
    assert_eq!(made["scope"], "write");
    let secret = key[format!("dsk_{id}_").len()..].to_owned();
    assert!(secret.len() >= 43, "256 bits: {secret}");

    // Listed by id, never with the key or its secret; not in the store's file either.
    let out = d
        .run("keys list", &["--format", "json"])
        .code(0)
        .get_output()
        .clone();
    let listed = String::from_utf8(out.stdout).unwrap();
    assert!(
        listed.contains(&id) && listed.contains("visit app"),
        "{listed}"
    );
    assert!(
        !listed.contains(&secret) && !listed.contains("secret_hash"),
        "{listed}"
    );
    assert!(!String::from_utf8_lossy(&std::fs::read(d.db()).unwrap()).contains(&secret));

    // The store checks it: right key, wrong secret, unknown id, then revoked.
    let store = SqliteStore::open(&d.db()).await.unwrap();
    let k = authenticate(&store, &key).await.unwrap();
    assert!(k.reaches("celt", "136401") && !k.reaches("celt", "136402"));
    let wrong = format!(
        "{}{}",
        &key[..key.len() - 1],
        if key.ends_with('A') { 'B' } else { 'A' }
    );
    assert!(matches!(
        authenticate(&store, &wrong).await,
        Err(KeyError::Invalid)
    ));
    let unknown = key.replace(&id, "000000000000");
    assert!(matches!(
        authenticate(&store, &unknown).await,
        Err(KeyError::Invalid)
    ));
    store.close().await;

    d.run("keys revoke", &[&id]).code(0);
    d.run("keys revoke", &[&id]).code(1);
    let store = SqliteStore::open(&d.db()).await.unwrap();
    assert!(matches!(authenticate(&store, &key).await, Err(KeyError::Revoked(r)) if r == id));
    let listed = store.key_list().await.unwrap();
    assert!(listed[0].revoked_at.is_some());
    store.close().await;
}

#[test]
fn a_key_reaches_only_a_trusts_own_schools_and_says_its_scope() {
    let d = Deployment::new();
    let read = create(
        &d,
        &[
            "--trust",
            "celt",
            "--school",
            "136401",
            "--school",
            "136402",
            "--read-only",
        ],
    );
    assert_eq!(read["scope"], "read-only");
    assert_eq!(read["schools"], serde_json::json!(["136401", "136402"]));
    let export = create(&d, &["--trust", "celt", "--school", "136401", "--export"]);
    assert_eq!(export["scope"], "export");
    for (args, says) in [
        (
            vec!["--trust", "nowhere", "--school", "136401"],
            "no trust `nowhere`",
        ),
        (
            vec!["--trust", "celt", "--school", "117800"],
            "school 117800 is not in",
        ),
    ] {
        let out = d.run("keys create", &args).code(2).get_output().clone();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(says), "{args:?}: {err}");
    }
}
