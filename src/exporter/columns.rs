//! The exporter's CSV columns, one table per record kind: stable, documented
//! (`docs/export.md`), each a JSON pointer into the stored record, so a platform's import can
//! be mapped once. Cells a spreadsheet would run as a formula are neutralised.
//! Owns: [`COLUMNS`], [`cell`]. May not touch: the store, which records are chosen.

use serde_json::Value;

use crate::records::Kind;

/// One column: its header, where its value is in the record, and whether it holds a third
/// party's personal data (a member of staff, another person seen) — marked in a subject
/// access export.
pub struct Column {
    pub header: &'static str,
    pub pointer: &'static str,
    pub third_party: bool,
}

const fn c(header: &'static str, pointer: &'static str) -> Column {
    Column {
        header,
        pointer,
        third_party: false,
    }
}

/// A column holding a third party's personal data.
const fn t(header: &'static str, pointer: &'static str) -> Column {
    Column {
        header,
        pointer,
        third_party: true,
    }
}

pub const VISIT_REPORT: &[Column] = &[
    c("record_id", "/id"),
    c("revision", "/revision"),
    c("school_urn", "/school/urn"),
    c("school_name", "/school/name"),
    c("pupil_upn", "/pupil/upn"),
    c("pupil_mis_id", "/pupil/mis_id"),
    c("pupil_given_name", "/pupil/given_name"),
    c("pupil_family_name", "/pupil/family_name"),
    c("pupil_date_of_birth", "/pupil/date_of_birth"),
    c("pupil_year_group", "/pupil/year_group"),
    c("purpose", "/purpose"),
    c("purpose_detail", "/purpose_detail"),
    c("authorised_by_staff_id", "/authorisation/by/staff_id"),
    t("authorised_by_name", "/authorisation/by/name"),
    c("authoriser_role", "/authorisation/role"),
    c("authorised_at", "/authorisation/at"),
    c("lone_visit_approved", "/authorisation/lone_visit_approved"),
    c("emergency_reason", "/emergency_reason"),
    c("appointment_method", "/appointment/method"),
    c("unannounced_reason", "/appointment/unannounced_reason"),
    t("staff", "/staff"),
    c("buddy_staff_id", "/buddy/staff_id"),
    t("buddy_name", "/buddy/name"),
    c("buddy_code_word_agreed", "/buddy/code_word_agreed"),
    c("left_school_at", "/sign_out/left_school_at"),
    t("vehicle_registration", "/sign_out/vehicle_registration"),
    t("staff_mobiles", "/sign_out/staff_mobiles"),
    c("address_lines", "/sign_out/address/lines"),
    c("postcode", "/sign_out/address/postcode"),
    c("expected_to_see", "/sign_out/expected_to_see"),
    c("expected_arrival", "/sign_out/expected_arrival"),
    c("expected_departure", "/sign_out/expected_departure"),
    c("expected_return", "/sign_out/expected_return"),
    c("arrived_at", "/visit/arrived_at"),
    c("departed_at", "/visit/departed_at"),
    c("returned_at", "/visit/returned_at"),
    c("phoned_in_at", "/visit/phoned_in_at"),
    c("outcome", "/outcome"),
    c("cancellation_reason", "/cancellation/reason"),
    c("rescheduled_for", "/cancellation/rescheduled_for"),
    c("child_seen", "/child_seen"),
    t("people_seen", "/people_seen"),
    c("note_left", "/note_left"),
    c("absence_reason", "/absence_reason"),
    c("transport", "/transport"),
    c("summary", "/summary"),
    c("actions", "/actions"),
    c("recorded_by_staff_id", "/recorded_by/staff_id"),
    t("recorded_by_name", "/recorded_by/name"),
    c("recorded_at", "/recorded_at"),
    c("extensions", "/extensions"),
];

pub const INCIDENT: &[Column] = &[
    c("record_id", "/id"),
    c("revision", "/revision"),
    c("school_urn", "/school/urn"),
    c("school_name", "/school/name"),
    c("visit_id", "/visit_id"),
    c("occurred_at", "/occurred_at"),
    c("type", "/type"),
    c("severity", "/severity"),
    c("description", "/description"),
    c("police_called", "/police_called"),
    c("code_word_used", "/code_word_used"),
    c("left_property", "/left_property"),
    c(
        "reported_to_line_manager_at",
        "/reported_to_line_manager_at",
    ),
    c("shared_with_headteacher_at", "/shared_with_headteacher_at"),
    c("debrief_at", "/debrief_at"),
    c("recorded_by_staff_id", "/recorded_by/staff_id"),
    t("recorded_by_name", "/recorded_by/name"),
    c("extensions", "/extensions"),
];

pub const SAFEGUARDING_FLAG: &[Column] = &[
    c("record_id", "/id"),
    c("revision", "/revision"),
    c("school_urn", "/school/urn"),
    c("school_name", "/school/name"),
    c("visit_id", "/visit_id"),
    c("pupil_upn", "/pupil/upn"),
    c("pupil_mis_id", "/pupil/mis_id"),
    c("pupil_given_name", "/pupil/given_name"),
    c("pupil_family_name", "/pupil/family_name"),
    c("pupil_date_of_birth", "/pupil/date_of_birth"),
    c("pupil_year_group", "/pupil/year_group"),
    c("raised_at", "/raised_at"),
    c("category", "/category"),
    c("urgency", "/urgency"),
    c("emergency_services_called", "/emergency_services_called"),
    c("description", "/description"),
    c("reported_to_dsl_at", "/reported_to_dsl_at"),
    c("referral_to_social_care", "/referral_to_social_care"),
    c("raised_by_staff_id", "/raised_by/staff_id"),
    t("raised_by_name", "/raised_by/name"),
    c("extensions", "/extensions"),
];

/// Columns every kind's file ends with: what the store knows of the revision.
pub const STORED: &[&str] = &["content_hash", "received_at", "exceptions", "delivered_to"];

/// The columns of a kind's file.
pub fn columns(kind: Kind) -> &'static [Column] {
    match kind {
        Kind::VisitReport => VISIT_REPORT,
        Kind::Incident => INCIDENT,
        Kind::SafeguardingFlag => SAFEGUARDING_FLAG,
    }
}

/// The header of a kind's file; in a subject access export, a third party's column says so.
pub fn header(kind: Kind, mark_third_parties: bool) -> Vec<String> {
    columns(kind)
        .iter()
        .map(|c| {
            if mark_third_parties && c.third_party {
                format!("{} (third party)", c.header)
            } else {
                c.header.to_owned()
            }
        })
        .chain(STORED.iter().map(|s| (*s).to_owned()))
        .collect()
}

/// One value as a cell: text as it is, `true`/`false`, numbers as written, a list of plain
/// values joined by `"; "`, anything else as compact JSON; absent is empty. Neutralised.
pub fn cell(value: Option<&Value>) -> String {
    let text = match value {
        None | Some(Value::Null) => return String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Bool(b)) => b.to_string(),
        Some(Value::Number(n)) => n.to_string(),
        Some(Value::Array(items)) if items.iter().all(|v| !v.is_array() && !v.is_object()) => items
            .iter()
            .map(|v| match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            })
            .collect::<Vec<_>>()
            .join("; "),
        Some(other) => other.to_string(),
    };
    crate::connectors::csv::neutralise(&text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn formula_cells_are_neutralised_and_numbers_kept() {
        assert_eq!(
            cell(Some(&json!("=HYPERLINK(\"x\")"))),
            "'=HYPERLINK(\"x\")"
        );
        assert_eq!(cell(Some(&json!("@SUM(A1)"))), "'@SUM(A1)");
        assert_eq!(cell(Some(&json!(" +1+1"))), "' +1+1");
        assert_eq!(cell(Some(&json!(-3))), "-3");
        assert_eq!(cell(Some(&json!(["a", "=b"]))), "a; =b");
        assert_eq!(cell(Some(&json!(["=a", "b"]))), "'=a; b");
        assert_eq!(cell(Some(&json!(true))), "true");
        assert_eq!(cell(None), "");
        assert_eq!(cell(Some(&json!({"k": 1}))), r#"{"k":1}"#);
    }

    #[test]
    fn every_kind_has_unique_headers() {
        for kind in [Kind::VisitReport, Kind::Incident, Kind::SafeguardingFlag] {
            let h = header(kind, false);
            let mut sorted = h.clone();
            sorted.sort();
            sorted.dedup();
            assert_eq!(sorted.len(), h.len(), "{kind:?}");
        }
    }
}
