//! What a connector file says: the TOML types (`transport`, `auth`, `[limits]`, `[request]`,
//! `[endpoints.*]`, `[response]`, `[csv]`, `[lookups.*]`, `[token]`, `[check]`) with their
//! defaults, and the endpoint and target id a record gets from them.
//! Owns: the file's shape. May not touch: reading or checking files (`load`), sending.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TransportKind {
    /// A JSON API: POST to create, optionally PUT/PATCH to update.
    HttpJson,
    /// JSON signed per Standard Webhooks.
    Webhook,
    /// Rows appended to CSV files under the deployment's `out` folder.
    CsvFile,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum AuthScheme {
    #[default]
    None,
    /// HTTP Basic from the destination's `username` and `password`.
    Basic,
    /// `Authorization: Bearer` with the destination's `token`.
    Bearer,
    /// OAuth2 client credentials at the destination's `token_url`.
    Oauth2ClientCredentials,
    /// A token from the destination's `token_url` for a JSON body of the connector's
    /// `[token]` (Groupcall's Idaas tokens): one token per distinct body, so per school
    /// where the body names the school.
    TokenExchange,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Connector {
    #[serde(skip)]
    pub name: String,
    #[serde(default)]
    pub description: String,
    pub transport: TransportKind,
    #[serde(default)]
    pub auth: AuthScheme,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub request: RequestRules,
    /// By record kind, or `default` for every kind without its own.
    #[serde(default)]
    pub endpoints: BTreeMap<String, Endpoint>,
    #[serde(default)]
    pub response: ResponseRules,
    #[serde(default)]
    pub csv: CsvRules,
    /// Look-ups an endpoint may use (`lookups = ["student"]`): the target's id for a value
    /// of the record, read from the target and cached in the store.
    #[serde(default)]
    pub lookups: BTreeMap<String, Lookup>,
    /// With `auth = "token_exchange"`: how a token is asked for.
    #[serde(default)]
    pub token: Option<TokenExchange>,
    /// What `config check --online` reads to prove the destination answers.
    #[serde(default)]
    pub check: Option<OnlineCheck>,
}

/// A look-up: the target's id for one of the record's values ("the pupil with this UPN",
/// "the code with this letter").
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lookup {
    /// The value looked up, a template over the record (`{{ pupil.upn }}`); a look-up whose
    /// key comes out empty is not made (the map sees no value).
    pub key: String,
    /// Appended to the destination's `url`; a template of `vars` and `key`
    /// (`/students?upn={{ key | urlencode }}`).
    pub path: String,
    /// The path lists every entry (no key in it): every page is read once and every entry
    /// cached, so a run costs one listing, not one request per key.
    #[serde(default)]
    pub all: bool,
    /// JSON pointer of the list of results in a page ("" when the page is the list).
    #[serde(default)]
    pub items: String,
    /// JSON pointer, in one result, of the value compared with the key. Without it (a path
    /// that filters by the key), the first result is the match.
    #[serde(default, rename = "match")]
    pub match_pointer: Option<String>,
    /// JSON pointer, in the matching result, of the id kept.
    pub value: String,
    /// JSON pointer, in a page, of the next page's URL (absolute on the same host, or a path).
    #[serde(default)]
    pub next: Option<String>,
    /// How long a found id is kept.
    #[serde(default = "default_ttl_hours")]
    pub ttl_hours: f64,
    /// How long "not found" is kept (so a missing pupil costs one look-up a while, not one
    /// per record).
    #[serde(default = "default_not_found_minutes")]
    pub not_found_minutes: f64,
}

fn default_ttl_hours() -> f64 {
    24.0
}
fn default_not_found_minutes() -> f64 {
    10.0
}

/// A token asked for with a JSON body (`auth = "token_exchange"`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenExchange {
    /// The body POSTed to the destination's `token_url`: each value a template of `vars`
    /// and the destination's secrets (`{{ password }}`, `{{ username }}`, `{{ client_id }}`).
    pub body: BTreeMap<String, String>,
    /// JSON pointer of the token in the answer.
    pub token_pointer: String,
    /// JSON pointer of its expiry: seconds from now, or a date-time (RFC 3339; without an
    /// offset, UTC).
    #[serde(default)]
    pub expires_pointer: Option<String>,
    /// `Authorization: <scheme> <token>`.
    pub scheme: String,
}

/// `config check --online`: a read that needs the credentials and changes nothing.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OnlineCheck {
    /// Appended to the destination's `url`; a template of `vars` (per school when the
    /// destination lists schools).
    pub path: String,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Requests in flight at once to one destination.
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// Requests a second to one destination; unlimited when absent.
    #[serde(default)]
    pub rate_per_second: Option<u32>,
    /// Whole-request timeout.
    #[serde(default = "default_timeout")]
    pub timeout_seconds: f64,
    /// Attempts before a retryable failure goes dead.
    #[serde(default = "default_attempts")]
    pub max_attempts: u32,
    /// First retry delay and the cap of the exponential backoff (jittered).
    #[serde(default = "default_backoff_min")]
    pub backoff_min_seconds: f64,
    #[serde(default = "default_backoff_max")]
    pub backoff_max_seconds: f64,
}

fn default_concurrency() -> usize {
    4
}
fn default_timeout() -> f64 {
    30.0
}
fn default_attempts() -> u32 {
    10
}
fn default_backoff_min() -> f64 {
    1.0
}
fn default_backoff_max() -> f64 {
    600.0
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            concurrency: default_concurrency(),
            rate_per_second: None,
            timeout_seconds: default_timeout(),
            max_attempts: default_attempts(),
            backoff_min_seconds: default_backoff_min(),
            backoff_max_seconds: default_backoff_max(),
        }
    }
}

impl Connector {
    /// What an endpoint does before sending a create again after a lost answer.
    pub fn lost_answer(&self, endpoint: &Endpoint) -> LostAnswer {
        match endpoint.lost_answer {
            Some(l) => l,
            None if endpoint.reconcile.is_some() => LostAnswer::Reconcile,
            None if self.request.idempotency_header.is_some()
                || self.transport == TransportKind::Webhook =>
            {
                LostAnswer::Resend
            }
            None => LostAnswer::Check,
        }
    }
}

impl Limits {
    pub fn timeout(&self) -> Duration {
        Duration::from_secs_f64(self.timeout_seconds)
    }

    /// These limits with a deployment's overrides applied, each in its place.
    pub fn overridden(&self, o: &crate::config::LimitOverrides) -> Limits {
        Limits {
            concurrency: o.concurrency.unwrap_or(self.concurrency),
            rate_per_second: o.rate_per_second.or(self.rate_per_second),
            timeout_seconds: o.timeout_seconds.unwrap_or(self.timeout_seconds),
            max_attempts: o.max_attempts.unwrap_or(self.max_attempts),
            backoff_min_seconds: o.backoff_min_seconds.unwrap_or(self.backoff_min_seconds),
            backoff_max_seconds: o.backoff_max_seconds.unwrap_or(self.backoff_max_seconds),
        }
    }

    /// The first rule these limits break, as (key under `limits.`, what it must be).
    pub fn check(&self) -> Result<(), (&'static str, &'static str)> {
        if !(1..=1024).contains(&self.concurrency) {
            return Err(("concurrency", "from 1 to 1024"));
        }
        if self.rate_per_second == Some(0) {
            return Err(("rate_per_second", "at least 1 (leave it out for no limit)"));
        }
        if !(self.timeout_seconds > 0.0 && self.timeout_seconds <= 600.0) {
            return Err(("timeout_seconds", "above 0 and at most 600"));
        }
        if self.max_attempts == 0 {
            return Err(("max_attempts", "at least 1"));
        }
        if !(self.backoff_min_seconds > 0.0 && self.backoff_max_seconds >= self.backoff_min_seconds)
        {
            return Err((
                "backoff_min_seconds",
                "above 0 and at most backoff_max_seconds",
            ));
        }
        if self.backoff_max_seconds > 86_400.0 {
            return Err(("backoff_max_seconds", "at most 86400 (a day)"));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestRules {
    /// The header carrying the idempotency key, for systems that accept one
    /// (webhooks carry it as `webhook-id` in any case).
    #[serde(default)]
    pub idempotency_header: Option<String>,
    /// Fixed, non-secret headers.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Endpoint {
    #[serde(default = "default_post")]
    pub method: String,
    /// Appended to the destination's `url`; a template (`{{ vars.school_id }}`).
    #[serde(default)]
    pub path: String,
    /// How a later revision updates what an earlier one created (`{{ target_id }}` is the
    /// stored id); absent: a later revision is sent like the first.
    #[serde(default)]
    pub update_method: Option<String>,
    #[serde(default)]
    pub update_path: Option<String>,
    /// What an update carries: the whole body (`full`, the default), or only the fields that
    /// changed since the revision the target has (`changed`) — the fields of the object at
    /// `fields_at`, each compared whole; when none changed, no request is made.
    #[serde(default)]
    pub update_body: UpdateBody,
    /// The JSON pointer of the object whose fields `update_body = "changed"` compares
    /// (Arbor: `/request/pastoralNote`); default: the body itself.
    #[serde(default)]
    pub fields_at: String,
    /// What happens before a create is sent again after an attempt whose answer was lost
    /// (it may have taken effect); see [`LostAnswer`]. Default: `resend` where the
    /// connector sends an idempotency key or is a webhook, else `check`.
    #[serde(default)]
    pub lost_answer: Option<LostAnswer>,
    /// How to find what a create made (`lost_answer = "reconcile"`).
    #[serde(default)]
    pub reconcile: Option<Reconcile>,
    /// Records a create request carries at most (for systems that take a list); with
    /// `batch_pointer`, the JSON pointer of the list in the map's body.
    #[serde(default = "one")]
    pub batch_size: usize,
    #[serde(default)]
    pub batch_pointer: Option<String>,
    /// JSON pointers into each body that must agree for bodies to share a request (one
    /// date per request: `["/Marks/0/Date"]`). Bodies for different paths never share one.
    #[serde(default)]
    pub batch_by: Vec<String>,
    /// The connector's look-ups this endpoint's maps use (`{{ lookup.student }}`).
    #[serde(default)]
    pub lookups: Vec<String>,
    /// Where this endpoint's created id is, when it differs from `[response] target_id`.
    #[serde(default)]
    pub target_id: Option<TargetId>,
}

/// Before a create is sent again after a lost answer (`lost_answer`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LostAnswer {
    /// The target makes no duplicate (an upsert by natural key, create-or-update, an
    /// idempotency key it honours): send again.
    Resend,
    /// Look for it (`reconcile`): found, its id is adopted and nothing is sent; not
    /// found, it is sent.
    Reconcile,
    /// No way to tell: the delivery is held as a dead letter naming rule `needs-check`
    /// until a person has looked at the target and replays it.
    Check,
}

/// How to find what a create made: a read whose items are matched against the create's
/// body.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reconcile {
    /// Appended to the destination's `url`: a template of `vars` and `body` (the create's
    /// body), e.g. `/rest-v2/pastoral-notes?filters.student.equals={{ body.request.pastoralNote.student.href | urlencode }}`.
    pub path: String,
    /// JSON pointer of the list in the answer; empty: the answer is the list.
    #[serde(default)]
    pub items: String,
    /// Item pointer → body pointer: an item is the create's when every pair holds equal,
    /// present values (a reference doorstep wrote, such as `[doorstep ID rN]` in a summary).
    #[serde(rename = "match")]
    pub match_fields: BTreeMap<String, String>,
    /// JSON pointer of the target's id in the item found.
    pub value: String,
}

/// What an update carries (`update_body`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UpdateBody {
    #[default]
    Full,
    Changed,
}

fn one() -> usize {
    1
}

fn default_post() -> String {
    "POST".into()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResponseRules {
    /// Statuses retried (with 5xx always): default 408, 425, 429.
    #[serde(default = "default_retry_status")]
    pub retry_status: Vec<u16>,
    /// JSON pointers into a 2xx body: a non-empty value at any of them means the target
    /// refused the record (for systems that answer 200 with an error inside).
    #[serde(default)]
    pub error_pointers: Vec<String>,
    /// Where the created record's id is: a JSON pointer into the body, or a header.
    #[serde(default)]
    pub target_id: Option<TargetId>,
    /// JSON pointers of the target's own explanation in an error body; the first found is
    /// kept in the dead letter's reason (never logged: it may quote the record).
    #[serde(default)]
    pub message_pointers: Vec<String>,
    /// JSON pointer of an exception's type in a 2xx body (Xporter's `ExceptionType`): a
    /// body with one is not a success but is classified as the status it stands for.
    #[serde(default)]
    pub exception_pointer: Option<String>,
    /// The status each exception type stands for.
    #[serde(default)]
    pub exception_status: BTreeMap<String, u16>,
    /// The status an exception type not listed stands for.
    #[serde(default = "default_exception_status")]
    pub exception_default_status: u16,
}

fn default_exception_status() -> u16 {
    500
}

fn default_retry_status() -> Vec<u16> {
    vec![408, 425, 429]
}

impl Default for ResponseRules {
    fn default() -> Self {
        ResponseRules {
            retry_status: default_retry_status(),
            error_pointers: Vec::new(),
            target_id: None,
            message_pointers: Vec::new(),
            exception_pointer: None,
            exception_status: BTreeMap::new(),
            exception_default_status: default_exception_status(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetId {
    #[serde(default)]
    pub pointer: Option<String>,
    #[serde(default)]
    pub header: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CsvRules {
    /// The default file for a row, a template (`{{ school.urn }}`, `{{ date }}`, the
    /// record's local date, `{{ destination }}`); a destination's `file` overrides it.
    #[serde(default = "default_csv_file")]
    pub file: String,
    /// Start a new file with a UTF-8 byte order mark (for spreadsheets that need one).
    #[serde(default)]
    pub utf8_bom: bool,
}

fn default_csv_file() -> String {
    "{{ destination }}/{{ school.urn }}/{{ date }}.csv".into()
}

impl Default for CsvRules {
    fn default() -> Self {
        CsvRules {
            file: default_csv_file(),
            utf8_bom: false,
        }
    }
}

impl Connector {
    /// The endpoint for a record kind, or the one a destination names.
    pub fn endpoint(&self, named: Option<&str>, kind: &str) -> Option<&Endpoint> {
        match named {
            Some(n) => self.endpoints.get(n),
            None => self
                .endpoints
                .get(kind)
                .or_else(|| self.endpoints.get("default")),
        }
    }

    /// Where an endpoint's created id is found.
    pub fn target_id<'a>(&'a self, endpoint: Option<&'a Endpoint>) -> Option<&'a TargetId> {
        endpoint
            .and_then(|e| e.target_id.as_ref())
            .or(self.response.target_id.as_ref())
    }
}
