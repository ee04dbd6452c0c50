//! Sequencing a log's new leaves (SPEC §5, completeness): each event of a school gets that
//! school's next `school_seq`, and no event's time goes back before the log's last — an
//! earlier one is raised to it — so a school's events of a period are one unbroken run of
//! sequence numbers, which a verifier can check for gaps.
//! Owns: [`Tail`], [`Tail::sequence`] and how leaf times are [`compare`]d. May not touch: storage (the store loads the tail,
//! sequences, and writes the result in the append's transaction).

use std::cmp::Ordering;
use std::collections::HashMap;

use chrono::DateTime;

use super::Event;

/// Where a trust's log stands: its last event time and each school's next sequence number
/// (for the schools of the batch at hand; one absent has had no event yet).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tail {
    pub last_at: Option<String>,
    pub next_seq: HashMap<String, u64>,
}

/// Orders two RFC 3339 times as instants (as text when either does not read).
pub fn compare(a: &str, b: &str) -> Ordering {
    // Fast path, the common case: two UTC times written alike (`…:SS.ffffffZ`), whose text
    // order is their time order.
    let (x, y) = (a.as_bytes(), b.as_bytes());
    if x.len() == y.len()
        && x.len() >= 20
        && x.last() == Some(&b'Z')
        && y.last() == Some(&b'Z')
        && x[19] == y[19]
        && x[10] == b'T'
        && y[10] == b'T'
    {
        return x.cmp(y);
    }
    match (
        DateTime::parse_from_rfc3339(a),
        DateTime::parse_from_rfc3339(b),
    ) {
        (Ok(x), Ok(y)) => x.cmp(&y),
        _ => a.cmp(b),
    }
}

impl Tail {
    /// The events as the log appends them, in order: `school_seq` set for each event of a
    /// school, `at` raised to the last time before it where it was earlier. The tail moves
    /// on past them.
    pub fn sequence(&mut self, events: &[Event]) -> Vec<Event> {
        events
            .iter()
            .map(|e| {
                let mut e = e.clone();
                match &self.last_at {
                    Some(last) if compare(&e.at, last) == Ordering::Less => e.at.clone_from(last),
                    _ => self.last_at = Some(e.at.clone()),
                }
                e.school_seq = e.school.as_ref().map(|s| {
                    let next = self.next_seq.entry(s.clone()).or_insert(0);
                    *next += 1;
                    *next - 1
                });
                e
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trail::EventType;

    fn at(school: Option<&str>, at: &str) -> Event {
        let mut e = Event::new(EventType::Received, at, "celt");
        e.school = school.map(str::to_owned);
        e
    }

    #[test]
    fn each_school_counts_its_own_events_and_time_never_goes_back() {
        let mut tail = Tail {
            last_at: Some("2026-03-01T10:00:00Z".into()),
            next_seq: HashMap::from([("136401".to_owned(), 5)]),
        };
        let out = tail.sequence(&[
            at(Some("136401"), "2026-03-01T11:00:00Z"),
            at(Some("999999"), "2026-03-01T09:00:00Z"),
            at(None, "2026-03-01T12:00:00.5Z"),
            at(Some("136401"), "2026-03-01T12:00:00+01:00"),
        ]);
        let seqs: Vec<_> = out.iter().map(|e| e.school_seq).collect();
        assert_eq!(seqs, [Some(5), Some(0), None, Some(6)]);
        let times: Vec<_> = out.iter().map(|e| e.at.as_str()).collect();
        assert_eq!(
            times,
            [
                "2026-03-01T11:00:00Z",
                "2026-03-01T11:00:00Z",
                "2026-03-01T12:00:00.5Z",
                "2026-03-01T12:00:00.5Z",
            ],
            "an earlier time (also in another offset) is raised to the last"
        );
        assert_eq!(tail.last_at.as_deref(), Some("2026-03-01T12:00:00.5Z"));
        assert_eq!(tail.next_seq["136401"], 7);
        assert_eq!(tail.next_seq["999999"], 1);
    }

    #[test]
    fn times_compare_as_instants_whatever_their_form() {
        use Ordering::*;
        for (a, b, want) in [
            (
                "2026-03-01T10:00:00.000000Z",
                "2026-03-01T10:00:00.000001Z",
                Less,
            ),
            ("2026-03-01T10:00:00Z", "2026-03-01T10:00:00.5Z", Less),
            ("2026-03-01T10:00:01Z", "2026-03-01T10:00:00.5Z", Greater),
            ("2026-03-01T11:00:00+01:00", "2026-03-01T10:00:00Z", Equal),
            (
                "2026-03-02T00:00:00.000000Z",
                "2026-03-01T23:59:59.999999Z",
                Greater,
            ),
        ] {
            assert_eq!(compare(a, b), want, "{a} {b}");
            assert_eq!(compare(b, a), want.reverse(), "{b} {a}");
        }
    }
}
