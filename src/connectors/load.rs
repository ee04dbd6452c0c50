//! Loading connectors: a folder's `*.toml` read and parsed, and every rule a file must
//! keep checked (limits, endpoints, pointers, look-ups, token), naming the key at fault.
//! Owns: [`Connector::parse`], [`Connectors`], [`ConnectorError`]. May not touch: the
//! file's types (`file`), sending.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::{AuthScheme, Connector, TransportKind};

/// A connector file's error: the file, and for a refused value its key.
pub type ConnectorError = crate::toml_file::FileError;

impl Connector {
    pub fn parse(path: &Path, name: &str, text: &str) -> Result<Connector, ConnectorError> {
        let mut c: Connector = crate::toml_file::parse(path, text)?;
        c.name = name.to_owned();
        let invalid = |key: &str, reason: &str| ConnectorError::invalid(path, key, reason);
        if let Err((key, rule)) = c.limits.check() {
            return Err(invalid(&format!("limits.{key}"), rule));
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
            if e.update_body == super::UpdateBody::Changed
                && (e.update_method.is_none() || e.update_path.is_none())
            {
                return Err(invalid(
                    &format!("endpoints.{kind}.update_body"),
                    "`changed` needs `update_method` and `update_path` (how an update is sent)",
                ));
            }
            if e.lost_answer == Some(super::LostAnswer::Reconcile) && e.reconcile.is_none() {
                return Err(invalid(
                    &format!("endpoints.{kind}.lost_answer"),
                    "`reconcile` needs a [endpoints.<kind>.reconcile] table (how to find what a create made)",
                ));
            }
            if let Some(r) = &e.reconcile
                && (r.match_fields.is_empty()
                    || !r.value.starts_with('/')
                    || r.match_fields
                        .iter()
                        .any(|(a, b)| !a.starts_with('/') || !b.starts_with('/')))
            {
                return Err(invalid(
                    &format!("endpoints.{kind}.reconcile"),
                    "`match` pairs JSON pointers (item → body), at least one; `value` is a JSON pointer",
                ));
            }
            if !e.fields_at.is_empty() && !e.fields_at.starts_with('/') {
                return Err(invalid(
                    &format!("endpoints.{kind}.fields_at"),
                    "a JSON pointer (starting with /), or left out for the body itself",
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
            if e.batch_size > 1 && c.transport != TransportKind::HttpJson {
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
        if c.transport == TransportKind::HttpJson && c.endpoints.is_empty() {
            return Err(invalid(
                "endpoints",
                "an http_json connector needs at least one endpoint",
            ));
        }
        if c.transport == TransportKind::CsvFile && c.auth != AuthScheme::None {
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
