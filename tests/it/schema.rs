//! The published JSON Schema must be what the types generate. To refresh it after changing
//! a record type: `DOORSTEP_BLESS=1 cargo test --test schema`.

use std::path::Path;

#[test]
fn published_schema_is_current() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("schema/records.schema.json");
    let generated =
        serde_json::to_string_pretty(&doorstep::records::records_schema()).unwrap() + "\n";
    if std::env::var_os("DOORSTEP_BLESS").is_some() {
        std::fs::write(&path, &generated).unwrap();
    }
    let published = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        published == generated,
        "schema/records.schema.json is stale: run DOORSTEP_BLESS=1 cargo test --test schema"
    );
}

#[test]
fn schema_names_every_kind_and_embedded_records() {
    let schema = doorstep::records::records_schema();
    let defs = schema["$defs"].as_object().unwrap();
    for name in [
        "VisitReport",
        "Incident",
        "SafeguardingFlag",
        "EmbeddedIncident",
        "EmbeddedSafeguardingFlag",
    ] {
        assert!(defs.contains_key(name), "{name}");
    }
    assert_eq!(defs["Incident"]["properties"]["kind"]["const"], "incident");
    let embedded_required = defs["EmbeddedIncident"]["required"].as_array().unwrap();
    assert!(
        !embedded_required
            .iter()
            .any(|f| f == "trust" || f == "visit_id")
    );
    assert_eq!(defs["VisitReport"]["additionalProperties"], false);
}
