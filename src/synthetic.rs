//! `doorstep gen`: realistic synthetic records for demos, tests and benchmarks — both
//! trusts, all three kinds, with a chosen share of invalid ones. The same seed always gives
//! the same records. Every name here is invented.
//!
//! Owns: synthetic data. May not touch: the store.

use std::io::{self, Write};

use chrono::{Duration, NaiveDate, NaiveTime, TimeZone};
use chrono_tz::Europe::London;
use rand::seq::IndexedRandom;
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{Value, json};

use crate::records::upn_check_letter;

/// A school the generator writes for.
pub struct GenSchool {
    pub trust: &'static str,
    pub urn: &'static str,
    pub name: &'static str,
    /// The DfE local-authority code its UPNs start with.
    pub la: &'static str,
    pub estab: &'static str,
}

/// The shipped trusts' schools (see `mappings/`).
pub const SCHOOLS: &[GenSchool] = &[
    GenSchool {
        trust: "thrive",
        urn: "117800",
        name: "Stepney Primary School",
        la: "810",
        estab: "2291",
    },
    GenSchool {
        trust: "celt",
        urn: "136401",
        name: "Penmorvah Academy",
        la: "908",
        estab: "4012",
    },
    GenSchool {
        trust: "celt",
        urn: "136402",
        name: "Trevarno Primary Academy",
        la: "908",
        estab: "2107",
    },
    GenSchool {
        trust: "celt",
        urn: "136403",
        name: "St Keverne Community School",
        la: "908",
        estab: "4150",
    },
];

const GIVEN: &[&str] = &[
    "Amara", "Ben", "Chloe", "Dylan", "Ellie", "Finley", "Grace", "Harvey", "Isla", "Jacob",
    "Kian", "Lily", "Mason", "Nia", "Oscar", "Poppy", "Reuben", "Sofia", "Tyler", "Zara",
];
const FAMILY: &[&str] = &[
    "Ashby", "Bolitho", "Carne", "Dawson", "Eddy", "Fenwick", "Gilbert", "Hocking", "Ivey",
    "Jenkin", "Kitto", "Lander", "Moyle", "Nance", "Oates", "Penrose", "Rowe", "Thomas",
];
const STREETS: &[&str] = &[
    "Chapel Street",
    "Fore Street",
    "Park Road",
    "Mill Lane",
    "Station Road",
    "Beacon Close",
];
const PURPOSES: &[&str] = &[
    "attendance",
    "refusing_school",
    "contact_failed",
    "welfare_check",
    "safeguarding",
    "deliver_work",
    "medical_absence",
    "suspected_holiday",
    "discussion",
    "transition",
];
const OUTCOMES: &[&str] = &[
    "completed",
    "completed",
    "completed",
    "completed",
    "no_one_home",
    "refused_entry",
    "not_entered_unsafe",
    "ended_for_safety",
    "cancelled",
];
const ABSENCE: &[&str] = &[
    "illness",
    "medical",
    "refusing",
    "family_holiday",
    "caring",
    "transport",
    "unknown",
    "other",
];
const INCIDENT_TYPES: &[&str] = &[
    "verbal_aggression",
    "physical_aggression",
    "threatened",
    "prevented_from_leaving",
    "animal",
    "trip_or_injury",
    "vehicle",
    "other",
];
const CATEGORIES: &[&str] = &[
    "child_alone_unsupervised",
    "immediate_danger",
    "disclosure",
    "welfare_concern",
    "home_conditions",
    "adult_under_influence",
    "domestic_abuse",
    "other",
];

/// Settings for one run.
#[derive(Debug, Clone, Copy)]
pub struct GenOptions {
    pub count: u64,
    pub seed: u64,
    /// Share of records (0.0–1.0) made invalid in one way each.
    pub invalid_share: f64,
}

/// Writes `count` records as JSON lines.
pub fn write_records(opts: GenOptions, out: &mut dyn Write) -> io::Result<()> {
    let mut g = Generator {
        rng: ChaCha8Rng::seed_from_u64(opts.seed),
    };
    for n in 0..opts.count {
        let mut record = g.record(n);
        if opts.invalid_share > 0.0 && g.rng.random_bool(opts.invalid_share.clamp(0.0, 1.0)) {
            g.break_record(&mut record);
        }
        serde_json::to_writer(&mut *out, &record)?;
        out.write_all(b"\n")?;
    }
    out.flush()
}

struct Generator {
    rng: ChaCha8Rng,
}

fn rfc3339(t: chrono::DateTime<chrono_tz::Tz>) -> String {
    t.fixed_offset()
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, false)
}

impl Generator {
    fn pick<'a>(&mut self, items: &'a [&'a str]) -> &'a str {
        items.choose(&mut self.rng).copied().unwrap_or_default()
    }

    fn person(&mut self) -> String {
        format!("{} {}", self.pick(GIVEN), self.pick(FAMILY))
    }

    fn staff(&mut self, school: &GenSchool, role: &str) -> Value {
        json!({
            "staff_id": format!("S{}-{:03}", &school.urn[3..], self.rng.random_range(1..120)),
            "name": self.person(),
            "role": role,
        })
    }

    fn upn(&mut self, school: &GenSchool) -> String {
        let year = self.rng.random_range(14..=24);
        let rest = format!(
            "{}{}{year:02}{:03}",
            school.la,
            school.estab,
            self.rng.random_range(0..1000)
        );
        let letter = upn_check_letter(rest.as_bytes()).unwrap_or(b'A') as char;
        format!("{letter}{rest}")
    }

    fn pupil(&mut self, school: &GenSchool) -> Value {
        let year_group = self.rng.random_range(1..=11u8);
        let born = NaiveDate::from_ymd_opt(2026 - 5 - i32::from(year_group), 1, 1)
            .unwrap_or_default()
            + Duration::days(self.rng.random_range(0..365));
        json!({
            "upn": self.upn(school),
            "mis_id": format!("{}", self.rng.random_range(10_000..99_999)),
            "given_name": self.pick(GIVEN),
            "family_name": self.pick(FAMILY),
            "date_of_birth": born.format("%Y-%m-%d").to_string(),
            "year_group": year_group,
        })
    }

    /// A weekday in 2026 at a working time, in the school's zone.
    fn start_time(&mut self) -> chrono::DateTime<chrono_tz::Tz> {
        let base = NaiveDate::from_ymd_opt(2026, 1, 5).unwrap_or_default();
        let week = self.rng.random_range(0..46);
        let day = base + Duration::days(week * 7 + self.rng.random_range(0..5));
        let minutes = self.rng.random_range(8 * 60 + 30..15 * 60);
        let local = day.and_time(NaiveTime::MIN) + Duration::minutes(minutes);
        London
            .from_local_datetime(&local)
            .earliest()
            .unwrap_or_else(|| London.from_utc_datetime(&local))
    }

    fn minutes(&mut self, lo: i64, hi: i64) -> Duration {
        Duration::minutes(self.rng.random_range(lo..=hi))
    }

    fn record(&mut self, n: u64) -> Value {
        let school = &SCHOOLS[self.rng.random_range(0..SCHOOLS.len())];
        match self.rng.random_range(0..100) {
            0..70 => self.visit_report(n, school),
            70..85 => self.incident(n, school),
            _ => self.flag(n, school),
        }
    }

    fn visit_report(&mut self, n: u64, school: &GenSchool) -> Value {
        let thrive = school.trust == "thrive";
        let left = self.start_time();
        let arrived = left + self.minutes(8, 25);
        let departed = arrived + self.minutes(10, 55);
        let returned = departed + self.minutes(8, 25);
        let purpose = self.pick(PURPOSES);
        let outcome = self.pick(OUTCOMES);
        let lone = !thrive && self.rng.random_bool(0.15);
        let (auth_staff_role, auth_role) = if thrive {
            *[
                ("headteacher", "headteacher"),
                ("senior_leader", "head_of_school"),
            ]
            .choose(&mut self.rng)
            .unwrap_or(&("headteacher", "headteacher"))
        } else {
            *[("dsl", "dsl"), ("senior_leader", "senior_leader")]
                .choose(&mut self.rng)
                .unwrap_or(&("dsl", "dsl"))
        };
        let lead_role = self.pick(&[
            "attendance_officer",
            "family_support_worker",
            "pastoral_lead",
        ]);
        let mut lead = self.staff(school, lead_role);
        lead["lead"] = json!(true);
        let mut staff = vec![lead];
        if !lone {
            let role = self.pick(&["teacher", "teaching_assistant", "learning_mentor", "dsl"]);
            let second = self.staff(school, role);
            staff.push(second);
        }
        let mut recorder = staff[0].clone();
        if let Some(m) = recorder.as_object_mut() {
            m.remove("lead");
        }
        let mut v = json!({
            "kind": "visit_report",
            "id": format!("V-{}-{n:08}", school.trust),
            "revision": 1,
            "trust": school.trust,
            "school": { "urn": school.urn, "name": school.name },
            "pupil": self.pupil(school),
            "purpose": purpose,
            "authorisation": {
                "by": self.staff(school, auth_staff_role),
                "role": auth_role,
                "at": rfc3339(left - self.minutes(30, 2880)),
            },
            "appointment": { "method": self.pick(&["phone", "letter", "phone"]) },
            "staff": staff,
            "buddy": {
                "staff_id": format!("S{}-{:03}", &school.urn[3..], self.rng.random_range(120..200)),
                "name": self.person(),
                "code_word_agreed": true,
            },
            "sign_out": {
                "left_school_at": rfc3339(left),
                "vehicle_registration": format!("WR{:02} {}", self.rng.random_range(10..26), self.pick(&["KLM", "XPT", "BDF", "HJN"])),
                "staff_mobiles": [format!("07700 900{:03}", self.rng.random_range(0..1000))],
                "address": {
                    "lines": [format!("{} {}", self.rng.random_range(1..120), self.pick(STREETS))],
                    "postcode": if thrive { "HU5 2XX" } else { "TR7 1XX" },
                },
                "expected_to_see": "parent and child",
                "expected_arrival": rfc3339(arrived),
                "expected_departure": rfc3339(arrived + Duration::minutes(45)),
                "expected_return": rfc3339(arrived + Duration::minutes(75)),
            },
            "outcome": outcome,
            "summary": "Visit made as planned; see actions.",
            "recorded_by": recorder,
            "recorded_at": rfc3339(returned + self.minutes(5, 600)),
        });
        if lone {
            v["authorisation"]["lone_visit_approved"] = json!(true);
        }
        if outcome == "cancelled" {
            v["cancellation"] = json!({
                "reason": "family asked to rearrange",
                "rescheduled_for": rfc3339(left + Duration::days(2)),
            });
            v["recorded_at"] = json!(rfc3339(left));
        } else {
            v["visit"] = json!({
                "arrived_at": rfc3339(arrived),
                "departed_at": rfc3339(departed),
                "returned_at": rfc3339(returned),
            });
            let seen = outcome == "completed";
            v["child_seen"] = json!(seen);
            if seen {
                v["people_seen"] =
                    json!([{ "relationship": "mother", "parental_responsibility": true }]);
                v["actions"] = json!([{ "description": "Follow-up call", "owner": "attendance officer", "due": (left + Duration::days(7)).format("%Y-%m-%d").to_string() }]);
            }
            if outcome == "no_one_home" {
                v["note_left"] = json!(self.rng.random_bool(0.9));
            }
        }
        if purpose == "attendance" || purpose == "medical_absence" || purpose == "suspected_holiday"
        {
            v["absence_reason"] = json!(self.pick(ABSENCE));
        }
        v
    }

    fn incident(&mut self, n: u64, school: &GenSchool) -> Value {
        let occurred = self.start_time();
        let police = self.rng.random_range(0..10);
        let mut v = json!({
            "kind": "incident",
            "id": format!("I-{}-{n:08}", school.trust),
            "revision": 1,
            "trust": school.trust,
            "school": { "urn": school.urn, "name": school.name },
            "visit_id": format!("V-{}-{:08}", school.trust, n.saturating_sub(self.rng.random_range(1..50))),
            "occurred_at": rfc3339(occurred),
            "type": self.pick(INCIDENT_TYPES),
            "severity": self.pick(&["low", "low", "moderate", "major_injury"]),
            "description": "Parent became angry at the door; staff left calmly.",
            "code_word_used": self.rng.random_bool(0.2),
            "left_property": self.rng.random_bool(0.6),
            "reported_to_line_manager_at": rfc3339(occurred + self.minutes(20, 120)),
            "shared_with_headteacher_at": rfc3339(occurred + self.minutes(30, 300)),
            "debrief_at": rfc3339(occurred + self.minutes(60, 2000)),
            "recorded_by": self.staff(school, "attendance_officer"),
        });
        if police == 0 {
            v["police_called"] = json!("999");
        } else if police < 3 {
            v["police_called"] = json!("101");
        }
        v
    }

    fn flag(&mut self, n: u64, school: &GenSchool) -> Value {
        let raised = self.start_time();
        let category = self.pick(CATEGORIES);
        let urgency = if category == "immediate_danger" {
            "immediate"
        } else {
            self.pick(&["immediate", "same_day", "same_day", "routine", "routine"])
        };
        let mut v = json!({
            "kind": "safeguarding_flag",
            "id": format!("F-{}-{n:08}", school.trust),
            "revision": 1,
            "trust": school.trust,
            "school": { "urn": school.urn, "name": school.name },
            "pupil": self.pupil(school),
            "raised_at": rfc3339(raised),
            "category": category,
            "urgency": urgency,
            "emergency_services_called": category == "immediate_danger",
            "description": "Concern noted during the visit; see the DSL's record.",
            "reported_to_dsl_at": rfc3339(raised + self.minutes(2, 90)),
            "referral_to_social_care": self.rng.random_bool(0.2),
            "raised_by": self.staff(school, "family_support_worker"),
        });
        if self.rng.random_bool(0.7) {
            v["visit_id"] = json!(format!("V-{}-{:08}", school.trust, n.saturating_sub(1)));
        }
        v
    }

    /// Breaks a record in one of the ways intake must reject.
    fn break_record(&mut self, v: &mut Value) {
        let time_field = match v["kind"].as_str() {
            Some("visit_report") => "recorded_at",
            Some("incident") => "occurred_at",
            _ => "raised_at",
        };
        match self.rng.random_range(0..8) {
            0 => {
                if let Some(pupil) = v.get_mut("pupil") {
                    let upn = pupil["upn"].as_str().unwrap_or_default().to_owned();
                    let wrong = if upn.starts_with('A') { "B" } else { "A" };
                    pupil["upn"] = json!(format!("{wrong}{}", upn.get(1..).unwrap_or_default()));
                } else {
                    v["revision"] = json!(0);
                }
            }
            1 => {
                let t = v[time_field].as_str().unwrap_or_default();
                v[time_field] = json!(t.get(..19).unwrap_or(t).to_owned());
            }
            2 => {
                let field = match v["kind"].as_str() {
                    Some("visit_report") => "purpose",
                    Some("incident") => "type",
                    _ => "category",
                };
                v[field] = json!("home_visit");
            }
            3 => v["notes"] = json!("free text in an unknown field"),
            4 => {
                if let Some(m) = v.as_object_mut() {
                    m.remove("school");
                }
            }
            5 => v["revision"] = json!("one"),
            6 => v["school"]["urn"] = json!("12345"),
            _ => v["extensions"] = json!({ "safe_word": "bluebird" }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_records() {
        let run = |seed| {
            let mut out = Vec::new();
            write_records(
                GenOptions {
                    count: 50,
                    seed,
                    invalid_share: 0.1,
                },
                &mut out,
            )
            .unwrap();
            out
        };
        assert_eq!(run(7), run(7));
        assert_ne!(run(7), run(8));
    }
}
