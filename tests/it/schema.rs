//! The published JSON Schema must be what the types generate. To refresh it after changing
//! a record type: `DOORSTEP_BLESS=1 cargo test --test it schema`, review the change, then run
//! the tests again without `DOORSTEP_BLESS` (a blessed run still fails, so a stray
//! `DOORSTEP_BLESS` in a CI environment cannot turn a stale schema green).

use std::path::Path;

use crate::harness;

/// Compares `path` with `generated`. Stale and `bless`: writes `generated` there and still
/// fails, saying so.
fn check_published(path: &Path, generated: &str, bless: bool) -> Result<(), String> {
    let published = std::fs::read_to_string(path).unwrap_or_default();
    if published == generated {
        return Ok(());
    }
    let name = path.display();
    if bless {
        std::fs::write(path, generated).map_err(|e| format!("{name}: cannot write: {e}"))?;
        return Err(format!(
            "{name} was stale and DOORSTEP_BLESS is set: wrote it. Review the change, then \
             run the tests again without DOORSTEP_BLESS"
        ));
    }
    Err(format!(
        "{name} is stale: run DOORSTEP_BLESS=1 cargo test --test it schema, then again without it"
    ))
}

#[test]
fn published_schema_is_current() {
    let path = harness::root().join("schema/records.schema.json");
    let generated =
        serde_json::to_string_pretty(&doorstep::records::records_schema()).unwrap() + "\n";
    let bless = std::env::var_os("DOORSTEP_BLESS").is_some();
    let checked = check_published(&path, &generated, bless);
    assert!(checked.is_ok(), "{}", checked.unwrap_err());
}

/// The blessing itself: a stale file is written and the check still fails; the next run
/// without it passes; without it, a stale file is left alone.
#[test]
fn blessing_a_stale_schema_writes_it_and_still_fails() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("records.schema.json");
    std::fs::write(&path, "{}\n").unwrap();

    let err = check_published(&path, "{\"new\": true}\n", false).unwrap_err();
    assert!(err.contains("is stale"), "{err}");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "{}\n");

    let err = check_published(&path, "{\"new\": true}\n", true).unwrap_err();
    assert!(err.contains("wrote it"), "{err}");
    assert!(err.contains("without DOORSTEP_BLESS"), "{err}");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "{\"new\": true}\n");

    assert_eq!(check_published(&path, "{\"new\": true}\n", false), Ok(()));
    assert_eq!(check_published(&path, "{\"new\": true}\n", true), Ok(()));
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
