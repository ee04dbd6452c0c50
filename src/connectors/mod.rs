//! Connectors (SPEC §3): one declarative file per target system under `connectors/`,
//! describing its transport (`http_json`, `webhook`, `csv_file`), authentication, endpoints
//! per record kind, limits, and how a response is classified (success / retry / permanent,
//! including a 2xx whose body reports an error) and where the created record's id is found.
//! Every key is documented in `docs/connectors.md`.
//!
//! Owns: reading connector files, and the transports themselves (`http`, `csv`): one
//! request or one row at a time, classified. May not touch: routing, mapping, the store —
//! what to send and what to record is the delivery engine's.

pub mod csv;
pub mod http;
pub mod template;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// A connector file's error: the file, and for a refused value its key.
pub type ConnectorError = crate::toml_file::FileError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Transport {
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
    pub transport: Transport,
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

#[derive(Debug, Clone, Deserialize)]
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

impl Limits {
    pub fn timeout(&self) -> Duration {
        Duration::from_secs_f64(self.timeout_seconds)
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
    pub fn parse(path: &Path, name: &str, text: &str) -> Result<Connector, ConnectorError> {
        let mut c: Connector = crate::toml_file::parse(path, text)?;
        c.name = name.to_owned();
        let invalid = |key: &str, reason: &str| ConnectorError::invalid(path, key, reason);
        let l = &c.limits;
        if !(1..=1024).contains(&l.concurrency) {
            return Err(invalid("limits.concurrency", "from 1 to 1024"));
        }
        if l.rate_per_second == Some(0) {
            return Err(invalid(
                "limits.rate_per_second",
                "at least 1 (leave it out for no limit)",
            ));
        }
        if !(l.timeout_seconds > 0.0 && l.timeout_seconds <= 600.0) {
            return Err(invalid("limits.timeout_seconds", "above 0 and at most 600"));
        }
        if l.max_attempts == 0 {
            return Err(invalid("limits.max_attempts", "at least 1"));
        }
        if !(l.backoff_min_seconds > 0.0 && l.backoff_max_seconds >= l.backoff_min_seconds) {
            return Err(invalid(
                "limits.backoff_min_seconds",
                "above 0 and at most backoff_max_seconds",
            ));
        }
        if l.backoff_max_seconds > 86_400.0 {
            return Err(invalid(
                "limits.backoff_max_seconds",
                "at most 86400 (a day)",
            ));
        }
        for (kind, e) in &c.endpoints {
            if kind.is_empty()
                || !kind
                    .chars()
                    .all(|ch| ch.is_ascii_alphanumeric() || ch == '_')
            {
                return Err(invalid(
                    &format!("endpoints.{kind}"),
                    "a record kind, `default`, or a name of letters, digits and _ that a destination picks with `endpoint`",
                ));
            }
            for l in &e.lookups {
                if !c.lookups.contains_key(l) {
                    return Err(invalid(
                        &format!("endpoints.{kind}.lookups"),
                        &format!("no [lookups.{l}] in this connector"),
                    ));
                }
            }
            if let Some(p) = e.batch_by.iter().find(|p| !p.starts_with('/')) {
                return Err(invalid(
                    &format!("endpoints.{kind}.batch_by"),
                    &format!("`{p}` is not a JSON pointer (starts with /)"),
                ));
            }
            if let Some(t) = &e.target_id
                && t.pointer.is_some() == t.header.is_some()
            {
                return Err(invalid(
                    &format!("endpoints.{kind}.target_id"),
                    "give exactly one of pointer or header",
                ));
            }
            for m in std::iter::once(&e.method).chain(e.update_method.as_ref()) {
                if reqwest::Method::from_bytes(m.as_bytes()).is_err() {
                    return Err(invalid(
                        &format!("endpoints.{kind}.method"),
                        "an HTTP method",
                    ));
                }
            }
            if !(1..=1000).contains(&e.batch_size) {
                return Err(invalid(
                    &format!("endpoints.{kind}.batch_size"),
                    "from 1 to 1000",
                ));
            }
            if (e.batch_size > 1) != e.batch_pointer.is_some()
                || e.batch_pointer
                    .as_ref()
                    .is_some_and(|p| !p.starts_with('/'))
            {
                return Err(invalid(
                    &format!("endpoints.{kind}.batch_pointer"),
                    "a batch (batch_size above 1) needs batch_pointer, the JSON pointer (/…) of the list in the body",
                ));
            }
            if e.batch_size > 1 && c.transport != Transport::HttpJson {
                return Err(invalid(
                    &format!("endpoints.{kind}.batch_size"),
                    "only http_json connectors batch",
                ));
            }
            if e.update_method.is_some() != e.update_path.is_some() {
                return Err(invalid(
                    &format!("endpoints.{kind}"),
                    "give update_method and update_path together",
                ));
            }
        }
        if c.transport == Transport::HttpJson && c.endpoints.is_empty() {
            return Err(invalid(
                "endpoints",
                "an http_json connector needs at least one endpoint",
            ));
        }
        if c.transport == Transport::CsvFile && c.auth != AuthScheme::None {
            return Err(invalid(
                "auth",
                "a csv_file connector has no authentication",
            ));
        }
        for (i, p) in c.response.error_pointers.iter().enumerate() {
            if !p.is_empty() && !p.starts_with('/') {
                return Err(invalid(
                    &format!("response.error_pointers[{i}]"),
                    "a JSON pointer (starts with /)",
                ));
            }
        }
        for (name, l) in &c.lookups {
            let pointers = [
                Some(&l.items),
                l.match_pointer.as_ref(),
                Some(&l.value),
                l.next.as_ref(),
            ];
            if pointers
                .into_iter()
                .flatten()
                .any(|p| !p.is_empty() && !p.starts_with('/'))
                || l.value.is_empty()
            {
                return Err(invalid(
                    &format!("lookups.{name}"),
                    "items, match, value and next are JSON pointers (/…); value is required",
                ));
            }
            let ttl_ok = l.ttl_hours > 0.0 && l.ttl_hours <= 24.0 * 366.0;
            let not_found_ok = l.not_found_minutes >= 0.0 && l.not_found_minutes <= 24.0 * 60.0;
            if !(ttl_ok && not_found_ok) {
                return Err(invalid(
                    &format!("lookups.{name}"),
                    "ttl_hours above 0 and at most a year; not_found_minutes at most a day",
                ));
            }
            if l.all && l.match_pointer.is_none() {
                return Err(invalid(
                    &format!("lookups.{name}.match"),
                    "a listing (`all = true`) needs `match`, the pointer compared with the key",
                ));
            }
        }
        if (c.auth == AuthScheme::TokenExchange) != c.token.is_some() {
            return Err(invalid(
                "token",
                "give a [token] table exactly when auth = \"token_exchange\"",
            ));
        }
        if let Some(p) = c
            .response
            .message_pointers
            .iter()
            .chain(&c.response.exception_pointer)
            .find(|p| !p.starts_with('/'))
        {
            return Err(invalid(
                "response",
                &format!("`{p}` is not a JSON pointer (starts with /)"),
            ));
        }
        if let Some(t) = &c.response.target_id
            && t.pointer.is_some() == t.header.is_some()
        {
            return Err(invalid(
                "response.target_id",
                "give exactly one of pointer or header",
            ));
        }
        Ok(c)
    }

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

/// Every connector of a deployment, by file name.
#[derive(Debug, Clone, Default)]
pub struct Connectors {
    by_name: BTreeMap<String, std::sync::Arc<Connector>>,
}

impl Connectors {
    /// Loads `*.toml` from the folder; a missing folder is an empty set.
    pub fn load(dir: &Path) -> Result<Connectors, ConnectorError> {
        let mut by_name = BTreeMap::new();
        let Ok(entries) = std::fs::read_dir(dir) else {
            return Ok(Connectors { by_name });
        };
        let mut files: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "toml"))
            .collect();
        files.sort();
        for path in files {
            let name = path
                .file_stem()
                .and_then(|s| s.to_str())
                .unwrap_or_default()
                .to_owned();
            let text = crate::toml_file::read(&path)?;
            let c = Connector::parse(&path, &name, &text)?;
            by_name.insert(name, std::sync::Arc::new(c));
        }
        Ok(Connectors { by_name })
    }

    pub fn get(&self, name: &str) -> Option<&std::sync::Arc<Connector>> {
        self.by_name.get(name)
    }

    pub fn iter(&self) -> impl Iterator<Item = &std::sync::Arc<Connector>> {
        self.by_name.values()
    }
}

/// What one attempt came to.
#[derive(Debug, Clone, PartialEq)]
pub enum Attempt {
    Delivered {
        target_id: Option<String>,
        status: Option<u16>,
    },
    /// Worth trying again: 5xx, 429, timeouts, connection errors.
    Retry {
        reason: String,
        status: Option<u16>,
        retry_after: Option<Duration>,
        response: Option<String>,
    },
    /// Will not succeed as it stands: goes to the dead letters with the response.
    Permanent {
        reason: String,
        status: Option<u16>,
        response: Option<String>,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Connector, String> {
        Connector::parse(Path::new("c.toml"), "c", text).map_err(|e| e.to_string())
    }

    #[test]
    fn limits_and_endpoints_are_checked() {
        let ok = "transport = \"http_json\"\n[endpoints.default]\npath = \"/x\"\n";
        assert!(parse(ok).is_ok());
        for (extra, key) in [
            ("[limits]\nconcurrency = 0\n", "limits.concurrency"),
            (
                "[limits]\nbackoff_max_seconds = 1e300\n",
                "limits.backoff_max_seconds",
            ),
            (
                "[limits]\ntimeout_seconds = nan\n",
                "limits.timeout_seconds",
            ),
            ("[limits]\nrate_per_second = 0\n", "limits.rate_per_second"),
        ] {
            let e = parse(&format!(
                "transport = \"http_json\"\n{extra}[endpoints.default]\n"
            ))
            .unwrap_err();
            assert!(e.contains(key), "{e}");
        }
        let e =
            parse("transport = \"http_json\"\n[endpoints.default]\nbatch_size = 5\n").unwrap_err();
        assert!(e.contains("batch_pointer"), "{e}");
        let e = parse("transport = \"http_json\"\n[endpoints.\"visit-s\"]\n").unwrap_err();
        assert!(e.contains("endpoints.visit-s"), "{e}");
        let e = parse("transport = \"http_json\"\n[endpoints.default]\nlookups = [\"pupil\"]\n")
            .unwrap_err();
        assert!(e.contains("lookups.pupil"), "{e}");
        let e =
            parse("transport = \"http_json\"\nauth = \"token_exchange\"\n[endpoints.default]\n")
                .unwrap_err();
        assert!(e.contains("token"), "{e}");
        let e = parse("transport = \"http_json\"\n").unwrap_err();
        assert!(e.contains("endpoints"), "{e}");
        let e = parse("transport = \"csv_file\"\nauth = \"basic\"\n").unwrap_err();
        assert!(e.contains("auth"), "{e}");
        let e = parse("transport = \"webhook\"\nsecret = \"x\"\n").unwrap_err();
        assert!(e.contains("secret") && !e.contains("\"x\""), "{e}");
    }
}
