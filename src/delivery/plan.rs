//! Planning: from a stored revision to its deliveries (routing), and from a delivery to
//! what is sent (rendering through the route's map). The same functions serve `sync` and
//! `mapping test`, so a passing mapping test is what a sync sends.

use std::collections::BTreeMap;

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::connectors::{Connectors, TransportKind};
use crate::mapping::{self, RaisedException, RenderError, Rendered, Trust, Trusts};
use crate::store::deliveries::{NewDelivery, Unrouted};

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PlanError {
    #[error("{0}")]
    Render(#[from] RenderError),
    #[error(
        "destination `{destination}` names connector `{connector}`, which is not in the connectors folder"
    )]
    UnknownConnector {
        destination: String,
        connector: String,
    },
    #[error("destination `{destination}`: no such destination in routes.toml")]
    UnknownDestination { destination: String },
    #[error(
        "map `{map}` builds {built} but destination `{destination}` ({connector}) takes {takes}"
    )]
    Shape {
        map: String,
        destination: String,
        connector: String,
        built: &'static str,
        takes: &'static str,
    },
    #[error("trust `{trust}` has no routes.toml")]
    NoMapping { trust: String },
    #[error("destination `{destination}`: look-up `{lookup}`: {reason}")]
    Lookup {
        destination: String,
        lookup: String,
        reason: String,
    },
}

/// What a delivery's map sees beside the record: the destination's `vars` for the
/// record's school (`{{ vars.X }}`), the look-ups made for it (`{{ lookup.X }}`), and for an
/// incident or flag of a visit, that visit report (`{{ of_visit.pupil.upn }}`: an incident
/// names no pupil of its own).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Extras {
    pub vars: BTreeMap<String, String>,
    pub lookups: BTreeMap<String, String>,
    pub of_visit: Option<Value>,
}

/// A look-up one delivery needs before its map can be rendered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LookupNeed {
    pub name: String,
    pub key: String,
}

/// What one destination gets for one record revision.
#[derive(Debug, Clone, PartialEq)]
pub struct Outgoing {
    pub destination: String,
    pub connector: String,
    pub map: String,
    pub rendered: Rendered,
    /// CSV: the file (under the destination's folder) the row goes to.
    pub file: Option<String>,
}

/// The delivery order: immediate flags first, then same-day flags and incidents, then the rest.
pub fn priority(kind: &str, urgency: Option<&str>) -> u8 {
    match (kind, urgency) {
        (_, Some("immediate")) => 0,
        (_, Some("same_day")) | ("incident", _) => 1,
        _ => 2,
    }
}

/// The idempotency key of (trust, destination, record, revision): the same on every attempt
/// and after any restart, and the same key never names two deliveries.
pub fn idempotency_key(
    trust: &str,
    destination: &str,
    kind: &str,
    id: &str,
    revision: u32,
) -> String {
    let mut h = Sha256::new();
    for part in [trust, destination, kind, id, &revision.to_string()] {
        h.update(part.as_bytes());
        h.update([0x1f]);
    }
    format!("ds_{}", &hex::encode(h.finalize())[..32])
}

fn raised(exceptions: &[(String, crate::policy::Severity)]) -> Vec<RaisedException> {
    exceptions
        .iter()
        .map(|(rule, severity)| RaisedException {
            rule: rule.clone(),
            severity: *severity,
        })
        .collect()
}

/// The deliveries of one stored revision, or why one of its routes could not be decided
/// (then the route's destination gets a dead delivery naming the error).
pub fn route_revision(trusts: &Trusts, r: &Unrouted) -> Vec<NewDelivery> {
    let Some(trust) = trusts.get(&r.trust) else {
        return Vec::new();
    };
    let Some(mapping) = trust.mapping.as_deref() else {
        return Vec::new();
    };
    let record: Value = match serde_json::from_str(&r.canonical) {
        Ok(v) => v,
        Err(_) => return Vec::new(),
    };
    let severities: Vec<_> = r.exceptions.iter().map(|e| e.1).collect();
    let input = mapping::route_input(&record, &severities);
    let tz = trust.place(&r.school).time_zone;
    let ctx = mapping::context(&record, &raised(&r.exceptions), "", &mapping.codes, tz);
    let new = |dest: &str, route: &str, map: &str, dead: Option<String>| NewDelivery {
        trust: r.trust.clone(),
        destination: dest.to_owned(),
        kind: r.kind,
        record_id: r.id.clone(),
        revision: r.revision,
        school: r.school.clone(),
        route: route.to_owned(),
        map: map.to_owned(),
        priority: priority(r.kind.as_str(), r.urgency.as_deref()),
        idempotency_key: idempotency_key(&r.trust, dest, r.kind.as_str(), &r.id, r.revision),
        dead,
    };
    let mut out = Vec::new();
    for route in &mapping.routes.routes {
        if out.iter().any(|d: &NewDelivery| d.destination == route.to) {
            continue;
        }
        match mapping.route_one(route, &input, &ctx) {
            Ok(true) => out.push(new(&route.to, &route.name, &route.map, None)),
            Ok(false) => {}
            Err(e) => out.push(new(
                &route.to,
                &route.name,
                &route.map,
                Some(format!("routing: {e}")),
            )),
        }
    }
    out
}

fn mapping_of(trust: &Trust) -> Result<&mapping::Mapping, PlanError> {
    trust
        .mapping
        .as_deref()
        .ok_or_else(|| PlanError::NoMapping {
            trust: trust.id.clone(),
        })
}

/// One destination's output for a record, or (the destination) why it cannot be built.
pub type Planned = Result<Outgoing, Box<(String, PlanError)>>;

/// Everything a record revision sends (used by `mapping test`): routing errors fail the
/// whole record; a map that cannot be built fails its own destination only (as in a sync,
/// where that delivery alone goes dead).
pub fn plan_record(
    trust: &Trust,
    connectors: &Connectors,
    record: &Value,
    exceptions: &[RaisedException],
    of_visit: Option<&Value>,
) -> Result<Vec<Planned>, PlanError> {
    let mapping = mapping_of(trust)?;
    let severities: Vec<_> = exceptions.iter().map(|e| e.severity).collect();
    let input = mapping::route_input(record, &severities);
    let school = input.school.to_owned();
    let tz = trust.place(&school).time_zone;
    let ctx = mapping::context(record, exceptions, "", &mapping.codes, tz);
    let planned = mapping.route(&input, &ctx)?;
    Ok(planned
        .iter()
        .map(|p| {
            // A mapping test reaches no target: a look-up's value stands in as
            // `<name key>`, so the expected body shows what would be looked up.
            let mut extras = Extras {
                vars: destination_vars(trust, &p.destination, &school),
                lookups: BTreeMap::new(),
                of_visit: of_visit.cloned(),
            };
            let needs = lookup_needs(
                trust,
                connectors,
                &p.destination,
                record,
                exceptions,
                &extras,
            )
            .map_err(|e| (p.destination.clone(), e))?;
            for need in needs {
                extras
                    .lookups
                    .insert(need.name.clone(), format!("<{} {}>", need.name, need.key));
            }
            render(
                trust,
                connectors,
                &p.destination,
                &p.map,
                record,
                exceptions,
                &extras,
            )
            .map_err(|e| Box::new((p.destination.clone(), e)))
        })
        .collect())
}

/// A destination's `vars` for a school (empty for an unknown destination).
pub fn destination_vars(
    trust: &Trust,
    destination: &str,
    school: &str,
) -> BTreeMap<String, String> {
    trust
        .mapping
        .as_deref()
        .and_then(|m| m.routes.destinations.get(destination))
        .map(|d| d.vars_for(school))
        .unwrap_or_default()
}

/// The look-ups a record's delivery to `destination` needs: each of its endpoint's
/// `lookups` whose key, rendered over the record (and `extras`), is not empty.
pub fn lookup_needs(
    trust: &Trust,
    connectors: &Connectors,
    destination: &str,
    record: &Value,
    exceptions: &[RaisedException],
    extras: &Extras,
) -> Result<Vec<LookupNeed>, PlanError> {
    let mapping = mapping_of(trust)?;
    let (dest, connector) = destination_of(mapping, connectors, destination)?;
    let kind = record
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let Some(endpoint) = connector.endpoint(dest.endpoint.as_deref(), kind) else {
        return Ok(Vec::new());
    };
    if endpoint.lookups.is_empty() {
        return Ok(Vec::new());
    }
    let ctx = full_context(trust, mapping, destination, record, exceptions, extras);
    let mut needs = Vec::new();
    for name in &endpoint.lookups {
        let Some(l) = connector.lookups.get(name) else {
            continue;
        };
        let key = mapping
            .render_template(&l.key, &ctx)
            .map_err(|reason| PlanError::Lookup {
                destination: destination.to_owned(),
                lookup: name.clone(),
                reason: format!("key: {reason}"),
            })?;
        let key = key.trim();
        if !key.is_empty() {
            needs.push(LookupNeed {
                name: name.clone(),
                key: key.to_owned(),
            });
        }
    }
    Ok(needs)
}

fn school_of(record: &Value) -> &str {
    record
        .pointer("/school/urn")
        .and_then(Value::as_str)
        .unwrap_or_default()
}

fn destination_of<'a>(
    mapping: &'a mapping::Mapping,
    connectors: &'a Connectors,
    destination: &str,
) -> Result<
    (
        &'a mapping::Destination,
        &'a std::sync::Arc<crate::connectors::Connector>,
    ),
    PlanError,
> {
    let dest = mapping
        .routes
        .destinations
        .get(destination)
        .ok_or_else(|| PlanError::UnknownDestination {
            destination: destination.to_owned(),
        })?;
    let connector = connectors
        .get(&dest.connector)
        .ok_or_else(|| PlanError::UnknownConnector {
            destination: destination.to_owned(),
            connector: dest.connector.clone(),
        })?;
    Ok((dest, connector))
}

/// The record's context (see [`mapping::context`]) with `vars` and `lookup` beside it.
fn full_context(
    trust: &Trust,
    mapping: &mapping::Mapping,
    destination: &str,
    record: &Value,
    exceptions: &[RaisedException],
    extras: &Extras,
) -> Value {
    let tz = trust.place(school_of(record)).time_zone;
    let mut ctx = mapping::context(record, exceptions, destination, &mapping.codes, tz);
    if let Value::Object(m) = &mut ctx {
        m.insert("vars".into(), serde_json::json!(extras.vars));
        m.insert("lookup".into(), serde_json::json!(extras.lookups));
        if let Some(v) = &extras.of_visit {
            m.insert("of_visit".into(), v.clone());
        }
    }
    ctx
}

/// What one delivery sends: the map's body or row, and for CSV the file.
pub fn render(
    trust: &Trust,
    connectors: &Connectors,
    destination: &str,
    map: &str,
    record: &Value,
    exceptions: &[RaisedException],
    extras: &Extras,
) -> Result<Outgoing, PlanError> {
    let mapping = mapping_of(trust)?;
    let (dest, connector) = destination_of(mapping, connectors, destination)?;
    let tz = trust.place(school_of(record)).time_zone;
    let ctx = full_context(trust, mapping, destination, record, exceptions, extras);
    let rendered = mapping.render(map, &ctx, tz)?;
    let csv = connector.transport == TransportKind::CsvFile;
    let built = match rendered {
        Rendered::Body(_) => "a JSON body",
        Rendered::Row { .. } => "a CSV row",
    };
    if csv != matches!(rendered, Rendered::Row { .. }) {
        return Err(PlanError::Shape {
            map: map.to_owned(),
            destination: destination.to_owned(),
            connector: dest.connector.clone(),
            built,
            takes: if csv { "a CSV row" } else { "a JSON body" },
        });
    }
    let file = if csv {
        Some(mapping.file_name(destination, &connector.csv.file, &ctx)?)
    } else {
        None
    };
    Ok(Outgoing {
        destination: destination.to_owned(),
        connector: dest.connector.clone(),
        map: map.to_owned(),
        rendered,
        file,
    })
}

/// What `config check` finds wrong with a trust's routes against the connectors: a missing
/// connector, or a map that builds a body for a CSV destination (or a row for an HTTP one).
pub fn check_trust(trust: &Trust, connectors: &Connectors) -> Vec<String> {
    let Some(mapping) = trust.mapping.as_deref() else {
        return Vec::new();
    };
    let mut problems = Vec::new();
    let routes_file = trust.folder.join("routes.toml");
    for (name, d) in &mapping.routes.destinations {
        match connectors.get(&d.connector) {
            None => problems.push(format!(
                "{}: destinations.{name}: no connector `{}` in the connectors folder",
                routes_file.display(),
                d.connector
            )),
            Some(c) => {
                if let Some(e) = &d.endpoint
                    && !c.endpoints.contains_key(e)
                {
                    problems.push(format!(
                        "{}: destinations.{name}: endpoint `{e}` is not in connector `{}`",
                        routes_file.display(),
                        d.connector
                    ));
                }
                if let Some(urn) = d.schools.keys().find(|u| {
                    !trust
                        .file
                        .schools
                        .iter()
                        .any(|s| s.urn.as_str() == u.as_str())
                }) {
                    problems.push(format!(
                        "{}: destinations.{name}.schools: school {urn} is not in trust.toml",
                        routes_file.display()
                    ));
                }
            }
        }
    }
    for r in &mapping.routes.routes {
        let (Some(d), Some(m)) = (
            mapping.routes.destinations.get(&r.to),
            mapping.maps.get(&r.map),
        ) else {
            continue;
        };
        let Some(c) = connectors.get(&d.connector) else {
            continue;
        };
        let row = matches!(m.shape, mapping::fieldmap::Shape::Columns(_));
        if row != (c.transport == TransportKind::CsvFile) {
            problems.push(format!(
                "{}: route `{}`: map `{}` builds {} but destination `{}` ({}) takes {}",
                routes_file.display(),
                r.name,
                r.map,
                if row { "a CSV row" } else { "a JSON body" },
                r.to,
                d.connector,
                if row { "a JSON body" } else { "a CSV row" }
            ));
        }
        if c.transport == TransportKind::HttpJson {
            for kind in r
                .kinds
                .clone()
                .unwrap_or_else(|| mapping::routes::KINDS.map(String::from).to_vec())
            {
                if c.endpoint(d.endpoint.as_deref(), &kind).is_none() {
                    problems.push(format!(
                        "{}: route `{}` sends {kind} to `{}`, but connector `{}` has no endpoint for it",
                        routes_file.display(),
                        r.name,
                        r.to,
                        d.connector
                    ));
                }
            }
        }
    }
    problems
}
