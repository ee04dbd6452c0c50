//! HTTP service (SPEC §6, `doorstep serve`): a thin shell over the same library as the CLI.
//! `POST /v1/records` reads a body as a file is read (`intake::read_body`), validates and
//! runs policy (`pipeline::validate`), stores durably through the committer (`commit`: group
//! commit over `TrailedStore::ingest`) before it answers, then wakes the delivery loop,
//! which routes and delivers in process. `GET /v1/records/{trust}/{kind}/{id}` (state,
//! never content), `GET /healthz`, `GET /readyz`, `GET /metrics` (`metrics`),
//! `GET /v1/openapi.json` (`api`). Every error is RFC 9457 problem JSON with the CLI's
//! `path` and `rule`. Each request presents an API key (`keys`): a key reaches only its
//! trust's named schools. Connections are accepted by `conn` (header-read timeout, drain).
//!
//! Owns: HTTP — routes, status codes, problem JSON, the delivery loop's wake-ups. May not
//! touch: validation, policy, storage or delivery logic (the library's).

// A `Problem` is made at most once a request, on the way out: its size does not matter.
#![allow(clippy::result_large_err)]

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub mod api;
mod commit;
mod conn;
mod metrics;
pub use commit::{CommitError, Committer};
pub use metrics::Metrics;

use api::{
    FieldError, Outcome, PostAnswer, Problem, RaisedException, Readiness, RecordOutcome, RecordView,
};

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
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
/// Revisions `serve` routes a transaction.
const ROUTE_BATCH: usize = 200;
/// How long routing waits, once woken, for more records to route with the first.
const ROUTE_GATHER: Duration = Duration::from_millis(20);
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
    /// Keys read a moment ago: no store read per request.
    keys: keys::KeyCache,
    /// When each key's use was last written to the store.
    uses_noted: Mutex<HashMap<String, Instant>>,
    pub metrics: Metrics,
    /// Whether the delivery loop runs (`readyz`).
    pub delivering: Arc<std::sync::atomic::AtomicBool>,
    /// The signing key's state at the start, as `readyz` shows it.
    pub signing: String,
}

impl AppState {
    /// The shared state, and the committer task (done once the state is dropped).
    pub fn new(
        store: Arc<SqliteStore>,
        trusts: Arc<Trusts>,
        work: Arc<Notify>,
        signing: String,
        key_rate: (NonZeroU32, NonZeroU32),
    ) -> (AppState, tokio::task::JoinHandle<()>) {
        let metrics = Metrics::default();
        let (committer, committing) = Committer::start(store.clone(), metrics.commit_counter());
        let state = AppState {
            store,
            trusts,
            work,
            committer,
            limiter: governor::RateLimiter::keyed(
                governor::Quota::per_second(key_rate.0).allow_burst(key_rate.1),
            ),
            keys: keys::KeyCache::default(),
            uses_noted: Mutex::new(HashMap::new()),
            metrics,
            delivering: Arc::new(std::sync::atomic::AtomicBool::new(false)),
            signing,
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
    let signing = if !deployment.signs_checkpoints() {
        "not configured".to_owned()
    } else {
        match deployment.signer() {
            Ok(_) => "loaded".to_owned(),
            Err(e) => {
                tracing::error!(error = %e, "the signing key cannot be used");
                "unusable: see the log".to_owned()
            }
        }
    };
    let config = deployment.config();
    let (state, committing) = AppState::new(
        store.clone(),
        trusts,
        work.clone(),
        signing,
        (config.key_rate, config.key_burst),
    );
    let delivering = state.delivering.clone();
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
        delivery_loop(deployment, store.clone(), work, stop.clone(), delivering)
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
        .route("/healthz", get(healthz))
        .route("/v1/openapi.json", get(openapi_json))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .route("/v1/records", post(post_records))
        .route("/v1/records/{trust}/{kind}/{id}", get(get_record))
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), timed))
        .layer(axum::middleware::from_fn_with_state(timeout, within))
        .layer(tower::limit::ConcurrencyLimitLayer::new(MAX_CONCURRENT))
        .with_state(state)
}

/// Takes the drop folder, routes and delivers in process until `stop` is notified. Two
/// halves run side by side: routing — at once when a request stores new work, every second
/// regardless, the drop folder every `[intake] sweep_seconds`, checkpoints signed every
/// `[audit] checkpoint_seconds` — wakes the delivery run, which keeps every destination's
/// slots busy with its most urgent due deliveries (an `immediate` flag routed mid-run is
/// claimed next) and waits when there are none. On `stop` the run claims nothing more,
/// sends what it has claimed and ends; what is still pending waits for the next start.
/// `running` is true while delivery runs.
pub async fn delivery_loop(
    deployment: &Deployment,
    store: Arc<SqliteStore>,
    work: Arc<Notify>,
    stop: Arc<Notify>,
    running: Arc<std::sync::atomic::AtomicBool>,
) -> Result<(), crate::deployment::DeploymentError> {
    struct Running(Arc<std::sync::atomic::AtomicBool>);
    impl Drop for Running {
        fn drop(&mut self) {
            self.0.store(false, std::sync::atomic::Ordering::SeqCst);
        }
    }
    let engine = deployment.engine()?.clone();
    let config = deployment.config();
    let (stopping, until) = tokio::sync::watch::channel(false);
    let routed = Arc::new(Notify::new());
    let routing = async {
        let (mut next_sweep, mut next_checkpoint) =
            (Instant::now(), Instant::now() + config.checkpoint_every);
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
            // A batch at a time, the delivery run told after each: under a steady stream
            // of records an urgent one waits for one small batch, not for the stream to end.
            loop {
                match engine.route_some(store.as_ref(), ROUTE_BATCH).await {
                    Ok(None) => break,
                    Ok(Some(0)) => {}
                    Ok(Some(_)) => routed.notify_waiters(),
                    Err(e) => {
                        tracing::error!(error = %e, "routing failed");
                        break;
                    }
                }
            }
            if Instant::now() >= next_checkpoint {
                next_checkpoint = Instant::now() + config.checkpoint_every;
                for w in deployment.sign_checkpoints(store.as_ref()).await {
                    tracing::warn!(warning = %w, "checkpoint");
                }
            }
            tokio::select! {
                () = woken => {
                    // Let the requests arriving meanwhile be routed with this one: one
                    // routing transaction per moment, not one per request.
                    tokio::time::sleep(ROUTE_GATHER).await;
                }
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
                () = stop.notified() => {
                    let _ = stopping.send(true);
                    return;
                }
            }
        }
    };
    let delivering = async {
        running.store(true, std::sync::atomic::Ordering::SeqCst);
        let _running = Running(running.clone());
        // A run ends on the stop, or on a store error: then it starts again after a pause.
        loop {
            let run = engine.run_until(
                store.clone(),
                crate::delivery::Until::Stopped(until.clone()),
                routed.clone(),
            );
            match run.await {
                Ok(()) if *until.borrow() => return,
                Ok(()) => {}
                Err(e) => tracing::error!(error = %e, "delivery failed; starting again"),
            }
            if *until.borrow() {
                return;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    };
    tokio::join!(routing, delivering);
    Ok(())
}

/// Reports of a sweep go to the store (rejections are kept there) and the log's counts.
struct Quiet;

impl crate::pipeline::Reporter for Quiet {
    fn rejection(&mut self, _: &crate::report::Rejection) {}
    fn exception(&mut self, _: &crate::report::ExceptionReport) {}
    fn conflict(&mut self, _: &crate::report::Conflict) {}
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
        Err(_) => Problem::new(
            StatusCode::REQUEST_TIMEOUT,
            "Request timeout",
            "the request was not complete in time; nothing from it was stored",
        )
        .into_response(),
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

/// The process is up.
#[utoipa::path(get, path = "/healthz", security(()), responses((status = 200, description = "Up", body = String)))]
async fn healthz() -> &'static str {
    "ok\n"
}

/// Prometheus text (OpenMetrics): records received and refused, request latency, intake
/// transactions, and from the store each destination's deliveries by state, queue depth,
/// oldest due age, retries and dead letters, and each trust's log size. No key needed:
/// bind `serve` to loopback or a scraper's network.
#[utoipa::path(get, path = "/metrics", security(()), responses((status = 200, description = "Metrics", body = String, content_type = "application/openmetrics-text")))]
async fn metrics_text(State(app): State<Arc<AppState>>) -> Response {
    let now = chrono::Utc::now();
    let (deliveries, queues, log_sizes) = tokio::join!(
        app.store.delivery_counts(),
        app.store.queue_stats(now),
        app.store.audit_sizes()
    );
    if let Err(e) = deliveries
        .as_ref()
        .and(queues.as_ref())
        .and(log_sizes.as_ref())
    {
        tracing::error!(error = %e, "metrics: the store could not be read");
    }
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

/// Ready to take records: the store answers with every migration applied, the delivery
/// loop runs, and the signing key (where one is configured) loads.
#[utoipa::path(get, path = "/readyz", security(()), responses(
    (status = 200, description = "Ready", body = Readiness),
    (status = 503, description = "Not ready; `checks` says what is not", body = Problem, content_type = "application/problem+json"),
))]
async fn readyz(State(app): State<Arc<AppState>>) -> Response {
    let store = match app.store.migrations_current().await {
        Ok(true) => "ok",
        Ok(false) => "migrations missing: restart doorstep to apply them",
        Err(e) => {
            tracing::error!(error = %e, "readyz: the store could not be read");
            "unreachable"
        }
    };
    let checks = Readiness {
        store: store.to_owned(),
        delivery: if app.delivering.load(std::sync::atomic::Ordering::SeqCst) {
            "running"
        } else {
            "stopped"
        }
        .to_owned(),
        signing_key: app.signing.clone(),
    };
    let ready = store == "ok"
        && checks.delivery == "running"
        && !checks.signing_key.starts_with("unusable");
    if ready {
        axum::Json(checks).into_response()
    } else {
        let mut p = Problem::new(StatusCode::SERVICE_UNAVAILABLE, "Not ready", "see checks");
        p.checks = Some(checks);
        p.into_response()
    }
}

/// `GET /v1/openapi.json`: this API, generated from the handlers and their types.
#[utoipa::path(get, path = "/v1/openapi.json", security(()), responses((status = 200, description = "The OpenAPI document")))]
async fn openapi_json() -> Response {
    axum::Json(<api::ApiDoc as utoipa::OpenApi>::openapi()).into_response()
}

/// The key a request presents, checked; the problem to answer otherwise (401, one answer
/// for every kind of bad key; 429 when its rate is spent).
async fn caller(app: &AppState, headers: &HeaderMap) -> Result<StoredKey, Problem> {
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    match app.keys.authenticate(app.store.as_ref(), presented).await {
        Ok(k) => {
            if let Err(wait) = app.limiter.check_key(&k.id) {
                let after = wait
                    .wait_time_from(governor::clock::Clock::now(
                        &governor::clock::DefaultClock::default(),
                    ))
                    .as_secs()
                    .max(1);
                tracing::info!(key = %k.id, "rate limited");
                let mut p = Problem::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "Too many requests",
                    "this key's request rate is spent; try again after Retry-After",
                );
                p.retry_after = Some(after);
                return Err(p);
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
            Err(Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "Store unavailable",
                "the key could not be checked; try again",
            ))
        }
        Err(e) => {
            if let KeyError::Revoked(id) = &e {
                tracing::info!(key = %id, "a revoked key was presented");
            }
            Err(Problem::new(
                StatusCode::UNAUTHORIZED,
                "Unauthorized",
                "present a valid API key as `Authorization: Bearer <key>`",
            ))
        }
    }
}

/// A record's revisions, exceptions and delivery state per destination — never its
/// content. A record of a school the key does not reach is 404, as if it did not exist.
#[utoipa::path(
    get,
    path = "/v1/records/{trust}/{kind}/{id}",
    params(
        ("trust" = String, Path, description = "The trust's id"),
        ("kind" = String, Path, description = "`visit_report`, `incident` or `safeguarding_flag`"),
        ("id" = String, Path, description = "The record's id"),
    ),
    responses(
        (status = 200, description = "The record's state", body = RecordView),
        (status = 401, description = "No key, or a bad or revoked one", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such record, or one of a school the key does not reach", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "The key's rate is spent; see Retry-After", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn get_record(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
    Path((trust, kind, id)): Path<(String, String, String)>,
) -> Response {
    let key = match caller(&app, &headers).await {
        Ok(k) => k,
        Err(p) => return p.into_response(),
    };
    let not_found = || Problem::new(StatusCode::NOT_FOUND, "Not found", "no such record");
    let Some(kind) = crate::records::Kind::from_name(&kind) else {
        return not_found().into_response();
    };
    if key.trust != trust {
        return not_found().into_response();
    }
    match app.store.record_state(&trust, kind, &id).await {
        Ok(Some(state)) if key.reaches(&trust, &state.school) => {
            axum::Json(RecordView::from(state)).into_response()
        }
        Ok(_) => not_found().into_response(),
        Err(e) => {
            tracing::error!(error = %e, "reading a record's state failed");
            Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "Store unavailable",
                "the record could not be read; try again",
            )
            .into_response()
        }
    }
}

/// Reads a request's body whole, up to [`MAX_BODY_BYTES`]: larger (declared or streamed)
/// is 413 before it is all read.
async fn body_of(
    headers: &HeaderMap,
    body: axum::body::Body,
) -> Result<axum::body::Bytes, Problem> {
    let too_large = || {
        Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "Body too large",
            &format!(
                "a request body may be {} MiB at most; send fewer records a request",
                MAX_BODY_BYTES / (1024 * 1024)
            ),
        )
        .rule("body-too-large")
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY_BYTES as u64) {
        return Err(too_large());
    }
    let limited = http_body_util::Limited::new(body, MAX_BODY_BYTES);
    match http_body_util::BodyExt::collect(limited).await {
        Ok(b) => Ok(b.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(too_large()),
        Err(_) => Err(Problem::new(
            StatusCode::BAD_REQUEST,
            "Body not read",
            "the request body ended before it was whole",
        )
        .rule("body-unreadable")),
    }
}

/// The body's format from its media type.
fn format_of(headers: &HeaderMap) -> Result<FileFormat, Problem> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    match content_type.as_str() {
        "application/json" => Ok(FileFormat::Json),
        "application/x-ndjson" | "application/jsonl" => Ok(FileFormat::JsonLines),
        _ => Err(Problem::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "Unsupported media type",
            "send application/json (one record or an array) or application/x-ndjson",
        )
        .rule("media-type")),
    }
}

/// Records in: one record or an array (`application/json`), or JSON lines
/// (`application/x-ndjson`). Each is validated as `doorstep check` validates a file and its
/// trust's policy is run; those the key may post are stored durably — in one transaction,
/// shared with concurrent requests — before the answer, which lists every record's outcome
/// in order. Nothing valid is lost because a sibling is bad: some stored and some refused
/// is 207.
#[utoipa::path(
    post,
    path = "/v1/records",
    request_body(
        description = "One record or an array of records (SPEC §1), or JSON lines",
        content(
            (serde_json::Value = "application/json"),
            (String = "application/x-ndjson"),
        )
    ),
    responses(
        (status = 200, description = "Every record stored (accepted or unchanged)", body = PostAnswer),
        (status = 207, description = "Some stored, some refused: each record's outcome", body = PostAnswer),
        (status = 400, description = "The body ended before it was whole", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No key, or a bad or revoked one", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "A read-only key, or the one record is for a school the key does not reach", body = Problem, content_type = "application/problem+json"),
        (status = 408, description = "The request took longer than `[server] request_timeout_seconds`", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The one record conflicts with a stored revision", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body over 16 MiB", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Not JSON or JSON lines", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Nothing stored: the first refusal's `path` and `rule`, and every record's outcome", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "The key's rate is spent; see Retry-After", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The store could not be written; nothing was stored", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn post_records(State(app): State<Arc<AppState>>, req: axum::extract::Request) -> Response {
    match take_records(&app, req).await {
        Ok((status, answer)) => (status, axum::Json(answer)).into_response(),
        Err(p) => p.into_response(),
    }
}

async fn take_records(
    app: &AppState,
    req: axum::extract::Request,
) -> Result<(StatusCode, PostAnswer), Problem> {
    let (parts, body) = req.into_parts();
    let headers = parts.headers;
    // The key first: a body is read only for a caller who may send one.
    let key = caller(app, &headers).await?;
    if key.scope != Scope::Write {
        return Err(Problem::new(
            StatusCode::FORBIDDEN,
            "Forbidden",
            "this key may read, not post records",
        )
        .rule("key-scope"));
    }
    let format = format_of(&headers)?;
    let body = body_of(&headers, body).await?;
    let mut items = Vec::new();
    read_body(format, &body, &mut |item: Item| {
        items.push(item);
        true
    });
    let file = format!("api:{}", key.id);
    let mut lines: Vec<RecordOutcome> = Vec::new();
    let mut batch = IntakeBatch::default();
    // For each record written, its line's index, kind and the exceptions it raises.
    let mut written: Vec<(usize, crate::records::Kind, Vec<RaisedException>)> = Vec::new();
    for item in items {
        match validate(&file, item, &app.trusts) {
            Validated::Rejected(rejections) => {
                app.metrics.refused(rejections[0].rule.as_str());
                let mut line = RecordOutcome::new(
                    lines.len(),
                    rejections[0].record_id.clone(),
                    None,
                    Outcome::Rejected,
                );
                line.errors = rejections
                    .iter()
                    .map(|r| FieldError {
                        path: r.path.clone(),
                        rule: r.rule.as_str().to_owned(),
                        message: r.message.clone(),
                    })
                    .collect();
                lines.push(line);
                batch.rejections.extend(rejections);
            }
            Validated::Accepted { records, .. } => {
                for c in records {
                    let r = &c.parsed.record;
                    let (id, revision) = (r.id().to_string(), r.revision().0);
                    if !key.reaches(r.trust().as_str(), r.school().urn.as_str()) {
                        app.metrics.refused("forbidden");
                        tracing::warn!(key = %key.id, record_id = %id, "a record for a school the key does not reach");
                        let mut line = RecordOutcome::new(
                            lines.len(),
                            Some(id),
                            Some(revision),
                            Outcome::Forbidden,
                        );
                        line.detail = Some("this key does not reach the record's school".into());
                        lines.push(line);
                        continue;
                    }
                    let exceptions = c
                        .exceptions
                        .iter()
                        .map(|e| RaisedException {
                            rule: e.rule.as_str().to_owned(),
                            severity: e.severity.as_str().to_owned(),
                            message: e.message.clone(),
                        })
                        .collect();
                    written.push((lines.len(), r.kind(), exceptions));
                    lines.push(RecordOutcome::new(
                        lines.len(),
                        Some(id),
                        Some(revision),
                        Outcome::Accepted,
                    ));
                    batch
                        .records
                        .push(NewRecord::from_parsed(c.parsed, c.exceptions, &file, None));
                }
            }
        }
    }
    // Durable before the answer.
    if !batch.records.is_empty() || !batch.rejections.is_empty() {
        let outcomes = app.committer.ingest(batch).await.map_err(|e| {
            tracing::error!(error = %e, "storing a request's records failed");
            Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "Not stored",
                "the records could not be stored; nothing was accepted; try again",
            )
        })?;
        for ((index, kind, exceptions), o) in written.into_iter().zip(outcomes) {
            let line = &mut lines[index];
            match o {
                IngestOutcome::Stored => line.exceptions = Some(exceptions),
                IngestOutcome::Unchanged => line.outcome = Outcome::Unchanged,
                IngestOutcome::Conflict(c) => {
                    app.metrics.refused("conflict");
                    line.outcome = Outcome::Conflict;
                    line.detail = Some(c.to_string());
                }
            }
            if line.stored() {
                app.metrics.received(kind.as_str());
            }
        }
    }
    let stored = lines.iter().filter(|l| l.stored()).count();
    let refused = lines.len() - stored;
    if stored > 0 {
        app.work.notify_one();
    }
    tracing::info!(key = %key.id, stored, refused, "records posted");
    if stored == 0 && refused > 0 {
        return Err(nothing_stored(lines));
    }
    let status = if refused == 0 {
        StatusCode::OK
    } else {
        StatusCode::MULTI_STATUS
    };
    Ok((status, PostAnswer { records: lines }))
}

/// The problem for a request that stored nothing: the first refusal's path and rule; one
/// record refused for its school or a conflict says so in its status (403, 409).
fn nothing_stored(lines: Vec<RecordOutcome>) -> Problem {
    let one = lines.len() == 1;
    let (status, title, detail, path, rule) = match lines.first() {
        None => (
            StatusCode::UNPROCESSABLE_ENTITY,
            "No record",
            "the body holds no record".to_owned(),
            None,
            "no-records".to_owned(),
        ),
        Some(first) => {
            let (status, title, rule) = match first.outcome {
                Outcome::Forbidden if one => (StatusCode::FORBIDDEN, "Forbidden", "forbidden"),
                Outcome::Conflict if one => (StatusCode::CONFLICT, "Conflict", "conflict"),
                Outcome::Forbidden => (
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "No record stored",
                    "forbidden",
                ),
                Outcome::Conflict => (
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "No record stored",
                    "conflict",
                ),
                _ if one => (StatusCode::UNPROCESSABLE_ENTITY, "Record rejected", ""),
                _ => (StatusCode::UNPROCESSABLE_ENTITY, "No record stored", ""),
            };
            let error = first.errors.first();
            (
                status,
                title,
                error
                    .map(|e| e.message.clone())
                    .or_else(|| first.detail.clone())
                    .unwrap_or_else(|| "refused".to_owned()),
                error.and_then(|e| e.path.clone()),
                if rule.is_empty() {
                    error.map(|e| e.rule.clone()).unwrap_or_default()
                } else {
                    rule.to_owned()
                },
            )
        }
    };
    let mut p = Problem::new(status, title, &detail).rule(&rule);
    p.path = path;
    p.records = Some(lines);
    p
}
