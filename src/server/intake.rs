//! `POST /v1/records`: a body read as a file is read, validated and policy-checked as `check`
//! does, the records a key may post stored through the committer before the answer, each
//! record's outcome in order; a problem when nothing was stored.
//!
//! Owns: the intake handler, its status codes and problems. May not touch: validation,
//! policy or storage (the library's), keys (`caller`).

use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::api::{FieldError, Outcome, PostAnswer, Problem, RaisedException, RecordOutcome};
use super::{AppState, MAX_BODY_BYTES, caller};
use crate::intake::{FileFormat, Item, read_body};
use crate::pipeline::{Validated, validate};
use crate::store::keys::Scope;
use crate::store::{IngestOutcome, IntakeBatch, NewRecord};

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
pub(super) async fn post_records(
    State(app): State<Arc<AppState>>,
    req: axum::extract::Request,
) -> Response {
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
