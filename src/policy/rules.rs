//! The rules themselves: one pure function each, from a record, its rule's parameters and the
//! school's place to at most one exception. Times are compared as instants; "local" readings
//! (cut-offs, the working day) use the school's time zone, so they stay right across the
//! March and October clock changes.

use chrono::{DateTime, Datelike, Duration, FixedOffset, NaiveDate, NaiveTime, TimeZone, Weekday};
use chrono_tz::Tz;

use super::config::*;
use super::{Exception, RuleId, SchoolPlace, Severity};
use crate::records::{
    FlagCategory, Incident, Purpose, Record, SafeguardingFlag, Timestamp, Urgency, VisitOutcome,
    VisitReport,
};

/// Every exception a record raises under a trust's rules, in rule order.
pub fn evaluate(record: &Record, rules: &RulesFile, place: &SchoolPlace) -> Vec<Exception> {
    let mut out = Vec::new();
    match record {
        Record::VisitReport(v) => visit_rules(v, rules, place, &mut out),
        Record::Incident(i) => incident_rules(i, rules, place, &mut out),
        Record::SafeguardingFlag(f) => flag_rules(f, rules, &mut out),
    }
    out
}

/// The severity a rule raises with under these rules, or `None` when it is off.
pub fn rule_severity(r: &RulesFile, rule: RuleId) -> Option<Severity> {
    match rule {
        RuleId::AuthorisedBeforeVisit => r.authorised_before_visit.as_ref()?.active(rule),
        RuleId::PairRequired => r.pair_required.as_ref()?.active(rule),
        RuleId::BuddyAssigned => r.buddy_assigned.as_ref()?.active(rule),
        RuleId::SignedOut => r.signed_out.as_ref()?.active(rule),
        RuleId::AfterDark => r.after_dark.as_ref()?.active(rule),
        RuleId::ReturnedOrPhonedIn => r.returned_or_phoned_in.as_ref()?.active(rule),
        RuleId::ReportRecordedPromptly => r.report_recorded_promptly.as_ref()?.active(rule),
        RuleId::IncidentSharedSameDay => r.incident_shared_same_day.as_ref()?.active(rule),
        RuleId::IncidentDebriefed => r.incident_debriefed.as_ref()?.active(rule),
        RuleId::DslInformed => r.dsl_informed.as_ref()?.active(rule),
        RuleId::ImmediateDanger999 => r.immediate_danger_999.as_ref()?.active(rule),
        RuleId::NoOneHomeNote => r.no_one_home_note.as_ref()?.active(rule),
        RuleId::TransportTwoStaff => r.transport_two_staff.as_ref()?.active(rule),
        RuleId::TransportRearSeat => r.transport_rear_seat.as_ref()?.active(rule),
        RuleId::TransportCarSeat => r.transport_car_seat.as_ref()?.active(rule),
    }
}

fn raise(out: &mut Vec<Exception>, rule: RuleId, severity: Severity, message: String) {
    out.push(Exception {
        rule,
        severity,
        message,
    });
}

/// `HH:MM` on the school's clock, with the date when it differs from `on`.
fn local(t: DateTime<FixedOffset>, tz: Tz) -> String {
    t.with_timezone(&tz).format("%Y-%m-%d %H:%M %Z").to_string()
}

fn minutes(d: Duration) -> i64 {
    d.num_minutes()
}

fn visit_rules(v: &VisitReport, r: &RulesFile, place: &SchoolPlace, out: &mut Vec<Exception>) {
    // A cancelled visit never happened: only the rules about records apply to it.
    let happened = v.outcome != VisitOutcome::Cancelled;
    let visit = v.visit.clone().unwrap_or_default();
    let sign_out = v.sign_out.clone().unwrap_or_default();

    if let Some(c) = &r.authorised_before_visit
        && let Some(sev) = c.active(RuleId::AuthorisedBeforeVisit)
        && happened
    {
        let rule = RuleId::AuthorisedBeforeVisit;
        match &v.authorisation {
            None if c.emergency_exempt
                && v.purpose == Purpose::Emergency
                && v.emergency_reason.is_some() => {}
            None => raise(out, rule, sev, match v.emergency_reason {
                Some(_) if c.emergency_exempt => {
                    "no authorisation recorded; emergency_reason is given but purpose is not emergency".into()
                }
                _ => "no authorisation recorded for the visit".into(),
            }),
            Some(a) => {
                let allowed: Vec<&str> = c.roles.iter().map(|r| role_name(*r)).collect();
                let started = sign_out.left_school_at.or(visit.arrived_at);
                if !c.roles.contains(&a.role) {
                    raise(out, rule, sev, format!(
                        "authorised by role {}; this trust's policy allows {}",
                        role_name(a.role),
                        allowed.join(" or ")
                    ));
                } else if let Some(start) = started
                    && a.at.0 >= start.0
                {
                    let field = if sign_out.left_school_at.is_some() { "sign_out.left_school_at" } else { "visit.arrived_at" };
                    raise(out, rule, sev, format!(
                        "authorisation.at {} is not before {field} {}",
                        local(a.at.0, place.time_zone),
                        local(start.0, place.time_zone)
                    ));
                }
            }
        }
    }

    if let Some(c) = &r.pair_required
        && let Some(sev) = c.active(RuleId::PairRequired)
        && happened
        && v.staff.len() < 2
    {
        let approved = v.authorisation.as_ref().and_then(|a| a.lone_visit_approved) == Some(true);
        match c.mode {
            PairMode::UnlessLoneApproved if approved => {}
            PairMode::UnlessLoneApproved => raise(
                out,
                RuleId::PairRequired,
                sev,
                format!(
                    "{} member of staff visited and authorisation.lone_visit_approved is not true",
                    v.staff.len()
                ),
            ),
            PairMode::Always => raise(
                out,
                RuleId::PairRequired,
                sev,
                format!(
                    "{} member of staff visited; this trust's policy requires visits in pairs",
                    v.staff.len()
                ),
            ),
        }
    }

    if let Some(c) = &r.buddy_assigned
        && let Some(sev) = c.active(RuleId::BuddyAssigned)
        && happened
    {
        match &v.buddy {
            None => raise(
                out,
                RuleId::BuddyAssigned,
                sev,
                "no buddy at school recorded".into(),
            ),
            Some(b) if !b.code_word_agreed => raise(
                out,
                RuleId::BuddyAssigned,
                sev,
                "buddy recorded with code_word_agreed false".into(),
            ),
            Some(_) => {}
        }
    }

    if let Some(c) = &r.signed_out
        && let Some(sev) = c.active(RuleId::SignedOut)
        && happened
    {
        let missing: Vec<&str> = c
            .fields
            .iter()
            .filter(|f| !sign_out_has(&sign_out, **f))
            .map(|f| f.as_str())
            .collect();
        if !missing.is_empty() {
            raise(
                out,
                RuleId::SignedOut,
                sev,
                format!("sign_out lacks {}", missing.join(", ")),
            );
        }
    }

    if let Some(c) = &r.after_dark
        && let Some(sev) = c.active(RuleId::AfterDark)
        && happened
        && let Some(arrived) = visit.arrived_at
    {
        after_dark(c, sev, arrived, place, out);
    }

    if let Some(c) = &r.returned_or_phoned_in
        && let Some(sev) = c.active(RuleId::ReturnedOrPhonedIn)
        && happened
    {
        let back = [visit.returned_at, visit.phoned_in_at]
            .into_iter()
            .flatten()
            .min();
        match (back, sign_out.expected_return) {
            (None, _) => raise(
                out,
                RuleId::ReturnedOrPhonedIn,
                sev,
                "neither visit.returned_at nor visit.phoned_in_at is recorded".into(),
            ),
            (Some(back), Some(expected))
                if back.0 > expected.0 + Duration::minutes(c.grace_minutes) =>
            {
                raise(
                    out,
                    RuleId::ReturnedOrPhonedIn,
                    sev,
                    format!(
                        "back {} minutes after sign_out.expected_return {} (grace {} minutes)",
                        minutes(back.0 - expected.0),
                        local(expected.0, place.time_zone),
                        c.grace_minutes
                    ),
                )
            }
            _ => {}
        }
    }

    if let Some(c) = &r.report_recorded_promptly
        && let Some(sev) = c.active(RuleId::ReportRecordedPromptly)
    {
        let from = visit
            .departed_at
            .or_else(|| (!happened).then_some(v.recorded_at));
        if let Some(departed) = from
            && v.recorded_at.0 > departed.0 + Duration::hours(c.within_hours)
        {
            let late = v.recorded_at.0 - departed.0;
            raise(
                out,
                RuleId::ReportRecordedPromptly,
                sev,
                format!(
                    "recorded_at is {}h{:02} after visit.departed_at; this trust's limit is {} hours",
                    late.num_hours(),
                    late.num_minutes() % 60,
                    c.within_hours
                ),
            );
        }
    }

    if let Some(c) = &r.no_one_home_note
        && let Some(sev) = c.active(RuleId::NoOneHomeNote)
        && v.outcome == VisitOutcome::NoOneHome
        && v.note_left != Some(true)
    {
        let was = match v.note_left {
            Some(false) => "note_left is false",
            _ => "note_left is not recorded",
        };
        raise(
            out,
            RuleId::NoOneHomeNote,
            sev,
            format!("outcome no_one_home but {was}"),
        );
    }

    if let Some(t) = &v.transport {
        if let Some(c) = &r.transport_two_staff
            && let Some(sev) = c.active(RuleId::TransportTwoStaff)
            && t.staff_count < c.min_staff
        {
            raise(
                out,
                RuleId::TransportTwoStaff,
                sev,
                format!(
                    "transport.staff_count is {}; at least {} staff when a child is carried",
                    t.staff_count, c.min_staff
                ),
            );
        }
        if let Some(c) = &r.transport_rear_seat
            && let Some(sev) = c.active(RuleId::TransportRearSeat)
            && !t.child_in_rear
        {
            raise(
                out,
                RuleId::TransportRearSeat,
                sev,
                "transport.child_in_rear is false".into(),
            );
        }
        if let Some(c) = &r.transport_car_seat
            && let Some(sev) = c.active(RuleId::TransportCarSeat)
            && !t.car_seat_used
        {
            // The law's "under 12 years or 135 cm, whichever comes first": a seat is needed
            // while the child is under both limits. What is not recorded counts as under.
            let under_age = t.child_age.is_none_or(|a| a < c.under_age);
            let under_height = t.child_height_cm.is_none_or(|h| h < c.under_height_cm);
            let needs_seat =
                (under_age && under_height).then_some(match (t.child_age, t.child_height_cm) {
                    (None, None) => "child_age and child_height_cm are not recorded",
                    (None, Some(_)) => {
                        "the child is under the height limit and child_age is not recorded"
                    }
                    (Some(_), None) => {
                        "the child is under the age limit and child_height_cm is not recorded"
                    }
                    (Some(_), Some(_)) => "the child is under both the age and the height limit",
                });
            if let Some(why) = needs_seat {
                raise(
                    out,
                    RuleId::TransportCarSeat,
                    sev,
                    format!(
                        "no car seat used and {why} (a seat is needed until {} years or {} cm)",
                        c.under_age, c.under_height_cm
                    ),
                );
            }
        }
    }
}

fn role_name(r: crate::records::AuthoriserRole) -> &'static str {
    use crate::records::AuthoriserRole::*;
    match r {
        Headteacher => "headteacher",
        HeadOfSchool => "head_of_school",
        Dsl => "dsl",
        SeniorLeader => "senior_leader",
    }
}

fn sign_out_has(s: &crate::records::SignOut, f: SignOutField) -> bool {
    let text = |t: &Option<String>| t.as_deref().is_some_and(|t| !t.trim().is_empty());
    match f {
        SignOutField::LeftSchoolAt => s.left_school_at.is_some(),
        SignOutField::VehicleRegistration => text(&s.vehicle_registration),
        SignOutField::StaffMobiles => s.staff_mobiles.as_ref().is_some_and(|m| !m.is_empty()),
        SignOutField::Address => s
            .address
            .as_ref()
            .is_some_and(|a| a.lines.iter().any(|l| !l.trim().is_empty())),
        SignOutField::ExpectedToSee => text(&s.expected_to_see),
        SignOutField::ExpectedArrival => s.expected_arrival.is_some(),
        SignOutField::ExpectedDeparture => s.expected_departure.is_some(),
        SignOutField::ExpectedReturn => s.expected_return.is_some(),
    }
}

/// The instant a local wall-clock time happens on `date` in `tz`. In the October repeat the
/// later reading is taken; in the March gap, the first minute after it.
fn at_local(tz: Tz, date: NaiveDate, time: NaiveTime) -> DateTime<Tz> {
    let naive = date.and_time(time);
    tz.from_local_datetime(&naive)
        .latest()
        .or_else(|| {
            tz.from_local_datetime(&(naive + Duration::hours(1)))
                .earliest()
        })
        .unwrap_or_else(|| tz.from_utc_datetime(&naive))
}

fn after_dark(
    c: &AfterDarkCfg,
    sev: Severity,
    arrived: Timestamp,
    place: &SchoolPlace,
    out: &mut Vec<Exception>,
) {
    let tz = place.time_zone;
    let date = arrived.0.with_timezone(&tz).date_naive();
    if let Some(cutoff) = c.cutoff {
        let limit = at_local(tz, date, cutoff.0);
        if arrived.0 > limit {
            raise(
                out,
                RuleId::AfterDark,
                sev,
                format!(
                    "arrived {} after this trust's cut-off {}",
                    local(arrived.0, tz),
                    cutoff.0.format("%H:%M")
                ),
            );
        }
        return;
    }
    let Some((lat, lon)) = place.location else {
        raise(
            out,
            RuleId::AfterDark,
            Severity::Info,
            "cannot check: the school has no location in trust.toml".into(),
        );
        return;
    };
    let day =
        sunrise::Coordinates::new(lat, lon).map(|coords| sunrise::SolarDay::new(coords, date));
    let event = |e| day.as_ref().and_then(|d| d.event_time(e));
    let margin = Duration::minutes(c.sunset_margin_minutes);
    // After sunset, or before sunrise (a visit in the small hours, or on a winter morning).
    // No sunset or sunrise (polar day or night) cannot happen in England; nothing to
    // compare with then.
    let dark = event(sunrise::SolarEvent::Sunset)
        .filter(|sunset| arrived.0 > *sunset - margin)
        .map(|sunset| ("after local sunset", sunset))
        .or_else(|| {
            event(sunrise::SolarEvent::Sunrise)
                .filter(|sunrise| arrived.0 < *sunrise + margin)
                .map(|sunrise| ("before local sunrise", sunrise))
        });
    if let Some((when, sun)) = dark {
        raise(
            out,
            RuleId::AfterDark,
            sev,
            format!(
                "arrived {} {when} {}",
                local(arrived.0, tz),
                sun.with_timezone(&tz).format("%H:%M %Z")
            ),
        );
    }
}

/// The end of the working day an incident at `t` falls in: that day's end, or — for one
/// after hours or at a weekend — the end of the next working day (Monday to Friday).
pub(crate) fn working_day_end(t: DateTime<FixedOffset>, ends: NaiveTime, tz: Tz) -> DateTime<Tz> {
    let local_t = t.with_timezone(&tz);
    let mut date = local_t.date_naive();
    let is_weekend = |d: NaiveDate| matches!(d.weekday(), Weekday::Sat | Weekday::Sun);
    if is_weekend(date) || local_t.time() > ends {
        date = date.succ_opt().unwrap_or(date);
        while is_weekend(date) {
            date = date.succ_opt().unwrap_or(date);
        }
    }
    at_local(tz, date, ends)
}

fn incident_rules(i: &Incident, r: &RulesFile, place: &SchoolPlace, out: &mut Vec<Exception>) {
    if let Some(c) = &r.incident_shared_same_day
        && let Some(sev) = c.active(RuleId::IncidentSharedSameDay)
    {
        let deadline = working_day_end(i.occurred_at.0, c.working_day_ends.0, place.time_zone);
        match i.shared_with_headteacher_at {
            None => raise(
                out,
                RuleId::IncidentSharedSameDay,
                sev,
                format!(
                    "shared_with_headteacher_at is not recorded; due by {}",
                    deadline.format("%Y-%m-%d %H:%M %Z")
                ),
            ),
            Some(shared) if shared.0 > deadline => raise(
                out,
                RuleId::IncidentSharedSameDay,
                sev,
                format!(
                    "shared with the headteacher {}, after the end of the working day {}",
                    local(shared.0, place.time_zone),
                    deadline.format("%Y-%m-%d %H:%M %Z")
                ),
            ),
            Some(_) => {}
        }
    }
    if let Some(c) = &r.incident_debriefed
        && let Some(sev) = c.active(RuleId::IncidentDebriefed)
    {
        let missing: Vec<&str> = [
            (
                "reported_to_line_manager_at",
                i.reported_to_line_manager_at.is_none(),
            ),
            ("debrief_at", i.debrief_at.is_none()),
        ]
        .into_iter()
        .filter_map(|(f, m)| m.then_some(f))
        .collect();
        if !missing.is_empty() {
            raise(
                out,
                RuleId::IncidentDebriefed,
                sev,
                format!("{} not recorded", missing.join(" and ")),
            );
        }
    }
}

fn flag_rules(f: &SafeguardingFlag, r: &RulesFile, out: &mut Vec<Exception>) {
    if let Some(c) = &r.dsl_informed
        && let Some(sev) = c.active(RuleId::DslInformed)
    {
        match f.reported_to_dsl_at {
            None => raise(
                out,
                RuleId::DslInformed,
                sev,
                "reported_to_dsl_at is not recorded".into(),
            ),
            Some(at)
                if f.urgency == Urgency::Immediate
                    && at.0 > f.raised_at.0 + Duration::minutes(c.immediate_within_minutes) =>
            {
                raise(
                    out,
                    RuleId::DslInformed,
                    sev,
                    format!(
                        "immediate flag reached the DSL {} minutes after raised_at; this trust's limit is {} minutes",
                        minutes(at.0 - f.raised_at.0),
                        c.immediate_within_minutes
                    ),
                )
            }
            Some(_) => {}
        }
    }
    if let Some(c) = &r.immediate_danger_999
        && let Some(sev) = c.active(RuleId::ImmediateDanger999)
        && f.category == FlagCategory::ImmediateDanger
        && !f.emergency_services_called
    {
        raise(
            out,
            RuleId::ImmediateDanger999,
            sev,
            "category immediate_danger but emergency_services_called is false".into(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::parse_submission;
    use serde_json::{Value, json};

    /// Merges `patch` into `base`: objects recursively, `null` removes a key.
    fn merge(base: &mut Value, patch: &Value) {
        match (base, patch) {
            (Value::Object(b), Value::Object(p)) => {
                for (k, v) in p {
                    if v.is_null() {
                        b.remove(k);
                    } else {
                        merge(b.entry(k.clone()).or_insert(Value::Null), v);
                    }
                }
            }
            (b, p) => *b = p.clone(),
        }
    }

    fn fixture(name: &str) -> Value {
        let path = format!("{}/fixtures/valid/{name}.json", env!("CARGO_MANIFEST_DIR"));
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    }

    fn record(base: &str, patch: Value) -> Record {
        let mut v = fixture(base);
        merge(&mut v, &patch);
        let mut records = parse_submission(v).unwrap_or_else(|e| panic!("{e:?}"));
        records.remove(0).record
    }

    fn policy(toml_text: &str) -> RulesFile {
        PolicyFile::parse("test-policy.toml", toml_text)
            .unwrap()
            .rules
    }

    fn hull() -> SchoolPlace {
        SchoolPlace {
            time_zone: chrono_tz::Europe::London,
            location: Some((53.7586, -0.3457)),
        }
    }

    /// The rule ids `record` raises under `rules`.
    fn raised(rules: &RulesFile, record: &Record) -> Vec<&'static str> {
        evaluate(record, rules, &hull())
            .iter()
            .map(|e| e.rule.as_str())
            .collect()
    }

    const THRIVE_VISIT: &str = "thrive-attendance-illness";
    const CELT_VISIT: &str = "celt-attendance-caring";

    #[test]
    fn authorised_before_visit() {
        let rules = policy(
            "[rules.authorised-before-visit]\nroles = [\"headteacher\", \"head_of_school\"]\nemergency_exempt = true\n",
        );
        let none = Vec::<&str>::new();
        let on = vec!["authorised-before-visit"];
        assert_eq!(raised(&rules, &record(THRIVE_VISIT, json!({}))), none);
        assert_eq!(
            raised(
                &rules,
                &record(THRIVE_VISIT, json!({"authorisation": null}))
            ),
            on
        );
        let emergency =
            json!({"authorisation": null, "purpose": "emergency", "emergency_reason": "x"});
        assert_eq!(raised(&rules, &record(THRIVE_VISIT, emergency)), none);
        let not_emergency = json!({"authorisation": null, "emergency_reason": "x"});
        assert_eq!(raised(&rules, &record(THRIVE_VISIT, not_emergency)), on);
        assert_eq!(
            raised(
                &rules,
                &record(THRIVE_VISIT, json!({"authorisation": {"role": "dsl"}}))
            ),
            on
        );
        // left_school_at is 09:30: authorised at 09:29 passes, at 09:30 does not.
        let at = |t: &str| json!({"authorisation": {"at": format!("2026-03-02T{t}:00+00:00")}});
        assert_eq!(raised(&rules, &record(THRIVE_VISIT, at("09:29"))), none);
        assert_eq!(raised(&rules, &record(THRIVE_VISIT, at("09:30"))), on);
        // Without left_school_at, arrival (09:44) is the bound.
        let no_left = json!({"sign_out": {"left_school_at": null}, "authorisation": {"at": "2026-03-02T09:40:00+00:00"}});
        assert_eq!(raised(&rules, &record(THRIVE_VISIT, no_left)), none);
        // A cancelled visit never happened.
        let cancelled = json!({"authorisation": null, "outcome": "cancelled", "visit": null, "cancellation": {"reason": "r"}});
        assert_eq!(raised(&rules, &record(THRIVE_VISIT, cancelled)), none);
        let strict = policy("[rules.authorised-before-visit]\nroles = [\"dsl\"]\n");
        let emergency =
            json!({"authorisation": null, "purpose": "emergency", "emergency_reason": "x"});
        assert_eq!(raised(&strict, &record(THRIVE_VISIT, emergency)), on);
    }

    #[test]
    fn pair_required() {
        let always = policy("[rules.pair-required]\nmode = \"always\"\n");
        let lone = policy("[rules.pair-required]\nmode = \"unless_lone_approved\"\n");
        let one =
            json!({"staff": [{"staff_id": "A", "name": "n", "role": "teacher", "lead": true}]});
        let approved =
            json!({"staff": one["staff"], "authorisation": {"lone_visit_approved": true}});
        assert_eq!(
            raised(&always, &record(THRIVE_VISIT, json!({}))),
            Vec::<&str>::new()
        );
        assert_eq!(
            raised(&always, &record(THRIVE_VISIT, one.clone())),
            ["pair-required"]
        );
        assert_eq!(
            raised(&always, &record(THRIVE_VISIT, approved.clone())),
            ["pair-required"]
        );
        assert_eq!(raised(&lone, &record(THRIVE_VISIT, one)), ["pair-required"]);
        assert_eq!(
            raised(&lone, &record(THRIVE_VISIT, approved)),
            Vec::<&str>::new()
        );
    }

    #[test]
    fn buddy_and_sign_out() {
        let rules = policy(
            "[rules.buddy-assigned]\n[rules.signed-out]\nfields = [\"vehicle_registration\", \"address\", \"expected_return\"]\n",
        );
        assert_eq!(
            raised(&rules, &record(CELT_VISIT, json!({}))),
            Vec::<&str>::new()
        );
        assert_eq!(
            raised(&rules, &record(CELT_VISIT, json!({"buddy": null}))),
            ["buddy-assigned"]
        );
        assert_eq!(
            raised(
                &rules,
                &record(CELT_VISIT, json!({"buddy": {"code_word_agreed": false}}))
            ),
            ["buddy-assigned"]
        );
        let blank = json!({"sign_out": {"vehicle_registration": " ", "expected_return": null}});
        let r = record(CELT_VISIT, blank);
        let e = evaluate(&r, &rules, &hull());
        assert_eq!(e.len(), 1);
        assert_eq!(
            e[0].message,
            "sign_out lacks vehicle_registration, expected_return"
        );
        let none = record(CELT_VISIT, json!({"sign_out": null}));
        assert_eq!(
            evaluate(&none, &rules, &hull())[0].message,
            "sign_out lacks vehicle_registration, address, expected_return"
        );
    }

    #[test]
    fn after_dark_by_cut_off_keeps_local_time_across_clock_changes() {
        let rules = policy("[rules.after-dark]\ncutoff = \"17:00\"\n");
        let arrive = |t: &str| {
            record(
                THRIVE_VISIT,
                json!({"visit": {"arrived_at": t, "departed_at": "2026-12-01T23:00:00+00:00", "returned_at": null}, "recorded_at": "2026-12-02T09:00:00+00:00"}),
            )
        };
        assert_eq!(
            raised(&rules, &arrive("2026-03-02T17:00:00+00:00")),
            Vec::<&str>::new()
        );
        assert_eq!(
            raised(&rules, &arrive("2026-03-02T17:01:00+00:00")),
            ["after-dark"]
        );
        // Summer: 16:30 UTC is 17:30 BST, after the local cut-off.
        assert_eq!(
            raised(&rules, &arrive("2026-06-10T16:30:00+00:00")),
            ["after-dark"]
        );
        assert_eq!(
            raised(&rules, &arrive("2026-06-10T15:59:00+00:00")),
            Vec::<&str>::new()
        );
        // The same instant written with another offset reads the same.
        assert_eq!(
            raised(&rules, &arrive("2026-06-10T18:30:00+02:00")),
            ["after-dark"]
        );
        // Days of the clock changes (29 March, 25 October 2026).
        assert_eq!(
            raised(&rules, &arrive("2026-03-29T15:59:00+00:00")),
            Vec::<&str>::new()
        );
        assert_eq!(
            raised(&rules, &arrive("2026-03-29T16:01:00+00:00")),
            ["after-dark"]
        );
        assert_eq!(
            raised(&rules, &arrive("2026-10-25T16:59:00+00:00")),
            Vec::<&str>::new()
        );
        assert_eq!(
            raised(&rules, &arrive("2026-10-25T17:01:00+00:00")),
            ["after-dark"]
        );
        let e = evaluate(&arrive("2026-06-10T16:30:00+00:00"), &rules, &hull());
        assert_eq!(
            e[0].severity,
            Severity::Warning,
            "after-dark defaults to a warning"
        );
    }

    #[test]
    fn after_dark_by_local_sunset() {
        let rules = policy("[rules.after-dark]\nsunset = true\n");
        for date in [
            "2026-01-15",
            "2026-03-29",
            "2026-06-21",
            "2026-10-25",
            "2026-12-21",
        ] {
            let day = NaiveDate::parse_from_str(date, "%Y-%m-%d").unwrap();
            let sunset =
                sunrise::SolarDay::new(sunrise::Coordinates::new(53.7586, -0.3457).unwrap(), day)
                    .event_time(sunrise::SolarEvent::Sunset)
                    .unwrap();
            // Hull's sunset is between 15:40 and 21:45 local time across the year.
            let local_sunset = sunset.with_timezone(&chrono_tz::Europe::London).time();
            assert!(
                local_sunset > NaiveTime::from_hms_opt(15, 30, 0).unwrap(),
                "{date}"
            );
            assert!(
                local_sunset < NaiveTime::from_hms_opt(21, 50, 0).unwrap(),
                "{date}"
            );
            let arrive = |t: chrono::DateTime<chrono::Utc>| {
                record(
                    THRIVE_VISIT,
                    json!({
                        "sign_out": null,
                        "visit": {"arrived_at": t.to_rfc3339(), "departed_at": (t + Duration::minutes(5)).to_rfc3339(), "returned_at": null},
                        "recorded_at": (t + Duration::hours(1)).to_rfc3339(),
                    }),
                )
            };
            assert_eq!(
                raised(&rules, &arrive(sunset - Duration::minutes(1))),
                Vec::<&str>::new(),
                "{date}"
            );
            assert_eq!(
                raised(&rules, &arrive(sunset + Duration::minutes(1))),
                ["after-dark"],
                "{date}"
            );
            // Before sunrise is dark too.
            let sunrise =
                sunrise::SolarDay::new(sunrise::Coordinates::new(53.7586, -0.3457).unwrap(), day)
                    .event_time(sunrise::SolarEvent::Sunrise)
                    .unwrap();
            assert_eq!(
                raised(&rules, &arrive(sunrise - Duration::minutes(1))),
                ["after-dark"],
                "{date}"
            );
            assert_eq!(
                raised(&rules, &arrive(sunrise + Duration::minutes(1))),
                Vec::<&str>::new(),
                "{date}"
            );
        }
        // A school with no location cannot be checked: said, at info level.
        let r = record(THRIVE_VISIT, json!({}));
        let e = evaluate(&r, &rules, &SchoolPlace::default());
        assert_eq!(
            (e[0].rule, e[0].severity),
            (RuleId::AfterDark, Severity::Info)
        );
    }

    #[test]
    fn returned_or_phoned_in_with_grace() {
        let rules = policy("[rules.returned-or-phoned-in]\ngrace_minutes = 15\n");
        // expected_return is 10:35.
        let back = |v: Value| record(THRIVE_VISIT, json!({"visit": v}));
        assert_eq!(
            raised(
                &rules,
                &back(json!({"returned_at": "2026-03-02T10:50:00+00:00"}))
            ),
            Vec::<&str>::new()
        );
        assert_eq!(
            raised(
                &rules,
                &back(json!({"returned_at": "2026-03-02T10:51:00+00:00"}))
            ),
            ["returned-or-phoned-in"]
        );
        let phoned = json!({"returned_at": "2026-03-02T12:00:00+00:00", "phoned_in_at": "2026-03-02T10:40:00+00:00"});
        assert_eq!(
            raised(&rules, &back(phoned)),
            Vec::<&str>::new(),
            "the earlier of the two counts"
        );
        assert_eq!(
            raised(&rules, &back(json!({"returned_at": null}))),
            ["returned-or-phoned-in"]
        );
    }

    #[test]
    fn report_recorded_promptly() {
        let rules = policy("[rules.report-recorded-promptly]\nwithin_hours = 24\n");
        // departed_at is 10:10 on 2 March.
        let at = |t: &str| record(THRIVE_VISIT, json!({"recorded_at": t}));
        assert_eq!(
            raised(&rules, &at("2026-03-03T10:10:00+00:00")),
            Vec::<&str>::new()
        );
        assert_eq!(
            raised(&rules, &at("2026-03-03T10:11:00+00:00")),
            ["report-recorded-promptly"]
        );
    }

    fn incident(patch: Value) -> Record {
        record("celt-incident-animal", patch)
    }

    #[test]
    fn incident_shared_by_the_end_of_the_working_day() {
        let rules = policy("[rules.incident-shared-same-day]\nworking_day_ends = \"18:00\"\n");
        let case = |occurred: &str, shared: &str| {
            incident(json!({
                "occurred_at": occurred, "shared_with_headteacher_at": shared,
                "reported_to_line_manager_at": occurred, "debrief_at": occurred,
            }))
        };
        let none = Vec::<&str>::new();
        let on = vec!["incident-shared-same-day"];
        // Tuesday 12 May 2026, BST: 18:00 local is 17:00 UTC.
        assert_eq!(
            raised(
                &rules,
                &case("2026-05-12T10:02:00+01:00", "2026-05-12T18:00:00+01:00")
            ),
            none
        );
        assert_eq!(
            raised(
                &rules,
                &case("2026-05-12T10:02:00+01:00", "2026-05-12T17:01:00+00:00")
            ),
            on
        );
        // After hours: by the end of the next working day.
        assert_eq!(
            raised(
                &rules,
                &case("2026-05-12T19:00:00+01:00", "2026-05-13T17:59:00+01:00")
            ),
            none
        );
        assert_eq!(
            raised(
                &rules,
                &case("2026-05-12T19:00:00+01:00", "2026-05-13T18:01:00+01:00")
            ),
            on
        );
        // Friday evening and Saturday: Monday's end.
        assert_eq!(
            raised(
                &rules,
                &case("2026-05-15T19:00:00+01:00", "2026-05-18T17:30:00+01:00")
            ),
            none
        );
        assert_eq!(
            raised(
                &rules,
                &case("2026-05-16T11:00:00+01:00", "2026-05-18T18:30:00+01:00")
            ),
            on
        );
        // Sunday 25 October 2026, clocks go back at 02:00 BST: the incident at 01:30 (either
        // reading) falls due Monday 18:00 GMT.
        assert_eq!(
            raised(
                &rules,
                &case("2026-10-25T01:30:00+01:00", "2026-10-26T18:00:00+00:00")
            ),
            none
        );
        assert_eq!(
            raised(
                &rules,
                &case("2026-10-25T01:30:00+00:00", "2026-10-26T18:01:00+00:00")
            ),
            on
        );
        // Friday 27 March (GMT) due 18:00 GMT; Monday 30 March (BST) due 17:00 UTC.
        assert_eq!(
            raised(
                &rules,
                &case("2026-03-27T09:00:00+00:00", "2026-03-27T18:00:00+00:00")
            ),
            none
        );
        assert_eq!(
            raised(
                &rules,
                &case("2026-03-30T09:00:00+01:00", "2026-03-30T17:30:00+00:00")
            ),
            on
        );
        let missing = incident(json!({"shared_with_headteacher_at": null}));
        assert_eq!(raised(&rules, &missing), on);
    }

    #[test]
    fn incident_debriefed() {
        let rules = policy("[rules.incident-debriefed]\n");
        assert_eq!(raised(&rules, &incident(json!({}))), Vec::<&str>::new());
        let both = incident(json!({"reported_to_line_manager_at": null, "debrief_at": null}));
        let e = evaluate(&both, &rules, &hull());
        assert_eq!(
            e[0].message,
            "reported_to_line_manager_at and debrief_at not recorded"
        );
        assert_eq!(
            raised(&rules, &incident(json!({"debrief_at": null}))),
            ["incident-debriefed"]
        );
    }

    fn flag(patch: Value) -> Record {
        record("celt-flag-routine-home-conditions", patch)
    }

    #[test]
    fn dsl_informed_and_999() {
        let rules = policy(
            "[rules.dsl-informed]\nimmediate_within_minutes = 30\n[rules.immediate-danger-999]\n",
        );
        let none = Vec::<&str>::new();
        // raised_at 10:05.
        let immediate =
            |reported: &str| flag(json!({"urgency": "immediate", "reported_to_dsl_at": reported}));
        assert_eq!(
            raised(&rules, &immediate("2026-05-12T10:35:00+01:00")),
            none
        );
        assert_eq!(
            raised(&rules, &immediate("2026-05-12T10:36:00+01:00")),
            ["dsl-informed"]
        );
        assert_eq!(
            raised(
                &rules,
                &flag(json!({"reported_to_dsl_at": "2026-05-12T15:00:00+01:00"}))
            ),
            none
        );
        assert_eq!(
            raised(&rules, &flag(json!({"reported_to_dsl_at": null}))),
            ["dsl-informed"]
        );
        let danger = |called: bool| {
            flag(
                json!({"category": "immediate_danger", "urgency": "immediate", "emergency_services_called": called, "reported_to_dsl_at": "2026-05-12T10:06:00+01:00"}),
            )
        };
        assert_eq!(raised(&rules, &danger(true)), none);
        assert_eq!(raised(&rules, &danger(false)), ["immediate-danger-999"]);
    }

    #[test]
    fn no_one_home_note() {
        let rules = policy("[rules.no-one-home-note]\nseverity = \"warning\"\n");
        let out = |patch: Value| record(THRIVE_VISIT, patch);
        assert_eq!(
            raised(
                &rules,
                &out(json!({"outcome": "no_one_home", "note_left": true}))
            ),
            Vec::<&str>::new()
        );
        assert_eq!(
            raised(
                &rules,
                &out(json!({"outcome": "no_one_home", "note_left": false}))
            ),
            ["no-one-home-note"]
        );
        assert_eq!(
            raised(&rules, &out(json!({"outcome": "no_one_home"}))),
            ["no-one-home-note"]
        );
        assert_eq!(
            raised(&rules, &out(json!({"note_left": false}))),
            Vec::<&str>::new()
        );
    }

    #[test]
    fn transport_rules_and_the_car_seat_limits() {
        let rules = policy(
            "[rules.transport-two-staff]\n[rules.transport-rear-seat]\n[rules.transport-car-seat]\nunder_age = 12\nunder_height_cm = 135\n",
        );
        let trip = |t: Value| record("celt-transport-car-seat", json!({"transport": t}));
        let none = Vec::<&str>::new();
        assert_eq!(raised(&rules, &trip(json!({}))), none);
        assert_eq!(
            raised(&rules, &trip(json!({"staff_count": 1}))),
            ["transport-two-staff"]
        );
        assert_eq!(
            raised(&rules, &trip(json!({"child_in_rear": false}))),
            ["transport-rear-seat"]
        );
        let seat = |age: Value, height: Value| {
            trip(json!({"car_seat_used": false, "child_age": age, "child_height_cm": height}))
        };
        assert_eq!(
            raised(&rules, &seat(json!(11), json!(134.9))),
            ["transport-car-seat"]
        );
        assert_eq!(
            raised(&rules, &seat(json!(11), json!(135))),
            none,
            "135 cm reached"
        );
        assert_eq!(
            raised(&rules, &seat(json!(12), json!(120))),
            none,
            "12 years reached"
        );
        assert_eq!(
            raised(&rules, &seat(json!(11), Value::Null)),
            ["transport-car-seat"]
        );
        assert_eq!(
            raised(&rules, &seat(Value::Null, Value::Null)),
            ["transport-car-seat"]
        );
        assert_eq!(raised(&rules, &seat(Value::Null, json!(140))), none);
    }

    #[test]
    fn disabled_rules_and_severity_overrides() {
        let rules = policy(
            "[rules.pair-required]\nmode = \"always\"\nenabled = false\n[rules.buddy-assigned]\nseverity = \"info\"\n",
        );
        let r = record(
            THRIVE_VISIT,
            json!({"staff": [{"staff_id": "A", "name": "n", "role": "teacher", "lead": true}], "buddy": null}),
        );
        let e = evaluate(&r, &rules, &hull());
        assert_eq!(e.len(), 1);
        assert_eq!(
            (e[0].rule, e[0].severity),
            (RuleId::BuddyAssigned, Severity::Info)
        );
    }

    #[test]
    fn messages_carry_no_personal_data() {
        let mut all = String::new();
        for text in [
            include_str!("../../mappings/thrive/policy.toml"),
            include_str!("../../mappings/celt/policy.toml"),
        ] {
            let rules = policy(text);
            let r = record(
                CELT_VISIT,
                json!({"buddy": null, "sign_out": null, "visit": {"returned_at": null}, "authorisation": {"role": "headteacher"}, "outcome": "no_one_home", "staff": [{"staff_id": "A", "name": "Zebedee Canary", "role": "teacher", "lead": true}]}),
            );
            for e in evaluate(&r, &rules, &hull()) {
                all.push_str(&e.message);
            }
        }
        assert!(!all.is_empty());
        for personal in [
            "Zebedee", "Canary", "Pascoe", "Chapel", "TR7", "07700", "Grace", "Tonkin",
        ] {
            assert!(!all.contains(personal), "{personal} in {all}");
        }
    }

    #[test]
    fn policy_file_errors_name_the_key() {
        let err = |t: &str| PolicyFile::parse("p.toml", t).unwrap_err().to_string();
        assert!(err("[rules.pair-requird]\nmode = \"always\"\n").contains("pair-requird"));
        assert!(err("[rules.pair-required]\nmode = \"sometimes\"\n").contains("mode"));
        assert!(err("[rules.after-dark]\n").contains("rules.after-dark.cutoff"));
        assert!(err("[rules.after-dark]\ncutoff = \"5pm\"\n").contains("HH:MM"));
        assert!(
            err("[rules.returned-or-phoned-in]\ngrace_minutes = -1\n").contains("grace_minutes")
        );
        assert!(err("[rules.signed-out]\nfields = [\"car\"]\n").contains("fields"));
        assert!(
            err("[rules.pair-required]\nmode = \"always\"\nseverity = \"fatal\"\n")
                .contains("severity")
        );
        assert!(err("[rules.authorised-before-visit]\nroles = []\n").contains("roles"));
        assert!(err("rules = 1\n").starts_with("p.toml: line 1"));
    }
}
