//! Authentication for the HTTP transports: the destination's [`Credentials`] (whose Debug
//! never shows them), and bearer tokens — OAuth2 client credentials or a connector's
//! `[token]` exchange — fetched and cached per scope until shortly before they expire.
//! Owns: getting and caching tokens. May not touch: the request being sent, its classifying.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::HttpTransport;
use super::classify::{
    error_kind, kept, permanent, reason_phrase, retry_after_of, token_service_busy,
};
use crate::connectors::{Attempt, TokenExchange, template};

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

impl HttpTransport {
    /// A token from the cache, or a new one from the token endpoint. After a 401, the token
    /// refused is given: a new one is fetched unless another request already replaced it
    /// (so a burst of 401s costs one token request).
    pub(super) async fn oauth_token(&self, refused: Option<&str>) -> Result<String, Attempt> {
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
        // The token endpoint's status, Retry-After and answer, kept for classifying a
        // failure (the answer goes to the dead letter only, redacted, never to a log).
        let seen = std::sync::Arc::new(std::sync::Mutex::new(None::<Seen>));
        let http = |request: oauth2::HttpRequest| {
            let client = self.client.clone();
            let seen = seen.clone();
            async move {
                let (parts, body) = request.into_parts();
                let response = client
                    .request(parts.method, parts.uri.to_string())
                    .headers(parts.headers)
                    .body(body)
                    .send()
                    .await?;
                let status = response.status().as_u16();
                let retry_after = retry_after_of(&response);
                let mut out = http::Response::builder().status(status);
                for (k, v) in response.headers() {
                    out = out.header(k.as_str(), v.as_bytes());
                }
                let bytes = response.bytes().await?;
                if let Ok(mut s) = seen.lock() {
                    *s = Some(Seen {
                        status,
                        retry_after,
                        answer: kept(&bytes),
                    });
                }
                Ok::<_, reqwest::Error>(out.body(bytes.to_vec()).unwrap_or_default())
            }
        };
        let mut request = client.exchange_client_credentials();
        for s in &c.scopes {
            request = request.add_scope(Scope::new(s.clone()));
        }
        let failure = match request.request_async(&http).await {
            Ok(token) => {
                let life = token.expires_in().unwrap_or(TOKEN_DEFAULT_LIFE);
                let secret = token.access_token().secret().clone();
                tokens.insert(String::new(), (secret.clone(), Instant::now() + life));
                return Ok(secret);
            }
            Err(oauth2::RequestTokenError::Request(e)) => {
                return Err(Attempt::Retry {
                    reason: format!("token endpoint: {}", error_kind(&e)),
                    status: None,
                    retry_after: None,
                    response: None,
                });
            }
            Err(e) => e,
        };
        let Seen {
            status,
            retry_after,
            answer,
        } = seen
            .lock()
            .ok()
            .and_then(|mut s| s.take())
            .unwrap_or_default();
        // Classified like any answer; the endpoint's own words are never quoted (they may
        // echo the request and its secret).
        Err(match failure {
            _ if token_service_busy(status) => Attempt::Retry {
                reason: format!("token endpoint: {status} {}", reason_phrase(status)),
                status: Some(status),
                retry_after,
                response: None,
            },
            oauth2::RequestTokenError::ServerResponse(e) => permanent(
                format!(
                    "the token endpoint refused the client credentials ({})",
                    oauth_error_code(e.error())
                ),
                Some(status),
                answer,
            ),
            _ if (200..300).contains(&status) => Attempt::Retry {
                reason: format!("token endpoint: {status} with an answer that is not a token"),
                status: Some(status),
                retry_after: None,
                response: None,
            },
            _ => permanent(
                format!(
                    "the token endpoint refused the client credentials ({status} {})",
                    reason_phrase(status)
                ),
                Some(status),
                answer,
            ),
        })
    }

    /// A token for the connector's `[token]` body filled in for these `vars` (one per
    /// school where the body names the school), cached until shortly before it expires.
    pub(super) async fn exchanged_token(
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
        let retry_after = retry_after_of(&response);
        // A token request makes nothing at the target: a lost answer is a plain retry.
        let bytes = response.bytes().await.map_err(|e| Attempt::Retry {
            reason: format!("token service: {}", error_kind(&e)),
            status: Some(status),
            retry_after: None,
            response: None,
        })?;
        if token_service_busy(status) {
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
            // The answer goes to the dead letter only (redacted: it may echo the
            // credentials), never into the reason a log line carries.
            return Err(permanent(
                format!(
                    "the token service refused the credentials ({status} {}, no token at {})",
                    reason_phrase(status),
                    spec.token_pointer
                ),
                Some(status),
                kept(&bytes),
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
        spec: &TokenExchange,
        vars: &BTreeMap<String, String>,
    ) -> Result<Value, Attempt> {
        let c = &self.credentials;
        let ctx = minijinja::context! {
            vars => template::vars(vars),
            username => c.username.clone().unwrap_or_default(),
            password => c.password.clone().unwrap_or_default(),
            client_id => c.client_id.clone().unwrap_or_default(),
            client_secret => c.client_secret.clone().unwrap_or_default(),
        };
        let mut out = serde_json::Map::new();
        for (k, template) in &spec.body {
            let v = template::fill(template, ctx.clone())
                .map_err(|reason| permanent(format!("[token] body.{k}: {reason}"), None, None))?;
            out.insert(k.clone(), Value::String(v));
        }
        Ok(Value::Object(out))
    }
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

/// What the OAuth2 token endpoint answered, for classifying a failure.
#[derive(Default)]
struct Seen {
    status: u16,
    retry_after: Option<Duration>,
    answer: Option<String>,
}

/// A 401 with this token.
pub(super) struct Unauthorized(pub(super) String);

/// An OAuth2 error answer as one of RFC 6749's codes (§5.2). A code of the service's own is
/// never quoted: it is the service's text, which may echo the request and its secret.
fn oauth_error_code(e: &oauth2::basic::BasicErrorResponseType) -> &'static str {
    use oauth2::basic::BasicErrorResponseType as E;
    match e {
        E::InvalidClient => "invalid_client",
        E::InvalidGrant => "invalid_grant",
        E::InvalidRequest => "invalid_request",
        E::InvalidScope => "invalid_scope",
        E::UnauthorizedClient => "unauthorized_client",
        E::UnsupportedGrantType => "unsupported_grant_type",
        E::Extension(_) => "an error code of the service's own, not repeated",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
