//! The HTTP API's wire types — what a request is answered with — and the OpenAPI document
//! (`GET /v1/openapi.json`) generated from them and the handlers' annotations (utoipa), so
//! the document cannot drift from what the handlers send.
//!
//! Owns: the answer shapes and their conversion from the library's types. May not touch:
//! what the answers say (the handlers decide), the store.

use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};

use crate::store::deliveries::{DeliveryRow, RecordState};

/// What became of one record of a `POST /v1/records`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Stored, durably, as a new revision; delivery follows.
    Accepted,
    /// This revision with this content was already stored.
    Unchanged,
    /// This revision is already stored with other content, or a higher one is.
    Conflict,
    /// Invalid: see `errors`.
    Rejected,
    /// For a school (or trust) the key does not reach.
    Forbidden,
}

/// An input error: where in the record, which rule, and what is wrong.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct FieldError {
    /// RFC 6901 pointer into the record; null for an error of the body as a whole.
    pub path: Option<String>,
    pub rule: String,
    pub message: String,
}

/// A policy exception the stored revision raised.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RaisedException {
    pub rule: String,
    /// `info`, `warning` or `breach`.
    pub severity: String,
    pub message: String,
}

/// One record's line in a `POST /v1/records` answer, in the order the body held them.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RecordOutcome {
    /// 0-based position in the body.
    pub index: usize,
    pub record_id: Option<String>,
    pub revision: Option<u32>,
    pub outcome: Outcome,
    /// For `rejected`: every error found.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
    /// For `accepted`: the policy exceptions this revision raised.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exceptions: Option<Vec<RaisedException>>,
    /// For `forbidden` and `conflict`: why.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl RecordOutcome {
    pub fn new(
        index: usize,
        record_id: Option<String>,
        revision: Option<u32>,
        outcome: Outcome,
    ) -> Self {
        RecordOutcome {
            index,
            record_id,
            revision,
            outcome,
            errors: Vec::new(),
            exceptions: None,
            detail: None,
        }
    }

    /// Whether the record is stored (now or before).
    pub fn stored(&self) -> bool {
        matches!(self.outcome, Outcome::Accepted | Outcome::Unchanged)
    }
}

/// The answer to a `POST /v1/records` that stored something: 200 when every record was
/// stored, 207 when some were refused.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct PostAnswer {
    pub records: Vec<RecordOutcome>,
}

/// An RFC 9457 problem. `path` and `rule` are the CLI's, where one record's error is the
/// cause; `records` lists every record's outcome when a body was read.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Problem {
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub records: Option<Vec<RecordOutcome>>,
    /// For `readyz`: each check's state.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checks: Option<Readiness>,
    /// Seconds to wait, for 429 (also the `Retry-After` header).
    #[serde(skip)]
    pub retry_after: Option<u64>,
}

impl Problem {
    pub fn new(status: StatusCode, title: &str, detail: &str) -> Problem {
        Problem {
            kind: "about:blank".to_owned(),
            title: title.to_owned(),
            status: status.as_u16(),
            detail: detail.to_owned(),
            path: None,
            rule: None,
            records: None,
            checks: None,
            retry_after: None,
        }
    }

    pub fn rule(mut self, rule: &str) -> Problem {
        self.rule = Some(rule.to_owned());
        self
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = serde_json::to_string(&self).unwrap_or_default();
        let mut answer = (
            status,
            [(header::CONTENT_TYPE, "application/problem+json")],
            body,
        )
            .into_response();
        if status == StatusCode::UNAUTHORIZED {
            answer.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
        }
        if let Some(after) = self.retry_after {
            answer
                .headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from(after));
        }
        answer
    }
}

/// `GET /readyz`: each check's state.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Readiness {
    /// `ok`, `unreachable`, or migrations missing.
    pub store: String,
    /// The delivery loop: `running` or `stopped`.
    pub delivery: String,
    /// `loaded`, `not configured` (no checkpoints are signed) or `unusable`.
    pub signing_key: String,
}

/// One revision as stored: when, its content hash, whether it is the latest.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RevisionView {
    pub revision: u32,
    pub received_at: String,
    pub content_hash: String,
    pub current: bool,
}

/// A policy exception raised on a revision, and whether it still holds.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ExceptionView {
    pub revision: u32,
    pub rule: String,
    pub severity: String,
    pub message: String,
    /// `open`, `resolved` or `superseded`.
    pub state: String,
}

/// One revision's delivery to one destination. A target's error text is not shown here
/// (it may quote the record); `doorstep deadletter show` has it for the operator.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct DeliveryView {
    pub destination: String,
    pub revision: u32,
    /// `pending`, `in_flight`, `delivered`, `retrying` or `dead`.
    pub state: String,
    pub attempts: u32,
    /// When it is next due (RFC 3339).
    pub next_at: String,
    pub last_status: Option<u16>,
    /// The target's id for what was created or updated.
    pub target_id: Option<String>,
    pub delivered_at: Option<String>,
}

/// `GET /v1/records/{trust}/{kind}/{id}`: a record's revisions, exceptions and deliveries —
/// never its content.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RecordView {
    pub trust: String,
    /// `visit_report`, `incident` or `safeguarding_flag`.
    pub kind: String,
    pub id: String,
    /// The school of its latest revision.
    pub school: String,
    pub revisions: Vec<RevisionView>,
    pub exceptions: Vec<ExceptionView>,
    pub deliveries: Vec<DeliveryView>,
}

impl From<RecordState> for RecordView {
    fn from(s: RecordState) -> Self {
        let time = crate::store::time::format;
        RecordView {
            trust: s.trust,
            kind: s.kind.as_str().to_owned(),
            id: s.id,
            school: s.school,
            revisions: s
                .revisions
                .into_iter()
                .map(|r| RevisionView {
                    revision: r.revision,
                    received_at: r.received_at,
                    content_hash: r.content_hash,
                    current: r.current,
                })
                .collect(),
            exceptions: s
                .exceptions
                .into_iter()
                .map(|e| ExceptionView {
                    revision: e.revision,
                    rule: e.rule,
                    severity: e.severity,
                    message: e.message,
                    state: e.state,
                })
                .collect(),
            deliveries: s
                .deliveries
                .into_iter()
                .map(|d: DeliveryRow| DeliveryView {
                    destination: d.destination,
                    revision: d.revision,
                    state: d.state.to_string(),
                    attempts: d.attempts,
                    next_at: time(&d.next_at),
                    last_status: d.last_status,
                    target_id: d.target_id,
                    delivered_at: d.delivered_at.as_ref().map(time),
                })
                .collect(),
        }
    }
}

/// The OpenAPI document: every route, its answers and the bearer key.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "doorstep",
        description = "Home-visit records in; each school's systems out. Every request \
                       presents an API key as `Authorization: Bearer dsk_…`; a key reaches \
                       only its trust's named schools."
    ),
    paths(
        super::intake::post_records,
        super::get_record,
        super::export::get_export,
        super::healthz,
        super::readyz,
        super::metrics_text,
        super::openapi_json
    ),
    modifiers(&BearerKey),
    security(("api_key" = []))
)]
pub struct ApiDoc;

struct BearerKey;

impl Modify for BearerKey {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The document names every route with its answers, the answer types' schemas and the
    /// bearer key; the outcome enum lists what the handler sends.
    #[test]
    fn the_openapi_document_describes_every_route() {
        let doc = serde_json::to_value(ApiDoc::openapi()).unwrap();
        let paths = doc["paths"].as_object().unwrap();
        for (path, verb) in [
            ("/v1/records", "post"),
            ("/v1/records/{trust}/{kind}/{id}", "get"),
            ("/healthz", "get"),
            ("/readyz", "get"),
            ("/metrics", "get"),
            ("/v1/openapi.json", "get"),
        ] {
            assert!(paths[path][verb].is_object(), "{path} {verb}: {doc:#}");
        }
        let post = &paths["/v1/records"]["post"];
        for status in ["200", "207", "401", "403", "413", "415", "422", "429"] {
            assert!(post["responses"][status].is_object(), "{status}");
        }
        let schemas = &doc["components"]["schemas"];
        for name in [
            "PostAnswer",
            "RecordOutcome",
            "Problem",
            "RecordView",
            "Readiness",
        ] {
            assert!(schemas[name].is_object(), "{name}");
        }
        let outcomes = serde_json::to_string(&schemas["Outcome"]).unwrap();
        for o in ["accepted", "unchanged", "conflict", "rejected", "forbidden"] {
            assert!(outcomes.contains(o), "{o}: {outcomes}");
        }
        assert_eq!(
            doc["components"]["securitySchemes"]["api_key"]["scheme"],
            "bearer"
        );
    }
}
