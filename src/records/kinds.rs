//! The three record kinds of SPEC §1 as typed Rust structs, and their enums.
//!
//! Every struct denies unknown fields: a typo must not lose data silently. Free-form data a
//! source wants carried through sits under `extensions` and is never looked into.
//! Embedded `incidents` / `safeguarding_flags` of a visit report are not fields here: `parse`
//! splits them out into records of their own before the visit report is deserialised.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::fields::{Date, RecordId, Revision, StaffId, Timestamp, TrustId, Upn, Urn};

/// Anything a source wants carried through untouched.
pub type Extensions = serde_json::Map<String, serde_json::Value>;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct School {
    pub urn: Urn,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// National curriculum year group: `N1`, `N2`, `R`, or `1`–`14` (as a number or a string).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum YearGroup {
    Number(u8),
    Label(String),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Pupil {
    pub upn: Upn,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mis_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub given_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub family_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub date_of_birth: Option<Date>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub year_group: Option<YearGroup>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Purpose {
    Attendance,
    RefusingSchool,
    EducatedAtHome,
    ContactFailed,
    Discussion,
    WelfareCheck,
    Safeguarding,
    StrategySupport,
    DeliverWork,
    CollectWork,
    MedicalAbsence,
    SuspectedHoliday,
    Transition,
    Transport,
    Emergency,
    Procedural,
}

/// A staff member's role in school.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum StaffRole {
    Headteacher,
    HeadOfSchool,
    DeputyHeadteacher,
    Dsl,
    DeputyDsl,
    SeniorLeader,
    Teacher,
    TeachingAssistant,
    AttendanceOfficer,
    FamilySupportWorker,
    PastoralLead,
    LearningMentor,
    Senco,
    OfficeStaff,
    Other,
}

/// The role under which a visit was authorised.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum AuthoriserRole {
    Headteacher,
    HeadOfSchool,
    Dsl,
    SeniorLeader,
}

/// A reference to a member of staff.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StaffRef {
    pub staff_id: StaffId,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<StaffRole>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StaffMember {
    pub staff_id: StaffId,
    pub name: String,
    pub role: StaffRole,
    /// Exactly one member of `staff` leads the visit.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub lead: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Authorisation {
    pub by: StaffRef,
    pub role: AuthoriserRole,
    pub at: Timestamp,
    /// The authoriser allowed one member of staff to visit alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lone_visit_approved: Option<bool>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum AppointmentMethod {
    Phone,
    Letter,
    None,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Appointment {
    pub method: AppointmentMethod,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unannounced_reason: Option<String>,
}

/// The colleague at school during the visit. The code word itself is never accepted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Buddy {
    pub staff_id: StaffId,
    pub name: String,
    pub code_word_agreed: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Address {
    pub lines: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub postcode: Option<String>,
}

/// What the office was told before the visit.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SignOut {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub left_school_at: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vehicle_registration: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub staff_mobiles: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<Address>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_to_see: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_arrival: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_departure: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_return: Option<Timestamp>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct VisitTimes {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arrived_at: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub departed_at: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub returned_at: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phoned_in_at: Option<Timestamp>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
#[schemars(rename = "Outcome")]
pub enum VisitOutcome {
    Completed,
    NoOneHome,
    RefusedEntry,
    NotEnteredUnsafe,
    EndedForSafety,
    Cancelled,
}

/// Why a visit was cancelled, and when it is to happen instead.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Cancellation {
    pub reason: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rescheduled_for: Option<Timestamp>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PersonSeen {
    pub relationship: String,
    pub parental_responsibility: bool,
}

/// Why a pupil is absent, for attendance visits. Mapped per trust to a statutory code;
/// never a code itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum AbsenceReason {
    Illness,
    Medical,
    Refusing,
    FamilyHoliday,
    Caring,
    Transport,
    Excluded,
    Unknown,
    Other,
}

/// When a child was carried in a staff car.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Transport")]
pub struct StaffCarTransport {
    pub staff_count: u8,
    pub child_in_rear: bool,
    pub car_seat_used: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub child_age: Option<u8>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub child_height_cm: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Action {
    pub description: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub due: Option<Date>,
}

/// SPEC §1.1: a completed (or cancelled) home visit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct VisitReport {
    pub id: RecordId,
    pub revision: Revision,
    pub trust: TrustId,
    pub school: School,
    pub pupil: Pupil,
    pub purpose: Purpose,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub purpose_detail: Option<String>,
    /// Absent only for an emergency visit, which gives `emergency_reason`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authorisation: Option<Authorisation>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub emergency_reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub appointment: Option<Appointment>,
    pub staff: Vec<StaffMember>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub buddy: Option<Buddy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sign_out: Option<SignOut>,
    /// Required unless the outcome is `cancelled`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub visit: Option<VisitTimes>,
    pub outcome: VisitOutcome,
    /// Required when the outcome is `cancelled`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cancellation: Option<Cancellation>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub child_seen: Option<bool>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub people_seen: Vec<PersonSeen>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note_left: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub absence_reason: Option<AbsenceReason>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transport: Option<StaffCarTransport>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub actions: Vec<Action>,
    pub recorded_by: StaffRef,
    pub recorded_at: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extensions: Option<Extensions>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum IncidentType {
    VerbalAggression,
    PhysicalAggression,
    Threatened,
    PreventedFromLeaving,
    Animal,
    TripOrInjury,
    Vehicle,
    Other,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
#[schemars(rename = "Severity")]
pub enum IncidentSeverity {
    Low,
    Moderate,
    MajorInjury,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum PoliceCalled {
    #[serde(rename = "999")]
    Emergency999,
    #[serde(rename = "101")]
    NonEmergency101,
}

/// SPEC §1.2: something that happened on a visit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Incident {
    pub id: RecordId,
    pub revision: Revision,
    pub trust: TrustId,
    pub school: School,
    pub visit_id: RecordId,
    pub occurred_at: Timestamp,
    #[serde(rename = "type")]
    pub incident_type: IncidentType,
    pub severity: IncidentSeverity,
    pub description: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub police_called: Option<PoliceCalled>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code_word_used: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub left_property: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reported_to_line_manager_at: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shared_with_headteacher_at: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub debrief_at: Option<Timestamp>,
    pub recorded_by: StaffRef,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extensions: Option<Extensions>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum FlagCategory {
    ChildAloneUnsupervised,
    ImmediateDanger,
    Disclosure,
    WelfareConcern,
    HomeConditions,
    AdultUnderInfluence,
    DomesticAbuse,
    Other,
}

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Urgency {
    Immediate,
    SameDay,
    Routine,
}

/// SPEC §1.3: a safeguarding concern, from a visit or not.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SafeguardingFlag {
    pub id: RecordId,
    pub revision: Revision,
    pub trust: TrustId,
    pub school: School,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub visit_id: Option<RecordId>,
    pub pupil: Pupil,
    pub raised_at: Timestamp,
    pub category: FlagCategory,
    pub urgency: Urgency,
    pub emergency_services_called: bool,
    pub description: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reported_to_dsl_at: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub referral_to_social_care: Option<bool>,
    pub raised_by: StaffRef,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extensions: Option<Extensions>,
}
