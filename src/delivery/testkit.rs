//! Test helpers for the delivery unit tests: a destination from connector text, a claimed
//! delivery, and a throwaway deployment (connector, trust, routes, map, records) that an
//! `Engine` runs in process against a mock server.
//! Compiled for tests only (`#[cfg(test)] mod testkit` in `delivery/mod.rs`): its unwraps
//! never meet input. Owns: nothing the engine uses. May not touch: production code paths.
#![cfg(test)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::Value;

use crate::connectors::http::{Credentials, HttpTransport};
use crate::connectors::{Connector, Connectors};
use crate::mapping::Trusts;
use crate::store::deliveries::Claimed;

use super::destinations::{Dest, Transport};
use super::{Engine, lookup};
use crate::config::{DeliverySettings, DestinationOverride};

/// The repository (the shipped trust and fixtures).
fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Connector `name` from its TOML, checked as a connectors folder checks it.
pub(super) fn connector(name: &str, text: &str) -> Arc<Connector> {
    Arc::new(Connector::parse(Path::new("c.toml"), name, text).unwrap())
}

/// A destination on `connector` at `url`, sending every record to `endpoint` if given.
pub(super) fn dest(connector: Arc<Connector>, url: Option<&str>, endpoint: Option<&str>) -> Dest {
    let config: crate::mapping::Destination =
        toml::from_str(&format!("connector = {:?}", connector.name)).unwrap();
    Dest {
        trust: "thrive".into(),
        name: "api".into(),
        transport: Transport::Http(Arc::new(
            HttpTransport::new(connector.clone(), Credentials::default()).unwrap(),
        )),
        connector,
        url: url.map(str::to_owned),
        endpoint: endpoint.map(str::to_owned),
        config,
        folder: PathBuf::new(),
        limiter: None,
        lookups: Arc::new(lookup::Lookups::default()),
        lookup_scope: "api".into(),
        paused: false,
    }
}

/// A claimed delivery of a record of `kind`, created at the target as `prior_target` by
/// an earlier revision if given.
pub(super) fn claimed(kind: &str, prior_target: Option<&str>) -> Claimed {
    Claimed {
        seq: 1,
        trust: "thrive".into(),
        destination: "api".into(),
        kind: crate::records::Kind::from_name(kind).expect("a record kind"),
        record_id: "V-1".into(),
        revision: 1,
        school: "117800".into(),
        map: "visit_json".into(),
        idempotency_key: "key-1".into(),
        attempts: 0,
        canonical: "{}".into(),
        content_hash: "h".into(),
        exceptions: Vec::new(),
        prior_target: prior_target.map(str::to_owned),
        prior_sent: None,
        unsure: false,
        lease: 0,
    }
}

pub(super) fn vars(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// A JSON API taking visits at `/api/visits`, the created id at `/id`; no authentication,
/// quick retries.
pub(super) const API_CONNECTOR: &str = r#"
transport = "http_json"
auth = "none"

[limits]
concurrency = 2
timeout_seconds = 5.0
max_attempts = 3
backoff_min_seconds = 0.05
backoff_max_seconds = 0.2

[request]
idempotency_header = "Idempotency-Key"

[endpoints.visit_report]
method = "POST"
path = "/api/visits"

[response]
target_id = { pointer = "/id" }
"#;

const ROUTES: &str = r#"
[destinations.api]
connector = "api"

[[route]]
name = "visits"
kinds = ["visit_report"]
to = "api"
map = "visit_json"
"#;

const VISIT_MAP: &str = r#"
[body]
event = "visit_report"
record_id = { field = "id" }
revision = { field = "revision" }
school_urn = { field = "school.urn" }
"#;

/// A deployment in a temporary folder: connector `api`, trust `thrive` (the shipped
/// `trust.toml`) routing visits to destination `api` through a small map, and a drop file
/// holding the shipped Thrive attendance visit as record `ids`, revision 1, each.
pub(super) struct Deployment {
    pub(super) dir: tempfile::TempDir,
}

impl Deployment {
    pub(super) fn new(ids: &[&str]) -> Deployment {
        let dir = tempfile::tempdir().unwrap();
        let write = |p: &str, text: &str| {
            let path = dir.path().join(p);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        };
        write("connectors/api.toml", API_CONNECTOR);
        write(
            "mappings/thrive/trust.toml",
            &std::fs::read_to_string(root().join("mappings/thrive/trust.toml")).unwrap(),
        );
        write("mappings/thrive/routes.toml", ROUTES);
        write("mappings/thrive/maps/visit_json.toml", VISIT_MAP);
        let visit: Value = serde_json::from_str(
            &std::fs::read_to_string(root().join("fixtures/valid/thrive-attendance-illness.json"))
                .unwrap(),
        )
        .unwrap();
        let records: Vec<Value> = ids
            .iter()
            .map(|id| {
                let mut v = visit.clone();
                v["id"] = (*id).into();
                v
            })
            .collect();
        write(
            "drop/visits.json",
            &serde_json::to_string(&Value::Array(records)).unwrap(),
        );
        Deployment { dir }
    }

    pub(super) fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    pub(super) fn trusts(&self) -> Arc<Trusts> {
        Arc::new(Trusts::load(&self.path("mappings"), chrono_tz::Europe::London).unwrap())
    }

    /// The engine, destination `api` sent to `url` (the deployment's override).
    pub(super) fn engine(&self, trusts: Arc<Trusts>, url: &str) -> Engine {
        let connectors = Arc::new(Connectors::load(&self.path("connectors")).unwrap());
        let mut overrides = BTreeMap::new();
        overrides.insert(
            ("thrive".to_owned(), "api".to_owned()),
            DestinationOverride {
                url: Some(url.to_owned()),
                ..DestinationOverride::default()
            },
        );
        let settings = DeliverySettings {
            out_dir: self.path("out"),
            overrides,
        };
        Engine::new(trusts, connectors, &settings).unwrap()
    }
}

/// Takes no notice of what intake reports (the tests check the store).
pub(super) struct Quiet;

impl crate::pipeline::Reporter for Quiet {
    fn rejection(&mut self, r: &crate::report::Rejection) {
        panic!("rejected: {r:?}");
    }
    fn exception(&mut self, _: &crate::report::ExceptionReport) {}
    fn conflict(&mut self, _: &crate::report::Conflict) {}
}
