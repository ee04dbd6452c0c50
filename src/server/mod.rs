//! HTTP service (SPEC §6, `doorstep serve`): a thin shell over the same library as the CLI.
//! `POST /v1/records` (`intake`) reads a body as a file is read, validates and runs policy
//! (`pipeline::validate`), stores durably through the committer (`commit`: group commit
//! over `TrailedStore::ingest`) before it answers, then wakes the delivery loop (`worker`),
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
mod export;
mod intake;
mod metrics;
mod worker;
pub use commit::{CommitError, Committer};
pub use metrics::Metrics;
pub use worker::delivery_loop;

use api::{Problem, Readiness, RecordView};

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tokio::sync::Notify;

use crate::deployment::Deployment;
use crate::keys::{self, KeyError};
use crate::mapping::Trusts;
use crate::store::keys::{KeyStore, StoredKey};
use crate::store::{AnyStore, DeliveryStore, Store};

/// The largest request body taken.
pub const MAX_BODY_BYTES: usize = 16 * 1024 * 1024;
/// Requests served at once; more wait.
const MAX_CONCURRENT: usize = 256;
/// A key's last use is written at most this often (not a store write per request).
const KEY_USE_NOTED_EVERY: Duration = Duration::from_secs(60);

/// Requests per key, over a window.
type KeyLimiter = governor::DefaultKeyedRateLimiter<String>;

/// What every handler shares.
pub struct AppState {
    pub store: Arc<AnyStore>,
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
    /// The signing key's state at the start, as `readyz` shows it: `Err` when unusable.
    pub signing: Result<&'static str, &'static str>,
    /// Where `GET /v1/export` writes an export before streaming it (beside the store,
    /// owner-only; each removed once opened).
    pub export_dir: std::path::PathBuf,
}

impl AppState {
    /// The shared state, and the committer task (done once the state is dropped).
    pub fn new(
        store: Arc<AnyStore>,
        trusts: Arc<Trusts>,
        work: Arc<Notify>,
        signing: Result<&'static str, &'static str>,
        key_rate: (NonZeroU32, NonZeroU32),
        export_dir: std::path::PathBuf,
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
            export_dir,
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
        Ok("not configured")
    } else {
        deployment.signer().map(|_| "loaded").map_err(|e| {
            tracing::error!(error = %e, "the signing key cannot be used");
            "unusable: see the log"
        })
    };
    let config = deployment.config();
    let (state, committing) = AppState::new(
        store.clone(),
        trusts,
        work.clone(),
        signing,
        (config.key_rate, config.key_burst),
        config
            .sqlite_path
            .parent()
            .unwrap_or(std::path::Path::new("."))
            .join(".doorstep-exports"),
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
        .route("/v1/records", post(intake::post_records))
        .route("/v1/records/{trust}/{kind}/{id}", get(get_record))
        .route("/v1/export", get(export::get_export))
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), timed))
        .layer(axum::middleware::from_fn_with_state(timeout, within))
        .layer(tower::limit::ConcurrencyLimitLayer::new(MAX_CONCURRENT))
        .with_state(state)
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
    let (deliveries, queues, log_sizes, dead_tuples, leases) = tokio::join!(
        app.store.delivery_counts(),
        app.store.queue_stats(now),
        app.store.audit_sizes(),
        app.store.dead_tuples(),
        app.store.leases()
    );
    if let Err(e) = deliveries
        .as_ref()
        .and(queues.as_ref())
        .and(log_sizes.as_ref())
        .and(dead_tuples.as_ref())
        .and(leases.as_ref())
    {
        tracing::error!(error = %e, "metrics: the store could not be read");
    }
    let scrape = metrics::Scrape {
        now,
        deliveries: deliveries.unwrap_or_default(),
        queues: queues.unwrap_or_default(),
        log_sizes: log_sizes.unwrap_or_default(),
        dead_tuples: dead_tuples.unwrap_or_default(),
        leases: leases.unwrap_or_default(),
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
    let store: Result<&str, &str> = match app.store.migrations_current().await {
        Ok(true) => Ok("ok"),
        Ok(false) => Err("migrations missing: run `doorstep migrate` (SQLite: restart doorstep)"),
        Err(e) => {
            tracing::error!(error = %e, "readyz: the store could not be read");
            Err("unreachable")
        }
    };
    let delivery = if app.delivering.load(std::sync::atomic::Ordering::SeqCst) {
        Ok("running")
    } else {
        Err("stopped")
    };
    let ready = store.is_ok() && delivery.is_ok() && app.signing.is_ok();
    let said = |r: Result<&str, &str>| r.unwrap_or_else(|e| e).to_owned();
    let checks = Readiness {
        store: said(store),
        delivery: said(delivery),
        signing_key: said(app.signing),
    };
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
