//! The HTTP transports: `http_json` (a JSON API, with Basic, Bearer or OAuth2
//! client-credentials authentication) and `webhook` (JSON signed per Standard Webhooks).
//! One request per call, classified into [`Attempt`]; retrying and recording are the
//! delivery engine's. TLS is verified (rustls); redirects are not followed.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant, SystemTime};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{KeyInit, Mac};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde_json::Value;
use tokio::sync::Mutex;

use super::{Attempt, AuthScheme, Connector, TargetId, Transport};

/// How much of a response is kept with a dead letter.
const KEEP_RESPONSE: usize = 64 * 1024;
/// A cached OAuth2 token is renewed this long before it expires.
const TOKEN_MARGIN: Duration = Duration::from_secs(60);
/// A token that states no lifetime is kept this long.
const TOKEN_DEFAULT_LIFE: Duration = Duration::from_secs(300);

/// Credentials resolved from the destination's secret references.
#[derive(Clone, Default)]
pub struct Credentials {
    pub username: Option<String>,
    pub password: Option<String>,
    pub token: Option<String>,
    pub client_id: Option<String>,
    pub client_secret: Option<String>,
    pub token_url: Option<String>,
    pub scopes: Vec<String>,
    /// Webhook secrets, `whsec_<base64>` (or bare base64), decoded.
    pub webhook_keys: Vec<Vec<u8>>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Credentials(…)")
    }
}

/// Decodes a Standard Webhooks secret.
pub fn webhook_key(secret: &str) -> Result<Vec<u8>, String> {
    let b64 = secret.strip_prefix("whsec_").unwrap_or(secret);
    B64.decode(b64.trim())
        .map_err(|_| "a webhook secret is `whsec_` followed by base64".to_owned())
        .and_then(|k| {
            if k.len() >= 24 {
                Ok(k)
            } else {
                Err("a webhook secret holds at least 24 bytes".to_owned())
            }
        })
}

/// The `webhook-signature` header value: `v1,<base64 HMAC-SHA256 of id.timestamp.body>`,
/// one per key, separated by spaces.
pub fn webhook_signature(keys: &[Vec<u8>], id: &str, timestamp: u64, body: &[u8]) -> String {
    keys.iter()
        .map(|k| {
            let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(k)
                .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
            mac.update(id.as_bytes());
            mac.update(b".");
            mac.update(timestamp.to_string().as_bytes());
            mac.update(b".");
            mac.update(body);
            format!("v1,{}", B64.encode(mac.finalize().into_bytes()))
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// One request to send.
pub struct Request<'a> {
    pub method: reqwest::Method,
    /// The full URL.
    pub url: String,
    pub body: &'a Value,
    pub idempotency_key: &'a str,
    /// The destination's `vars` for the record's school (token bodies, header templates).
    pub vars: &'a BTreeMap<String, String>,
    /// Where the created id is, for this endpoint.
    pub target_id: Option<&'a TargetId>,
}

/// A response as it came, before it is classified.
struct Raw {
    status: u16,
    /// The status the body stands for: the response's own, or an exception's in a 2xx.
    effective: u16,
    exception: Option<String>,
    retry_after: Option<Duration>,
    headers: HeaderMap,
    body: bytes::Bytes,
}

/// One destination's HTTP client, with its connector, credentials and token cache.
pub struct HttpSink {
    client: reqwest::Client,
    connector: std::sync::Arc<Connector>,
    credentials: Credentials,
    /// Tokens by scope (OAuth2: one; a token exchange: one per distinct body), with when
    /// they expire.
    tokens: Mutex<HashMap<String, (String, Instant)>>,
}

impl HttpSink {
    pub fn new(
        connector: std::sync::Arc<Connector>,
        credentials: Credentials,
    ) -> Result<HttpSink, String> {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(connector.limits.timeout())
            .connect_timeout(connector.limits.timeout().min(Duration::from_secs(10)))
            .user_agent(concat!("doorstep/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        Ok(HttpSink {
            client,
            connector,
            credentials,
            tokens: Mutex::new(HashMap::new()),
        })
    }

    /// Sends one record (or batch); with a token, a 401 fetches a new token and tries once
    /// more.
    pub async fn send(&self, req: &Request<'_>) -> Attempt {
        let body = match serde_json::to_vec(req.body) {
            Ok(b) => b,
            Err(e) => return permanent(format!("cannot serialise the body: {e}"), None, None),
        };
        match self
            .exchange(
                req.method.clone(),
                &req.url,
                Some(&body),
                Some(req.idempotency_key),
                req.vars,
            )
            .await
        {
            Ok(raw) => self.classify(raw, req.target_id),
            Err(a) => a,
        }
    }

    /// Reads one JSON document (a look-up's page, `config check --online`): the body of a
    /// 2xx, or what the failure comes to.
    pub async fn get(&self, url: &str, vars: &BTreeMap<String, String>) -> Result<Value, Attempt> {
        let raw = self
            .exchange(reqwest::Method::GET, url, None, None, vars)
            .await?;
        if (200..300).contains(&raw.effective) {
            return serde_json::from_slice(&raw.body).map_err(|_| {
                permanent(
                    format!("{} whose body is not JSON", raw.status),
                    Some(raw.status),
                    kept(&raw.body),
                )
            });
        }
        Err(self.classify(raw, None))
    }

    /// One request with the connector's headers and authentication; a 401 (or an exception
    /// standing for one) with a token fetches a new token and tries once more.
    async fn exchange(
        &self,
        method: reqwest::Method,
        url: &str,
        body: Option<&[u8]>,
        idempotency_key: Option<&str>,
        vars: &BTreeMap<String, String>,
    ) -> Result<Raw, Attempt> {
        let first = self
            .exchange_once(method.clone(), url, body, idempotency_key, vars, None)
            .await?;
        match first {
            Ok(raw) => Ok(raw),
            Err(Unauthorized(refused)) => match self
                .exchange_once(method, url, body, idempotency_key, vars, Some(&refused))
                .await?
            {
                Ok(raw) => Ok(raw),
                Err(Unauthorized(_)) => Err(permanent(
                    "401 Unauthorized again after a new token".into(),
                    Some(401),
                    None,
                )),
            },
        }
    }

    async fn exchange_once(
        &self,
        method: reqwest::Method,
        url: &str,
        body: Option<&[u8]>,
        idempotency_key: Option<&str>,
        vars: &BTreeMap<String, String>,
        refused_token: Option<&str>,
    ) -> Result<Result<Raw, Unauthorized>, Attempt> {
        let mut headers = HeaderMap::new();
        if body.is_some() {
            headers.insert(
                reqwest::header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
        }
        headers.insert(
            reqwest::header::ACCEPT,
            HeaderValue::from_static("application/json"),
        );
        for (k, v) in &self.connector.request.headers {
            let v = fill_header(v, vars);
            if v.is_empty() {
                continue;
            }
            if let (Ok(k), Ok(v)) = (HeaderName::try_from(k.as_str()), HeaderValue::try_from(v)) {
                headers.insert(k, v);
            }
        }
        if let (Some(h), Some(key)) = (&self.connector.request.idempotency_header, idempotency_key)
            && let (Ok(k), Ok(v)) = (HeaderName::try_from(h.as_str()), HeaderValue::try_from(key))
        {
            headers.insert(k, v);
        }
        if let (Transport::Webhook, Some(key), Some(body)) =
            (self.connector.transport, idempotency_key, body)
        {
            let ts = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or_default();
            let sig = webhook_signature(&self.credentials.webhook_keys, key, ts, body);
            for (k, v) in [
                ("webhook-id", key.to_owned()),
                ("webhook-timestamp", ts.to_string()),
                ("webhook-signature", sig),
            ] {
                if let Ok(v) = HeaderValue::try_from(v) {
                    headers.insert(k, v);
                }
            }
        }
        let mut builder = self.client.request(method, url).headers(headers);
        if let Some(body) = body {
            builder = builder.body(body.to_vec());
        }
        let c = &self.credentials;
        let mut used_token = None;
        match self.connector.auth {
            AuthScheme::None => {}
            AuthScheme::Basic => {
                builder =
                    builder.basic_auth(c.username.clone().unwrap_or_default(), c.password.clone());
            }
            AuthScheme::Bearer => {
                builder = builder.bearer_auth(c.token.clone().unwrap_or_default())
            }
            AuthScheme::Oauth2ClientCredentials => {
                let t = self.oauth_token(refused_token).await?;
                builder = builder.bearer_auth(&t);
                used_token = Some(t);
            }
            AuthScheme::TokenExchange => {
                let t = self.exchanged_token(vars, refused_token).await?;
                let scheme = self
                    .connector
                    .token
                    .as_ref()
                    .map(|t| t.scheme.as_str())
                    .unwrap_or("Bearer");
                builder = builder.header(reqwest::header::AUTHORIZATION, format!("{scheme} {t}"));
                used_token = Some(t);
            }
        }
        let response = builder.send().await.map_err(|e| transport_error(&e))?;
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_retry_after);
        let headers = response.headers().clone();
        let body = response.bytes().await.map_err(|e| transport_error(&e))?;
        let (effective, exception) = self.effective_status(status, &body);
        if effective == 401
            && refused_token.is_none()
            && let Some(t) = used_token
        {
            return Ok(Err(Unauthorized(t)));
        }
        Ok(Ok(Raw {
            status,
            effective,
            exception,
            retry_after,
            headers,
            body,
        }))
    }

    /// A 2xx whose body names an exception (`[response] exception_pointer`) stands for the
    /// status the connector gives that exception.
    fn effective_status(&self, status: u16, body: &[u8]) -> (u16, Option<String>) {
        let rules = &self.connector.response;
        let Some(pointer) = rules.exception_pointer.as_deref() else {
            return (status, None);
        };
        if !(200..300).contains(&status) {
            return (status, None);
        }
        let Ok(json) = serde_json::from_slice::<Value>(body) else {
            return (status, None);
        };
        match json.pointer(pointer) {
            Some(v) if present(v) => {
                let name = match v {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                let stands_for = rules
                    .exception_status
                    .get(&name)
                    .copied()
                    .unwrap_or(rules.exception_default_status);
                (stands_for, Some(name))
            }
            _ => (status, None),
        }
    }

    fn classify(&self, raw: Raw, target: Option<&TargetId>) -> Attempt {
        let rules = &self.connector.response;
        let Raw {
            status,
            effective,
            exception,
            retry_after,
            headers,
            body,
        } = raw;
        let json: Option<Value> = serde_json::from_slice(&body).ok();
        let with_message = |mut reason: String| {
            if let Some(m) = rules.message_pointers.iter().find_map(|p| {
                json.as_ref()
                    .and_then(|j| j.pointer(p))
                    .filter(|v| present(v))
            }) {
                let m = match m {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                reason.push_str(TARGET_SAYS);
                reason.push_str(&m.chars().take(1000).collect::<String>());
            }
            reason
        };
        let what = match &exception {
            Some(name) => format!("{status} with exception {name} (stands for {effective})"),
            None => format!("{status} {}", reason_phrase(status)),
        };
        if (200..300).contains(&effective) {
            for p in &rules.error_pointers {
                if json
                    .as_ref()
                    .and_then(|j| j.pointer(p))
                    .is_some_and(present)
                {
                    return permanent(
                        format!("{status} whose body reports an error at {p}"),
                        Some(status),
                        kept(&body),
                    );
                }
            }
            let target_id = match target {
                Some(TargetId {
                    pointer: Some(p), ..
                }) => json
                    .as_ref()
                    .and_then(|j| j.pointer(p))
                    .and_then(|v| match v {
                        Value::String(s) => Some(s.clone()),
                        Value::Number(n) => Some(n.to_string()),
                        _ => None,
                    }),
                Some(TargetId {
                    header: Some(h), ..
                }) => headers
                    .get(h.as_str())
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned),
                _ => None,
            };
            return Attempt::Delivered {
                target_id,
                status: Some(status),
            };
        }
        if effective >= 500 || rules.retry_status.contains(&effective) {
            return Attempt::Retry {
                reason: with_message(what),
                status: Some(status),
                retry_after,
                response: kept(&body),
            };
        }
        permanent(with_message(what), Some(status), kept(&body))
    }

    /// A token from the cache, or a new one from the token endpoint. After a 401, the token
    /// refused is given: a new one is fetched unless another request already replaced it
    /// (so a burst of 401s costs one token request).
    async fn oauth_token(&self, refused: Option<&str>) -> Result<String, Attempt> {
        use oauth2::basic::BasicClient;
        use oauth2::{ClientId, ClientSecret, Scope, TokenResponse, TokenUrl};
        let mut tokens = self.tokens.lock().await;
        if let Some(t) = cached(&tokens, "", refused) {
            return Ok(t);
        }
        let c = &self.credentials;
        let url = TokenUrl::new(c.token_url.clone().unwrap_or_default()).map_err(|_| {
            permanent(
                "the destination's token_url is not a URL".into(),
                None,
                None,
            )
        })?;
        let mut client = BasicClient::new(ClientId::new(c.client_id.clone().unwrap_or_default()))
            .set_token_uri(url);
        if let Some(s) = &c.client_secret {
            client = client.set_client_secret(ClientSecret::new(s.clone()));
        }
        let http = |request: oauth2::HttpRequest| {
            let client = self.client.clone();
            async move {
                let (parts, body) = request.into_parts();
                let response = client
                    .request(parts.method, parts.uri.to_string())
                    .headers(parts.headers)
                    .body(body)
                    .send()
                    .await?;
                let mut out = http::Response::builder().status(response.status().as_u16());
                for (k, v) in response.headers() {
                    out = out.header(k.as_str(), v.as_bytes());
                }
                let bytes = response.bytes().await?;
                Ok::<_, reqwest::Error>(out.body(bytes.to_vec()).unwrap_or_default())
            }
        };
        let mut request = client.exchange_client_credentials();
        for s in &c.scopes {
            request = request.add_scope(Scope::new(s.clone()));
        }
        match request.request_async(&http).await {
            Ok(token) => {
                let life = token.expires_in().unwrap_or(TOKEN_DEFAULT_LIFE);
                let secret = token.access_token().secret().clone();
                tokens.insert(String::new(), (secret.clone(), Instant::now() + life));
                Ok(secret)
            }
            Err(oauth2::RequestTokenError::ServerResponse(e)) => Err(permanent(
                format!(
                    "the token endpoint refused the client credentials ({})",
                    e.error()
                ),
                None,
                None,
            )),
            Err(oauth2::RequestTokenError::Request(e)) => Err(Attempt::Retry {
                reason: format!("token endpoint: {}", error_kind(&e)),
                status: None,
                retry_after: None,
                response: None,
            }),
            Err(_) => Err(Attempt::Retry {
                reason: "token endpoint: unreadable answer".into(),
                status: None,
                retry_after: None,
                response: None,
            }),
        }
    }

    /// A token for the connector's `[token]` body filled in for these `vars` (one per
    /// school where the body names the school), cached until shortly before it expires.
    async fn exchanged_token(
        &self,
        vars: &BTreeMap<String, String>,
        refused: Option<&str>,
    ) -> Result<String, Attempt> {
        let Some(spec) = self.connector.token.as_ref() else {
            return Err(permanent("no [token] in the connector".into(), None, None));
        };
        let body = self.token_body(spec, vars)?;
        let scope = {
            use sha2::Digest;
            hex::encode(sha2::Sha256::digest(body.to_string().as_bytes()))
        };
        let mut tokens = self.tokens.lock().await;
        if let Some(t) = cached(&tokens, &scope, refused) {
            return Ok(t);
        }
        let url = self.credentials.token_url.clone().unwrap_or_default();
        let response = self
            .client
            .post(&url)
            .json(&body)
            .send()
            .await
            .map_err(|e| Attempt::Retry {
                reason: format!("token service: {}", error_kind(&e)),
                status: None,
                retry_after: None,
                response: None,
            })?;
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_retry_after);
        let bytes = response.bytes().await.map_err(|e| transport_error(&e))?;
        if status >= 500 || status == 429 || status == 408 {
            return Err(Attempt::Retry {
                reason: format!("token service: {status} {}", reason_phrase(status)),
                status: Some(status),
                retry_after,
                response: None,
            });
        }
        let json: Option<Value> = serde_json::from_slice(&bytes).ok();
        let token = json
            .as_ref()
            .and_then(|j| j.pointer(&spec.token_pointer))
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty() && (200..300).contains(&status));
        let Some(token) = token else {
            // The answer is not kept: it may echo the credentials.
            return Err(permanent(
                format!(
                    "the token service refused the credentials ({status} {}, no token at {})",
                    reason_phrase(status),
                    spec.token_pointer
                ),
                Some(status),
                None,
            ));
        };
        let life = spec
            .expires_pointer
            .as_deref()
            .and_then(|p| json.as_ref().and_then(|j| j.pointer(p)))
            .and_then(token_life)
            .unwrap_or(TOKEN_DEFAULT_LIFE);
        tokens.insert(scope, (token.to_owned(), Instant::now() + life));
        Ok(token.to_owned())
    }

    /// The `[token]` body for these `vars`, with the destination's secrets.
    fn token_body(
        &self,
        spec: &super::TokenExchange,
        vars: &BTreeMap<String, String>,
    ) -> Result<Value, Attempt> {
        let c = &self.credentials;
        let ctx = minijinja::context! {
            vars => super::template::vars(vars),
            username => c.username.clone().unwrap_or_default(),
            password => c.password.clone().unwrap_or_default(),
            client_id => c.client_id.clone().unwrap_or_default(),
            client_secret => c.client_secret.clone().unwrap_or_default(),
        };
        let mut out = serde_json::Map::new();
        for (k, template) in &spec.body {
            let v = super::template::fill(template, ctx.clone())
                .map_err(|reason| permanent(format!("[token] body.{k}: {reason}"), None, None))?;
            out.insert(k.clone(), Value::String(v));
        }
        Ok(Value::Object(out))
    }
}

/// Separates our reason from the target's own message in a dead letter's reason. Logs
/// keep only what comes before it (the target's words may quote the record).
pub const TARGET_SAYS: &str = " — the target says: ";

/// A reason without the target's message, for logs.
pub fn loggable(reason: &str) -> &str {
    reason.split(TARGET_SAYS).next().unwrap_or(reason)
}

/// A cached token for `scope` still good for a while, unless it is the one refused.
fn cached(
    tokens: &HashMap<String, (String, Instant)>,
    scope: &str,
    refused: Option<&str>,
) -> Option<String> {
    tokens
        .get(scope)
        .filter(|(t, until)| {
            Instant::now() + TOKEN_MARGIN < *until && refused.is_none_or(|r| r != t)
        })
        .map(|(t, _)| t.clone())
}

/// A token's life from its answer: seconds, or an expiry date-time (RFC 3339, or without an
/// offset taken as UTC).
fn token_life(v: &Value) -> Option<Duration> {
    if let Some(secs) = v.as_f64() {
        return (secs > 0.0 && secs < 1e9).then(|| Duration::from_secs_f64(secs));
    }
    let s = v.as_str()?;
    if let Ok(secs) = s.parse::<f64>() {
        return (secs > 0.0 && secs < 1e9).then(|| Duration::from_secs_f64(secs));
    }
    let at = chrono::DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&chrono::Utc))
        .or_else(|_| {
            chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f").map(|t| t.and_utc())
        })
        .ok()?;
    (at - chrono::Utc::now()).to_std().ok()
}

/// A header value with `{{ vars.X }}` filled in; empty when a var is not given (the
/// header is then left out).
fn fill_header(template: &str, vars: &BTreeMap<String, String>) -> String {
    super::template::fill_or_empty(
        template,
        minijinja::context! { vars => super::template::vars(vars) },
    )
}

/// A value that says something: not null, false, "" or empty.
fn present(v: &Value) -> bool {
    match v {
        Value::Null | Value::Bool(false) => false,
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
        Value::Number(_) | Value::Bool(true) => true,
    }
}

/// What of a response is kept with a dead letter.
fn kept(body: &[u8]) -> Option<String> {
    let s = String::from_utf8_lossy(&body[..body.len().min(KEEP_RESPONSE)]).into_owned();
    (!s.is_empty()).then_some(s)
}

/// A 401 with this token.
struct Unauthorized(String);

fn permanent(reason: String, status: Option<u16>, response: Option<String>) -> Attempt {
    Attempt::Permanent {
        reason,
        status,
        response,
    }
}

fn reason_phrase(status: u16) -> &'static str {
    reqwest::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("")
}

/// Timeouts and connection errors are retried; the message names the kind, never the URL's
/// query or a credential.
fn transport_error(e: &reqwest::Error) -> Attempt {
    Attempt::Retry {
        reason: error_kind(e),
        status: None,
        retry_after: None,
        response: None,
    }
}

fn error_kind(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "timed out".into()
    } else if e.is_connect() {
        "connection failed".into()
    } else if e.is_body() || e.is_decode() {
        "the response broke off".into()
    } else {
        "request failed".into()
    }
}

/// `Retry-After`: seconds, or an HTTP date.
pub fn parse_retry_after(v: &str) -> Option<Duration> {
    let v = v.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    httpdate::parse_http_date(v)
        .ok()
        .map(|t| t.duration_since(SystemTime::now()).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_takes_seconds_and_dates() {
        assert_eq!(parse_retry_after("7"), Some(Duration::from_secs(7)));
        let later = SystemTime::now() + Duration::from_secs(120);
        let d = parse_retry_after(&httpdate::fmt_http_date(later)).unwrap();
        assert!(
            d > Duration::from_secs(100) && d <= Duration::from_secs(120),
            "{d:?}"
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon"), None);
    }

    #[test]
    fn signature_matches_the_standard_webhooks_reference() {
        // The reference crate signs and verifies; ours must produce what it accepts.
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let key = webhook_key(secret).unwrap();
        let body = br#"{"test": 2432232314}"#;
        let sig = webhook_signature(&[key], "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body);
        let wh = standardwebhooks::Webhook::new(secret).unwrap();
        let expected = wh
            .sign("msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body)
            .unwrap();
        assert_eq!(sig, expected);
    }

    fn sink(connector: &str) -> HttpSink {
        let c = Connector::parse(std::path::Path::new("t.toml"), "t", connector).unwrap();
        HttpSink::new(std::sync::Arc::new(c), Credentials::default()).unwrap()
    }

    fn raw(status: u16, body: &str, s: &HttpSink) -> Raw {
        let (effective, exception) = s.effective_status(status, body.as_bytes());
        Raw {
            status,
            effective,
            exception,
            retry_after: None,
            headers: HeaderMap::new(),
            body: bytes::Bytes::from(body.to_owned()),
        }
    }

    #[test]
    fn an_exception_in_a_200_is_classified_as_the_status_it_stands_for() {
        let s = sink(
            "transport = \"http_json\"\n[endpoints.default]\n[response]\n\
             exception_pointer = \"/ExceptionType\"\nmessage_pointers = [\"/ExceptionMessage\"]\n\
             exception_status = { ValidationException = 422, ThrottlingException = 429 }\n",
        );
        let ok = s.classify(raw(200, r#"{"ExceptionType": null, "Id": 1}"#, &s), None);
        assert!(matches!(ok, Attempt::Delivered { .. }), "{ok:?}");
        let invalid = s.classify(
            raw(200, r#"{"ExceptionType": "ValidationException", "ExceptionMessage": "Mark X is not valid"}"#, &s),
            None,
        );
        match invalid {
            Attempt::Permanent { reason, status, .. } => {
                assert_eq!(status, Some(200));
                assert!(
                    reason.contains("ValidationException (stands for 422)"),
                    "{reason}"
                );
                assert!(
                    reason.ends_with("the target says: Mark X is not valid"),
                    "{reason}"
                );
                assert_eq!(
                    loggable(&reason),
                    "200 with exception ValidationException (stands for 422)"
                );
            }
            other => panic!("{other:?}"),
        }
        let throttled = s.classify(
            raw(200, r#"{"ExceptionType": "ThrottlingException"}"#, &s),
            None,
        );
        assert!(matches!(throttled, Attempt::Retry { .. }), "{throttled:?}");
        // An exception type the connector does not list: a server error, retried.
        let unknown = s.classify(raw(200, r#"{"ExceptionType": "Whatever"}"#, &s), None);
        assert!(matches!(unknown, Attempt::Retry { .. }), "{unknown:?}");
    }

    #[test]
    fn a_token_life_is_seconds_or_an_expiry() {
        assert_eq!(
            token_life(&serde_json::json!(3600)),
            Some(Duration::from_secs(3600))
        );
        assert_eq!(
            token_life(&serde_json::json!("120")),
            Some(Duration::from_secs(120))
        );
        let at = chrono::Utc::now() + chrono::Duration::seconds(600);
        let life = token_life(&serde_json::json!(at.to_rfc3339())).unwrap();
        assert!(
            life > Duration::from_secs(590) && life <= Duration::from_secs(600),
            "{life:?}"
        );
        let naive = at.naive_utc().format("%Y-%m-%dT%H:%M:%S").to_string();
        assert!(token_life(&serde_json::json!(naive)).is_some());
        assert_eq!(token_life(&serde_json::json!("2001-01-01T00:00:00Z")), None);
        assert_eq!(token_life(&serde_json::json!("soon")), None);
        assert_eq!(token_life(&serde_json::json!(-5)), None);
    }

    #[test]
    fn header_templates_take_vars_and_drop_when_missing() {
        let mut vars = BTreeMap::new();
        assert_eq!(fill_header("{{ vars.app }}", &vars), "");
        vars.insert("app".to_owned(), "doorstep".to_owned());
        assert_eq!(fill_header("{{ vars.app }}", &vars), "doorstep");
        assert_eq!(fill_header("fixed", &vars), "fixed");
    }
}
