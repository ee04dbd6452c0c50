//! Delivery (SPEC §4): one tracked delivery per destination per record revision. Routing
//! turns stored revisions into deliveries; the engine sends what is due, each destination
//! on its own (its own concurrency, rate limit and backoff, so one failing destination or
//! record holds up no other), most urgent first, revisions of one record in order, and
//! records every outcome with its evidence-trail event.
//!
//! Owns: routing into deliveries, sending through the connectors, retries and dead letters;
//! here, the `Engine` (new, route, run, paused) and its errors. Destinations are built in
//! `destinations`, each run by its `driver`, one `attempt` at a time, decided by `retry`.
//! May not touch: intake or validation; how a body is built (the mapping's).

mod attempt;
mod changes;
mod destinations;
mod driver;
pub mod lookup;
pub mod online;
pub mod plan;
mod reconcile;
mod retry;
#[cfg(test)]
mod testkit;

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{Notify, mpsc};
use tokio::task::JoinSet;

use crate::audit::TrailedDeliveries;
use crate::connectors::csv::CsvTransport;
use crate::connectors::http::{Credentials, HttpTransport};
use crate::connectors::{Connectors, TransportKind};
use crate::mapping::Trusts;
use crate::store::StoreError;
use crate::store::deliveries::{DeliveryStore, Finished};

use destinations::{Dest, Transport, http_sink};
use driver::{Driver, log_late, log_outcome};

#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    #[error("trust `{trust}`, destination `{destination}`: {reason}")]
    Destination {
        trust: String,
        destination: String,
        reason: String,
    },
}

use crate::config::DeliverySettings;

/// How long a delivery run goes on.
#[derive(Debug, Clone)]
pub enum Until {
    /// Until nothing more falls due before this instant (`sync`, `deliver`).
    Deadline(Instant),
    /// Until the value turns true or its sender is dropped (`serve`): a destination with
    /// nothing due waits for more; once told to stop it claims nothing more, sends what it
    /// has claimed, and ends.
    Stopped(tokio::sync::watch::Receiver<bool>),
}

/// The delivery engine of one deployment.
pub struct Engine {
    trusts: Arc<Trusts>,
    connectors: Arc<Connectors>,
    dests: Vec<Arc<Dest>>,
    /// The look-up caches, one per (trust, system), each shared by its destinations.
    lookups: Vec<Arc<lookup::Lookups>>,
}

/// Outcomes committed together.
const FINISH_BATCH: usize = 512;

impl Engine {
    /// Resolves every destination of every trust: its connector, secrets and transport. A secret
    /// that cannot be read fails here, naming the destination and key, never the value.
    pub fn new(
        trusts: Arc<Trusts>,
        connectors: Arc<Connectors>,
        settings: &DeliverySettings,
    ) -> Result<Engine, DeliveryError> {
        let mut dests = Vec::new();
        let mut lookups: HashMap<(String, String), Arc<lookup::Lookups>> = HashMap::new();
        for trust in trusts.iter() {
            let Some(mapping) = trust.mapping.as_deref() else {
                continue;
            };
            for (name, d) in &mapping.routes.destinations {
                let fail = |reason: String| DeliveryError::Destination {
                    trust: trust.id.clone(),
                    destination: name.clone(),
                    reason,
                };
                let ov = settings
                    .overrides
                    .get(&(trust.id.clone(), name.clone()))
                    .cloned()
                    .unwrap_or_default();
                let mapped = d;
                let overridden = destinations::with_override(d, &ov);
                let d = &overridden;
                let mut connector = connectors.get(&d.connector).cloned().ok_or_else(|| {
                    fail(format!(
                        "no connector `{}` in the connectors folder",
                        d.connector
                    ))
                })?;
                let limits = connector.limits.overridden(&ov.limits);
                if let Err((key, rule)) = limits.check() {
                    return Err(fail(format!(
                        "the config's [destinations.{}.{name}.limits] {key}: {rule}",
                        trust.id
                    )));
                }
                if limits != connector.limits {
                    let mut tuned = (*connector).clone();
                    tuned.limits = limits;
                    connector = Arc::new(tuned);
                }
                let url = ov.url.clone().or_else(|| d.url.clone());
                destinations::check_token_host(&connector, mapped, &ov).map_err(fail)?;
                if connector.transport != TransportKind::CsvFile {
                    let allowed = d.allow_plain_http || ov.allow_plain_http;
                    let mut plain = false;
                    for (key, u) in [("url", &url), ("token_url", &d.token_url)] {
                        if let Some(u) = u {
                            plain |=
                                destinations::check_plain_http(key, u, allowed).map_err(fail)?;
                        }
                    }
                    if plain {
                        tracing::warn!(
                            trust = %trust.id,
                            destination = %name,
                            "plain http:// allowed by allow_plain_http: this destination's records travel unencrypted"
                        );
                    }
                }
                let transport = if connector.transport == TransportKind::CsvFile {
                    Transport::Csv(Arc::new(CsvTransport::new(
                        settings.out_dir.join(&trust.id),
                        connector.csv.utf8_bom,
                    )))
                } else if ov.paused {
                    // Nothing is sent; secrets are not needed until it is un-paused.
                    Transport::Http(Arc::new(
                        HttpTransport::new(connector.clone(), Credentials::default())
                            .map_err(fail)?,
                    ))
                } else {
                    Transport::Http(Arc::new(
                        http_sink(&trust.folder, d, &connector, url.as_deref()).map_err(fail)?,
                    ))
                };
                let limiter = connector
                    .limits
                    .rate_per_second
                    .and_then(NonZeroU32::new)
                    .map(|n| governor::RateLimiter::direct(governor::Quota::per_second(n)));
                let lookup_scope = match &url {
                    Some(u) => format!("{} {u}", d.connector),
                    None => name.clone(),
                };
                let shared = lookups
                    .entry((trust.id.clone(), lookup_scope.clone()))
                    .or_default()
                    .clone();
                dests.push(Arc::new(Dest {
                    trust: trust.id.clone(),
                    name: name.clone(),
                    connector,
                    transport,
                    url,
                    endpoint: d.endpoint.clone(),
                    config: d.clone(),
                    folder: trust.folder.clone(),
                    limiter,
                    lookups: shared,
                    lookup_scope,
                    paused: ov.paused,
                }));
            }
        }
        // An override naming no destination is a typo that would pause or redirect nothing.
        if let Some((trust, name)) = settings
            .overrides
            .keys()
            .find(|(t, n)| !dests.iter().any(|d| d.trust == *t && d.name == *n))
        {
            return Err(DeliveryError::Destination {
                trust: trust.clone(),
                destination: name.clone(),
                reason: "the config's [destinations] names a destination no routes.toml has".into(),
            });
        }
        Ok(Engine {
            trusts,
            connectors,
            dests,
            lookups: lookups.into_values().collect(),
        })
    }

    /// Requests made for look-ups in this engine's runs.
    pub fn lookup_requests(&self) -> u64 {
        self.lookups.iter().map(|l| l.requests()).sum()
    }

    /// (trust, destination) of every paused destination.
    pub fn paused(&self) -> Vec<(String, String)> {
        self.dests
            .iter()
            .filter(|d| d.paused)
            .map(|d| (d.trust.clone(), d.name.clone()))
            .collect()
    }

    /// Routes every stored revision not yet routed; returns how many deliveries it made.
    pub async fn route<S: DeliveryStore>(&self, store: &S) -> Result<usize, StoreError> {
        let mut made = 0;
        loop {
            match self.route_some(store, 1000).await? {
                None => return Ok(made),
                Some(n) => made += n,
            }
        }
    }

    /// Routes about `limit` stored revisions not yet routed, the most urgent first; how
    /// many deliveries it made, or `None` when nothing was left to route.
    pub async fn route_some<S: DeliveryStore>(
        &self,
        store: &S,
        limit: usize,
    ) -> Result<Option<usize>, StoreError> {
        let batch = store.unrouted(limit).await?;
        if batch.is_empty() {
            return Ok(None);
        }
        let mut deliveries = Vec::new();
        let mut keys = Vec::with_capacity(batch.len());
        for r in &batch {
            deliveries.extend(plan::route_revision(&self.trusts, r));
            keys.push((r.trust.clone(), r.kind, r.id.clone(), r.revision));
        }
        store.add_deliveries(&keys, &deliveries).await?;
        Ok(Some(deliveries.len()))
    }

    /// Sends everything due, and keeps going while retries fall due before `deadline`.
    /// Returns when nothing more is due before it.
    pub async fn run<S: DeliveryStore + 'static>(
        &self,
        store: Arc<S>,
        deadline: Instant,
    ) -> Result<(), StoreError> {
        self.run_until(store, Until::Deadline(deadline), Arc::new(Notify::new()))
            .await
    }

    /// Sends what is due until `until`; `wake` tells every destination to look for due
    /// work at once (new deliveries were routed), as each outcome recorded does.
    pub async fn run_until<S: DeliveryStore + 'static>(
        &self,
        store: Arc<S>,
        until: Until,
        wake: Arc<Notify>,
    ) -> Result<(), StoreError> {
        store.release_in_flight().await?;
        let (tx, mut rx) = mpsc::channel::<Finished>(4096);
        let writer = {
            let store = store.clone();
            let wake = wake.clone();
            tokio::spawn(async move {
                let mut batch = Vec::with_capacity(FINISH_BATCH);
                while rx.recv_many(&mut batch, FINISH_BATCH).await > 0 {
                    let late = store.finish(&batch).await?;
                    for (i, f) in batch.iter().enumerate() {
                        if late.contains(&i) {
                            log_late(f);
                        } else {
                            log_outcome(f);
                        }
                    }
                    batch.clear();
                    wake.notify_waiters();
                }
                Ok::<(), StoreError>(())
            })
        };
        let mut drivers = JoinSet::new();
        for d in self.dests.iter().filter(|d| !d.paused) {
            let driver = Driver {
                dest: d.clone(),
                trusts: self.trusts.clone(),
                connectors: self.connectors.clone(),
                store: store.clone(),
                tx: tx.clone(),
                wake: wake.clone(),
                until: until.clone(),
            };
            drivers.spawn(driver.drive());
        }
        drop(tx);
        let mut first_error = None;
        while let Some(r) = drivers.join_next().await {
            if let Ok(Err(e)) = r {
                first_error.get_or_insert(e);
            }
        }
        if let Ok(Err(e)) = writer.await {
            first_error.get_or_insert(e);
        }
        first_error.map_or(Ok(()), Err)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::time::Duration;

    use serde_json::json;
    use wiremock::matchers::{method, path};
    use wiremock::{Mock, MockServer, ResponseTemplate};

    use super::*;
    use crate::config::DestinationOverride;
    use crate::store::SqliteStore;

    /// The whole engine in process: records ingested into a real SQLite store, routed, and
    /// sent to a mock server, one refused once (`503`, `Retry-After: 0`) and retried.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_engine_run_routes_sends_retries_and_records() {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .and(path("/api/visits"))
            .respond_with(ResponseTemplate::new(503).insert_header("Retry-After", "0"))
            .up_to_n_times(1)
            .mount(&server)
            .await;
        Mock::given(method("POST"))
            .and(path("/api/visits"))
            .respond_with(ResponseTemplate::new(201).set_body_json(json!({"id": "T-1"})))
            .mount(&server)
            .await;
        let d = testkit::Deployment::new(&["V-1", "V-2"]);
        let trusts = d.trusts();
        let store = Arc::new(SqliteStore::open(&d.path("var/doorstep.db")).await.unwrap());
        crate::pipeline::ingest(
            store.as_ref(),
            vec![d.path("drop/visits.json")],
            trusts.clone(),
            &mut testkit::Quiet,
        )
        .await
        .unwrap();

        let engine = d.engine(trusts, &server.uri());
        assert!(engine.paused().is_empty());
        assert_eq!(engine.route(store.as_ref()).await.unwrap(), 2);
        assert_eq!(
            engine.route(store.as_ref()).await.unwrap(),
            0,
            "routed twice"
        );
        engine
            .run(store.clone(), Instant::now() + Duration::from_secs(20))
            .await
            .unwrap();

        let counts: Vec<(String, String, String, u64)> = store
            .delivery_counts()
            .await
            .unwrap()
            .into_iter()
            .map(|c| (c.trust, c.destination, c.state.to_string(), c.count))
            .collect();
        assert_eq!(
            counts,
            [("thrive".into(), "api".into(), "delivered".into(), 2)]
        );
        let requests = server.received_requests().await.unwrap();
        assert_eq!(requests.len(), 3, "two deliveries and one retry");
        // The retry goes with the refused request's key; the two records have their own.
        let keys: BTreeSet<&str> = requests
            .iter()
            .map(|r| r.headers.get("Idempotency-Key").unwrap().to_str().unwrap())
            .collect();
        assert_eq!(keys.len(), 2, "{keys:?}");
        let ids: BTreeSet<String> = requests
            .iter()
            .map(|r| {
                let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
                assert_eq!(body["event"], "visit_report");
                assert_eq!(body["school_urn"], "117800");
                body["record_id"].as_str().unwrap().to_owned()
            })
            .collect();
        assert_eq!(ids, BTreeSet::from(["V-1".to_owned(), "V-2".to_owned()]));
        store.close().await;
    }

    #[test]
    fn an_override_naming_no_destination_is_refused() {
        let d = testkit::Deployment::new(&[]);
        let connectors = Arc::new(Connectors::load(&d.path("connectors")).unwrap());
        let mut settings = DeliverySettings::default();
        settings.overrides.insert(
            ("thrive".into(), "api".into()),
            DestinationOverride {
                url: Some("http://127.0.0.1:9".into()),
                ..DestinationOverride::default()
            },
        );
        settings.overrides.insert(
            ("thrive".into(), "nowhere".into()),
            DestinationOverride {
                paused: true,
                ..DestinationOverride::default()
            },
        );
        let Err(e) = Engine::new(d.trusts(), connectors, &settings) else {
            panic!("an override of no destination was taken");
        };
        assert_eq!(
            e.to_string(),
            "trust `thrive`, destination `nowhere`: the config's [destinations] names a \
             destination no routes.toml has"
        );
    }

    #[test]
    fn plain_http_is_refused_beyond_loopback_unless_allowed() {
        let d = testkit::Deployment::new(&[]);
        let connectors = Arc::new(Connectors::load(&d.path("connectors")).unwrap());
        let engine = |url: &str, allow: bool| {
            let mut settings = DeliverySettings::default();
            settings.overrides.insert(
                ("thrive".into(), "api".into()),
                DestinationOverride {
                    url: Some(url.into()),
                    allow_plain_http: allow,
                    ..DestinationOverride::default()
                },
            );
            Engine::new(d.trusts(), connectors.clone(), &settings).map(|_| ())
        };
        for url in [
            "https://records.example.org/api?key=k",
            "http://127.0.0.1:9",
            "http://127.8.9.10:9/x",
            "http://localhost:9",
            "http://[::1]:9",
        ] {
            assert!(engine(url, false).is_ok(), "{url}");
        }
        for url in [
            "http://records.example.org/api?key=secret-in-query",
            "HTTP://records.example.org",
            "http://10.0.0.5:8080",
            "http://{{ vars.host }}/x",
        ] {
            let e = engine(url, false).unwrap_err().to_string();
            assert!(e.contains("(rule: plain-http)"), "{url}: {e}");
            assert!(e.contains("allow_plain_http"), "{url}: {e}");
            assert!(
                !e.contains("secret-in-query"),
                "the URL's query is never shown: {e}"
            );
            assert!(engine(url, true).is_ok(), "{url} with allow_plain_http");
        }
        assert_eq!(
            destinations::check_plain_http("token_url", "http://auth.example.org/t", false)
                .unwrap_err(),
            "`token_url` is plain http:// to auth.example.org, which is not loopback: \
             safeguarding records go over TLS (https://); set `allow_plain_http = true` on the \
             destination to allow it (rule: plain-http)"
        );
        assert_eq!(
            destinations::check_plain_http("url", "http://auth.example.org/t", true),
            Ok(true)
        );
    }

    #[test]
    fn a_paused_destination_is_listed_and_needs_no_url() {
        let d = testkit::Deployment::new(&[]);
        let connectors = Arc::new(Connectors::load(&d.path("connectors")).unwrap());
        let mut settings = DeliverySettings::default();
        settings.overrides.insert(
            ("thrive".into(), "api".into()),
            DestinationOverride {
                paused: true,
                ..DestinationOverride::default()
            },
        );
        let engine = Engine::new(d.trusts(), connectors.clone(), &settings).unwrap();
        assert_eq!(engine.paused(), [("thrive".to_owned(), "api".to_owned())]);
        // Un-paused, the same destination has no URL to send to.
        let Err(e) = Engine::new(d.trusts(), connectors, &DeliverySettings::default()) else {
            panic!("a destination without a URL was taken");
        };
        assert!(e.to_string().contains("no `url`"), "{e}");
    }
}
