//! `mappings/<trust>/routes.toml`: the trust's destinations (a connector, where it is, which
//! secrets it uses) and its routes (which records go to which destination, through which map).
//!
//! A record goes to every destination a route sends it to, once per destination: the first
//! route naming a destination wins. A disclosure (or any incident or safeguarding flag) never
//! reaches a destination that `holds = "attendance"` unless its route says
//! `allow_safeguarding = true`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::MappingError;
use crate::config::SecretRef;
use crate::policy::Severity;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoutesFile {
    #[serde(default)]
    pub destinations: BTreeMap<String, Destination>,
    #[serde(default, rename = "route")]
    pub routes: Vec<Route>,
}

/// What a destination keeps, when it matters to routing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Holds {
    Attendance,
    Contacts,
    Safeguarding,
}

/// One place records go: a connector (a system) and this trust's use of it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Destination {
    /// The connector file's name, without `.toml`.
    pub connector: String,
    /// Base URL for HTTP connectors (endpoint paths are appended).
    #[serde(default)]
    pub url: Option<String>,
    /// Webhook signing secrets (`whsec_…`), several while one is rotated out.
    #[serde(default)]
    pub secrets: Vec<SecretRef>,
    #[serde(default)]
    pub username: Option<SecretRef>,
    #[serde(default)]
    pub password: Option<SecretRef>,
    #[serde(default)]
    pub token: Option<SecretRef>,
    #[serde(default)]
    pub client_id: Option<SecretRef>,
    #[serde(default)]
    pub client_secret: Option<SecretRef>,
    #[serde(default)]
    pub token_url: Option<String>,
    /// Lets `url` / `token_url` be plain `http://` to a host that is not loopback (each
    /// start warns). Without it such a destination is refused: records travel over TLS.
    #[serde(default)]
    pub allow_plain_http: bool,
    #[serde(default)]
    pub scopes: Vec<String>,
    /// CSV: the file a row goes to, a template under the deployment's `out` folder, e.g.
    /// `"{{ school.urn }}/attendance-{{ date }}.csv"`; the connector gives the default.
    #[serde(default)]
    pub file: Option<String>,
    #[serde(default)]
    pub holds: Option<Holds>,
    /// Values endpoint paths, look-ups, tokens and maps may use (`{{ vars.school_id }}`).
    #[serde(default)]
    pub vars: BTreeMap<String, String>,
    /// Per school (by URN), values over `vars`: each school's id in the target system.
    #[serde(default)]
    pub schools: BTreeMap<String, BTreeMap<String, String>>,
    /// The connector endpoint every record here goes to, instead of the one for its kind
    /// (a visit report as an attendance mark rather than a note).
    #[serde(default)]
    pub endpoint: Option<String>,
}

impl Destination {
    /// `vars` with the school's own values over them.
    pub fn vars_for(&self, school: &str) -> BTreeMap<String, String> {
        let mut v = self.vars.clone();
        if let Some(s) = self.schools.get(school) {
            v.extend(s.iter().map(|(k, x)| (k.clone(), x.clone())));
        }
        v
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    pub name: String,
    /// The destination's name in `[destinations]`.
    pub to: String,
    /// The field map (`maps/<map>.toml`) that builds what is sent.
    pub map: String,
    /// Record kinds; all when absent.
    #[serde(default)]
    pub kinds: Option<Vec<String>>,
    /// A visit's `purpose`, an incident's `type`, a flag's `category`.
    #[serde(default)]
    pub categories: Option<Vec<String>>,
    /// A flag's urgency.
    #[serde(default)]
    pub urgency: Option<Vec<String>>,
    /// School URNs; every school when absent (also one missing from trust.toml).
    #[serde(default)]
    pub schools: Option<Vec<String>>,
    /// Only revisions with a policy exception of at least this severity.
    #[serde(default)]
    pub exceptions: Option<Severity>,
    /// A minijinja condition over the record, e.g. `absence_reason is defined`.
    #[serde(default)]
    pub when: Option<String>,
    /// Lets incidents and safeguarding flags reach a destination that holds attendance.
    #[serde(default)]
    pub allow_safeguarding: bool,
}

pub const KINDS: [&str; 3] = ["visit_report", "incident", "safeguarding_flag"];

/// The facts about one record revision routes decide on.
pub struct RouteInput<'a> {
    pub kind: &'a str,
    pub category: Option<&'a str>,
    pub urgency: Option<&'a str>,
    pub school: &'a str,
    /// Severities of the exceptions this revision raised.
    pub severities: &'a [Severity],
}

impl Route {
    /// Whether the route's filters (all but `when`) take the record.
    pub fn takes(&self, r: &RouteInput<'_>) -> bool {
        let within = |list: &Option<Vec<String>>, v: Option<&str>| match list {
            None => true,
            Some(l) => v.is_some_and(|v| l.iter().any(|x| x == v)),
        };
        within(&self.kinds, Some(r.kind))
            && within(&self.categories, r.category)
            && within(&self.urgency, r.urgency)
            && within(&self.schools, Some(r.school))
            && self
                .exceptions
                .is_none_or(|min| r.severities.iter().any(|s| *s <= min))
    }

    pub fn may_carry_safeguarding(&self) -> bool {
        self.allow_safeguarding
    }
}

pub fn load_routes(path: &Path) -> Result<Option<RoutesFile>, MappingError> {
    if !path.is_file() {
        return Ok(None);
    }
    let file: RoutesFile = super::trust::read_toml(path)?;
    let invalid = |key: String, reason: String| MappingError::Invalid {
        path: PathBuf::from(path),
        key,
        reason,
    };
    for (name, d) in &file.destinations {
        if !valid_name(name) {
            return Err(invalid(
                format!("destinations.{name}"),
                "a destination's name is 1-64 characters of a-z 0-9 _ -".into(),
            ));
        }
        let secrets = d
            .secrets
            .iter()
            .enumerate()
            .map(|(i, s)| (format!("destinations.{name}.secrets[{i}]"), s))
            .chain(
                [
                    ("username", &d.username),
                    ("password", &d.password),
                    ("token", &d.token),
                    ("client_id", &d.client_id),
                    ("client_secret", &d.client_secret),
                ]
                .into_iter()
                .filter_map(|(k, s)| s.as_ref().map(|s| (format!("destinations.{name}.{k}"), s))),
            );
        for (key, s) in secrets {
            crate::config::check_secret(path, &key, s).map_err(|e| invalid(key, e.to_string()))?;
        }
    }
    let mut names = std::collections::BTreeSet::new();
    for (i, r) in file.routes.iter().enumerate() {
        let at = |k: &str| format!("route[{i}] ({}).{k}", r.name);
        if !names.insert(r.name.as_str()) {
            return Err(invalid(at("name"), "two routes have this name".into()));
        }
        let Some(dest) = file.destinations.get(&r.to) else {
            return Err(invalid(
                at("to"),
                format!("no destination `{}` in [destinations]", r.to),
            ));
        };
        if let Some(kinds) = &r.kinds
            && let Some(k) = kinds.iter().find(|k| !KINDS.contains(&k.as_str()))
        {
            return Err(invalid(
                at("kinds"),
                format!("`{k}` is not a record kind ({})", KINDS.join(", ")),
            ));
        }
        let carries_safeguarding = r
            .kinds
            .as_ref()
            .is_none_or(|k| k.iter().any(|k| k != "visit_report"));
        if dest.holds == Some(Holds::Attendance) && carries_safeguarding && !r.allow_safeguarding {
            return Err(invalid(
                at("kinds"),
                format!(
                    "destination `{}` holds attendance: a route to it takes only visit_report unless it says allow_safeguarding = true",
                    r.to
                ),
            ));
        }
    }
    Ok(Some(file))
}

fn valid_name(n: &str) -> bool {
    (1..=64).contains(&n.len())
        && n.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<Option<RoutesFile>, String> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("routes.toml");
        std::fs::write(&path, text).unwrap();
        load_routes(&path).map_err(|e| e.to_string())
    }

    const LOG: &str =
        "[destinations.attendance_log]\nconnector = \"csv_log\"\nholds = \"attendance\"\n";

    #[test]
    fn safeguarding_records_reach_an_attendance_log_only_when_a_route_says_so() {
        // No `kinds`: every kind, flags and disclosures among them: refused.
        let e = load(&format!(
            "{LOG}[[route]]\nname = \"all\"\nto = \"attendance_log\"\nmap = \"m\"\n"
        ))
        .unwrap_err();
        assert!(
            e.contains("allow_safeguarding") && e.contains("route[0] (all).kinds"),
            "{e}"
        );
        let e = load(&format!(
            "{LOG}[[route]]\nname = \"flags\"\nkinds = [\"safeguarding_flag\"]\nto = \"attendance_log\"\nmap = \"m\"\n"
        ))
        .unwrap_err();
        assert!(e.contains("allow_safeguarding"), "{e}");
        // Visits only, or said explicitly: taken.
        assert!(load(&format!(
            "{LOG}[[route]]\nname = \"visits\"\nkinds = [\"visit_report\"]\nto = \"attendance_log\"\nmap = \"m\"\n"
        ))
        .is_ok());
        assert!(load(&format!(
            "{LOG}[[route]]\nname = \"all\"\nallow_safeguarding = true\nto = \"attendance_log\"\nmap = \"m\"\n"
        ))
        .is_ok());
    }

    #[test]
    fn routes_name_known_destinations_and_kinds_and_secrets_are_references() {
        let e = load("[[route]]\nname = \"r\"\nto = \"nowhere\"\nmap = \"m\"\n").unwrap_err();
        assert!(e.contains("no destination `nowhere`"), "{e}");
        let e = load(&format!(
            "{LOG}[[route]]\nname = \"r\"\nkinds = [\"visit\"]\nto = \"attendance_log\"\nmap = \"m\"\n"
        ))
        .unwrap_err();
        assert!(e.contains("`visit` is not a record kind"), "{e}");
        let e =
            load("[destinations.hook]\nconnector = \"webhook\"\nsecrets = [\"whsec_inline\"]\n")
                .unwrap_err();
        assert!(e.contains("secrets") && !e.contains("whsec_inline"), "{e}");
    }
}
