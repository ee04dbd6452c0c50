//! HTTP service (SPEC §6, `doorstep serve`): a thin shell over the same library as the CLI.
//! `POST /v1/records` reads a body as a file is read (`intake::read_body`), validates and
//! runs policy (`pipeline::validate`), stores durably (`TrailedStore::ingest`) before it
//! answers, then wakes the delivery loop, which routes and delivers in process.
//! `GET /v1/records/{trust}/{kind}/{id}` (state, never content), `GET /healthz`,
//! `GET /readyz`. Every error is RFC 9457 problem JSON with the CLI's
//! `path` and `rule`. Each request presents an API key (`keys`): a key reaches only its
//! trust's named schools.
//!
//! Built so far: intake, record state, health, metrics (`metrics`), keys, a rate per key, a
//! concurrency limit and a request timeout, in-process delivery with the drop-folder sweep
//! and periodic checkpoints. Still to come (issue 18): OpenAPI, queue depth and age in the
//! metrics, group commit, the load benchmark.
//!
//! Owns: HTTP — routes, status codes, problem JSON, the delivery loop's wake-ups. May not
//! touch: validation, policy, storage or delivery logic (the library's).

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

mod commit;
mod conn;
mod metrics;
pub use commit::{CommitError, Committer};
pub use metrics::Metrics;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use tokio::sync::Notify;

use crate::deployment::Deployment;
use crate::intake::{FileFormat, Item, read_body};
use crate::keys::{self, KeyError};
use crate::mapping::Trusts;
use crate::pipeline::{Validated, validate};
use crate::store::keys::{KeyStore, Scope, StoredKey};
use crate::store::{DeliveryStore, IngestOutcome, IntakeBatch, NewRecord, SqliteStore, Store};

/// The largest request body taken.
pub const MAX_BODY_BYTES: usize = 16 * 1024 * 1024;
/// Requests served at once; more wait.
const MAX_CONCURRENT: usize = 256;
/// Requests a second one key may make, and the burst it may spend at once.
const KEY_RATE: NonZeroU32 = non_zero(100);
const KEY_BURST: NonZeroU32 = non_zero(200);

const fn non_zero(n: u32) -> NonZeroU32 {
    match NonZeroU32::new(n) {
        Some(n) => n,
        None => NonZeroU32::MIN,
    }
}
/// A key's last use is written at most this often (not a store write per request).
const KEY_USE_NOTED_EVERY: Duration = Duration::from_secs(60);

/// Requests per key, over a window.
type KeyLimiter = governor::DefaultKeyedRateLimiter<String>;

/// What every handler shares.
pub struct AppState {
    pub store: Arc<SqliteStore>,
    pub trusts: Arc<Trusts>,
    /// Woken when a request stores new work.
    pub work: Arc<Notify>,
    /// Intake's way to the store: concurrent requests share a transaction.
    committer: Committer,
    limiter: KeyLimiter,
    /// When each key's use was last written to the store.
    uses_noted: Mutex<HashMap<String, Instant>>,
    pub metrics: Metrics,
}

impl AppState {
    /// The shared state, and the committer task (done once the state is dropped).
    pub fn new(
        store: Arc<SqliteStore>,
        trusts: Arc<Trusts>,
        work: Arc<Notify>,
    ) -> (AppState, tokio::task::JoinHandle<()>) {
        let metrics = Metrics::default();
        let (committer, committing) = Committer::start(store.clone(), metrics.commit_counter());
        let state = AppState {
            store,
            trusts,
            work,
            committer,
            limiter: governor::RateLimiter::keyed(
                governor::Quota::per_second(KEY_RATE).allow_burst(KEY_BURST),
            ),
            uses_noted: Mutex::new(HashMap::new()),
            metrics,
        };
        (state, committing)
    }

    /// Whether this key's use is due to be written (and, if so, marks it written now).
    fn use_due(&self, key: &str) -> bool {
        let Ok(mut noted) = self.uses_noted.lock() else {
            return true;
        };
        let now = Instant::now();
        match noted.get(key) {
            Some(at) if now.duration_since(*at) < KEY_USE_NOTED_EVERY => false,
            _ => {
                noted.insert(key.to_owned(), now);
                true
            }
        }
    }
}

/// `doorstep serve`: the deployment's store, trusts and delivery engine behind the routes
/// on `listener`, with the delivery loop running beside them, until `shutdown` completes;
/// then in-flight requests finish, the loop stops after its current run, and each trust's
/// checkpoint is signed. Warnings (a checkpoint not signed) come back as lines.
pub async fn serve(
    deployment: &Deployment,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<Vec<String>, ServeError> {
    let trusts = deployment.trusts()?.clone();
    deployment.engine()?;
    let store = Arc::new(deployment.open_store().await?);
    let work = Arc::new(Notify::new());
    let stop = Arc::new(Notify::new());
    let (state, committing) = AppState::new(store.clone(), trusts, work.clone());
    let config = deployment.config();
    let app = router(Arc::new(state), config.request_timeout);
    let serving = async {
        conn::accept(listener, app, config.header_timeout, shutdown).await;
        // Every request has been answered, so the committer has nothing left to write;
        // it ends as the last state is dropped.
        if tokio::time::timeout(Duration::from_secs(10), committing)
            .await
            .is_err()
        {
            tracing::warn!("the intake committer did not stop");
        }
        stop.notify_one();
    };
    let ((), delivered) = tokio::join!(
        serving,
        delivery_loop(deployment, store.clone(), work, stop.clone())
    );
    let warnings = deployment.sign_checkpoints(store.as_ref()).await;
    store.close().await;
    delivered?;
    Ok(warnings)
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Deployment(#[from] crate::deployment::DeploymentError),
}

/// The routes, over `state`; a request taking longer than `timeout` is answered 408.
pub fn router(state: Arc<AppState>, timeout: Duration) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .route("/v1/records", post(post_records))
        .route("/v1/records/{trust}/{kind}/{id}", get(get_record))
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), timed))
        .layer(axum::middleware::from_fn_with_state(timeout, within))
        .layer(tower::limit::ConcurrencyLimitLayer::new(MAX_CONCURRENT))
        .with_state(state)
}

/// Takes the drop folder, routes and delivers in process until `stop` is notified: at once
/// when a request stores new work, every second for retries falling due, the drop folder
/// every `[intake] sweep_seconds`, checkpoints signed every `[audit] checkpoint_seconds`.
/// Once stopped, it routes and delivers what is due one last time, so nothing accepted before
/// the stop waits for the next start. One task does it all: one delivery run at a time.
pub async fn delivery_loop(
    deployment: &Deployment,
    store: Arc<SqliteStore>,
    work: Arc<Notify>,
    stop: Arc<Notify>,
) -> Result<(), crate::deployment::DeploymentError> {
    let engine = deployment.engine()?.clone();
    let config = deployment.config();
    let (mut next_sweep, mut next_checkpoint) =
        (Instant::now(), Instant::now() + config.checkpoint_every);
    let mut stopping = false;
    loop {
        let woken = work.notified();
        if Instant::now() >= next_sweep {
            next_sweep = Instant::now() + config.sweep;
            match deployment
                .take_drop_folder(store.as_ref(), &mut Quiet)
                .await
            {
                Ok(r) => {
                    for w in r.warnings {
                        tracing::warn!(warning = %w, "drop folder");
                    }
                }
                Err(e) => tracing::error!(error = %e, "taking the drop folder failed"),
            }
        }
        if let Err(e) = engine.route(store.as_ref()).await {
            tracing::error!(error = %e, "routing failed");
        }
        if let Err(e) = engine.run(store.clone(), Instant::now()).await {
            tracing::error!(error = %e, "delivery failed");
        }
        if Instant::now() >= next_checkpoint {
            next_checkpoint = Instant::now() + config.checkpoint_every;
            for w in deployment.sign_checkpoints(store.as_ref()).await {
                tracing::warn!(warning = %w, "checkpoint");
            }
        }
        if stopping {
            return Ok(());
        }
        tokio::select! {
            () = woken => {}
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
            () = stop.notified() => stopping = true,
        }
    }
}

/// Reports of a sweep go to the store (rejections are kept there) and the log's counts.
struct Quiet;

impl crate::pipeline::Reporter for Quiet {
    fn rejection(&mut self, _: &crate::report::Rejection) {}
    fn exception(&mut self, _: &crate::report::ExceptionReport) {}
    fn conflict(&mut self, _: &crate::report::Conflict) {}
}

/// An RFC 9457 problem.
fn problem(status: StatusCode, title: &str, detail: &str, extra: Value) -> Response {
    let mut body = json!({
        "type": "about:blank",
        "title": title,
        "status": status.as_u16(),
        "detail": detail,
    });
    if let (Some(b), Value::Object(extra)) = (body.as_object_mut(), extra) {
        b.extend(extra);
    }
    (
        status,
        [(header::CONTENT_TYPE, "application/problem+json")],
        body.to_string(),
    )
        .into_response()
}

/// Answers 408 (problem JSON) for a request not answered within `limit`, a slow body
/// included; the request's work is dropped, and with it any transaction not committed.
async fn within(
    State(limit): State<Duration>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(answer) => answer,
        Err(_) => problem(
            StatusCode::REQUEST_TIMEOUT,
            "Request timeout",
            "the request was not complete in time; nothing from it was stored",
            Value::Null,
        ),
    }
}

/// Times every routed request by its route's pattern (never its path: ids stay out).
async fn timed(
    State(app): State<Arc<AppState>>,
    matched: Option<axum::extract::MatchedPath>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let route = matched.map_or_else(|| "other".to_owned(), |m| m.as_str().to_owned());
    let started = Instant::now();
    let answer = next.run(req).await;
    app.metrics.took(&route, started.elapsed());
    answer
}

/// `GET /metrics`: Prometheus text (OpenMetrics), no key needed (bind it to loopback or a
/// scraper's network).
async fn metrics_text(State(app): State<Arc<AppState>>) -> Response {
    let now = chrono::Utc::now();
    let (deliveries, queues, log_sizes) = tokio::join!(
        app.store.delivery_counts(),
        app.store.queue_stats(now),
        app.store.audit_sizes()
    );
    let scrape = metrics::Scrape {
        now,
        deliveries: deliveries.unwrap_or_default(),
        queues: queues.unwrap_or_default(),
        log_sizes: log_sizes.unwrap_or_default(),
    };
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        app.metrics.encode(&scrape),
    )
        .into_response()
}

async fn readyz(State(app): State<Arc<AppState>>) -> Response {
    match app.store.delivery_counts().await {
        Ok(_) => (StatusCode::OK, "ready\n").into_response(),
        Err(_) => problem(
            StatusCode::SERVICE_UNAVAILABLE,
            "Not ready",
            "the store cannot be read",
            Value::Null,
        ),
    }
}

/// The key a request presents, checked; the problem to answer otherwise (401, one answer
/// for every kind of bad key).
async fn caller(app: &AppState, headers: &HeaderMap) -> Result<StoredKey, Response> {
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    match keys::authenticate(app.store.as_ref(), presented).await {
        Ok(k) => {
            if let Err(wait) = app.limiter.check_key(&k.id) {
                let after = wait
                    .wait_time_from(governor::clock::Clock::now(
                        &governor::clock::DefaultClock::default(),
                    ))
                    .as_secs()
                    .max(1);
                tracing::info!(key = %k.id, "rate limited");
                return Err((
                    [(header::RETRY_AFTER, after.to_string())],
                    problem(
                        StatusCode::TOO_MANY_REQUESTS,
                        "Too many requests",
                        "this key's request rate is spent; try again after Retry-After",
                        Value::Null,
                    ),
                )
                    .into_response());
            }
            if app.use_due(&k.id) {
                let now = crate::store::time::format(&chrono::Utc::now());
                if let Err(e) = app.store.key_used(&k.id, &now).await {
                    tracing::warn!(key = %k.id, error = %e, "cannot note the key's use");
                }
            }
            Ok(k)
        }
        Err(KeyError::Store(e)) => {
            tracing::error!(error = %e, "key check failed");
            Err(problem(
                StatusCode::SERVICE_UNAVAILABLE,
                "Store unavailable",
                "the key could not be checked; try again",
                Value::Null,
            ))
        }
        Err(e) => {
            if let KeyError::Revoked(id) = &e {
                tracing::info!(key = %id, "a revoked key was presented");
            }
            Err((
                [(header::WWW_AUTHENTICATE, "Bearer")],
                problem(
                    StatusCode::UNAUTHORIZED,
                    "Unauthorized",
                    "present a valid API key as `Authorization: Bearer <key>`",
                    Value::Null,
                ),
            )
                .into_response())
        }
    }
}

/// `GET /v1/records/{trust}/{kind}/{id}`: the record's revisions, exceptions and the
/// delivery state per destination — never its content. A record of a school the key does
/// not reach is 404, as if it did not exist.
async fn get_record(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
    Path((trust, kind, id)): Path<(String, String, String)>,
) -> Response {
    let key = match caller(&app, &headers).await {
        Ok(k) => k,
        Err(r) => return r,
    };
    let not_found = || {
        problem(
            StatusCode::NOT_FOUND,
            "Not found",
            "no such record",
            Value::Null,
        )
    };
    let Some(kind) = crate::records::Kind::from_name(&kind) else {
        return not_found();
    };
    if key.trust != trust {
        return not_found();
    }
    match app.store.record_state(&trust, kind, &id).await {
        Ok(Some(state)) if key.reaches(&trust, &state.school) => axum::Json(state).into_response(),
        Ok(_) => not_found(),
        Err(e) => {
            tracing::error!(error = %e, "reading a record's state failed");
            problem(
                StatusCode::SERVICE_UNAVAILABLE,
                "Store unavailable",
                "the record could not be read; try again",
                Value::Null,
            )
        }
    }
}

/// One record's line in the answer.
fn outcome_line(
    index: usize,
    record_id: Option<&str>,
    revision: Option<u32>,
    outcome: &str,
) -> Value {
    json!({"index": index, "record_id": record_id, "revision": revision, "outcome": outcome})
}

async fn post_records(State(app): State<Arc<AppState>>, req: axum::extract::Request) -> Response {
    let (parts, body) = req.into_parts();
    let headers = parts.headers;
    // The key first: a body is read only for a caller who may send one.
    let key = match caller(&app, &headers).await {
        Ok(k) => k,
        Err(r) => return r,
    };
    let too_large = || {
        problem(
            StatusCode::PAYLOAD_TOO_LARGE,
            "Body too large",
            &format!(
                "a request body may be {} MiB at most; send fewer records a request",
                MAX_BODY_BYTES / (1024 * 1024)
            ),
            json!({"rule": "body-too-large"}),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY_BYTES as u64) {
        return too_large();
    }
    let body =
        match http_body_util::BodyExt::collect(http_body_util::Limited::new(body, MAX_BODY_BYTES))
            .await
        {
            Ok(b) => b.to_bytes(),
            Err(e) if e.is::<http_body_util::LengthLimitError>() => return too_large(),
            Err(_) => {
                return problem(
                    StatusCode::BAD_REQUEST,
                    "Body not read",
                    "the request body ended before it was whole",
                    json!({"rule": "body-unreadable"}),
                );
            }
        };
    if key.scope != Scope::Write {
        return problem(
            StatusCode::FORBIDDEN,
            "Forbidden",
            "this key may read, not post records",
            Value::Null,
        );
    }
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    let format = match content_type.as_str() {
        "application/json" => FileFormat::Json,
        "application/x-ndjson" | "application/jsonl" => FileFormat::JsonLines,
        _ => {
            return problem(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "Unsupported media type",
                "send application/json (one record or an array) or application/x-ndjson",
                Value::Null,
            );
        }
    };
    let mut items = Vec::new();
    read_body(format, &body, &mut |item: Item| {
        items.push(item);
        true
    });
    let file = format!("api:{}", key.id);
    let mut lines = Vec::new();
    let mut batch = IntakeBatch::default();
    // For each record written, its line's index and the exceptions it raises.
    let mut written: Vec<(usize, crate::records::Kind, Vec<Value>)> = Vec::new();
    let (mut stored, mut refused) = (0usize, 0usize);
    for item in items {
        match validate(&file, item, &app.trusts) {
            Validated::Rejected(rejections) => {
                refused += 1;
                app.metrics.refused(rejections[0].rule.as_str());
                let first = &rejections[0];
                let mut line =
                    outcome_line(lines.len(), first.record_id.as_deref(), None, "rejected");
                line["errors"] = json!(rejections
                    .iter()
                    .map(|r| json!({"path": r.path, "rule": r.rule.as_str(), "message": r.message}))
                    .collect::<Vec<_>>());
                lines.push(line);
                batch.rejections.extend(rejections);
            }
            Validated::Accepted { records, .. } => {
                for c in records {
                    let r = &c.parsed.record;
                    let (id, revision) = (r.id().to_string(), r.revision().0);
                    if !key.reaches(r.trust().as_str(), r.school().urn.as_str()) {
                        refused += 1;
                        app.metrics.refused("forbidden");
                        tracing::warn!(key = %key.id, record_id = %id, "a record for a school the key does not reach");
                        let mut line =
                            outcome_line(lines.len(), Some(&id), Some(revision), "forbidden");
                        line["detail"] = "this key does not reach the record's school".into();
                        lines.push(line);
                        continue;
                    }
                    let exceptions: Vec<Value> = c
                        .exceptions
                        .iter()
                        .map(|e| json!({"rule": e.rule.as_str(), "severity": e.severity, "message": e.message}))
                        .collect();
                    written.push((lines.len(), r.kind(), exceptions));
                    lines.push(outcome_line(
                        lines.len(),
                        Some(&id),
                        Some(revision),
                        "accepted",
                    ));
                    batch
                        .records
                        .push(NewRecord::from_parsed(c.parsed, c.exceptions, &file, None));
                }
            }
        }
    }
    // Durable before the answer: one transaction for the request.
    if !batch.records.is_empty() || !batch.rejections.is_empty() {
        match app.committer.ingest(batch).await {
            Ok(outcomes) => {
                for ((index, kind, exceptions), o) in written.into_iter().zip(outcomes) {
                    let line = &mut lines[index];
                    if !matches!(o, IngestOutcome::Conflict(_)) {
                        app.metrics.received(kind.as_str());
                    }
                    match o {
                        IngestOutcome::Stored => {
                            stored += 1;
                            line["exceptions"] = Value::Array(exceptions);
                        }
                        IngestOutcome::Unchanged => {
                            stored += 1;
                            line["outcome"] = "unchanged".into();
                        }
                        IngestOutcome::Conflict(c) => {
                            refused += 1;
                            app.metrics.refused("conflict");
                            line["outcome"] = "conflict".into();
                            line["detail"] = c.to_string().into();
                        }
                    }
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "storing a request's records failed");
                return problem(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "Not stored",
                    "the records could not be stored; nothing was accepted; try again",
                    Value::Null,
                );
            }
        }
    }
    if stored > 0 {
        app.work.notify_one();
    }
    tracing::info!(key = %key.id, stored, refused, "records posted");
    let status = match (stored, refused) {
        (_, 0) => StatusCode::OK,
        (0, _) => StatusCode::UNPROCESSABLE_ENTITY,
        _ => StatusCode::MULTI_STATUS,
    };
    if status == StatusCode::UNPROCESSABLE_ENTITY {
        // Nothing stored: a problem, with the first refusal's path and rule; one record
        // refused for its school or for a conflict says so in its status.
        let line = &lines[0];
        let first = &line["errors"][0];
        let (title, code, rule) = match line["outcome"].as_str() {
            Some("forbidden") if lines.len() == 1 => {
                ("Forbidden", StatusCode::FORBIDDEN, json!("forbidden"))
            }
            Some("conflict") if lines.len() == 1 => {
                ("Conflict", StatusCode::CONFLICT, json!("conflict"))
            }
            Some("forbidden") => ("No record stored", status, json!("forbidden")),
            Some("conflict") => ("No record stored", status, json!("conflict")),
            _ if lines.len() == 1 => ("Record rejected", status, first["rule"].clone()),
            _ => ("No record stored", status, first["rule"].clone()),
        };
        let detail = first["message"]
            .as_str()
            .or(line["detail"].as_str())
            .unwrap_or("refused")
            .to_owned();
        return problem(
            code,
            title,
            &detail,
            json!({"path": first["path"], "rule": rule, "records": lines}),
        );
    }
    (status, axum::Json(json!({"records": lines}))).into_response()
}
