//! What `verify` proved, as data and in plain words: completeness, anchoring, how the
//! records were checked, which key signed.
//! Owns: [`VerifyReport`] and its parts, [`VerifyReport::statements`]. May not touch: the
//! checks themselves (the parent's, `walk`'s and `anchor`'s).

use super::Period;
use crate::records::personal::PERSONAL_KEYS;

/// How the period's entries were proven complete, or why they could not be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Completeness {
    /// Every event of the school in the period is in the bundle: its sequence numbers run
    /// without a gap from the entry before the period (or the school's first event) to the
    /// entry after it (or the export itself).
    Complete {
        /// The school's sequence numbers of the period's entries (`None`: no event in it).
        seqs: Option<(u64, u64)>,
        /// The period is closed by the end of the signed tree rather than by an entry after
        /// the period: the bundle's last entry is the tree's last leaf (the export's own
        /// event, or on a read-only copy the school's last event).
        until_end: Option<TreeEnd>,
    },
    /// Entries written before leaves carried `school_seq` cannot prove it.
    NotProven { reason: String },
}

/// The tree's last leaf, which closes a period that reaches it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TreeEnd {
    pub at: String,
    /// Whether it is the export's own `exported` event.
    pub exported: bool,
}

/// Whether the bundle's tree was tied to a checkpoint the auditor already held.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Anchor {
    /// It extends the trusted checkpoint of this size.
    Anchored { size: u64 },
    /// No trusted checkpoint was given; `proves_from` names the size the bundle's own
    /// consistency proof starts at, if it carries one (checked, but anchored to nothing).
    NotAnchored { proves_from: Option<u64> },
}

/// How the records were checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ContentChecks {
    /// Records whose whole content matched the content hash their entry carries.
    pub full: u64,
    /// Pseudonymised records whose non-personal projection matched their entry's.
    pub non_personal: u64,
    /// Pseudonymised records whose entry carries no projection hash (written before leaves
    /// did): only their ids were checked.
    pub unchecked: u64,
    /// Revisions whose content the store purged under retention: in the bundle as stubs
    /// whose content hash matched their entry's; the content itself cannot be shown.
    pub purged: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    pub entries: u64,
    pub records: u64,
    pub tree_size: u64,
    pub origin: String,
    pub school: String,
    pub period: Period,
    pub completeness: Completeness,
    pub anchor: Anchor,
    pub content: ContentChecks,
    /// The first purged revisions (`kind id revision N`), for the report to name.
    pub purged: Vec<String>,
    /// The key that signed the checkpoint (`name+hexid`), and whether it was given
    /// (`--key`) rather than taken from the bundle's own `log.pub`.
    pub key: String,
    pub key_given: bool,
}

impl VerifyReport {
    /// What was proven, in plain words, a line each.
    pub fn statements(&self) -> Vec<String> {
        let mut out = vec![format!(
            "ok: {} entries and {} records verify against {} at size {}",
            self.entries, self.records, self.origin, self.tree_size
        )];
        out.push(if self.key_given {
            format!("signed: by {}, the key given with --key", self.key)
        } else {
            format!(
                "signed: by {}, the key in the bundle's log.pub — compare it with the trust's \
                 published key, or pass it with --key",
                self.key
            )
        });
        let period = format!(
            "from {} to {} ({} to before {})",
            self.period.from, self.period.to, self.period.from_utc, self.period.to_utc
        );
        out.push(match &self.completeness {
            Completeness::Complete { seqs, until_end } => {
                let until = match until_end {
                    Some(TreeEnd { at, exported: true }) => format!(", up to this export at {at}"),
                    Some(TreeEnd { at, .. }) => {
                        format!(", up to the end of the signed log at {at}")
                    }
                    None => String::new(),
                };
                match seqs {
                    Some((a, b)) => format!(
                        "complete: every event of school {} {period}{until}: seq {a}..{b}",
                        self.school
                    ),
                    None => format!(
                        "complete: school {} has no event {period}{until}",
                        self.school
                    ),
                }
            }
            Completeness::NotProven { reason } => {
                format!("NOT proven complete: {reason}")
            }
        });
        out.push(match self.anchor {
            Anchor::Anchored { size } => format!(
                "anchored: the tree at size {} extends the trusted checkpoint at size {size}",
                self.tree_size
            ),
            Anchor::NotAnchored { proves_from: None } => "not anchored: self-consistent only; \
                give a checkpoint you already hold with --trusted-checkpoint (export with \
                --prove-from it) to prove the log was not rewritten since"
                .to_owned(),
            Anchor::NotAnchored {
                proves_from: Some(size),
            } => format!(
                "not anchored: the bundle proves its tree extends the checkpoint at size {size}; \
                 give that checkpoint with --trusted-checkpoint to anchor it"
            ),
        });
        let c = self.content;
        if c.non_personal == 0 && c.unchecked == 0 {
            out.push(format!(
                "records: {} checked in full (every field against its content hash)",
                c.full
            ));
        } else {
            out.push(format!(
                "records: {} checked in full, {} pseudonymised and checked on every field but \
                 the personal ones; not checked: {}",
                c.full,
                c.non_personal,
                PERSONAL_KEYS.join(", ")
            ));
        }
        if c.purged > 0 {
            let more = c.purged.saturating_sub(self.purged.len() as u64);
            out.push(format!(
                "records: {} purged from the store under retention — the bundle cannot show \
                 their content; each is listed by content hash in purged.csv and its leaf \
                 verifies: {}{}",
                c.purged,
                self.purged.join(", "),
                if more > 0 {
                    format!(" and {more} more")
                } else {
                    String::new()
                }
            ));
        }
        if c.unchecked > 0 {
            out.push(format!(
                "records: {} NOT checked: pseudonymised, and their entries carry no projection \
                 hash (written before leaves did)",
                c.unchecked
            ));
        }
        out
    }
}
