//! The published JSON Schema (draft 2020-12) of the three record kinds, generated from the
//! types so it cannot drift from what `parse` accepts. `schema/records.schema.json` holds
//! the current text; a test fails when it is stale.

use schemars::generate::SchemaSettings;
use serde_json::{Value, json};

use super::kinds::{Incident, SafeguardingFlag, VisitReport};

/// Fields an embedded record may leave out: it takes them from its visit report.
const INHERITED: [&str; 5] = ["kind", "trust", "school", "revision", "visit_id"];

pub fn records_schema() -> Value {
    let mut generator = SchemaSettings::draft2020_12().into_generator();
    let kinds = [
        ("visit_report", generator.subschema_for::<VisitReport>()),
        ("incident", generator.subschema_for::<Incident>()),
        (
            "safeguarding_flag",
            generator.subschema_for::<SafeguardingFlag>(),
        ),
    ];
    let mut defs = generator.take_definitions(true);
    for (kind, name) in [
        ("visit_report", "VisitReport"),
        ("incident", "Incident"),
        ("safeguarding_flag", "SafeguardingFlag"),
    ] {
        if let Some(def) = defs.get_mut(name) {
            def["properties"]["kind"] = json!({ "const": kind });
            if let Some(req) = def["required"].as_array_mut() {
                req.insert(0, json!("kind"));
            }
        }
    }
    for (name, embedded, also_inherited) in [
        ("Incident", "EmbeddedIncident", None),
        (
            "SafeguardingFlag",
            "EmbeddedSafeguardingFlag",
            Some("pupil"),
        ),
    ] {
        if let Some(mut def) = defs.get(name).cloned() {
            if let Some(req) = def["required"].as_array_mut() {
                req.retain(|f| {
                    let f = f.as_str().unwrap_or_default();
                    !INHERITED.contains(&f) && Some(f) != also_inherited
                });
            }
            def["description"] = json!(format!(
                "{name} embedded in a visit report: kind, trust, school, revision and visit_id \
                 (and a flag's pupil) may be left out and are taken from the visit report"
            ));
            defs.insert(embedded.into(), def);
        }
    }
    if let Some(visit) = defs.get_mut("VisitReport") {
        visit["properties"]["incidents"] =
            json!({ "type": "array", "items": { "$ref": "#/$defs/EmbeddedIncident" } });
        visit["properties"]["safeguarding_flags"] =
            json!({ "type": "array", "items": { "$ref": "#/$defs/EmbeddedSafeguardingFlag" } });
    }
    json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "doorstep record",
        "description": "A visit report, incident or safeguarding flag as doorstep accepts it (SPEC §1). \
                        A UPN's check letter, time order and one lead among staff are checked beyond this schema.",
        "oneOf": kinds.iter().map(|(_, s)| s.as_value().clone()).collect::<Vec<_>>(),
        "$defs": defs,
    })
}
