//! The store's contract: one suite, generic over the back end, that every store must pass
//! — SQLite and PostgreSQL. Each section opens a fresh store through `open` (its own folder;
//! on PostgreSQL its own schema). After it, what only several instances sharing PostgreSQL
//! meet: a lease that runs out, and many writers on one log.

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::path::Path;

use doorstep::audit::{Event, EventType, tree};
use doorstep::audit::{TrailedDeliveries, TrailedStore};
use doorstep::records::severity::Severity;
use doorstep::records::{ContentHash, Kind};
use doorstep::store::deliveries::{AttemptOutcome, Claimed, Finished, NewDelivery};
use doorstep::store::lookups::{Cached, LookupScope};
use doorstep::store::postgres::Migrate;
use doorstep::store::{
    DeliveryState, DeliveryStore, IngestOutcome, IntakeBatch, LookupStore, NewRecord, PgStore,
    RaisedException, SqliteStore, Store,
};
use serde_json::Value;
use std::time::Duration;

const TRUST: &str = "celt";
const SCHOOL: &str = "136401";
const DEST: &str = "cpoms";
/// Long past: a retry due at once.
const PAST: &str = "2000-01-01T00:00:00.000000Z";
/// Far off: a cache entry that has not expired.
const FUTURE: &str = "2999-01-01T00:00:00.000000Z";

/// Runs every section of the contract on stores made by `open`.
async fn contract<S, F, Fut>(open: F)
where
    S: Store + DeliveryStore + LookupStore,
    F: Fn(&Path) -> Fut,
    Fut: Future<Output = S>,
{
    let dir = tempfile::tempdir().unwrap();
    let fresh = |name: &str| dir.path().join(name).join("store.db");
    revisions(&open(&fresh("revisions")).await).await;
    conflicts(&open(&fresh("conflicts")).await).await;
    exceptions(&open(&fresh("exceptions")).await).await;
    lifecycle(&open(&fresh("lifecycle")).await).await;
    claim_order(&open(&fresh("order")).await).await;
    revisions_in_order(&open(&fresh("in-order")).await).await;
    {
        let path = fresh("two-claimers");
        let (a, b) = (open(&path).await, open(&path).await);
        two_claimers(&a, &b).await;
    }
    release(&open(&fresh("release")).await).await;
    fencing(&open(&fresh("fencing")).await).await;
    queues(&open(&fresh("queues")).await).await;
    urgent_routed_first(&open(&fresh("urgent-first")).await).await;
    replay(&open(&fresh("replay")).await).await;
    replay_refused(&open(&fresh("replay-refused")).await).await;
    lookups(&open(&fresh("lookups")).await).await;
    trail_appends(&open(&fresh("trail")).await).await;
    retention(&open(&fresh("retention")).await).await;
}

#[tokio::test]
async fn sqlite_meets_the_store_contract() {
    contract(|path: &Path| {
        let path = path.to_path_buf();
        async move { SqliteStore::open(&path).await.unwrap() }
    })
    .await;
}

#[tokio::test]
async fn postgres_meets_the_store_contract() {
    let schemas = crate::pg::Schemas::new("contract");
    let schemas = &schemas;
    contract(|path: &Path| {
        // The section's folder names its schema; two opens of one path share it.
        let name = path
            .parent()
            .and_then(|p| p.file_name())
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        async move {
            let url = schemas.url(&name).await;
            PgStore::open(&url, Duration::from_secs(30), Migrate::Apply)
                .await
                .unwrap()
        }
    })
    .await;
}

// ---- Helpers ---------------------------------------------------------------------------

fn record(id: &str, revision: u32, content: &str) -> NewRecord {
    let canonical = format!(r#"{{"id":"{id}","note":"{content}","revision":{revision}}}"#);
    NewRecord {
        kind: Kind::VisitReport,
        id: id.to_owned(),
        revision,
        trust: TRUST.to_owned(),
        school_urn: SCHOOL.to_owned(),
        visit_id: None,
        urgency: None,
        hash: ContentHash::of_canonical(&canonical),
        projection: ContentHash::of_canonical(&canonical),
        canonical: canonical.into(),
        file: "contract.jsonl".to_owned(),
        line: Some(u64::from(revision)),
        exceptions: Vec::new(),
    }
}

fn batch(records: Vec<NewRecord>) -> IntakeBatch {
    IntakeBatch {
        records,
        rejections: Vec::new(),
    }
}

fn names(outcomes: &[IngestOutcome]) -> Vec<&'static str> {
    outcomes
        .iter()
        .map(|o| match o {
            IngestOutcome::Stored => "stored",
            IngestOutcome::Unchanged => "unchanged",
            IngestOutcome::Conflict(_) => "conflict",
        })
        .collect()
}

async fn ingest<S: Store>(store: &S, records: Vec<NewRecord>) -> Vec<IngestOutcome> {
    store.ingest(&batch(records)).await.unwrap()
}

/// The trust's size of log.
async fn size<S: Store>(store: &S) -> u64 {
    store
        .audit_sizes()
        .await
        .unwrap()
        .into_iter()
        .find(|(t, _)| t == TRUST)
        .map_or(0, |(_, n)| n)
}

/// The `event` of every leaf of the school's log, in order.
async fn trail<S: Store>(store: &S) -> Vec<Value> {
    let n = size(store).await;
    store
        .audit_leaves(TRUST, Some(SCHOOL), 0, n, usize::MAX)
        .await
        .unwrap()
        .into_iter()
        .map(|(_, leaf)| serde_json::from_str(&leaf).unwrap())
        .collect()
}

fn events(leaves: &[Value]) -> Vec<String> {
    leaves
        .iter()
        .map(|l| l["event"].as_str().unwrap().to_owned())
        .collect()
}

fn delivery(id: &str, revision: u32, priority: u8) -> NewDelivery {
    NewDelivery {
        trust: TRUST.to_owned(),
        destination: DEST.to_owned(),
        kind: Kind::VisitReport,
        record_id: id.to_owned(),
        revision,
        school: SCHOOL.to_owned(),
        route: "all".to_owned(),
        map: "visit".to_owned(),
        priority,
        idempotency_key: format!("{DEST}:{id}:{revision}"),
        dead: None,
    }
}

/// Stores the revisions and routes one delivery each, at the given priorities, in order.
async fn routed<S: Store + DeliveryStore>(store: &S, wanted: &[(&str, u32, u8)]) {
    let records = wanted
        .iter()
        .map(|(id, rev, _)| record(id, *rev, "x"))
        .collect();
    let out = ingest(store, records).await;
    assert!(out.iter().all(|o| *o == IngestOutcome::Stored), "{out:?}");
    let unrouted = store.unrouted(1000).await.unwrap();
    assert_eq!(
        unrouted.len(),
        wanted.len(),
        "every stored revision is unrouted"
    );
    let keys: Vec<_> = unrouted
        .iter()
        .map(|u| (u.trust.clone(), u.kind, u.id.clone(), u.revision))
        .collect();
    let deliveries: Vec<_> = wanted
        .iter()
        .map(|(id, rev, p)| delivery(id, *rev, *p))
        .collect();
    store.add_deliveries(&keys, &deliveries).await.unwrap();
    assert!(store.unrouted(1000).await.unwrap().is_empty());
}

fn keys(claimed: &[Claimed]) -> Vec<(String, u32)> {
    claimed
        .iter()
        .map(|c| (c.record_id.clone(), c.revision))
        .collect()
}

fn done(c: &Claimed, outcome: AttemptOutcome) -> Finished {
    Finished {
        claimed: c.clone(),
        at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        outcome,
        sent: None,
        without_request: None,
        unsure: false,
    }
}

fn delivered(target: &str) -> AttemptOutcome {
    AttemptOutcome::Delivered {
        target_id: Some(target.to_owned()),
        status: Some(201),
    }
}

fn dead() -> AttemptOutcome {
    AttemptOutcome::Dead {
        error: "422 unprocessable".to_owned(),
        status: Some(422),
        response: Some("{\"error\":\"no such pupil\"}".to_owned()),
    }
}

/// Routing takes an immediate flag before a backlog of routine records, and never a
/// revision before the one it follows.
async fn urgent_routed_first<S: Store + DeliveryStore>(store: &S) {
    let urgent = |id: &str, revision: u32| NewRecord {
        urgency: Some("immediate"),
        ..record(id, revision, "urgent")
    };
    let out = ingest(
        store,
        vec![
            record("A-1", 1, "x"),
            record("C-1", 1, "x"),
            urgent("B-1", 1),
        ],
    )
    .await;
    assert!(out.iter().all(|o| *o == IngestOutcome::Stored), "{out:?}");
    let ids = |u: &[doorstep::store::deliveries::Unrouted]| {
        u.iter()
            .map(|u| (u.id.clone(), u.revision))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        ids(&store.unrouted(1).await.unwrap()),
        [("B-1".to_owned(), 1)]
    );
    let out = ingest(store, vec![urgent("C-1", 2)]).await;
    assert_eq!(out, [IngestOutcome::Stored]);
    let keys = |u: &[doorstep::store::deliveries::Unrouted]| {
        u.iter()
            .map(|u| (u.trust.clone(), u.kind, u.id.clone(), u.revision))
            .collect::<Vec<_>>()
    };
    let first = store.unrouted(1).await.unwrap();
    assert_eq!(ids(&first), [("B-1".to_owned(), 1)]);
    store.add_deliveries(&keys(&first), &[]).await.unwrap();
    // C-1's revision 2 is urgent: it comes with its revision 1, which goes first.
    let next = store.unrouted(1).await.unwrap();
    assert_eq!(ids(&next), [("C-1".to_owned(), 1), ("C-1".to_owned(), 2)]);
}

/// `/metrics`' view of a destination: what waits, what is due and since when, retries.
async fn queues<S: Store + DeliveryStore>(store: &S) {
    routed(store, &[("Q-1", 1, 2), ("Q-2", 1, 2), ("Q-3", 1, 2)]).await;
    let now = chrono::Utc::now();
    let stats = store.queue_stats(now).await.unwrap();
    assert_eq!(stats.len(), 1);
    assert_eq!(
        (stats[0].waiting, stats[0].due, stats[0].retries),
        (3, 3, 0)
    );
    let claimed = store.claim(TRUST, DEST, 10).await.unwrap();
    assert_eq!(claimed.len(), 3);
    let retry = |at: &str| AttemptOutcome::Retry {
        next_at: at.to_owned(),
        error: "503".to_owned(),
        status: Some(503),
    };
    store
        .finish(&[
            done(&claimed[0], retry(PAST)),
            done(&claimed[1], retry(FUTURE)),
            done(&claimed[2], delivered("T-3")),
        ])
        .await
        .unwrap();
    let again = store.claim(TRUST, DEST, 10).await.unwrap();
    assert_eq!(keys(&again), [("Q-1".to_owned(), 1)]);
    store.finish(&[done(&again[0], retry(PAST))]).await.unwrap();
    let stats = store.queue_stats(chrono::Utc::now()).await.unwrap();
    let q = &stats[0];
    assert_eq!((q.trust.as_str(), q.destination.as_str()), (TRUST, DEST));
    assert_eq!((q.waiting, q.due), (2, 1), "Q-1 due, Q-2 not yet");
    assert_eq!(q.retries, 1, "Q-1's second attempt");
    assert_eq!(
        q.oldest_due
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)),
        Some(PAST.to_owned())
    );
}

async fn state_of<S: DeliveryStore>(store: &S, id: i64) -> DeliveryState {
    store.delivery(id).await.unwrap().unwrap().0.state
}

// ---- Revisions -------------------------------------------------------------------------

async fn revisions<S: Store>(store: &S) {
    let first = ingest(store, vec![record("V-1", 1, "a")]).await;
    assert_eq!(names(&first), ["stored"], "the first revision");
    let higher = ingest(store, vec![record("V-1", 2, "b")]).await;
    assert_eq!(names(&higher), ["stored"], "a higher revision");
    let same = ingest(store, vec![record("V-1", 2, "b")]).await;
    assert_eq!(
        names(&same),
        ["unchanged"],
        "the same revision, same content"
    );
    // Within one batch, revisions are decided in order as if sent one by one.
    let in_batch = ingest(
        store,
        vec![
            record("V-2", 3, "c"),
            record("V-2", 1, "a"),
            record("V-2", 3, "c"),
            record("V-2", 4, "d"),
        ],
    )
    .await;
    assert_eq!(
        names(&in_batch),
        ["stored", "conflict", "unchanged", "stored"]
    );
    let stored = store
        .revisions(TRUST, Kind::VisitReport, "V-1")
        .await
        .unwrap();
    assert_eq!(
        stored.iter().map(|(r, _)| *r).collect::<Vec<_>>(),
        [1, 2],
        "every stored revision, oldest first"
    );
    assert!(stored[1].1.contains("\"note\":\"b\""), "{}", stored[1].1);
    let status = store.status().await.unwrap();
    let count = |state: &str| {
        status
            .records
            .iter()
            .filter(|r| r.trust == TRUST && r.state == state)
            .map(|r| r.count)
            .sum::<u64>()
    };
    assert_eq!(count("current"), 2, "V-1 r2 and V-2 r4");
    assert_eq!(count("superseded"), 2, "V-1 r1 and V-2 r3");
    // By key: the revisions asked for, with when they came.
    let by_key = store
        .revisions_by_key(
            TRUST,
            &[
                ("visit_report".into(), "V-2".into(), 4),
                ("visit_report".into(), "V-2".into(), 1),
            ],
        )
        .await
        .unwrap();
    assert_eq!(by_key.len(), 1, "revision 1 of V-2 was never stored");
    assert_eq!(by_key[0].revision, 4);
    assert_eq!(by_key[0].content_hash, record("V-2", 4, "d").hash.to_hex());
    assert!(
        by_key[0].received_at.ends_with('Z'),
        "{}",
        by_key[0].received_at
    );
    // The trail: a `received` per stored revision and a `conflict` per conflict.
    assert_eq!(
        events(&trail(store).await),
        ["received", "received", "received", "received", "conflict"]
    );
}

async fn conflicts<S: Store>(store: &S) {
    ingest(store, vec![record("V-1", 3, "c")]).await;
    let lower = ingest(store, vec![record("V-1", 1, "a")]).await;
    let IngestOutcome::Conflict(c) = &lower[0] else {
        panic!("a lower revision is a conflict: {lower:?}");
    };
    assert_eq!(c.record_id, "V-1");
    assert_eq!(c.revision, 1);
    assert_eq!(c.rule.as_str(), "revision-conflict");
    assert_eq!(
        c.message,
        "revision 1 is lower than the stored revision 3; send a higher revision to change it"
    );
    assert_eq!((c.file.as_str(), c.line), ("contract.jsonl", Some(1)));
    let same = ingest(store, vec![record("V-1", 3, "other")]).await;
    let IngestOutcome::Conflict(c) = &same[0] else {
        panic!("the same revision with other content is a conflict: {same:?}");
    };
    assert_eq!(
        c.message,
        "revision 3 is already stored with different content; send a higher revision to change it"
    );
    // Nothing of a conflict is stored; both are counted for `status`.
    let stored = store
        .revisions(TRUST, Kind::VisitReport, "V-1")
        .await
        .unwrap();
    assert_eq!(stored.len(), 1);
    assert!(stored[0].1.contains("\"note\":\"c\""));
    let status = store.status().await.unwrap();
    let conflicts: u64 = status
        .issues
        .iter()
        .filter(|i| i.issue == "conflict" && i.rule == "revision-conflict")
        .map(|i| i.count)
        .sum();
    assert_eq!(conflicts, 2);
    let leaves = trail(store).await;
    assert_eq!(events(&leaves), ["received", "conflict", "conflict"]);
    assert_eq!(leaves[1]["rules"][0], "revision-conflict");
    assert_eq!(leaves[1]["revision"], 1);
}

async fn exceptions<S: Store>(store: &S) {
    let raised = |rules: &[&'static str]| {
        rules
            .iter()
            .map(|&rule| RaisedException {
                rule,
                severity: Severity::Error,
                message: format!("{rule} broken"),
            })
            .collect::<Vec<_>>()
    };
    let mut r1 = record("V-1", 1, "a");
    r1.exceptions = raised(&["pair-required", "buddy-assigned"]);
    ingest(store, vec![r1]).await;
    // Revision 2 raises one of them again and fixes the other.
    let mut r2 = record("V-1", 2, "b");
    r2.exceptions = raised(&["pair-required"]);
    ingest(store, vec![r2]).await;
    let got = store
        .exceptions_of(TRUST, Kind::VisitReport, "V-1")
        .await
        .unwrap();
    let row = |rev: u32, rule: &str| {
        got.iter()
            .find(|e| e.revision == rev && e.rule == rule)
            .map(|e| (e.state.as_str(), e.closed_by_revision))
    };
    assert_eq!(row(1, "pair-required"), Some(("superseded", Some(2))));
    assert_eq!(row(1, "buddy-assigned"), Some(("resolved", Some(2))));
    assert_eq!(row(2, "pair-required"), Some(("open", None)));
    assert_eq!(got.len(), 3);
    let open: u64 = store
        .status()
        .await
        .unwrap()
        .exceptions
        .iter()
        .map(|e| e.count)
        .sum();
    assert_eq!(open, 1);
    let leaves = trail(store).await;
    assert_eq!(
        events(&leaves),
        [
            "received",
            "exception_raised",
            "received",
            "exception_raised",
            "exception_resolved"
        ]
    );
    assert_eq!(leaves[4]["rules"], serde_json::json!(["buddy-assigned"]));
    assert_eq!(leaves[4]["revision"], 2);
}

// ---- Deliveries ------------------------------------------------------------------------

async fn lifecycle<S: Store + DeliveryStore>(store: &S) {
    routed(store, &[("V-1", 1, 2)]).await;
    let claimed = store.claim(TRUST, DEST, 10).await.unwrap();
    assert_eq!(keys(&claimed), [("V-1".to_owned(), 1)]);
    let c = &claimed[0];
    assert_eq!(c.attempts, 0);
    assert_eq!(c.content_hash, record("V-1", 1, "x").hash.to_hex());
    assert_eq!(*c.canonical, *record("V-1", 1, "x").canonical);
    assert_eq!(c.idempotency_key, "cpoms:V-1:1");
    assert_eq!(state_of(store, c.seq).await, DeliveryState::InFlight);
    assert!(
        store.claim(TRUST, DEST, 10).await.unwrap().is_empty(),
        "an in-flight delivery is not claimed again"
    );
    assert!(store.next_due(TRUST, DEST).await.unwrap().is_some());

    // Retrying, due at once: claimed again with its attempt counted.
    let retry = AttemptOutcome::Retry {
        next_at: PAST.to_owned(),
        error: "503".to_owned(),
        status: Some(503),
    };
    store.finish(&[done(c, retry)]).await.unwrap();
    assert_eq!(state_of(store, c.seq).await, DeliveryState::Retrying);
    let retrying = store
        .deliveries_in(DeliveryState::Retrying, 10)
        .await
        .unwrap();
    assert_eq!(retrying.len(), 1);
    assert_eq!(retrying[0].last_error.as_deref(), Some("503"));
    let again = store.claim(TRUST, DEST, 10).await.unwrap();
    assert_eq!(keys(&again), [("V-1".to_owned(), 1)]);
    assert_eq!(again[0].attempts, 1);

    // Dead: a dead letter, with the response kept and every attempt.
    store.finish(&[done(&again[0], dead())]).await.unwrap();
    let letters = store.deliveries_in(DeliveryState::Dead, 10).await.unwrap();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].state, DeliveryState::Dead);
    assert_eq!(letters[0].attempts, 2);
    assert_eq!(letters[0].record_kind, Kind::VisitReport);
    assert_eq!(letters[0].last_status, Some(422));
    let (row, response, attempts) = store.delivery(c.seq).await.unwrap().unwrap();
    assert_eq!(row.state, DeliveryState::Dead);
    assert_eq!(response.as_deref(), Some("{\"error\":\"no such pupil\"}"));
    assert_eq!(
        attempts
            .iter()
            .map(|a| (a.attempt, a.outcome.as_str(), a.status))
            .collect::<Vec<_>>(),
        [(1, "failed", Some(503)), (2, "dead", Some(422))]
    );
    assert!(store.claim(TRUST, DEST, 10).await.unwrap().is_empty());
    assert!(store.next_due(TRUST, DEST).await.unwrap().is_none());

    // Replayed, then delivered.
    assert_eq!(store.replay(&[c.seq], None).await.unwrap(), [c.seq]);
    let third = store.claim(TRUST, DEST, 10).await.unwrap();
    assert_eq!(third.len(), 1);
    assert_eq!(third[0].attempts, 0, "a replay starts afresh");
    store
        .finish(&[done(&third[0], delivered("T-9"))])
        .await
        .unwrap();
    let (row, response, attempts) = store.delivery(c.seq).await.unwrap().unwrap();
    assert_eq!(row.state, DeliveryState::Delivered);
    assert_eq!(row.target_id.as_deref(), Some("T-9"));
    assert!(row.delivered_at.is_some());
    // Times print as stored: RFC 3339 UTC with microseconds.
    let json = serde_json::to_value(&row).unwrap();
    for field in ["next_at", "delivered_at", "updated_at"] {
        let text = json[field].as_str().unwrap();
        assert_eq!((text.len(), &text[26..]), (27, "Z"), "{field}: {text}");
    }
    assert!(row.delivered_at >= Some(row.next_at));
    assert_eq!(response, None);
    assert_eq!(attempts.len(), 3);
    let counts = store.delivery_counts().await.unwrap();
    assert_eq!(counts.len(), 1);
    assert_eq!(
        (counts[0].state, counts[0].count),
        (DeliveryState::Delivered, 1)
    );

    // The trail: every outcome, with the state it left.
    let leaves = trail(store).await;
    let outcomes: Vec<_> = leaves
        .iter()
        .filter(|l| l["destination"] == DEST)
        .map(|l| {
            (
                l["event"].as_str().unwrap().to_owned(),
                l["state"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let want = [
        ("failed", "retrying"),
        ("dead_lettered", "dead"),
        ("replayed", "pending"),
        ("delivered", "delivered"),
    ];
    assert_eq!(
        outcomes,
        want.map(|(e, s)| (e.to_owned(), s.to_owned())),
        "{leaves:?}"
    );
    assert!(
        leaves
            .iter()
            .filter(|l| l["event"] == "delivered")
            .all(|l| l["content_hash"] == c.content_hash.as_str())
    );

    // Attempts by key, for the audit bundle.
    let export = store
        .attempts_by_key(TRUST, &[("visit_report".into(), "V-1".into(), 1)])
        .await
        .unwrap();
    assert_eq!(export.len(), 3);
    assert!(export.iter().all(|e| e.state == "delivered"));
}

async fn claim_order<S: Store + DeliveryStore>(store: &S) {
    // Added oldest first: routine, immediate, same-day, routine, immediate.
    routed(
        store,
        &[
            ("R-1", 1, 2),
            ("I-1", 1, 0),
            ("S-1", 1, 1),
            ("R-2", 1, 2),
            ("I-2", 1, 0),
        ],
    )
    .await;
    let first = store.claim(TRUST, DEST, 3).await.unwrap();
    assert_eq!(
        keys(&first),
        [
            ("I-1".to_owned(), 1),
            ("I-2".to_owned(), 1),
            ("S-1".to_owned(), 1)
        ],
        "most urgent first, then oldest"
    );
    let rest = store.claim(TRUST, DEST, 3).await.unwrap();
    assert_eq!(keys(&rest), [("R-1".to_owned(), 1), ("R-2".to_owned(), 1)]);
}

async fn revisions_in_order<S: Store + DeliveryStore>(store: &S) {
    routed(store, &[("V-1", 1, 2), ("V-1", 2, 0), ("W-1", 1, 2)]).await;
    let first = store.claim(TRUST, DEST, 10).await.unwrap();
    assert_eq!(
        keys(&first),
        [("V-1".to_owned(), 1), ("W-1".to_owned(), 1)],
        "revision 2 waits for revision 1, however urgent; W-1 is not held up"
    );
    let v1 = first.iter().find(|c| c.record_id == "V-1").unwrap();
    assert!(store.claim(TRUST, DEST, 10).await.unwrap().is_empty());
    store.finish(&[done(v1, delivered("T-1"))]).await.unwrap();
    let second = store.claim(TRUST, DEST, 10).await.unwrap();
    assert_eq!(keys(&second), [("V-1".to_owned(), 2)]);
    assert_eq!(
        second[0].prior_target.as_deref(),
        Some("T-1"),
        "the target's id for the earlier revision"
    );
}

async fn two_claimers<S: Store + DeliveryStore>(a: &S, b: &S) {
    let ids: Vec<String> = (0..20).map(|i| format!("V-{i:02}")).collect();
    let wanted: Vec<(&str, u32, u8)> = ids.iter().map(|id| (id.as_str(), 1, 1)).collect();
    routed(a, &wanted).await;
    let mut seen = BTreeSet::new();
    let mut total = 0;
    loop {
        let (x, y) = tokio::join!(a.claim(TRUST, DEST, 3), b.claim(TRUST, DEST, 3));
        let (x, y) = (x.unwrap(), y.unwrap());
        if x.is_empty() && y.is_empty() {
            break;
        }
        for c in x.iter().chain(&y) {
            total += 1;
            assert!(seen.insert(c.seq), "delivery {} claimed twice", c.seq);
        }
    }
    assert_eq!(total, 20, "every delivery claimed once");
}

async fn release<S: Store + DeliveryStore>(store: &S) {
    routed(store, &[("V-1", 1, 1), ("V-2", 1, 1)]).await;
    let claimed = store.claim(TRUST, DEST, 10).await.unwrap();
    assert_eq!(claimed.len(), 2);
    let retry = AttemptOutcome::Retry {
        next_at: PAST.to_owned(),
        error: "timeout".to_owned(),
        status: None,
    };
    store.finish(&[done(&claimed[0], retry)]).await.unwrap();
    let again = store.claim(TRUST, DEST, 10).await.unwrap();
    assert_eq!(again.len(), 1);
    // Both in flight now, one attempted before: a stop and a restart releases them.
    assert_eq!(store.release_in_flight().await.unwrap(), 2);
    assert_eq!(state_of(store, again[0].seq).await, DeliveryState::Retrying);
    assert_eq!(
        state_of(store, claimed[1].seq).await,
        DeliveryState::Pending
    );
    assert_eq!(store.claim(TRUST, DEST, 10).await.unwrap().len(), 2);
}

/// An outcome is written only while its delivery still holds the claim's lease: once the
/// delivery was released and claimed again, the first claim's outcome is late — it changes
/// nothing and appends no event — and the token only goes up.
async fn fencing<S: Store + DeliveryStore>(store: &S) {
    routed(store, &[("V-1", 1, 1)]).await;
    let first = store.claim(TRUST, DEST, 1).await.unwrap();
    assert_eq!(store.release_in_flight().await.unwrap(), 1);
    let second = store.claim(TRUST, DEST, 1).await.unwrap();
    assert_eq!(second.len(), 1, "released, it is claimed again");
    assert!(
        second[0].lease > first[0].lease,
        "the fencing token only goes up: {} then {}",
        first[0].lease,
        second[0].lease
    );
    assert!(
        second[0].unsure,
        "it was in flight: it may have taken effect"
    );
    let before = size(store).await;
    let late = store
        .finish(&[done(&first[0], delivered("T-OLD"))])
        .await
        .unwrap();
    assert_eq!(late, vec![0], "the first claim's outcome is late");
    assert_eq!(size(store).await, before, "a late outcome appends no event");
    assert_eq!(state_of(store, first[0].seq).await, DeliveryState::InFlight);
    let late = store
        .finish(&[done(&second[0], delivered("T-NEW"))])
        .await
        .unwrap();
    assert!(late.is_empty());
    assert_eq!(size(store).await, before + 1);
    let (row, _, attempts) = store.delivery(second[0].seq).await.unwrap().unwrap();
    assert_eq!(row.target_id.as_deref(), Some("T-NEW"));
    assert_eq!(attempts.len(), 1, "only the outcome written is an attempt");
    // Finished once, the lease is spent: a second outcome for it changes nothing.
    let late = store.finish(&[done(&second[0], dead())]).await.unwrap();
    assert_eq!(late, vec![0]);
    assert_eq!(
        state_of(store, second[0].seq).await,
        DeliveryState::Delivered
    );
}

async fn replay<S: Store + DeliveryStore + LookupStore>(store: &S) {
    routed(store, &[("V-1", 1, 1), ("V-2", 1, 1), ("V-3", 1, 1)]).await;
    let claimed = store.claim(TRUST, DEST, 10).await.unwrap();
    let finished: Vec<_> = claimed.iter().map(|c| done(c, dead())).collect();
    store.finish(&finished).await.unwrap();
    let seqs: Vec<i64> = claimed.iter().map(|c| c.seq).collect();
    // A look-up not found, and one found: a replay forgets the first only.
    let scope = LookupScope {
        trust: TRUST.into(),
        destination: DEST.into(),
        school: SCHOOL.into(),
        name: "pupil".into(),
    };
    store
        .lookup_put(
            &scope,
            &[
                ("UPN-1".into(), Cached::NotFound),
                ("UPN-2".into(), Cached::Found("P-2".into())),
            ],
            FUTURE,
        )
        .await
        .unwrap();

    assert_eq!(store.replay(&[seqs[1]], None).await.unwrap(), [seqs[1]]);
    assert_eq!(state_of(store, seqs[1]).await, DeliveryState::Pending);
    assert_eq!(state_of(store, seqs[0]).await, DeliveryState::Dead);
    assert_eq!(store.lookup_get(&scope, "UPN-1").await.unwrap(), None);
    assert_eq!(
        store.lookup_get(&scope, "UPN-2").await.unwrap(),
        Some(Cached::Found("P-2".into()))
    );
    assert!(
        store.replay(&[seqs[1]], None).await.unwrap().is_empty(),
        "only dead letters are replayed"
    );
    // Every dead letter of a destination.
    assert!(
        store
            .replay(&[], Some((TRUST, "elsewhere")))
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        store.replay(&[], Some((TRUST, DEST))).await.unwrap(),
        [seqs[0], seqs[2]]
    );
    assert!(
        store
            .deliveries_in(DeliveryState::Dead, 10)
            .await
            .unwrap()
            .is_empty()
    );
    let replayed = events(&trail(store).await)
        .into_iter()
        .filter(|e| e == "replayed")
        .count();
    assert_eq!(replayed, 3);
}

async fn replay_refused<S: Store + DeliveryStore>(store: &S) {
    routed(store, &[("V-1", 1, 1)]).await;
    let r1 = store.claim(TRUST, DEST, 10).await.unwrap();
    store.finish(&[done(&r1[0], dead())]).await.unwrap();
    routed(store, &[("V-1", 2, 1)]).await;
    let r2 = store.claim(TRUST, DEST, 10).await.unwrap();
    assert_eq!(
        keys(&r2),
        [("V-1".to_owned(), 2)],
        "a dead revision holds none back"
    );
    store
        .finish(&[done(&r2[0], delivered("T-2"))])
        .await
        .unwrap();
    let before = size(store).await;
    assert!(
        store.replay(&[r1[0].seq], None).await.unwrap().is_empty(),
        "revision 1 would overwrite the delivered revision 2"
    );
    assert_eq!(state_of(store, r1[0].seq).await, DeliveryState::Dead);
    assert_eq!(
        size(store).await,
        before,
        "nothing replayed, nothing logged"
    );
}

// ---- Look-ups --------------------------------------------------------------------------

async fn lookups<S: LookupStore>(store: &S) {
    let scope = LookupScope {
        trust: TRUST.into(),
        destination: DEST.into(),
        school: SCHOOL.into(),
        name: "pupil".into(),
    };
    let other = LookupScope {
        school: "999999".into(),
        ..scope.clone()
    };
    assert_eq!(store.lookup_get(&scope, "UPN-1").await.unwrap(), None);
    store
        .lookup_put(
            &scope,
            &[
                ("UPN-1".into(), Cached::Found("P-1".into())),
                ("UPN-2".into(), Cached::NotFound),
            ],
            FUTURE,
        )
        .await
        .unwrap();
    assert_eq!(
        store.lookup_get(&scope, "UPN-1").await.unwrap(),
        Some(Cached::Found("P-1".into()))
    );
    assert_eq!(
        store.lookup_get(&scope, "UPN-2").await.unwrap(),
        Some(Cached::NotFound)
    );
    assert_eq!(
        store.lookup_get(&other, "UPN-1").await.unwrap(),
        None,
        "another school's cache"
    );
    // A later answer replaces an earlier one; an expired one is not given.
    store
        .lookup_put(
            &scope,
            &[("UPN-2".into(), Cached::Found("P-2".into()))],
            FUTURE,
        )
        .await
        .unwrap();
    assert_eq!(
        store.lookup_get(&scope, "UPN-2").await.unwrap(),
        Some(Cached::Found("P-2".into()))
    );
    store
        .lookup_put(
            &scope,
            &[("UPN-1".into(), Cached::Found("P-1".into()))],
            PAST,
        )
        .await
        .unwrap();
    assert_eq!(store.lookup_get(&scope, "UPN-1").await.unwrap(), None);
    // Retention: the expired answer is deleted, the live one kept.
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    assert_eq!(store.lookup_forget_expired(&now).await.unwrap(), 1);
    assert_eq!(store.lookup_forget_expired(&now).await.unwrap(), 0);
    assert_eq!(
        store.lookup_get(&scope, "UPN-2").await.unwrap(),
        Some(Cached::Found("P-2".into()))
    );
}

// ---- The trail -------------------------------------------------------------------------

fn event(i: u64, school: &str) -> Event {
    let mut e = Event::new(EventType::Received, "2026-11-25T00:00:00Z", TRUST);
    e.record_id = Some(format!("V-{i}"));
    e.school = Some(school.to_owned());
    e
}

async fn trail_appends<S: Store>(store: &S) {
    assert_eq!(size(store).await, 0);
    // Appends across calls and tile boundaries (256 leaves a tile); two schools; a time that
    // goes back (leaf 400) is raised to the log's last.
    let all: Vec<Event> = (0..700)
        .map(|i| {
            let mut e = event(i, if i % 7 == 0 { "999999" } else { SCHOOL });
            if i == 400 {
                e.at = "2026-11-24T23:00:00Z".into();
            }
            e
        })
        .collect();
    let sizes = store.audit_append(&all[..1]).await.unwrap();
    assert_eq!(sizes.get(TRUST), Some(&1));
    store.audit_append(&all[1..300]).await.unwrap();
    let sizes = store.audit_append(&all[300..]).await.unwrap();
    assert_eq!(
        sizes.get(TRUST),
        Some(&700),
        "each append says the size after it"
    );
    let mut other = Event::new(EventType::Exported, "2026-11-25T00:00:00Z", "thrive");
    other.school = Some(SCHOOL.to_owned());
    store.audit_append(&[other]).await.unwrap();
    assert_eq!(
        store.audit_sizes().await.unwrap(),
        [("celt".to_owned(), 700), ("thrive".to_owned(), 1)]
    );

    // The leaves as appended: each school numbered on its own, times never going back.
    let leaves = store
        .audit_leaves(TRUST, None, 0, 700, usize::MAX)
        .await
        .unwrap();
    assert_eq!(leaves.len(), 700);
    let mut seqs: HashMap<String, u64> = HashMap::new();
    for (i, (idx, leaf)) in leaves.iter().enumerate() {
        assert_eq!(*idx, i as u64);
        let v: Value = serde_json::from_str(leaf).unwrap();
        let school = v["school"].as_str().unwrap().to_owned();
        let next = seqs.entry(school).or_insert(0);
        assert_eq!(v["school_seq"], *next, "leaf {i}: {leaf}");
        *next += 1;
        assert_eq!(v["at"], "2026-11-25T00:00:00Z", "leaf {i}: {leaf}");
        assert_eq!(v["record_id"], format!("V-{i}"));
    }
    let hashes: Vec<tree::Hash> = leaves
        .iter()
        .map(|(_, leaf)| tree::leaf_hash(leaf.as_bytes()))
        .collect();
    let mut want = tree::MemoryTree::default();
    want.append(&hashes).unwrap();
    for n in [1, 255, 256, 257, 300, 512, 700] {
        let root = tree::root_nodes(n);
        let got: HashMap<_, _> = store.audit_nodes(TRUST, &root).await.unwrap();
        assert_eq!(got, want.nodes(&root), "the root nodes at size {n}");
        let proof = tree::nodes_for(&tree::inclusion_ranges(n / 2, n));
        assert_eq!(
            store.audit_nodes(TRUST, &proof).await.unwrap(),
            want.nodes(&proof),
            "an inclusion proof's nodes at size {n}"
        );
    }

    // One school's leaves, paged, below a size.
    let mut paged = Vec::new();
    let mut start = 0;
    loop {
        let page = store
            .audit_leaves(TRUST, Some(SCHOOL), start, 700, 100)
            .await
            .unwrap();
        let Some((last, _)) = page.last() else { break };
        assert!(page.len() <= 100);
        start = last + 1;
        paged.extend(page);
    }
    let want_idx: Vec<u64> = (0..700).filter(|i| i % 7 != 0).collect();
    assert_eq!(paged.iter().map(|(i, _)| *i).collect::<Vec<_>>(), want_idx);
    assert_eq!(paged[0].1, leaves[1].1);
    let below = store
        .audit_leaves(TRUST, Some(SCHOOL), 0, 10, usize::MAX)
        .await
        .unwrap();
    assert_eq!(below.len(), 8, "1..10 less 7");
    store
        .audit_save_checkpoint(TRUST, 700, "a signed note\n")
        .await
        .unwrap();
}

/// Purge empties exactly the revisions delivered everywhere before the cutoff — never one
/// with a delivery pending, in flight, retrying or dead, nor one not yet routed — with a
/// `purged` event each in the same transaction; the exporter's read then shows no content
/// for them, and where each was delivered.
async fn retention<S: Store + DeliveryStore>(store: &S) {
    routed(
        store,
        &[
            ("P-done", 1, 2),
            ("P-retry", 1, 2),
            ("P-dead", 1, 2),
            ("P-wait", 1, 2),
        ],
    )
    .await;
    ingest(store, vec![record("P-unrouted", 1, "x")]).await;
    let claimed = store.claim(TRUST, DEST, 10).await.unwrap();
    let by_id = |id: &str| claimed.iter().find(|c| c.record_id == id).unwrap();
    let retry = AttemptOutcome::Retry {
        next_at: FUTURE.to_owned(),
        error: "503".to_owned(),
        status: Some(503),
    };
    store
        .finish(&[
            done(by_id("P-done"), delivered("T-1")),
            done(by_id("P-retry"), retry),
            done(by_id("P-dead"), dead()),
        ])
        .await
        .unwrap();
    // P-wait stays in flight.
    let before = size(store).await;
    // A cutoff before the delivery: nothing yet.
    let page = store.purge(TRUST, PAST, 0, 100).await.unwrap();
    assert!(page.purged.is_empty() && page.next.is_none());
    let page = store.purge(TRUST, FUTURE, 0, 100).await.unwrap();
    let purged: Vec<&str> = page.purged.iter().map(|p| p.id.as_str()).collect();
    assert_eq!(purged, ["P-done"]);
    assert_eq!(
        page.purged[0].content_hash,
        record("P-done", 1, "x").hash.to_hex()
    );
    assert!(page.next.is_none());
    assert_eq!(size(store).await, before + 1, "one purged event");
    let last = trail(store).await.pop().unwrap();
    assert_eq!(last["event"], "purged");
    assert_eq!(last["record_id"], "P-done");
    assert_eq!(
        last["content_hash"],
        record("P-done", 1, "x").hash.to_hex().as_str()
    );
    // Once purged, never again.
    assert!(
        store
            .purge(TRUST, FUTURE, 0, 100)
            .await
            .unwrap()
            .purged
            .is_empty()
    );
    assert_eq!(
        store
            .revisions(TRUST, Kind::VisitReport, "P-done")
            .await
            .unwrap(),
        [(1, String::new())]
    );
    // The exporter's read: each current revision, its content unless purged, its deliveries;
    // a page resumes after the row given.
    let current = store
        .current_revisions(TRUST, SCHOOL, Kind::VisitReport, 0, 100)
        .await
        .unwrap();
    let view: Vec<(&str, bool, Vec<&str>)> = current
        .iter()
        .map(|c| {
            (
                c.id.as_str(),
                c.canonical.is_some(),
                c.deliveries.iter().map(|d| d.state.as_str()).collect(),
            )
        })
        .collect();
    assert_eq!(
        view,
        [
            ("P-done", false, vec!["delivered"]),
            ("P-retry", true, vec!["retrying"]),
            ("P-dead", true, vec!["dead"]),
            ("P-wait", true, vec!["in_flight"]),
            ("P-unrouted", true, vec![]),
        ]
    );
    assert!(current[0].deliveries[0].delivered_at.is_some());
    let second = store
        .current_revisions(TRUST, SCHOOL, Kind::VisitReport, current[1].seq, 1)
        .await
        .unwrap();
    assert_eq!(second.len(), 1);
    assert_eq!(second[0].id, "P-dead");
}

// ---- Several instances on one PostgreSQL ----------------------------------------------

/// An instance that stops (its pool closed: no more lease renewals) loses its leases when
/// they run out; another instance takes the deliveries again, marked unsure, with the same
/// idempotency key; the stopped instance's late outcome changes nothing. One that lives
/// keeps its leases past their first expiry (renewed).
#[tokio::test]
async fn postgres_a_lease_that_runs_out_is_taken_over() {
    let schemas = crate::pg::Schemas::new("lease");
    let url = schemas.url("lease").await;
    let lease = Duration::from_secs(1);
    let a = PgStore::open(&url, lease, Migrate::Apply).await.unwrap();
    let b = PgStore::open(&url, lease, Migrate::Require).await.unwrap();
    routed(&a, &[("V-1", 1, 1), ("V-2", 1, 1)]).await;
    let by_a = a.claim(TRUST, DEST, 1).await.unwrap();
    let by_b = b.claim(TRUST, DEST, 1).await.unwrap();
    assert_eq!(by_a.len() + by_b.len(), 2, "each takes one");
    let leases = a.leases().await.unwrap();
    assert_eq!(leases.len(), 2, "a lease per instance: {leases:?}");
    assert!(leases.iter().any(|l| l.instance == a.instance()));

    // b lives on past its lease: renewed, nobody can take its delivery.
    tokio::time::sleep(Duration::from_millis(1600)).await;
    let c = PgStore::open(&url, lease, Migrate::Require).await.unwrap();
    // For c, which holds nothing, the work comes back no sooner than a lease's end.
    let next = c.next_due(TRUST, DEST).await.unwrap().unwrap();
    let next = chrono::DateTime::parse_from_rfc3339(&next).unwrap();
    assert!(
        next > chrono::Utc::now(),
        "another instance's work in flight is not due now: {next}"
    );
    a.close().await;
    assert!(
        c.claim(TRUST, DEST, 10).await.unwrap().is_empty(),
        "leases held by living instances are renewed"
    );
    // a stopped: once its lease runs out, c takes its delivery again.
    tokio::time::sleep(Duration::from_millis(1600)).await;
    let taken = c.claim(TRUST, DEST, 10).await.unwrap();
    assert_eq!(keys(&taken), keys(&by_a), "c takes only a's delivery");
    assert!(taken[0].unsure, "a's request may have taken effect");
    assert_eq!(taken[0].idempotency_key, by_a[0].idempotency_key);
    assert!(taken[0].lease > by_a[0].lease);
    // a's outcome arrives late (written through another connection: a is gone).
    let late = c.finish(&[done(&by_a[0], delivered("T-A"))]).await.unwrap();
    assert_eq!(late, vec![0]);
    assert!(
        c.finish(&[done(&taken[0], delivered("T-C"))])
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        b.finish(&[done(&by_b[0], delivered("T-B"))])
            .await
            .unwrap()
            .is_empty()
    );
    let (row, _, _) = c.delivery(taken[0].seq).await.unwrap().unwrap();
    assert_eq!(row.target_id.as_deref(), Some("T-C"));
}

/// Many writers, one log: three instances append at once (events, intake and outcomes);
/// the log is one linear tree — every leaf once, sizes adding up, the stored nodes those of
/// the tree the leaves make at every size a checkpoint could have been taken at.
#[tokio::test]
async fn postgres_many_writers_keep_one_linear_log() {
    let schemas = crate::pg::Schemas::new("log");
    let url = schemas.url("log").await;
    let lease = Duration::from_secs(30);
    let first = PgStore::open(&url, lease, Migrate::Apply).await.unwrap();
    let mut stores = vec![first];
    for _ in 0..2 {
        stores.push(PgStore::open(&url, lease, Migrate::Require).await.unwrap());
    }
    let mut tasks = tokio::task::JoinSet::new();
    for (w, store) in stores.iter().cloned().enumerate() {
        tasks.spawn(async move {
            let mut sizes = Vec::new();
            for round in 0..15u64 {
                let events: Vec<Event> = (0..7)
                    .map(|i| event(1000 * w as u64 + 10 * round + i, SCHOOL))
                    .collect();
                let got = store.audit_append(&events).await.unwrap();
                sizes.push(got[TRUST]);
                let id = format!("W{w}-{round}");
                let out = store
                    .ingest(&batch(vec![record(&id, 1, "x")]))
                    .await
                    .unwrap();
                assert_eq!(out, vec![IngestOutcome::Stored]);
            }
            sizes
        });
    }
    let mut all_sizes = BTreeSet::new();
    while let Some(sizes) = tasks.join_next().await {
        for s in sizes.unwrap() {
            assert!(all_sizes.insert(s), "two appends ended at size {s}");
        }
    }
    let size = size(&stores[0]).await;
    let leaves = stores[0]
        .audit_leaves(TRUST, None, 0, size, usize::MAX)
        .await
        .unwrap();
    assert_eq!(leaves.len() as u64, size);
    let appended = leaves
        .iter()
        .filter(|(_, l)| l.contains("\"record_id\":\"V-"))
        .count();
    assert_eq!(appended, 3 * 15 * 7, "every appended event once");
    let received = leaves.iter().filter(|(_, l)| l.contains("\"W")).count();
    assert!(received >= 45, "every ingest's events: {received}");
    // One school's numbers run 0, 1, 2… in log order whoever wrote them.
    for (i, (_, leaf)) in leaves.iter().enumerate() {
        let v: Value = serde_json::from_str(leaf).unwrap();
        assert_eq!(v["school_seq"], i as u64, "leaf {i}");
    }
    let hashes: Vec<tree::Hash> = leaves
        .iter()
        .map(|(_, l)| tree::leaf_hash(l.as_bytes()))
        .collect();
    let mut want = tree::MemoryTree::default();
    want.append(&hashes).unwrap();
    for n in all_sizes.iter().copied().chain([size]) {
        let root = tree::root_nodes(n);
        for store in &stores {
            assert_eq!(
                store.audit_nodes(TRUST, &root).await.unwrap(),
                want.nodes(&root),
                "the tree at size {n}, read by any instance"
            );
        }
        let proof = tree::nodes_for(&tree::consistency_ranges(n / 2 + 1, n));
        assert_eq!(
            stores[1].audit_nodes(TRUST, &proof).await.unwrap(),
            want.nodes(&proof),
            "a consistency proof's nodes up to {n}"
        );
    }
}

/// A batch of outcomes the database rolls back for a deadlock is written again, whole, not
/// lost and not half-written: another transaction holds the trust's log head and then wants a
/// delivery row the batch holds; PostgreSQL aborts the batch (it waited first); the store
/// writes it again once the other transaction ends.
#[tokio::test]
async fn postgres_outcomes_rolled_back_by_a_deadlock_are_written_again() {
    use sqlx::Connection;
    let schemas = crate::pg::Schemas::new("deadlock");
    let url = schemas.url("deadlock").await;
    let store = PgStore::open(&url, Duration::from_secs(30), Migrate::Apply)
        .await
        .unwrap();
    routed(&store, &[("V-1", 1, 1)]).await;
    let claimed = store.claim(TRUST, DEST, 1).await.unwrap();
    let before = size(&store).await;

    let mut other = sqlx::PgConnection::connect(&url).await.unwrap();
    sqlx::query("BEGIN").execute(&mut other).await.unwrap();
    sqlx::query("SELECT size FROM audit_logs WHERE trust = $1 FOR UPDATE")
        .bind(TRUST)
        .execute(&mut other)
        .await
        .unwrap();
    let finishing = {
        let store = store.clone();
        let c = claimed[0].clone();
        tokio::spawn(async move { store.finish(&[done(&c, delivered("T-1"))]).await })
    };
    // Wait until the batch holds the delivery's row and waits for the head (a fixed pause
    // was not enough on a loaded machine: the other transaction then waited first).
    let other_pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&mut other)
        .await
        .unwrap();
    let mut watcher = sqlx::PgConnection::connect(&url).await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let blocked: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE $1 = ANY(pg_blocking_pids(pid))",
        )
        .bind(other_pid)
        .fetch_one(&mut watcher)
        .await
        .unwrap();
        if blocked > 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the batch never waited for the log head"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    sqlx::query("UPDATE deliveries SET updated_at = updated_at WHERE seq = $1")
        .bind(claimed[0].seq)
        .execute(&mut other)
        .await
        .unwrap();
    sqlx::query("COMMIT").execute(&mut other).await.unwrap();
    let late = finishing.await.unwrap().unwrap();
    assert!(late.is_empty(), "written, not late: {late:?}");
    assert_eq!(
        state_of(&store, claimed[0].seq).await,
        DeliveryState::Delivered
    );
    let (_, _, attempts) = store.delivery(claimed[0].seq).await.unwrap().unwrap();
    assert_eq!(attempts.len(), 1, "one attempt, written once");
    assert_eq!(size(&store).await, before + 1, "one event");
}
