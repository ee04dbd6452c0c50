//! A destination ready to send: its connector, URL, rate limiter, look-up cache and the
//! transport (HTTP client or CSV writer) built from its checked credentials.
//! Owns: `Dest`, `Transport`, reading and checking a destination's secrets. May not touch:
//! sending, retries or the store.

use std::path::PathBuf;
use std::sync::Arc;

use crate::connectors::csv::CsvTransport;
use crate::connectors::http::{Credentials, HttpTransport, webhook_key};
use crate::connectors::{Connector, TransportKind};
use crate::store::deliveries::Claimed;

use super::lookup;

pub(super) enum Transport {
    Http(Arc<HttpTransport>),
    Csv(Arc<CsvTransport>),
}

/// One destination ready to send.
pub(super) struct Dest {
    pub(super) trust: String,
    pub(super) name: String,
    pub(super) connector: Arc<Connector>,
    pub(super) transport: Transport,
    pub(super) url: Option<String>,
    /// The endpoint every record goes to, instead of the one for its kind.
    pub(super) endpoint: Option<String>,
    pub(super) config: crate::mapping::Destination,
    /// The trust's folder (relative secret files are read from it).
    pub(super) folder: PathBuf,
    pub(super) limiter: Option<governor::DefaultDirectRateLimiter>,
    /// Shared by every destination of the trust on the same system (connector and URL):
    /// Thrive's notes and register are one Arbor, asked once per pupil.
    pub(super) lookups: Arc<lookup::Lookups>,
    /// The look-up cache's name in the store: the connector and URL.
    pub(super) lookup_scope: String,
    pub(super) paused: bool,
}

impl Dest {
    /// The destination's URL for a school, its `vars` filled in, without a trailing `/`.
    pub(super) fn base_url(
        &self,
        vars: &std::collections::BTreeMap<String, String>,
    ) -> Result<String, String> {
        super::attempt::expand_path(
            self.url
                .as_deref()
                .unwrap_or_default()
                .trim_end_matches('/'),
            vars,
            None,
        )
    }

    pub(super) fn endpoint(&self, kind: &str) -> Option<&crate::connectors::Endpoint> {
        self.connector.endpoint(self.endpoint.as_deref(), kind)
    }

    /// How many deliveries like this one go in one request: the endpoint's batch size for
    /// a create; 1 for an update (it names one target record) or an endpoint that does not
    /// batch.
    pub(super) fn batch_size(&self, c: &Claimed) -> usize {
        match self.endpoint(c.kind.as_str()) {
            Some(e) if e.batch_pointer.is_some() && c.prior_target.is_none() => e.batch_size.max(1),
            _ => 1,
        }
    }
}

/// A destination's HTTP client with its credentials read and checked against what its
/// connector authenticates with.
pub(super) fn http_sink(
    folder: &std::path::Path,
    d: &crate::mapping::Destination,
    connector: &Arc<Connector>,
    url: Option<&str>,
) -> Result<HttpTransport, String> {
    let c = credentials(folder, d)?;
    check_auth(connector, &c, url)?;
    HttpTransport::new(connector.clone(), c)
}

/// The mapping's destination with the deployment's say over it (`[destinations.<trust>.
/// <name>]` in `doorstep.toml`): `token_url`, `vars`, each school's vars key by key, and
/// the credentials it gives in place of the mapping's.
pub(super) fn with_override(
    d: &crate::mapping::Destination,
    ov: &crate::config::DestinationOverride,
) -> crate::mapping::Destination {
    let mut d = d.clone();
    if let Some(t) = &ov.token_url {
        d.token_url = Some(t.clone());
    }
    d.vars.extend(ov.vars.clone());
    for (urn, vars) in &ov.schools {
        d.schools
            .entry(urn.clone())
            .or_default()
            .extend(vars.clone());
    }
    let s = &ov.secrets;
    for (mine, theirs) in [
        (&mut d.username, &s.username),
        (&mut d.password, &s.password),
        (&mut d.token, &s.token),
        (&mut d.client_id, &s.client_id),
        (&mut d.client_secret, &s.client_secret),
    ] {
        if theirs.is_some() {
            mine.clone_from(theirs);
        }
    }
    if let Some(secrets) = &s.secrets {
        d.secrets.clone_from(secrets);
    }
    d
}

/// Refuses a deployment that moves `url` to another host but leaves the token service where
/// the mapping put it: the credentials would go to that service (production, when `url` was
/// pointed at staging). Both hosts are named.
pub(super) fn check_token_host(
    connector: &Connector,
    mapped: &crate::mapping::Destination,
    ov: &crate::config::DestinationOverride,
) -> Result<(), String> {
    use crate::connectors::AuthScheme;
    let (Some(url), None, Some(token_url)) = (&ov.url, &ov.token_url, &mapped.token_url) else {
        return Ok(());
    };
    if !matches!(
        connector.auth,
        AuthScheme::Oauth2ClientCredentials | AuthScheme::TokenExchange
    ) {
        return Ok(());
    }
    let origin = |u: &str| {
        reqwest::Url::parse(u.trim()).ok().map(|u| {
            let host = u.host_str().unwrap_or_default().to_ascii_lowercase();
            match u.port_or_known_default() {
                Some(p) => format!("{host}:{p}"),
                None => host,
            }
        })
    };
    let new = origin(url);
    if new == mapped.url.as_deref().and_then(origin) || new == origin(token_url) {
        return Ok(());
    }
    Err(format!(
        "the config moves `url` to {} but `token_url` still goes to {}: the client credentials          would be sent there; set `token_url` beside `url` in the config's [destinations]          (rule: token-host-mismatch)",
        new.unwrap_or_else(|| "a host not known".into()),
        origin(token_url).unwrap_or_else(|| "a host not known".into())
    ))
}

/// A destination's credentials, read from its secret references (relative files from the
/// trust's folder). The error names the key, never a value.
fn credentials(
    base: &std::path::Path,
    d: &crate::mapping::Destination,
) -> Result<Credentials, String> {
    let secret = |key: &str, s: &Option<crate::config::SecretRef>| {
        s.as_ref()
            .map(|s| s.resolve(base).map_err(|r| format!("{key}: {r}")))
            .transpose()
    };
    let mut c = Credentials {
        username: secret("username", &d.username)?,
        password: secret("password", &d.password)?,
        token: secret("token", &d.token)?,
        client_id: secret("client_id", &d.client_id)?,
        client_secret: secret("client_secret", &d.client_secret)?,
        token_url: d.token_url.clone(),
        scopes: d.scopes.clone(),
        webhook_keys: Vec::new(),
    };
    for (i, s) in d.secrets.iter().enumerate() {
        let v = s.resolve(base).map_err(|r| format!("secrets[{i}]: {r}"))?;
        c.webhook_keys
            .push(webhook_key(&v).map_err(|r| format!("secrets[{i}]: {r}"))?);
    }
    Ok(c)
}

/// Whether a destination's `url` or `token_url` (`key`) may carry records: `https://`, or
/// plain `http://` to a loopback host (a test receiver on this machine), or — only where the
/// destination says `allow_plain_http = true` — plain `http://` anywhere. `Ok(true)` means
/// plain HTTP allowed that way, for the start-up warning. The error names the host, never
/// the path or query (which may carry a key).
pub(super) fn check_plain_http(key: &str, url: &str, allowed: bool) -> Result<bool, String> {
    let lower = url.trim().to_ascii_lowercase();
    if !lower.starts_with("http://") {
        return Ok(false);
    }
    let host = reqwest::Url::parse(url.trim())
        .ok()
        .and_then(|u| u.host_str().map(str::to_owned));
    let loopback = host.as_deref().is_some_and(|h| {
        h.eq_ignore_ascii_case("localhost")
            || h.trim_start_matches('[')
                .trim_end_matches(']')
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
    });
    if loopback {
        return Ok(false);
    }
    if allowed {
        return Ok(true);
    }
    let host = host.unwrap_or_else(|| "a host not known until sent".to_owned());
    Err(format!(
        "`{key}` is plain http:// to {host}, which is not loopback: safeguarding records go \
         over TLS (https://); set `allow_plain_http = true` on the destination to allow it \
         (rule: plain-http)"
    ))
}

fn check_auth(c: &Connector, cred: &Credentials, url: Option<&str>) -> Result<(), String> {
    use crate::connectors::AuthScheme;
    if url.is_none_or(str::is_empty) {
        return Err("no `url` (in routes.toml or the deployment's [destinations])".into());
    }
    let missing = |k: &str| {
        Err(format!(
            "connector `{}` authenticates with {k}, which the destination does not give",
            c.name
        ))
    };
    match c.auth {
        AuthScheme::None => {}
        AuthScheme::Basic if cred.username.is_none() => return missing("`username`"),
        AuthScheme::Bearer if cred.token.is_none() => return missing("`token`"),
        AuthScheme::Oauth2ClientCredentials
            if cred.client_id.is_none() || cred.token_url.is_none() =>
        {
            return missing("`client_id`, `client_secret` and `token_url`");
        }
        _ => {}
    }
    if c.transport == TransportKind::Webhook && cred.webhook_keys.is_empty() {
        return Err("a webhook destination needs at least one signing secret in `secrets`".into());
    }
    Ok(())
}
