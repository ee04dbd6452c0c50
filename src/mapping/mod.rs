//! Trusts and their mappings (SPEC §3, §6). `mappings/<trust>/` holds `trust.toml` (the
//! trust's schools with URN, time zone and location), `policy.toml` (its rules),
//! `routes.toml` (destinations and routes), `maps/*.toml` (field maps), `codes.toml` (value
//! maps shared by its maps, among them the attendance codes) and `tests/` (mapping tests).
//!
//! Owns: reading and checking `mappings/<trust>/`; deciding where a record goes and what is
//! sent there. May not touch: HTTP, files other than the mapping's own, the store.

pub mod codes;
pub mod fieldmap;
pub mod routes;
mod trust;

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::{Map, Value};

pub use fieldmap::{FieldMap, RenderError, Rendered};
pub use routes::{Destination, Holds, Route, RouteInput, RoutesFile};
pub use trust::{MappingError, SchoolEntry, Trust, TrustFile, Trusts, load_trust};

use crate::policy::Severity;

/// One trust's routes, maps and codes, ready to route and render.
#[derive(Debug)]
pub struct Mapping {
    pub routes: RoutesFile,
    pub maps: BTreeMap<String, FieldMap>,
    pub codes: fieldmap::ValueMaps,
    env: minijinja::Environment<'static>,
}

/// Where one record revision goes: a destination, through a map, by a route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteMatch {
    pub destination: String,
    pub route: String,
    pub map: String,
}

/// An exception of the revision being routed, as templates see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RaisedException {
    pub rule: String,
    pub severity: Severity,
}

impl Mapping {
    /// Reads `routes.toml`, every map it names, and `codes.toml`; `None` when the trust
    /// has no `routes.toml` (it sends nothing anywhere).
    pub fn load(folder: &Path) -> Result<Option<Mapping>, MappingError> {
        let Some(routes) = routes::load_routes(&folder.join("routes.toml"))? else {
            return Ok(None);
        };
        let codes = fieldmap::load_codes(&folder.join("codes.toml"))?;
        let mut env = fieldmap::environment();
        let mut maps = BTreeMap::new();
        for r in &routes.routes {
            if !maps.contains_key(&r.map) {
                let path = folder.join("maps").join(format!("{}.toml", r.map));
                let map = FieldMap::load(&path, &r.map, &mut env)?;
                if let Some(missing) = map.missing_value_maps(&codes).first() {
                    return Err(MappingError::Invalid {
                        path,
                        key: "map".into(),
                        reason: format!(
                            "no value map `{missing}` in this file's [values] or in codes.toml"
                        ),
                    });
                }
                maps.insert(r.map.clone(), map);
            }
            if let Some(cond) = &r.when {
                env.add_template_owned(
                    format!("when:{}", r.name),
                    format!("{{% if {cond} %}}yes{{% endif %}}"),
                )
                .map_err(|e| MappingError::Invalid {
                    path: folder.join("routes.toml"),
                    key: format!("route ({}).when", r.name),
                    reason: format!("condition: {}", e.detail().unwrap_or("syntax error")),
                })?;
            }
        }
        for (name, d) in &routes.destinations {
            if let Some(file) = &d.file {
                env.add_template_owned(format!("file:{name}"), file.clone())
                    .map_err(|e| MappingError::Invalid {
                        path: folder.join("routes.toml"),
                        key: format!("destinations.{name}.file"),
                        reason: format!("template: {}", e.detail().unwrap_or("syntax error")),
                    })?;
            }
        }
        Ok(Some(Mapping {
            routes,
            maps,
            codes,
            env,
        }))
    }

    /// The destinations a record revision goes to, each once, in route order.
    pub fn route(
        &self,
        input: &RouteInput<'_>,
        context: &Value,
    ) -> Result<Vec<RouteMatch>, RenderError> {
        let mut out: Vec<RouteMatch> = Vec::new();
        for r in &self.routes.routes {
            if out.iter().any(|p| p.destination == r.to) {
                continue;
            }
            if self.route_one(r, input, context)? {
                out.push(RouteMatch {
                    destination: r.to.clone(),
                    route: r.name.clone(),
                    map: r.map.clone(),
                });
            }
        }
        Ok(out)
    }

    /// Whether one route takes the record: its filters, the attendance guard, its `when`.
    pub fn route_one(
        &self,
        r: &Route,
        input: &RouteInput<'_>,
        context: &Value,
    ) -> Result<bool, RenderError> {
        if !r.takes(input) {
            return Ok(false);
        }
        let safeguarding = input.kind != "visit_report";
        let holds_attendance = self
            .routes
            .destinations
            .get(&r.to)
            .is_some_and(|d| d.holds == Some(Holds::Attendance));
        if safeguarding && holds_attendance && !r.may_carry_safeguarding() {
            return Ok(false);
        }
        if r.when.is_none() {
            return Ok(true);
        }
        let t = self
            .env
            .get_template(&format!("when:{}", r.name))
            .map_err(|e| route_error(r, e))?;
        Ok(t.render(minijinja::value::Serde(context))
            .map_err(|e| route_error(r, e))?
            == "yes")
    }

    /// What a map builds for a record (its context from [`context`]).
    pub fn render(
        &self,
        map: &str,
        context: &Value,
        time_zone: chrono_tz::Tz,
    ) -> Result<Rendered, RenderError> {
        let m = self.maps.get(map).ok_or_else(|| RenderError {
            map: map.to_owned(),
            path: "/".into(),
            reason: "no such map in routes.toml".into(),
        })?;
        m.render(&fieldmap::RenderInput {
            context,
            time_zone,
            codes: &self.codes,
            templates: &self.env,
        })
    }

    /// A template of a connector's (a look-up's key) rendered over a record's context.
    pub fn render_template(&self, template: &str, context: &Value) -> Result<String, String> {
        self.env
            .render_str(template, minijinja::value::Serde(context))
            .map_err(|e| e.detail().unwrap_or("template failed").to_owned())
    }

    /// A CSV destination's file name for a record, from its `file` template (or `default`).
    pub fn file_name(
        &self,
        destination: &str,
        default: &str,
        context: &Value,
    ) -> Result<String, RenderError> {
        let err = |reason: String| RenderError {
            map: format!("destinations.{destination}.file"),
            path: "/".into(),
            reason,
        };
        let name = match self.env.get_template(&format!("file:{destination}")) {
            Ok(t) => t.render(minijinja::value::Serde(context)),
            Err(_) => self
                .env
                .render_str(default, minijinja::value::Serde(context)),
        }
        .map_err(|e| err(format!("template: {}", e.detail().unwrap_or("failed"))))?;
        // A file name stays inside the destination's folder.
        let path = Path::new(&name);
        if name.is_empty()
            || path.is_absolute()
            || path
                .components()
                .any(|c| !matches!(c, std::path::Component::Normal(_)))
        {
            return Err(err(
                "the file name must be a relative path without `..`".into()
            ));
        }
        Ok(name)
    }
}

fn route_error(r: &Route, e: minijinja::Error) -> RenderError {
    RenderError {
        map: format!("route {}", r.name),
        path: "/".into(),
        reason: format!("condition: {}", e.detail().unwrap_or("failed")),
    }
}

/// The facts routes decide on, read from a record's canonical JSON.
pub fn route_input<'a>(record: &'a Value, severities: &'a [Severity]) -> RouteInput<'a> {
    let s = |k: &str| record.get(k).and_then(Value::as_str);
    let kind = s("kind").unwrap_or_default();
    RouteInput {
        kind,
        category: match kind {
            "visit_report" => s("purpose"),
            "incident" => s("type"),
            _ => s("category"),
        },
        urgency: s("urgency"),
        school: record
            .pointer("/school/urn")
            .and_then(Value::as_str)
            .unwrap_or_default(),
        severities,
    }
}

/// What templates and field maps see: the record's own fields, and beside them
/// `exceptions` (`[{rule, severity}]`), `destination`, `attendance_code` (when the visit has
/// an `absence_reason` the trust maps), `time_zone` and `date` (the record's local date).
pub fn context(
    record: &Value,
    exceptions: &[RaisedException],
    destination: &str,
    codes: &fieldmap::ValueMaps,
    time_zone: chrono_tz::Tz,
) -> Value {
    let mut m: Map<String, Value> = record.as_object().cloned().unwrap_or_default();
    m.insert(
        "exceptions".into(),
        Value::Array(
            exceptions
                .iter()
                .map(|e| serde_json::json!({"rule": e.rule, "severity": e.severity.as_str()}))
                .collect(),
        ),
    );
    m.insert("destination".into(), Value::String(destination.to_owned()));
    m.insert(
        "time_zone".into(),
        Value::String(time_zone.name().to_owned()),
    );
    if let Some(code) = record
        .get("absence_reason")
        .and_then(Value::as_str)
        .and_then(|r| codes.get("attendance").and_then(|t| t.get(r)))
    {
        m.insert("attendance_code".into(), code.clone());
    }
    let when = [
        "/visit/arrived_at",
        "/occurred_at",
        "/raised_at",
        "/recorded_at",
    ]
    .iter()
    .find_map(|p| record.pointer(p).and_then(Value::as_str));
    if let Some(date) = when.and_then(|t| fieldmap::format_time(t, "%Y-%m-%d", time_zone)) {
        m.insert("date".into(), Value::String(date));
    }
    Value::Object(m)
}
