//! A chronology (SPEC §6): one row per visit, incident and flag, in date order, in the
//! school's zone — as CSV, or as one self-contained printable HTML page.
//!
//! Rows are rendered as they are read and spilled to a temporary file (owner-only, removed
//! after); only each row's sort key and place stay in memory (24 bytes), so a year of a
//! large school sorts in a few MiB. The rows are then copied out in order.
//! Owns: [`Row`], [`Chronology`], the HTML page. May not touch: which records are chosen.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;

use chrono::{DateTime, Utc};
use minijinja::value::Serde;
use minijinja::{Environment, context};
use serde::Serialize;

use super::ExportError;
use super::files::PendingFile;
use crate::records::Kind;

/// The chronology's columns, in order (`docs/export.md`).
pub const HEADER: &[&str] = &[
    "date",
    "time",
    "school_urn",
    "school",
    "pupil_upn",
    "kind",
    "record_id",
    "revision",
    "what",
    "outcome",
    "child_seen",
    "urgency",
    "police_or_referral",
    "summary",
    "exceptions",
    "delivered_to",
];

/// One row, every cell as text (dates and times already in the school's zone).
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub date: String,
    pub time: String,
    pub school_urn: String,
    pub school: String,
    pub pupil_upn: String,
    pub kind: &'static str,
    pub record_id: String,
    pub revision: u32,
    pub what: String,
    pub outcome: String,
    pub child_seen: String,
    pub urgency: String,
    pub police_or_referral: String,
    pub summary: String,
    pub exceptions: String,
    pub delivered_to: String,
}

impl Row {
    fn cells(&self) -> [String; 16] {
        let n = crate::connectors::csv::neutralise;
        [
            self.date.clone(),
            self.time.clone(),
            n(&self.school_urn),
            n(&self.school),
            n(&self.pupil_upn),
            self.kind.to_owned(),
            n(&self.record_id),
            self.revision.to_string(),
            n(&self.what),
            n(&self.outcome),
            self.child_seen.clone(),
            n(&self.urgency),
            n(&self.police_or_referral),
            n(&self.summary),
            n(&self.exceptions),
            n(&self.delivered_to),
        ]
    }
}

/// Where a row sorts: its instant, then kind, then the order it was read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Key {
    micros: i64,
    kind: u8,
    seq: u32,
    at: u64,
    len: u32,
}

pub enum Style {
    Csv,
    Html,
}

/// What the HTML page says at its top.
#[derive(Debug, Clone, Serialize)]
pub struct PageHead {
    pub schools: String,
    pub from: String,
    pub to: String,
    pub zone: String,
    pub pupil: Option<String>,
    pub reason: &'static str,
    pub generated: String,
    pub by: String,
    pub subject_access: bool,
}

/// A chronology being gathered.
pub struct Chronology {
    style: Style,
    spill: File,
    spill_at: u64,
    spill_path: std::path::PathBuf,
    keys: Vec<Key>,
    /// Rendered rows not yet in the spill file.
    pending: Vec<u8>,
    env: Environment<'static>,
}

/// Rendered rows gathered before each write to the spill file.
const SPILL_BUFFER: usize = 1 << 20;

const ROW_HTML: &str = "<tr><td>{{ r.date }}</td><td>{{ r.time }}</td><td>{{ r.school }}</td>\
<td>{{ r.pupil_upn }}</td><td>{{ r.kind | replace('_', ' ') }}<br><small>{{ r.record_id }} r{{ r.revision }}</small></td>\
<td>{{ r.what | replace('_', ' ') }}</td><td>{{ r.outcome | replace('_', ' ') }}</td><td>{{ r.child_seen }}</td>\
<td>{{ r.urgency | replace('_', ' ') }}</td><td>{{ r.police_or_referral }}</td><td class=\"s\">{{ r.summary }}</td>\
<td>{{ r.exceptions }}</td><td>{{ r.delivered_to }}</td></tr>\n";

const HEAD_HTML: &str = r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="robots" content="noindex">
<title>Chronology: {{ h.schools }}, {{ h.from }} to {{ h.to }}</title>
<style>
@page { size: A4 landscape; margin: 18mm 10mm 16mm 10mm; }
body { font: 10pt/1.35 system-ui, -apple-system, "Segoe UI", Arial, sans-serif; margin: 0 0 0 0; color: #000; }
.mark { background: #fff; color: #900; font-weight: bold; text-align: center; font-size: 9pt;
        border: 1px solid #900; padding: 2px; }
.top { position: fixed; top: 0; left: 0; right: 0; }
.bottom { position: fixed; bottom: 0; left: 0; right: 0; }
main { margin: 28px 0; }
h1 { font-size: 15pt; margin: 6px 0; }
dl { display: grid; grid-template-columns: max-content auto; gap: 2px 12px; margin: 0 0 10px 0; }
dt { font-weight: bold; }
table { border-collapse: collapse; width: 100%; }
th, td { border: 1px solid #888; padding: 3px 4px; vertical-align: top; text-align: left; }
th { background: #eee; }
thead { display: table-header-group; }
tr { break-inside: avoid; page-break-inside: avoid; }
td.s { white-space: pre-wrap; }
.note { margin-top: 8px; font-style: italic; }
</style>
</head>
<body>
<div class="mark top">OFFICIAL-SENSITIVE: child-protection data. Keep secure; share only with those who need it.</div>
<main>
<h1>Chronology</h1>
<dl>
<dt>School</dt><dd>{{ h.schools }}</dd>
<dt>Period</dt><dd>{{ h.from }} to {{ h.to }} (times in {{ h.zone }})</dd>
{% if h.pupil %}<dt>Pupil (UPN)</dt><dd>{{ h.pupil }}</dd>{% endif %}
<dt>Reason</dt><dd>{{ h.reason | replace('_', ' ') }}</dd>
<dt>Exported</dt><dd>{{ h.generated }} by {{ h.by }}</dd>
</dl>
{% if h.subject_access %}<p class="note">Subject access: staff names and other people's details in these records are third parties' personal data; review before disclosure.</p>{% endif %}
<table>
<thead><tr><th>Date</th><th>Time</th><th>School</th><th>Pupil</th><th>Record</th><th>Purpose / type / category</th><th>Outcome</th><th>Child seen</th><th>Urgency</th><th>Police / referral</th><th>Summary</th><th>Exceptions</th><th>Delivered to</th></tr></thead>
<tbody>
"#;

const FOOT_HTML: &str = r#"</tbody>
</table>
{% if rows == 0 %}<p class="note">No visit, incident or flag in this period.</p>{% endif %}
{% if purged %}<p class="note">{{ purged }} record(s) of these schools received in the period are no longer held in full: their content was purged under the trust's retention once delivered. The evidence trail still proves them (doorstep audit prove).</p>{% endif %}
</main>
<div class="mark bottom">OFFICIAL-SENSITIVE: child-protection data. {{ rows }} row(s).</div>
</body>
</html>
"#;

impl Chronology {
    /// Spills beside `near` (the export's own folder).
    pub fn new(style: Style, near: &Path) -> Result<Self, ExportError> {
        let spill_path = near.join(format!(".doorstep-chronology.{}.spill", std::process::id()));
        let spill = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&spill_path)
            .map_err(|e| ExportError::Io {
                path: spill_path.clone(),
                reason: e.to_string(),
            })?;
        let mut env = Environment::new();
        env.set_auto_escape_callback(|_| minijinja::AutoEscape::Html);
        env.add_template("row", ROW_HTML)
            .and_then(|()| env.add_template("head", HEAD_HTML))
            .and_then(|()| env.add_template("foot", FOOT_HTML))
            .map_err(|e| ExportError::Render(e.to_string()))?;
        Ok(Self {
            style,
            spill,
            spill_at: 0,
            spill_path,
            keys: Vec::new(),
            pending: Vec::with_capacity(SPILL_BUFFER + 64 * 1024),
            env,
        })
    }

    /// A row's bytes, as its file holds them (any core).
    pub fn render(&self, row: &Row) -> Result<Vec<u8>, ExportError> {
        match self.style {
            Style::Csv => Ok(crate::connectors::csv::encode_row(&row.cells())),
            Style::Html => self
                .env
                .get_template("row")
                .and_then(|t| t.render(context! { r => Serde(row) }))
                .map(String::into_bytes)
                .map_err(|e| ExportError::Render(e.to_string())),
        }
    }

    /// Keeps a rendered row, to be written in its place by date.
    pub fn push(&mut self, at: DateTime<Utc>, kind: Kind, bytes: &[u8]) -> Result<(), ExportError> {
        self.pending.extend_from_slice(bytes);
        let kind = match kind {
            Kind::VisitReport => 0,
            Kind::Incident => 1,
            Kind::SafeguardingFlag => 2,
        };
        self.keys.push(Key {
            micros: at.timestamp_micros(),
            kind,
            seq: self.keys.len() as u32,
            at: self.spill_at,
            len: bytes.len() as u32,
        });
        self.spill_at += bytes.len() as u64;
        if self.pending.len() >= SPILL_BUFFER {
            self.flush_spill()?;
        }
        Ok(())
    }

    /// Rows kept in memory since the last write to the spill file, written out.
    fn flush_spill(&mut self) -> Result<(), ExportError> {
        let at = self.spill_at - self.pending.len() as u64;
        self.spill
            .write_all_at(&self.pending, at)
            .map_err(|e| ExportError::Io {
                path: self.spill_path.clone(),
                reason: e.to_string(),
            })?;
        self.pending.clear();
        Ok(())
    }

    /// Writes the rows in date order (with the page's head and foot for HTML).
    pub fn write(
        mut self,
        out: &mut PendingFile,
        head: &PageHead,
        purged: u64,
    ) -> Result<(), ExportError> {
        self.flush_spill()?;
        self.keys.sort_unstable();
        let render = |e: minijinja::Error| ExportError::Render(e.to_string());
        match self.style {
            Style::Csv => {
                let header: Vec<String> = HEADER.iter().map(|h| (*h).to_owned()).collect();
                out.write(&crate::connectors::csv::encode_row(&header))?;
            }
            Style::Html => {
                let text = self
                    .env
                    .get_template("head")
                    .and_then(|t| t.render(context! { h => Serde(head) }))
                    .map_err(render)?;
                out.write(text.as_bytes())?;
            }
        }
        let mut buf = Vec::new();
        {
            let mut copy = BufWriter::with_capacity(1 << 16, &mut *out);
            for k in &self.keys {
                buf.resize(k.len as usize, 0);
                self.spill
                    .read_exact_at(&mut buf, k.at)
                    .map_err(|e| ExportError::Io {
                        path: self.spill_path.clone(),
                        reason: e.to_string(),
                    })?;
                copy.write_all(&buf).map_err(|e| ExportError::Io {
                    path: self.spill_path.clone(),
                    reason: e.to_string(),
                })?;
            }
            copy.flush().map_err(|e| ExportError::Io {
                path: self.spill_path.clone(),
                reason: e.to_string(),
            })?;
        }
        if let Style::Html = self.style {
            let text = self
                .env
                .get_template("foot")
                .and_then(|t| t.render(context! { rows => self.keys.len(), purged => purged }))
                .map_err(render)?;
            out.write(text.as_bytes())?;
        }
        Ok(())
    }
}

impl Drop for Chronology {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.spill_path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: usize) -> Row {
        Row {
            date: String::new(),
            time: String::new(),
            school_urn: "136401".into(),
            school: String::new(),
            pupil_upn: String::new(),
            kind: "incident",
            record_id: format!("r{id:06}"),
            revision: 1,
            what: String::new(),
            outcome: String::new(),
            child_seen: String::new(),
            urgency: String::new(),
            police_or_referral: String::new(),
            summary: "x".repeat(500),
            exceptions: String::new(),
            delivered_to: String::new(),
        }
    }

    #[test]
    fn rows_spilled_over_many_buffers_come_back_in_date_order() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = Chronology::new(Style::Csv, dir.path()).unwrap();
        // 6,000 rows of ~560 bytes: several spill buffers; pushed latest first.
        let n = 6_000usize;
        for i in (0..n).rev() {
            let at = DateTime::from_timestamp(1_700_000_000 + i as i64, 0).unwrap();
            let bytes = c.render(&row(i)).unwrap();
            c.push(at, Kind::Incident, &bytes).unwrap();
        }
        let path = dir.path().join("out.csv");
        let mut out = PendingFile::create(&path).unwrap();
        let head = PageHead {
            schools: String::new(),
            from: String::new(),
            to: String::new(),
            zone: String::new(),
            pupil: None,
            reason: "audit",
            generated: String::new(),
            by: String::new(),
            subject_access: false,
        };
        c.write(&mut out, &head, 0).unwrap();
        out.place().unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let ids: Vec<&str> = text
            .lines()
            .skip(1)
            .map(|l| &l[l.find(",r").unwrap() + 1..][..7])
            .collect();
        let want: Vec<String> = (0..n).map(|i| format!("r{i:06}")).collect();
        assert_eq!(ids, want);
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(left.len(), 1, "the spill file is gone");
    }
}
