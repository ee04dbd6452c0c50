//! Delivery (SPEC §4): one tracked delivery per destination per record revision. Routing
//! turns stored revisions into deliveries; the engine sends what is due, each destination
//! on its own (its own concurrency, rate limit and backoff, so one failing destination or
//! record holds up no other), most urgent first, revisions of one record in order, and
//! records every outcome with its evidence-trail event.
//!
//! Owns: routing into deliveries, sending through the connectors, retries and dead letters.
//! May not touch: intake or validation; how a body is built (the mapping's).

pub mod lookup;
pub mod online;
pub mod plan;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use backon::BackoffBuilder;
use chrono::{SecondsFormat, Utc};
use serde_json::Value;
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinSet;

use crate::connectors::csv::CsvSink;
use crate::connectors::http::{Credentials, HttpSink, Request, loggable, webhook_key};
use crate::connectors::{Attempt, Connector, Connectors, Transport};
use crate::mapping::{RaisedException, Rendered, Trusts};
use crate::store::StoreError;
use crate::store::deliveries::{Claimed, DeliveryStore, Finished, Outcome};

#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    #[error("trust `{trust}`, destination `{destination}`: {reason}")]
    Destination {
        trust: String,
        destination: String,
        reason: String,
    },
}

/// What the deployment says about one destination beyond the mapping.
#[derive(Debug, Clone, Default)]
pub struct Override {
    /// Deliveries wait (nothing is sent) until the destination is un-paused.
    pub paused: bool,
    /// Replaces the mapping's `url` (staging against production, a test receiver).
    pub url: Option<String>,
    /// Replaces the mapping's `token_url` (a staging system has its own token service).
    pub token_url: Option<String>,
}

/// Engine settings from `doorstep.toml`.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    /// Where CSV destinations write: `<out>/<trust>/…`.
    pub out_dir: PathBuf,
    /// By (trust, destination).
    pub overrides: BTreeMap<(String, String), Override>,
}

enum Sink {
    Http(Arc<HttpSink>),
    Csv(Arc<CsvSink>),
}

/// One destination ready to send.
struct Dest {
    trust: String,
    name: String,
    connector: Arc<Connector>,
    sink: Sink,
    url: Option<String>,
    /// The endpoint every record goes to, instead of the one for its kind.
    endpoint: Option<String>,
    config: crate::mapping::Destination,
    /// The trust's folder (relative secret files are read from it).
    folder: PathBuf,
    limiter: Option<governor::DefaultDirectRateLimiter>,
    /// Shared by every destination of the trust on the same system (connector and URL):
    /// Thrive's notes and register are one Arbor, asked once per pupil.
    lookups: Arc<lookup::Lookups>,
    /// The look-up cache's name in the store: the connector and URL.
    lookup_scope: String,
    paused: bool,
}

impl Dest {
    fn endpoint(&self, kind: &str) -> Option<&crate::connectors::Endpoint> {
        self.connector.endpoint(self.endpoint.as_deref(), kind)
    }

    /// How many deliveries like this one go in one request: the endpoint's batch size for
    /// a create; 1 for an update (it names one target record) or an endpoint that does not
    /// batch.
    fn batch_size(&self, c: &Claimed) -> usize {
        match self.endpoint(c.kind.as_str()) {
            Some(e) if e.batch_pointer.is_some() && c.prior_target.is_none() => e.batch_size.max(1),
            _ => 1,
        }
    }
}

/// The delivery engine of one deployment.
pub struct Engine {
    trusts: Arc<Trusts>,
    connectors: Arc<Connectors>,
    dests: Vec<Arc<Dest>>,
    /// The look-up caches, one per (trust, system), each shared by its destinations.
    lookups: Vec<Arc<lookup::Lookups>>,
}

/// How many claimed deliveries a destination keeps ahead of its senders, per slot: enough
/// to keep sending while the next chunk is claimed, few enough that an urgent flag claimed
/// next waits only for this queue to drain.
const AHEAD: usize = 4;
/// The longest `Retry-After` honoured.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(86_400);
/// Outcomes committed together.
const FINISH_BATCH: usize = 512;

impl Engine {
    /// Resolves every destination of every trust: its connector, secrets and sink. A secret
    /// that cannot be read fails here, naming the destination and key, never the value.
    pub fn new(
        trusts: Arc<Trusts>,
        connectors: Arc<Connectors>,
        settings: &Settings,
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
                let mut overridden = d.clone();
                if let Some(t) = &ov.token_url {
                    overridden.token_url = Some(t.clone());
                }
                let d = &overridden;
                let connector = connectors.get(&d.connector).cloned().ok_or_else(|| {
                    fail(format!(
                        "no connector `{}` in the connectors folder",
                        d.connector
                    ))
                })?;
                let url = ov.url.clone().or_else(|| d.url.clone());
                let sink = if connector.transport == Transport::CsvFile {
                    Sink::Csv(Arc::new(CsvSink::new(
                        settings.out_dir.join(&trust.id),
                        connector.csv.utf8_bom,
                    )))
                } else if ov.paused {
                    // Nothing is sent; secrets are not needed until it is un-paused.
                    Sink::Http(Arc::new(
                        HttpSink::new(connector.clone(), Credentials::default()).map_err(fail)?,
                    ))
                } else {
                    Sink::Http(Arc::new(
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
                    sink,
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
            let batch = store.unrouted(1000).await?;
            if batch.is_empty() {
                return Ok(made);
            }
            let mut deliveries = Vec::new();
            let mut keys = Vec::with_capacity(batch.len());
            for r in &batch {
                deliveries.extend(plan::route_revision(&self.trusts, r));
                keys.push((r.trust.clone(), r.kind, r.id.clone(), r.revision));
            }
            made += deliveries.len();
            store.add_deliveries(&keys, &deliveries).await?;
        }
    }

    /// Sends everything due, and keeps going while retries fall due before `deadline`.
    /// Returns when nothing more is due before it.
    pub async fn run<S: DeliveryStore + 'static>(
        &self,
        store: Arc<S>,
        deadline: Instant,
    ) -> Result<(), StoreError> {
        store.release_in_flight().await?;
        let wake = Arc::new(Notify::new());
        let (tx, mut rx) = mpsc::channel::<Finished>(4096);
        let writer = {
            let store = store.clone();
            let wake = wake.clone();
            tokio::spawn(async move {
                let mut batch = Vec::with_capacity(FINISH_BATCH);
                while rx.recv_many(&mut batch, FINISH_BATCH).await > 0 {
                    store.finish(&batch).await?;
                    for f in &batch {
                        log_outcome(f);
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
                deadline,
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

/// A destination's HTTP client with its credentials read and checked against what its
/// connector authenticates with.
fn http_sink(
    folder: &std::path::Path,
    d: &crate::mapping::Destination,
    connector: &Arc<Connector>,
    url: Option<&str>,
) -> Result<HttpSink, String> {
    let c = credentials(folder, d)?;
    check_auth(connector, &c, url)?;
    HttpSink::new(connector.clone(), c)
}

/// A destination's credentials, read from its secret references (relative files from the
/// trust's folder). The error names the key, never a value.
fn credentials(
    base: &std::path::Path,
    d: &crate::mapping::Destination,
) -> Result<Credentials, String> {
    let secret = |key: &str, s: &Option<crate::config::SecretRef>| {
        s.as_ref()
            .map(|s| s.resolve(base).map_err(|r| format!("{key}: {r}")))
            .transpose()
    };
    let mut c = Credentials {
        username: secret("username", &d.username)?,
        password: secret("password", &d.password)?,
        token: secret("token", &d.token)?,
        client_id: secret("client_id", &d.client_id)?,
        client_secret: secret("client_secret", &d.client_secret)?,
        token_url: d.token_url.clone(),
        scopes: d.scopes.clone(),
        webhook_keys: Vec::new(),
    };
    for (i, s) in d.secrets.iter().enumerate() {
        let v = s.resolve(base).map_err(|r| format!("secrets[{i}]: {r}"))?;
        c.webhook_keys
            .push(webhook_key(&v).map_err(|r| format!("secrets[{i}]: {r}"))?);
    }
    Ok(c)
}

fn check_auth(c: &Connector, cred: &Credentials, url: Option<&str>) -> Result<(), String> {
    use crate::connectors::AuthScheme;
    if url.is_none_or(str::is_empty) {
        return Err("no `url` (in routes.toml or the deployment's [destinations])".into());
    }
    let missing = |k: &str| {
        Err(format!(
            "connector `{}` authenticates with {k}, which the destination does not give",
            c.name
        ))
    };
    match c.auth {
        AuthScheme::None => {}
        AuthScheme::Basic if cred.username.is_none() => return missing("`username`"),
        AuthScheme::Bearer if cred.token.is_none() => return missing("`token`"),
        AuthScheme::Oauth2ClientCredentials
            if cred.client_id.is_none() || cred.token_url.is_none() =>
        {
            return missing("`client_id`, `client_secret` and `token_url`");
        }
        _ => {}
    }
    if c.transport == Transport::Webhook && cred.webhook_keys.is_empty() {
        return Err("a webhook destination needs at least one signing secret in `secrets`".into());
    }
    Ok(())
}

/// Logs an outcome by ids and status: the target's own words (which may quote the record)
/// stay in the store, never in the log.
fn log_outcome(f: &Finished) {
    let c = &f.claimed;
    match &f.outcome {
        Outcome::Delivered { status, .. } => tracing::info!(
            trust = %c.trust, destination = %c.destination, kind = %c.kind, record_id = %c.record_id,
            revision = c.revision, status, "delivered"
        ),
        Outcome::Retry { error, next_at, .. } => tracing::warn!(
            trust = %c.trust, destination = %c.destination, kind = %c.kind, record_id = %c.record_id,
            revision = c.revision, error = %loggable(error), next_at = %next_at, "delivery failed; will retry"
        ),
        Outcome::Dead { error, .. } => tracing::error!(
            trust = %c.trust, destination = %c.destination, kind = %c.kind, record_id = %c.record_id,
            revision = c.revision, error = %loggable(error), "delivery dead-lettered"
        ),
    }
}

struct Driver<S> {
    dest: Arc<Dest>,
    trusts: Arc<Trusts>,
    connectors: Arc<Connectors>,
    store: Arc<S>,
    tx: mpsc::Sender<Finished>,
    wake: Arc<Notify>,
    deadline: Instant,
}

impl<S: DeliveryStore + 'static> Driver<S> {
    /// One destination's loop: keep its slots busy with the most urgent due deliveries.
    /// Claiming runs beside the sending (the next chunk is claimed while the current one is
    /// sent), so the store's commits are not on the senders' path.
    async fn drive(self) -> Result<(), StoreError> {
        let slots = self.dest.connector.limits.concurrency;
        // Room for full batches, where the connector batches.
        let batch = self
            .dest
            .connector
            .endpoints
            .values()
            .map(|e| e.batch_size)
            .max()
            .unwrap_or(1);
        let ahead = slots * AHEAD * batch;
        let mut queue: VecDeque<Claimed> = VecDeque::new();
        let mut sending: JoinSet<()> = JoinSet::new();
        let mut claiming: Option<tokio::task::JoinHandle<Result<Vec<Claimed>, StoreError>>> = None;
        // The last claim found nothing due: wait for an outcome or a moment before the next.
        let mut dry = false;
        loop {
            let notified = self.wake.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            while sending.try_join_next().is_some() {}
            if self.tx.is_closed() {
                // The outcome writer stopped (its store error ends the run): send no more.
                return Ok(());
            }
            if claiming.is_none() && !dry && queue.len() <= ahead / 2 {
                let (store, trust, name) = (
                    self.store.clone(),
                    self.dest.trust.clone(),
                    self.dest.name.clone(),
                );
                let limit = ahead - queue.len();
                claiming = Some(tokio::spawn(async move {
                    store.claim(&trust, &name, limit).await
                }));
            }
            while sending.len() < slots {
                let Some(c) = queue.pop_front() else { break };
                let env = Env {
                    dest: self.dest.clone(),
                    trusts: self.trusts.clone(),
                    connectors: self.connectors.clone(),
                    store: self.store.clone(),
                };
                let tx = self.tx.clone();
                let size = self.dest.batch_size(&c);
                if size > 1 {
                    // The next deliveries of the same kind and school (a school's URL may
                    // differ) that are creates too.
                    let mut batch = vec![c];
                    while batch.len() < size
                        && let Some(i) = queue.iter().position(|q| {
                            q.kind == batch[0].kind
                                && q.school == batch[0].school
                                && self.dest.batch_size(q) > 1
                        })
                    {
                        batch.extend(queue.remove(i));
                    }
                    sending.spawn(async move {
                        for finished in attempt_batch(&env, batch).await {
                            let _ = tx.send(finished).await;
                        }
                    });
                    continue;
                }
                sending.spawn(async move {
                    let finished = attempt(&env, c).await;
                    let _ = tx.send(finished).await;
                });
            }
            if queue.is_empty() && sending.is_empty() && claiming.is_none() {
                // Nothing claimed and nothing in flight: wait for the next retry, if it
                // falls before the deadline, or for an outcome elsewhere (a revision waiting
                // on its predecessor), else stop.
                let Some(next) = self
                    .store
                    .next_due(&self.dest.trust, &self.dest.name)
                    .await?
                else {
                    return Ok(());
                };
                let wait = chrono::DateTime::parse_from_rfc3339(&next)
                    .map(|t| {
                        (t.with_timezone(&Utc) - Utc::now())
                            .to_std()
                            .unwrap_or_default()
                    })
                    .unwrap_or_default();
                if Instant::now() + wait > self.deadline {
                    return Ok(());
                }
                tokio::select! {
                    _ = tokio::time::sleep(wait.max(Duration::from_millis(5))) => {}
                    _ = &mut notified => {}
                }
                dry = false;
                continue;
            }
            tokio::select! {
                got = async {
                    match claiming.as_mut() {
                        Some(handle) => handle.await,
                        None => std::future::pending().await,
                    }
                }, if claiming.is_some() => {
                    claiming = None;
                    let got = got.map_err(|e| StoreError::Io { location: "claim".into(), reason: e.to_string() })??;
                    dry = got.is_empty();
                    queue.extend(got);
                }
                _ = sending.join_next(), if !sending.is_empty() => {}
                _ = &mut notified => { dry = false; }
                _ = tokio::time::sleep(Duration::from_millis(100)), if dry => { dry = false; }
            }
        }
    }
}

/// What the senders of one destination share.
struct Env<S> {
    dest: Arc<Dest>,
    trusts: Arc<Trusts>,
    connectors: Arc<Connectors>,
    store: Arc<S>,
}

impl<S> Clone for Env<S> {
    fn clone(&self) -> Self {
        Env {
            dest: self.dest.clone(),
            trusts: self.trusts.clone(),
            connectors: self.connectors.clone(),
            store: self.store.clone(),
        }
    }
}

/// A delivery ready to go: what to send, and the school's `vars` for its URL.
struct Prepared {
    out: plan::Outgoing,
    vars: BTreeMap<String, String>,
}

/// Makes one attempt and decides what it comes to.
async fn attempt<S: DeliveryStore>(env: &Env<S>, c: Claimed) -> Finished {
    let result = match prepare(env, &c).await {
        Err(a) => a,
        Ok(p) => send(&env.dest, &c, p).await,
    };
    conclude(&env.dest.connector.limits, c, result)
}

/// Sends several deliveries of one kind as few requests as the endpoint allows: bodies
/// for the same URL that agree at the endpoint's `batch_by` pointers share a request, their
/// items at `batch_pointer` gathered into the first body's array there. Every delivery of a
/// request gets its outcome; one whose body cannot be built goes dead on its own.
async fn attempt_batch<S: DeliveryStore>(env: &Env<S>, batch: Vec<Claimed>) -> Vec<Finished> {
    let dest = &env.dest;
    let limits = &dest.connector.limits;
    let mut done = Vec::with_capacity(batch.len());
    // Members by (URL, batch_by values), in claim order.
    let mut groups: Vec<(String, Vec<Member>)> = Vec::new();
    for c in batch {
        match prepare(env, &c).await {
            Ok(Prepared {
                out:
                    plan::Outgoing {
                        rendered: Rendered::Body(body),
                        ..
                    },
                vars,
            }) => {
                let by = dest
                    .endpoint(c.kind.as_str())
                    .map(|e| e.batch_by.clone())
                    .unwrap_or_default();
                let group = match target_of(dest, &c, &vars) {
                    Ok((_, url, _)) => {
                        let values: Vec<String> = by
                            .iter()
                            .map(|p| body.pointer(p).map(Value::to_string).unwrap_or_default())
                            .collect();
                        format!("{url}\u{1f}{}", values.join("\u{1f}"))
                    }
                    Err(reason) => {
                        done.push(conclude(limits, c, permanent(reason)));
                        continue;
                    }
                };
                match groups.iter_mut().find(|(g, _)| *g == group) {
                    Some((_, members)) => members.push((c, body, vars)),
                    None => groups.push((group, vec![(c, body, vars)])),
                }
            }
            Ok(_) => done.push(conclude(
                limits,
                c,
                permanent("the map's output does not fit the connector".into()),
            )),
            Err(a) => done.push(conclude(limits, c, a)),
        }
    }
    for (_, members) in groups {
        done.extend(send_batch(dest, members).await);
    }
    done
}

/// One delivery of a batch: its body and its school's `vars`.
type Member = (Claimed, Value, BTreeMap<String, String>);

/// One request for the bodies of one batch group.
async fn send_batch(dest: &Arc<Dest>, members: Vec<Member>) -> Vec<Finished> {
    let limits = &dest.connector.limits;
    let Some((first, _, vars)) = members.first() else {
        return Vec::new();
    };
    let pointer = dest
        .endpoint(first.kind.as_str())
        .and_then(|e| e.batch_pointer.clone())
        .unwrap_or_default();
    let merged = match merge_bodies(members.iter().map(|(_, b, _)| b), &pointer) {
        Ok(m) => m,
        Err(reason) => {
            return members
                .into_iter()
                .map(|(c, _, _)| conclude(limits, c, permanent(reason.clone())))
                .collect();
        }
    };
    // The batch's key: the same for the same members, whatever the attempt.
    let key = plan::idempotency_key(
        &first.trust,
        &first.destination,
        "batch",
        &members
            .iter()
            .map(|(c, _, _)| c.idempotency_key.as_str())
            .collect::<Vec<_>>()
            .join(","),
        1,
    );
    let mut lead = first.clone();
    lead.idempotency_key = key;
    let prepared = Prepared {
        out: plan::Outgoing {
            destination: lead.destination.clone(),
            connector: dest.connector.name.clone(),
            map: lead.map.clone(),
            rendered: Rendered::Body(merged),
            file: None,
        },
        vars: vars.clone(),
    };
    let result = send(dest, &lead, prepared).await;
    members
        .into_iter()
        .map(|(c, _, _)| {
            // The target's id for the request (Wonde's writeback_id) is each member's.
            conclude(limits, c, result.clone())
        })
        .collect()
}

fn permanent(reason: String) -> Attempt {
    Attempt::Permanent {
        reason,
        status: None,
        response: None,
    }
}

/// One body holding every body's items at `pointer` (an array there, or a single value).
fn merge_bodies<'a>(
    mut bodies: impl Iterator<Item = &'a Value>,
    pointer: &str,
) -> Result<Value, String> {
    let mut merged = bodies.next().cloned().unwrap_or(Value::Null);
    let mut items: Vec<Value> = Vec::new();
    let take = |b: &Value, items: &mut Vec<Value>| -> Result<(), String> {
        match b.pointer(pointer) {
            Some(Value::Array(a)) => items.extend(a.iter().cloned()),
            Some(v) => items.push(v.clone()),
            None => {
                return Err(format!(
                    "the map's body has nothing at the batch pointer {pointer}"
                ));
            }
        }
        Ok(())
    };
    take(&merged, &mut items)?;
    for b in bodies {
        take(b, &mut items)?;
    }
    match merged.pointer_mut(pointer) {
        Some(slot) => *slot = Value::Array(items),
        None => {
            return Err(format!(
                "the map's body has nothing at the batch pointer {pointer}"
            ));
        }
    }
    Ok(merged)
}

/// What an attempt's result comes to: delivered, dead, or retried after a backoff (or the
/// target's `Retry-After`) until the connector's attempts run out.
fn conclude(limits: &crate::connectors::Limits, c: Claimed, result: Attempt) -> Finished {
    let outcome = match result {
        Attempt::Delivered { target_id, status } => Outcome::Delivered { target_id, status },
        Attempt::Permanent {
            reason,
            status,
            response,
        } => Outcome::Dead {
            error: reason,
            status,
            response,
        },
        Attempt::Retry {
            reason,
            status,
            response,
            ..
        } if c.attempts + 1 >= limits.max_attempts => Outcome::Dead {
            error: format!("gave up after {} attempts: {reason}", c.attempts + 1),
            status,
            response,
        },
        Attempt::Retry {
            reason,
            status,
            retry_after,
            ..
        } => {
            // A target's Retry-After is honoured up to a day (a bigger one is not believed).
            let delay = retry_after
                .map(|d| d.min(MAX_RETRY_AFTER))
                .unwrap_or_else(|| backoff(limits, c.attempts));
            let next =
                Utc::now() + chrono::Duration::from_std(delay).unwrap_or(chrono::Duration::days(1));
            Outcome::Retry {
                next_at: next.to_rfc3339_opts(SecondsFormat::Micros, true),
                error: reason,
                status,
            }
        }
    };
    Finished {
        claimed: c,
        at: Utc::now().to_rfc3339_opts(SecondsFormat::Micros, true),
        outcome,
    }
}

/// The delay before retry number `attempts + 1`: exponential from the connector's minimum,
/// doubling to its maximum, with jitter.
fn backoff(limits: &crate::connectors::Limits, attempts: u32) -> Duration {
    let min = Duration::from_secs_f64(limits.backoff_min_seconds);
    let max = Duration::from_secs_f64(limits.backoff_max_seconds);
    backon::ExponentialBuilder::default()
        .with_min_delay(min)
        .with_max_delay(max)
        .with_factor(2.0)
        .with_jitter()
        .without_max_times()
        .build()
        .nth(attempts as usize)
        .unwrap_or(max)
}

/// What to send: the record's look-ups made, then its body or row rendered; or what the
/// attempt comes to without sending (a map that cannot be built, a pupil the target does
/// not have: permanent, replayed after the fix; a look-up the target failed to answer:
/// retried).
async fn prepare<S: DeliveryStore>(env: &Env<S>, c: &Claimed) -> Result<Prepared, Attempt> {
    let dest = &env.dest;
    let trust = env.trusts.get(&c.trust).ok_or_else(|| {
        permanent(format!(
            "trust `{}` is no longer in the mappings folder",
            c.trust
        ))
    })?;
    let record: Value =
        serde_json::from_str(&c.canonical).map_err(|e| permanent(format!("stored record: {e}")))?;
    let raised: Vec<RaisedException> = c
        .exceptions
        .iter()
        .map(|(rule, severity)| RaisedException {
            rule: rule.clone(),
            severity: *severity,
        })
        .collect();
    let mut extras = plan::Extras {
        vars: dest.config.vars_for(&c.school),
        lookups: BTreeMap::new(),
        of_visit: None,
    };
    // An incident or flag of a visit: the visit report, current revision, beside it.
    if c.kind != crate::records::Kind::VisitReport
        && let Some(visit_id) = record.get("visit_id").and_then(Value::as_str)
    {
        let revisions = env
            .store
            .revisions(&c.trust, crate::records::Kind::VisitReport, visit_id)
            .await
            .map_err(|e| Attempt::Retry {
                reason: format!("reading the record's visit: {e}"),
                status: None,
                retry_after: None,
                response: None,
            })?;
        extras.of_visit = revisions
            .last()
            .and_then(|(_, canonical)| serde_json::from_str(canonical).ok());
    }
    let needs = plan::lookup_needs(
        trust,
        &env.connectors,
        &dest.name,
        &record,
        &raised,
        &extras,
    )
    .map_err(|e| permanent(format!("mapping: {e}")))?;
    for need in needs {
        let (Some(spec), Sink::Http(sink)) = (dest.connector.lookups.get(&need.name), &dest.sink)
        else {
            continue;
        };
        let scope = crate::store::lookups::LookupScope {
            trust: c.trust.clone(),
            destination: dest.lookup_scope.clone(),
            school: c.school.clone(),
            name: need.name.clone(),
        };
        let target = lookup::Target {
            sink,
            base_url: dest.url.as_deref().unwrap_or_default(),
            spec,
            vars: &extras.vars,
        };
        match dest
            .lookups
            .resolve(env.store.as_ref(), &target, &scope, &need.key)
            .await
        {
            Ok(crate::store::lookups::Cached::Found(v)) => {
                extras.lookups.insert(need.name, v);
            }
            // Named by the record, never by the value looked up (a UPN, a name).
            Ok(crate::store::lookups::Cached::NotFound) => {
                return Err(permanent(format!(
                    "look-up `{}`: the target has no match for {} {} of school {} \
                     (replay once the target has it)",
                    need.name, c.kind, c.record_id, c.school
                )));
            }
            Err(Attempt::Retry {
                reason,
                status,
                retry_after,
                response,
            }) => {
                return Err(Attempt::Retry {
                    reason: format!("look-up `{}`: {reason}", need.name),
                    status,
                    retry_after,
                    response,
                });
            }
            Err(Attempt::Permanent {
                reason,
                status,
                response,
            }) => {
                return Err(Attempt::Permanent {
                    reason: format!("look-up `{}`: {reason}", need.name),
                    status,
                    response,
                });
            }
            Err(other) => return Err(other),
        }
    }
    let out = plan::render(
        trust,
        &env.connectors,
        &dest.name,
        &c.map,
        &record,
        &raised,
        &extras,
    )
    .map_err(|e| permanent(format!("mapping: {e}")))?;
    Ok(Prepared {
        out,
        vars: extras.vars,
    })
}

/// The method, full URL and target-id rule of a delivery: the endpoint's create, or its
/// update of the target's record when an earlier revision created one.
fn target_of<'a>(
    dest: &'a Dest,
    c: &Claimed,
    vars: &BTreeMap<String, String>,
) -> Result<
    (
        reqwest::Method,
        String,
        Option<&'a crate::connectors::TargetId>,
    ),
    String,
> {
    let endpoint = dest.endpoint(c.kind.as_str()).ok_or_else(|| {
        format!(
            "connector `{}` has no endpoint for {}",
            dest.connector.name, c.kind
        )
    })?;
    let (method, path) = match (
        &c.prior_target,
        &endpoint.update_method,
        &endpoint.update_path,
    ) {
        (Some(_), Some(m), Some(p)) => (m.as_str(), p.as_str()),
        _ => (endpoint.method.as_str(), endpoint.path.as_str()),
    };
    let base = expand_path(
        dest.url
            .as_deref()
            .unwrap_or_default()
            .trim_end_matches('/'),
        vars,
        None,
    )?;
    let path = expand_path(path, vars, c.prior_target.as_deref())?;
    let url = if path.starts_with("https://") || path.starts_with("http://") {
        // A target id that is a whole URL (a `Location`): only on the destination's host.
        let same = |a: &str, b: &str| {
            reqwest::Url::parse(a)
                .ok()
                .zip(reqwest::Url::parse(b).ok())
                .is_some_and(|(a, b)| a.origin() == b.origin())
        };
        if !same(&path, &base) {
            return Err("the target id is a URL on another host than the destination's".into());
        }
        path
    } else {
        format!("{base}{path}")
    };
    let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap_or(reqwest::Method::POST);
    Ok((method, url, dest.connector.target_id(Some(endpoint))))
}

async fn send(dest: &Arc<Dest>, c: &Claimed, p: Prepared) -> Attempt {
    if let Some(l) = &dest.limiter {
        l.until_ready().await;
    }
    match (&dest.sink, p.out.rendered) {
        (Sink::Csv(sink), Rendered::Row { header, cells }) => {
            let file = p.out.file.unwrap_or_default();
            // CSV writes are blocking and one at a time per destination.
            let key = c.idempotency_key.clone();
            let sink = sink.clone();
            tokio::task::spawn_blocking(move || sink.append(&file, &header, &cells, &key))
                .await
                .unwrap_or_else(|e| Attempt::Retry {
                    reason: format!("CSV writer stopped: {e}"),
                    status: None,
                    retry_after: None,
                    response: None,
                })
        }
        (Sink::Http(sink), Rendered::Body(body)) => {
            let (method, url, target_id) = match target_of(dest, c, &p.vars) {
                Ok(t) => t,
                Err(reason) => return permanent(reason),
            };
            sink.send(&Request {
                method,
                url,
                body: &body,
                idempotency_key: &c.idempotency_key,
                vars: &p.vars,
                target_id,
            })
            .await
        }
        _ => permanent("the map's output does not fit the connector".into()),
    }
}

/// An endpoint path with `{{ vars.NAME }}` and `{{ target_id }}` filled in.
fn expand_path(
    path: &str,
    vars: &BTreeMap<String, String>,
    target_id: Option<&str>,
) -> Result<String, String> {
    let ctx = minijinja::context! {
        vars => crate::connectors::template::vars(vars),
        target_id => target_id.unwrap_or_default(),
    };
    crate::connectors::template::fill(path, ctx).map_err(|reason| {
        format!("`{path}`: {reason} (a school's values are in the destination's `schools`)")
    })
}
