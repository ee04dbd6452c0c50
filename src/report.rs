//! What intake reports back, shared by the CLI (`--format json` lines, human text) and,
//! later, the HTTP API (problem JSON): rejections, conflicts, policy exceptions, a summary.
//! Ids, pointers and rule ids only: a report never carries a name, address or description.

use std::fmt;

use serde::Serialize;

use crate::policy::{Exception, RuleId, Severity};
use crate::records::{FieldError, Rule};

/// A rejected record or an unreadable file (SPEC §6).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Rejection {
    /// The file as given (or `request` for the HTTP API).
    pub file: String,
    /// 1-based line for JSON-lines files and syntax errors; `None` where unknown.
    pub line: Option<u64>,
    pub record_id: Option<String>,
    /// RFC 6901 pointer into the record; `None` for file-level errors.
    pub path: Option<String>,
    pub rule: Rule,
    pub message: String,
    /// The trust and school the rejected record named, when well-formed: which evidence
    /// trail the rejection goes to. Not part of the printed line.
    #[serde(skip)]
    pub trust: Option<String>,
    #[serde(skip)]
    pub school: Option<String>,
}

impl Rejection {
    pub fn new(file: &str, line: Option<u64>, record_id: Option<String>, e: FieldError) -> Self {
        Self {
            file: file.to_owned(),
            line,
            record_id,
            path: e.pointer,
            rule: e.rule,
            message: e.message,
            trust: None,
            school: None,
        }
    }

    /// Names the trust and school the record claimed.
    pub fn attributed(mut self, trust: Option<String>, school: Option<String>) -> Self {
        self.trust = trust;
        self.school = school;
        self
    }
}

/// A revision lower than or equal to a stored one, with different content: kept out.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Conflict {
    pub file: String,
    pub line: Option<u64>,
    pub record_id: String,
    pub revision: u32,
    pub rule: Rule,
    pub message: String,
}

/// A policy exception raised on an accepted record (SPEC §2, §6).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ExceptionReport {
    pub record_id: String,
    pub revision: u32,
    pub rule: RuleId,
    pub severity: Severity,
    pub message: String,
}

impl ExceptionReport {
    pub fn new(record_id: &str, revision: u32, e: &Exception) -> Self {
        Self {
            record_id: record_id.to_owned(),
            revision,
            rule: e.rule,
            severity: e.severity,
            message: e.message.clone(),
        }
    }
}

impl fmt::Display for ExceptionReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "exception record {} revision {}: {} [{}] {}",
            self.record_id, self.revision, self.severity, self.rule, self.message
        )
    }
}

/// Counts for one run of `check` or `ingest`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Summary {
    /// Records taken (checked, or stored as new revisions); embedded records count apiece.
    pub accepted: u64,
    /// Submissions rejected, and files that could not be read.
    pub rejected: u64,
    /// Policy exceptions raised on accepted records.
    pub exceptions: u64,
    /// Records already stored with the same content (a no-op).
    pub unchanged: u64,
    /// Revisions kept out because a revision as high or higher is stored with other content.
    pub conflicts: u64,
}

impl Summary {
    /// Exit status 1 when anything was rejected or kept out.
    pub fn is_clean(&self) -> bool {
        self.rejected == 0 && self.conflicts == 0
    }
}

/// One line of `--format json` output.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ReportLine<'a> {
    Rejection(&'a Rejection),
    Exception(&'a ExceptionReport),
    Conflict(&'a Conflict),
    Summary(&'a Summary),
}

fn location(f: &mut fmt::Formatter<'_>, file: &str, line: Option<u64>) -> fmt::Result {
    match line {
        Some(l) => write!(f, "{file}:{l}"),
        None => write!(f, "{file}"),
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("rejected ")?;
        location(f, &self.file, self.line)?;
        if let Some(id) = &self.record_id {
            write!(f, " record {id}")?;
        }
        if let Some(p) = &self.path {
            write!(f, " at {}", if p.is_empty() { "(whole record)" } else { p })?;
        }
        write!(f, ": [{}] {}", self.rule, self.message)
    }
}

impl std::error::Error for Rejection {}

impl fmt::Display for Conflict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("conflict ")?;
        location(f, &self.file, self.line)?;
        write!(
            f,
            " record {} revision {}: [{}] {}",
            self.record_id, self.revision, self.rule, self.message
        )
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} accepted, {} rejected, {} exceptions, {} unchanged, {} conflicts",
            self.accepted, self.rejected, self.exceptions, self.unchanged, self.conflicts
        )
    }
}
