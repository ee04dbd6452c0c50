//! The record exporter (SPEC §6, `doorstep export`, `GET /v1/export`): a trust's records
//! out, per school, pupil and period — the current revisions as stored (`jsonl`), one CSV
//! per kind (`csv`, columns in [`columns`]), a chronology in date order in the school's
//! zone (`chronology`, CSV) or that chronology as one printable page (`html`). Every export
//! appends an `exported` event per school in the trail (who, the reason code, the format,
//! counts by kind — never the pupil); its files are owner-only and appear only once
//! complete and recorded.
//!
//! Owns: choosing the records (school, period by the record's own time in the school's zone,
//! pupil — an incident belongs to the pupil of the visit its `visit_id` names), the formats.
//! May not touch: the store's SQL, the evidence bundle (`audit`).

mod chronology;
pub mod columns;
mod files;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};

use chrono::{DateTime, NaiveDate, Utc};
use rayon::prelude::*;
use serde_json::Value;

use crate::audit::{Event, EventType};
use crate::mapping::Trust;
use crate::records::{Kind, Upn};
use crate::store::{CurrentRevision, Store, StoreError};
pub use chronology::HEADER as CHRONOLOGY_HEADER;
use chronology::{Chronology, PageHead, Row, Style};
use files::PendingFile;

/// How records are written out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    Jsonl,
    Csv,
    Chronology,
    Html,
}

/// Why records are exported: recorded in the trail with every export.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    Referral,
    CaseReview,
    SubjectAccess,
    Migration,
    Audit,
}

macro_rules! named {
    ($ty:ident, $what:literal, $($v:ident = $s:literal),+) => {
        impl $ty {
            pub const NAMES: &'static [&'static str] = &[$($s),+];
            pub fn as_str(self) -> &'static str {
                match self { $($ty::$v => $s),+ }
            }
        }
        impl std::str::FromStr for $ty {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                match s {
                    $($s => Ok($ty::$v),)+
                    _ => Err(format!(concat!("not a ", $what, ": use one of {}"), $ty::NAMES.join(", "))),
                }
            }
        }
    };
}

named!(
    Format,
    "format",
    Jsonl = "jsonl",
    Csv = "csv",
    Chronology = "chronology",
    Html = "html"
);
named!(
    Reason,
    "reason",
    Referral = "referral",
    CaseReview = "case_review",
    SubjectAccess = "subject_access",
    Migration = "migration",
    Audit = "audit"
);

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{path}: {reason}")]
    Io { path: PathBuf, reason: String },
    /// The request cannot be met as asked (exit 2 / HTTP 400).
    #[error("{0}")]
    Request(String),
    #[error("rendering the export: {0}")]
    Render(String),
    /// A stored record that does not read: a damaged store.
    #[error("the store's {kind} {id} revision {revision} does not read: {reason}")]
    Damaged {
        kind: Kind,
        id: String,
        revision: u32,
        reason: String,
    },
}

/// What to export.
#[derive(Debug, Clone)]
pub struct ExportRequest {
    pub trust: String,
    /// Schools by URN; empty: every school of the trust (in `trust.toml` or the store).
    pub schools: Vec<String>,
    /// Only this pupil's records (UPN; an incident by its visit's pupil).
    pub pupil: Option<String>,
    /// Only these kinds; empty: all three.
    pub kinds: Vec<Kind>,
    /// First and last day, inclusive, in each school's zone, by the record's own time
    /// (a visit's arrival — else leaving school, else when it was recorded —, an incident's
    /// `occurred_at`, a flag's `raised_at`).
    pub from: NaiveDate,
    pub to: NaiveDate,
    pub format: Format,
    pub reason: Reason,
    /// A file (`jsonl`, `chronology`, `html`) or a folder (`csv`: one file per kind).
    pub out: PathBuf,
    /// Who asks: `os:<user>` or `key:<public id>`.
    pub by: String,
}

/// What an export wrote.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ExportSummary {
    pub files: Vec<PathBuf>,
    /// Records written, by kind.
    pub counts: BTreeMap<String, u64>,
    /// Records of the schools received in the period whose content was purged (not written).
    pub purged: u64,
    pub schools: Vec<String>,
}

/// Records read per store page: two pages are in memory at once (one parsed while the next
/// is read), each record parsed into a value tree several times its text.
const PAGE: usize = 512;

/// Who runs this process, as the trail names them: `os:<login>`.
pub fn os_user() -> String {
    let name = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| "unknown".into());
    format!("os:{}", safe_id(&name))
}

/// An id as the trail may carry it: `[A-Za-z0-9._@:-]`, at most 64 characters.
pub fn safe_id(s: &str) -> String {
    s.chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '@' | ':' | '-'))
        .take(64)
        .collect()
}

/// The time a record is about, by kind.
fn occurred(kind: Kind, record: &Value) -> Option<DateTime<Utc>> {
    let pointers: &[&str] = match kind {
        Kind::VisitReport => &[
            "/visit/arrived_at",
            "/sign_out/left_school_at",
            "/recorded_at",
        ],
        Kind::Incident => &["/occurred_at"],
        Kind::SafeguardingFlag => &["/raised_at"],
    };
    pointers.iter().find_map(|p| {
        record
            .pointer(p)
            .and_then(Value::as_str)
            .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
            .map(|t| t.with_timezone(&Utc))
    })
}

fn text(record: &Value, pointer: &str) -> String {
    match record.pointer(pointer) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => String::new(),
        Some(v) => v.to_string(),
    }
}

fn yes_no(record: &Value, pointer: &str) -> String {
    match record.pointer(pointer).and_then(Value::as_bool) {
        Some(true) => "yes".into(),
        Some(false) => "no".into(),
        None => String::new(),
    }
}

/// The schools to read: those asked for, each known to the trust; else all it has.
async fn schools_of<S: Store>(
    store: &S,
    trust: &Trust,
    asked: &[String],
) -> Result<Vec<String>, ExportError> {
    let mut known: BTreeSet<String> = trust
        .file
        .schools
        .iter()
        .map(|s| s.urn.to_string())
        .collect();
    known.extend(
        store
            .status()
            .await?
            .records
            .into_iter()
            .filter(|r| r.trust == trust.id)
            .map(|r| r.school),
    );
    if asked.is_empty() {
        return Ok(known.into_iter().collect());
    }
    let mut schools = Vec::new();
    for urn in asked {
        if !known.contains(urn) {
            return Err(ExportError::Request(format!(
                "--school {urn}: not a school of trust {} (its trust.toml or its records)",
                trust.id
            )));
        }
        if !schools.contains(urn) {
            schools.push(urn.clone());
        }
    }
    Ok(schools)
}

/// Where the records go as they are chosen.
enum Sink {
    Jsonl(PendingFile),
    Csv(BTreeMap<&'static str, PendingFile>),
    Chronology(Box<Chronology>, PendingFile),
}

/// A kind's file in a CSV export: named after the kind.
fn csv_name(kind: Kind) -> &'static str {
    match kind {
        Kind::VisitReport => "visit_report.csv",
        Kind::Incident => "incident.csv",
        Kind::SafeguardingFlag => "safeguarding_flag.csv",
    }
}

/// The text of where a revision was delivered: `destination: state time; …`, times in the
/// school's zone.
fn delivered_to(rev: &CurrentRevision, tz: chrono_tz::Tz) -> String {
    rev.deliveries
        .iter()
        .map(|d| {
            let when = d
                .delivered_at
                .as_deref()
                .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
                .map(|t| format!(" {}", t.with_timezone(&tz).format("%Y-%m-%d %H:%M")))
                .unwrap_or_default();
            format!("{}: {}{when}", d.destination, d.state)
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// Exports records as `req` asks; see the module's header.
pub async fn export<S: Store>(
    store: &S,
    trust: &Trust,
    req: &ExportRequest,
) -> Result<ExportSummary, ExportError> {
    if req.from > req.to {
        return Err(ExportError::Request(format!(
            "--from {} is after --to {}",
            req.from, req.to
        )));
    }
    let pupil = match &req.pupil {
        Some(p) => Some(
            Upn::try_from(p.trim().to_ascii_uppercase())
                .map_err(|e| ExportError::Request(format!("--pupil: {}", e.message)))?
                .to_string(),
        ),
        None => None,
    };
    let schools = schools_of(store, trust, &req.schools).await?;
    let kinds: Vec<Kind> = Kind::ALL
        .into_iter()
        .filter(|k| req.kinds.is_empty() || req.kinds.contains(k))
        .collect();
    let subject_access = req.reason == Reason::SubjectAccess;
    let near = match req.format {
        Format::Csv => {
            files::folder(&req.out)?;
            req.out.clone()
        }
        _ => {
            let parent = req
                .out
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."))
                .to_path_buf();
            if !parent.is_dir() {
                return Err(ExportError::Request(format!(
                    "--out {}: its folder {} does not exist",
                    req.out.display(),
                    parent.display()
                )));
            }
            parent
        }
    };
    let mut sink = match req.format {
        Format::Jsonl => Sink::Jsonl(PendingFile::create(&req.out)?),
        Format::Csv => {
            let mut files = BTreeMap::new();
            for &kind in &kinds {
                let mut f = PendingFile::create(&req.out.join(csv_name(kind)))?;
                f.write(&crate::connectors::csv::encode_row(&columns::header(
                    kind,
                    subject_access,
                )))?;
                files.insert(csv_name(kind), f);
            }
            Sink::Csv(files)
        }
        Format::Chronology | Format::Html => {
            let style = if req.format == Format::Html {
                Style::Html
            } else {
                Style::Csv
            };
            Sink::Chronology(
                Box::new(Chronology::new(style, &near)?),
                PendingFile::create(&req.out)?,
            )
        }
    };
    let chronology = matches!(sink, Sink::Chronology(..));

    // Visits come first, so that an incident finds its visit's pupil.
    let mut pupil_visits: HashSet<String> = HashSet::new();
    let mut visit_pupil: HashMap<String, String> = HashMap::new();
    let mut counts: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
    let mut purged = 0u64;
    let mut read_kinds = kinds.clone();
    if (req.pupil.is_some() || chronology) && !read_kinds.contains(&Kind::VisitReport) {
        read_kinds.insert(0, Kind::VisitReport);
    }
    for &kind in &read_kinds {
        let wanted = kinds.contains(&kind);
        for school in &schools {
            let tz = trust.place(school).time_zone;
            let school_name = trust
                .file
                .schools
                .iter()
                .find(|s| s.urn.to_string() == *school)
                .map(|s| s.name.clone());
            let in_period = |t: DateTime<Utc>| {
                let day = t.with_timezone(&tz).date_naive();
                req.from <= day && day <= req.to
            };
            let mut page = store
                .current_revisions(&trust.id, school, kind, 0, PAGE)
                .await?;
            while let Some(last) = page.last() {
                // The next page is read (on the store's own thread) while this one is
                // parsed on every core.
                let next = store.current_revisions(&trust.id, school, kind, last.seq, PAGE);
                let parse = async { page.par_iter().map(|rev| read(kind, rev)).collect() };
                let (next, read): (_, Vec<Result<Option<Read>, ExportError>>) =
                    futures_util::future::join(next, parse).await;
                let mut chosen: Vec<Chosen<'_>> = Vec::new();
                for (rev, r) in page.iter().zip(read) {
                    let Some(r) = r? else {
                        let received = DateTime::parse_from_rfc3339(&rev.received_at)
                            .ok()
                            .map(|t| t.with_timezone(&Utc));
                        if wanted && received.is_some_and(in_period) {
                            purged += 1;
                        }
                        continue;
                    };
                    let upn = match kind {
                        Kind::Incident => {
                            let visit = text(&r.record, "/visit_id");
                            if pupil.is_some() {
                                pupil_visits
                                    .contains(&visit)
                                    .then(|| pupil.clone())
                                    .flatten()
                            } else {
                                visit_pupil.get(&visit).cloned()
                            }
                        }
                        _ => r.upn.clone(),
                    };
                    if kind == Kind::VisitReport {
                        match (&pupil, &upn) {
                            (Some(p), Some(u)) if p == u => {
                                pupil_visits.insert(rev.id.clone());
                            }
                            (None, Some(u)) if chronology => {
                                visit_pupil.insert(rev.id.clone(), u.clone());
                            }
                            _ => {}
                        }
                    }
                    if !wanted || (pupil.is_some() && upn != pupil) || !in_period(r.at) {
                        continue;
                    }
                    chosen.push(Chosen {
                        rev,
                        read: r,
                        upn: upn.unwrap_or_default(),
                    });
                }
                let place = Place {
                    kind,
                    tz,
                    school_name: school_name.as_deref(),
                };
                let rendered: Vec<Result<Vec<u8>, ExportError>> = {
                    let out = &sink;
                    chosen.par_iter().map(|c| render(out, &place, c)).collect()
                };
                for (c, bytes) in chosen.iter().zip(rendered) {
                    write(&mut sink, kind, c.read.at, &bytes?)?;
                }
                if !chosen.is_empty() {
                    *counts
                        .entry(school.clone())
                        .or_default()
                        .entry(kind.as_str().to_owned())
                        .or_default() += chosen.len() as u64;
                }
                page = next?;
            }
        }
    }

    // Complete every file, record the export, then put the files in place.
    let head = PageHead {
        schools: schools
            .iter()
            .map(|urn| {
                trust
                    .file
                    .schools
                    .iter()
                    .find(|s| s.urn.to_string() == *urn)
                    .map(|s| format!("{} ({urn})", s.name))
                    .unwrap_or_else(|| urn.clone())
            })
            .collect::<Vec<_>>()
            .join(", "),
        from: req.from.to_string(),
        to: req.to.to_string(),
        zone: zones(trust, &schools),
        pupil: pupil.clone(),
        reason: req.reason.as_str(),
        generated: Utc::now().format("%Y-%m-%d %H:%M UTC").to_string(),
        by: req.by.clone(),
        subject_access,
    };
    let mut pending: Vec<PendingFile> = Vec::new();
    match sink {
        Sink::Jsonl(mut f) => {
            f.complete()?;
            pending.push(f);
        }
        Sink::Csv(files) => {
            for (_, mut f) in files {
                f.complete()?;
                pending.push(f);
            }
        }
        Sink::Chronology(c, mut f) => {
            c.write(&mut f, &head, purged)?;
            f.complete()?;
            pending.push(f);
        }
    }
    let at = crate::store::time::format(&Utc::now());
    let events: Vec<Event> = if schools.is_empty() {
        vec![exported_event(req, &at, None, &BTreeMap::new())]
    } else {
        schools
            .iter()
            .map(|s| exported_event(req, &at, Some(s), counts.get(s).unwrap_or(&BTreeMap::new())))
            .collect()
    };
    store.audit_append(&events).await?;
    let mut summary = ExportSummary {
        purged,
        schools,
        ..Default::default()
    };
    for f in pending {
        summary.files.push(f.place()?);
    }
    for by_kind in counts.values() {
        for (k, n) in by_kind {
            *summary.counts.entry(k.clone()).or_default() += n;
        }
    }
    tracing::info!(
        trust = %req.trust,
        format = req.format.as_str(),
        reason = req.reason.as_str(),
        records = summary.counts.values().sum::<u64>(),
        "records exported"
    );
    Ok(summary)
}

/// The zones the schools keep, named once each.
fn zones(trust: &Trust, schools: &[String]) -> String {
    let set: BTreeSet<String> = schools
        .iter()
        .map(|s| trust.place(s).time_zone.name().to_owned())
        .collect();
    if set.is_empty() {
        trust.place("").time_zone.name().to_owned()
    } else {
        set.into_iter().collect::<Vec<_>>().join(", ")
    }
}

fn exported_event(
    req: &ExportRequest,
    at: &str,
    school: Option<&String>,
    counts: &BTreeMap<String, u64>,
) -> Event {
    let mut e = Event::new(EventType::Exported, at, &req.trust);
    e.school = school.cloned();
    e.by = Some(safe_id(&req.by));
    e.reason = Some(req.reason.as_str().to_owned());
    e.format = Some(req.format.as_str().to_owned());
    e.counts = counts.clone();
    e
}

/// A stored revision read: its record, its own time, its own pupil (none for an incident).
struct Read {
    record: Value,
    at: DateTime<Utc>,
    upn: Option<String>,
}

/// A revision the export takes.
struct Chosen<'a> {
    rev: &'a CurrentRevision,
    read: Read,
    /// Its pupil (an incident's by its visit), or empty.
    upn: String,
}

/// Where a page's revisions are from.
struct Place<'a> {
    kind: Kind,
    tz: chrono_tz::Tz,
    school_name: Option<&'a str>,
}

/// Parses a stored revision (`None` once purged).
fn read(kind: Kind, rev: &CurrentRevision) -> Result<Option<Read>, ExportError> {
    let Some(canonical) = &rev.canonical else {
        return Ok(None);
    };
    let damaged = |reason: String| ExportError::Damaged {
        kind,
        id: rev.id.clone(),
        revision: rev.revision,
        reason,
    };
    let record: Value = serde_json::from_str(canonical).map_err(|e| damaged(e.to_string()))?;
    let at = occurred(kind, &record).ok_or_else(|| damaged("it has no time of its own".into()))?;
    let upn = record
        .pointer("/pupil/upn")
        .and_then(Value::as_str)
        .map(str::to_owned);
    Ok(Some(Read { record, at, upn }))
}

/// One chosen revision as the bytes its file gets (any core).
fn render(sink: &Sink, place: &Place<'_>, c: &Chosen<'_>) -> Result<Vec<u8>, ExportError> {
    let (rev, record, kind, tz) = (c.rev, &c.read.record, place.kind, place.tz);
    Ok(match sink {
        Sink::Jsonl(_) => {
            let mut line = rev.canonical.clone().unwrap_or_default().into_bytes();
            line.push(b'\n');
            line
        }
        Sink::Csv(_) => {
            let mut row: Vec<String> = columns::columns(kind)
                .iter()
                .map(|col| columns::cell(record.pointer(col.pointer)))
                .collect();
            row.push(rev.content_hash.clone());
            row.push(rev.received_at.clone());
            row.push(columns::cell(Some(&Value::String(
                rev.exceptions.join(" "),
            ))));
            row.push(columns::cell(Some(&Value::String(delivered_to(rev, tz)))));
            crate::connectors::csv::encode_row(&row)
        }
        Sink::Chronology(chronology, _) => {
            let local = c.read.at.with_timezone(&tz);
            let (what, outcome) = match kind {
                Kind::VisitReport => (text(record, "/purpose"), text(record, "/outcome")),
                Kind::Incident => (text(record, "/type"), text(record, "/severity")),
                Kind::SafeguardingFlag => (text(record, "/category"), String::new()),
            };
            let mut police = Vec::new();
            if kind == Kind::Incident {
                let called = text(record, "/police_called");
                if !called.is_empty() {
                    police.push(format!("police called ({called})"));
                }
            }
            if record.pointer("/emergency_services_called") == Some(&Value::Bool(true)) {
                police.push("emergency services called".to_owned());
            }
            if record.pointer("/referral_to_social_care") == Some(&Value::Bool(true)) {
                police.push("referral to social care".to_owned());
            }
            let summary = match kind {
                Kind::VisitReport => text(record, "/summary"),
                _ => text(record, "/description"),
            };
            let school = place
                .school_name
                .map(str::to_owned)
                .unwrap_or_else(|| text(record, "/school/name"));
            chronology.render(&Row {
                date: local.format("%Y-%m-%d").to_string(),
                time: local.format("%H:%M").to_string(),
                school_urn: rev.school.clone(),
                school,
                pupil_upn: c.upn.clone(),
                kind: kind.as_str(),
                record_id: rev.id.clone(),
                revision: rev.revision,
                what,
                outcome,
                child_seen: yes_no(record, "/child_seen"),
                urgency: text(record, "/urgency"),
                police_or_referral: police.join("; "),
                summary,
                exceptions: rev.exceptions.join(" "),
                delivered_to: delivered_to(rev, tz),
            })?
        }
    })
}

/// Appends a rendered revision to its file (a chronology keeps it to sort).
fn write(sink: &mut Sink, kind: Kind, at: DateTime<Utc>, bytes: &[u8]) -> Result<(), ExportError> {
    match sink {
        Sink::Jsonl(f) => f.write(bytes),
        Sink::Csv(files) => match files.get_mut(csv_name(kind)) {
            Some(f) => f.write(bytes),
            None => Ok(()),
        },
        Sink::Chronology(c, _) => c.push(at, kind, bytes),
    }
}
