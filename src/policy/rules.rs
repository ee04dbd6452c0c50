//! The rules themselves: one pure function each, from a record, its rule's parameters and the
//! school's place to at most one exception. Times are compared as instants; "local" readings
//! (cut-offs, the working day) use the school's time zone, so they stay right across the
//! March and October clock changes.

use chrono::{DateTime, Datelike, Duration, FixedOffset, NaiveDate, NaiveTime, TimeZone, Weekday};
use chrono_tz::Tz;

use super::config::*;
use super::{Exception, RuleId, SchoolPlace, Severity};
use crate::records::{
    FlagCategory, Incident, Outcome, Purpose, Record, SafeguardingFlag, Timestamp, Urgency,
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
    let happened = v.outcome != Outcome::Cancelled;
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
            PairMode::UnlessLoneApproved => raise(out, RuleId::PairRequired, sev, format!(
                "{} member of staff visited and authorisation.lone_visit_approved is not true",
                v.staff.len()
            )),
            PairMode::Always => raise(out, RuleId::PairRequired, sev, format!(
                "{} member of staff visited; this trust's policy requires visits in pairs",
                v.staff.len()
            )),
        }
    }

    if let Some(c) = &r.buddy_assigned
        && let Some(sev) = c.active(RuleId::BuddyAssigned)
        && happened
    {
        match &v.buddy {
            None => raise(out, RuleId::BuddyAssigned, sev, "no buddy at school recorded".into()),
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
            raise(out, RuleId::SignedOut, sev, format!("sign_out lacks {}", missing.join(", ")));
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
        let back = [visit.returned_at, visit.phoned_in_at].into_iter().flatten().min();
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
                raise(out, RuleId::ReturnedOrPhonedIn, sev, format!(
                    "back {} minutes after sign_out.expected_return {} (grace {} minutes)",
                    minutes(back.0 - expected.0),
                    local(expected.0, place.time_zone),
                    c.grace_minutes
                ))
            }
            _ => {}
        }
    }

    if let Some(c) = &r.report_recorded_promptly
        && let Some(sev) = c.active(RuleId::ReportRecordedPromptly)
    {
        let from = visit.departed_at.or_else(|| (!happened).then_some(v.recorded_at));
        if let Some(departed) = from
            && v.recorded_at.0 > departed.0 + Duration::hours(c.within_hours)
        {
            let late = v.recorded_at.0 - departed.0;
            raise(out, RuleId::ReportRecordedPromptly, sev, format!(
                "recorded_at is {}h{:02} after visit.departed_at; this trust's limit is {} hours",
                late.num_hours(),
                late.num_minutes() % 60,
                c.within_hours
            ));
        }
    }

    if let Some(c) = &r.no_one_home_note
        && let Some(sev) = c.active(RuleId::NoOneHomeNote)
        && v.outcome == Outcome::NoOneHome
        && v.note_left != Some(true)
    {
        let was = match v.note_left {
            Some(false) => "note_left is false",
            _ => "note_left is not recorded",
        };
        raise(out, RuleId::NoOneHomeNote, sev, format!("outcome no_one_home but {was}"));
    }

    if let Some(t) = &v.transport {
        if let Some(c) = &r.transport_two_staff
            && let Some(sev) = c.active(RuleId::TransportTwoStaff)
            && t.staff_count < c.min_staff
        {
            raise(out, RuleId::TransportTwoStaff, sev, format!(
                "transport.staff_count is {}; at least {} staff when a child is carried",
                t.staff_count, c.min_staff
            ));
        }
        if let Some(c) = &r.transport_rear_seat
            && let Some(sev) = c.active(RuleId::TransportRearSeat)
            && !t.child_in_rear
        {
            raise(out, RuleId::TransportRearSeat, sev, "transport.child_in_rear is false".into());
        }
        if let Some(c) = &r.transport_car_seat
            && let Some(sev) = c.active(RuleId::TransportCarSeat)
            && !t.car_seat_used
        {
            // The law's "under 12 years or 135 cm, whichever comes first": a seat is needed
            // while the child is under both limits. What is not recorded counts as under.
            let under_age = t.child_age.is_none_or(|a| a < c.under_age);
            let under_height = t.child_height_cm.is_none_or(|h| h < c.under_height_cm);
            let needs_seat = (under_age && under_height).then_some(
                match (t.child_age, t.child_height_cm) {
                    (None, None) => "child_age and child_height_cm are not recorded",
                    (None, Some(_)) => "the child is under the height limit and child_age is not recorded",
                    (Some(_), None) => "the child is under the age limit and child_height_cm is not recorded",
                    (Some(_), Some(_)) => "the child is under both the age and the height limit",
                },
            );
            if let Some(why) = needs_seat {
                raise(out, RuleId::TransportCarSeat, sev, format!(
                    "no car seat used and {why} (a seat is needed until {} years or {} cm)",
                    c.under_age, c.under_height_cm
                ));
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
        .or_else(|| tz.from_local_datetime(&(naive + Duration::hours(1))).earliest())
        .unwrap_or_else(|| tz.from_utc_datetime(&naive))
}

fn after_dark(c: &AfterDarkCfg, sev: Severity, arrived: Timestamp, place: &SchoolPlace, out: &mut Vec<Exception>) {
    let tz = place.time_zone;
    let date = arrived.0.with_timezone(&tz).date_naive();
    if let Some(cutoff) = c.cutoff {
        let limit = at_local(tz, date, cutoff.0);
        if arrived.0 > limit {
            raise(out, RuleId::AfterDark, sev, format!(
                "arrived {} after this trust's cut-off {}",
                local(arrived.0, tz),
                cutoff.0.format("%H:%M")
            ));
        }
        return;
    }
    let Some((lat, lon)) = place.location else {
        raise(out, RuleId::AfterDark, Severity::Info, "cannot check: the school has no location in trust.toml".into());
        return;
    };
    let sunset = sunrise::Coordinates::new(lat, lon)
        .map(|coords| sunrise::SolarDay::new(coords, date))
        .and_then(|day| day.event_time(sunrise::SolarEvent::Sunset));
    // No sunset (polar day) cannot happen in England; nothing to compare with then.
    if let Some(sunset) = sunset {
        let limit = sunset - Duration::minutes(c.sunset_margin_minutes);
        if arrived.0 > limit {
            raise(out, RuleId::AfterDark, sev, format!(
                "arrived {} after local sunset {}",
                local(arrived.0, tz),
                sunset.with_timezone(&tz).format("%H:%M %Z")
            ));
        }
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
            None => raise(out, RuleId::IncidentSharedSameDay, sev, format!(
                "shared_with_headteacher_at is not recorded; due by {}",
                deadline.format("%Y-%m-%d %H:%M %Z")
            )),
            Some(shared) if shared.0 > deadline => raise(out, RuleId::IncidentSharedSameDay, sev, format!(
                "shared with the headteacher {}, after the end of the working day {}",
                local(shared.0, place.time_zone),
                deadline.format("%Y-%m-%d %H:%M %Z")
            )),
            Some(_) => {}
        }
    }
    if let Some(c) = &r.incident_debriefed
        && let Some(sev) = c.active(RuleId::IncidentDebriefed)
    {
        let missing: Vec<&str> = [
            ("reported_to_line_manager_at", i.reported_to_line_manager_at.is_none()),
            ("debrief_at", i.debrief_at.is_none()),
        ]
        .into_iter()
        .filter_map(|(f, m)| m.then_some(f))
        .collect();
        if !missing.is_empty() {
            raise(out, RuleId::IncidentDebriefed, sev, format!("{} not recorded", missing.join(" and ")));
        }
    }
}

fn flag_rules(f: &SafeguardingFlag, r: &RulesFile, out: &mut Vec<Exception>) {
    if let Some(c) = &r.dsl_informed
        && let Some(sev) = c.active(RuleId::DslInformed)
    {
        match f.reported_to_dsl_at {
            None => raise(out, RuleId::DslInformed, sev, "reported_to_dsl_at is not recorded".into()),
            Some(at)
                if f.urgency == Urgency::Immediate
                    && at.0 > f.raised_at.0 + Duration::minutes(c.immediate_within_minutes) =>
            {
                raise(out, RuleId::DslInformed, sev, format!(
                    "immediate flag reached the DSL {} minutes after raised_at; this trust's limit is {} minutes",
                    minutes(at.0 - f.raised_at.0),
                    c.immediate_within_minutes
                ))
            }
            Some(_) => {}
        }
    }
    if let Some(c) = &r.immediate_danger_999
        && let Some(sev) = c.active(RuleId::ImmediateDanger999)
        && f.category == FlagCategory::ImmediateDanger
        && !f.emergency_services_called
    {
        raise(out, RuleId::ImmediateDanger999, sev, "category immediate_danger but emergency_services_called is false".into());
    }
}
