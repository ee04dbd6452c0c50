//! `GET /v1/export` (SPEC §6): the record exporter over HTTP for keys of scope `export` —
//! the CLI's parameters as query parameters, the key's trust and schools as the limit (a
//! school it does not reach is 404, as if it did not exist). The export is written by
//! `exporter::export` into a private folder beside the store (its `exported` event names
//! the key), then streamed from a file already unlinked, so nothing stays on disk.
//!
//! Owns: reading the query, the answer's headers. May not touch: choosing or formatting
//! records (the exporter's).

use std::path::PathBuf;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use chrono::NaiveDate;
use tokio::io::AsyncReadExt;

use super::api::Problem;
use super::{AppState, caller};
use crate::exporter::{self, ExportError, ExportRequest, Format};
use crate::records::Kind;
use crate::store::keys::Scope;

/// The query, read: repeated `school` and `kind` allowed.
fn request(
    query: &str,
    key_trust: &str,
    by: String,
    out: PathBuf,
) -> Result<ExportRequest, Problem> {
    let bad = |name: &str, why: String| {
        let mut p = Problem::new(StatusCode::BAD_REQUEST, "Bad request", &why).rule("query");
        p.path = Some(format!("/query/{name}"));
        p
    };
    let mut trust = None;
    let (mut schools, mut kinds) = (Vec::new(), Vec::new());
    let (mut pupil, mut from, mut to, mut format, mut reason) = (None, None, None, None, None);
    for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
        let v = v.into_owned();
        let day = |v: &str| {
            NaiveDate::parse_from_str(v, "%Y-%m-%d")
                .map_err(|_| bad(&k, "a day as YYYY-MM-DD".into()))
        };
        match k.as_ref() {
            "trust" => trust = Some(v),
            // Repeated, or several in one (`school=136401,136402`).
            "school" => schools.extend(
                v.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned),
            ),
            "pupil" => pupil = Some(v),
            "kind" => kinds
                .push(Kind::from_name(&v).ok_or_else(|| {
                    bad(&k, "visit_report, incident or safeguarding_flag".into())
                })?),
            "from" => from = Some(day(&v)?),
            "to" => to = Some(day(&v)?),
            "format" => format = Some(v.parse::<Format>().map_err(|e| bad(&k, e))?),
            "reason" => reason = Some(v.parse::<exporter::Reason>().map_err(|e| bad(&k, e))?),
            other => return Err(bad(other, format!("unknown parameter `{other}`"))),
        }
    }
    let need = |name: &str| bad(name, format!("`{name}` is required"));
    let format = format.ok_or_else(|| need("format"))?;
    if format == Format::Csv && kinds.len() != 1 {
        return Err(bad(
            "kind",
            "csv over HTTP is one kind's file: give exactly one `kind`".into(),
        ));
    }
    Ok(ExportRequest {
        // A key belongs to one trust: naming it is optional.
        trust: trust.unwrap_or_else(|| key_trust.to_owned()),
        schools,
        pupil,
        kinds,
        from: from.ok_or_else(|| need("from"))?,
        to: to.ok_or_else(|| need("to"))?,
        format,
        reason: reason.ok_or_else(|| need("reason"))?,
        out,
        by,
    })
}

fn unavailable(e: &dyn std::fmt::Display) -> Response {
    tracing::error!(error = %e, "export failed");
    Problem::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "Export failed",
        "the export could not be written; see the server's log",
    )
    .into_response()
}

/// Records out, as `doorstep export` writes them, for a key of scope `export`.
#[utoipa::path(
    get,
    path = "/v1/export",
    params(
        ("trust" = Option<String>, Query, description = "The key's trust (the default)"),
        ("school" = Option<Vec<String>>, Query, description = "School URNs (repeat, or comma-separated); default: every school the key reaches"),
        ("pupil" = Option<String>, Query, description = "Only this pupil's records (UPN)"),
        ("kind" = Option<Vec<String>>, Query, description = "Only these kinds (repeat); exactly one for csv"),
        ("from" = String, Query, description = "First day, YYYY-MM-DD"),
        ("to" = String, Query, description = "Last day, inclusive"),
        ("format" = String, Query, description = "jsonl, csv, chronology or html"),
        ("reason" = String, Query, description = "referral, case_review, subject_access, migration or audit"),
    ),
    responses(
        (status = 200, description = "The export (JSON lines, CSV or HTML)"),
        (status = 400, description = "A bad parameter (`path` names it)", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No key, or a bad or revoked one", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The key's scope is not `export`", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "A trust or school the key does not reach", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(super) async fn get_export(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
    uri: Uri,
) -> Response {
    let key = match caller(&app, &headers).await {
        Ok(k) => k,
        Err(p) => return p.into_response(),
    };
    if key.scope != Scope::Export {
        return Problem::new(
            StatusCode::FORBIDDEN,
            "Forbidden",
            "this key may not export records: make one with `keys create --export`",
        )
        .rule("key-scope")
        .into_response();
    }
    let mut req = match request(
        uri.query().unwrap_or_default(),
        &key.trust,
        format!("key:{}", key.id),
        PathBuf::new(),
    ) {
        Ok(r) => r,
        Err(p) => return p.into_response(),
    };
    let not_found = || {
        Problem::new(
            StatusCode::NOT_FOUND,
            "Not found",
            "no such trust or school",
        )
    };
    if req.trust != key.trust {
        return not_found().into_response();
    }
    if req.schools.is_empty() {
        req.schools = key.schools.clone();
    } else if req.schools.iter().any(|s| !key.reaches(&req.trust, s)) {
        return not_found().into_response();
    }
    let Some(trust) = app.trusts.get(&req.trust) else {
        return not_found().into_response();
    };
    let folder = match private_folder(&app.export_dir) {
        Ok(f) => f,
        Err(e) => return unavailable(&e),
    };
    let (content_type, file_name) = match req.format {
        Format::Jsonl => ("application/x-ndjson", "export.jsonl".to_owned()),
        Format::Csv => (
            "text/csv; charset=utf-8",
            format!("{}.csv", req.kinds[0].as_str()),
        ),
        Format::Chronology => ("text/csv; charset=utf-8", "chronology.csv".to_owned()),
        Format::Html => ("text/html; charset=utf-8", "chronology.html".to_owned()),
    };
    let path = match req.format {
        Format::Csv => {
            req.out = folder.path.clone();
            folder.path.join(&file_name)
        }
        _ => {
            req.out = folder.path.join(&file_name);
            req.out.clone()
        }
    };
    match exporter::export(app.store.as_ref(), trust, &req).await {
        Ok(_) => {}
        Err(ExportError::Request(why)) => {
            return Problem::new(StatusCode::BAD_REQUEST, "Bad request", &why)
                .rule("query")
                .into_response();
        }
        Err(e) => return unavailable(&e),
    }
    // Opened, then unlinked with its folder: the answer streams from the open file.
    let file = match tokio::fs::File::open(&path).await {
        Ok(f) => f,
        Err(e) => return unavailable(&e),
    };
    drop(folder);
    let body = futures_util::stream::unfold(file, |mut file| async move {
        let mut buf = vec![0u8; 64 * 1024];
        match file.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok::<_, std::io::Error>(bytes::Bytes::from(buf)), file))
            }
            Err(e) => Some((Err(e), file)),
        }
    });
    let download = format!(
        "attachment; filename=\"{}-{}-{}-{}\"",
        req.trust, req.from, req.to, file_name
    );
    let mut answer = Body::from_stream(body).into_response();
    let h = answer.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; style-src 'unsafe-inline'"),
    );
    if let Ok(v) = HeaderValue::from_str(&download) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    answer
}

/// A folder of one export, owner-only, removed with everything in it when dropped.
struct PrivateFolder {
    path: PathBuf,
}

impl Drop for PrivateFolder {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

fn private_folder(under: &std::path::Path) -> std::io::Result<PrivateFolder> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(under)?;
    let mut random = [0u8; 16];
    getrandom::fill(&mut random).map_err(|e| std::io::Error::other(e.to_string()))?;
    let path = under.join(hex::encode(random));
    std::fs::DirBuilder::new().mode(0o700).create(&path)?;
    Ok(PrivateFolder { path })
}
