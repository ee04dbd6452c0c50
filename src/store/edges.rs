//! The right edge of each trust's evidence-trail log as this process last appended it,
//! kept in memory so that the next append need not read it back — shared by both back ends.
//! It is trusted only while the log's head row still bears this process's mark.
//!
//! Owns: the in-memory edges. May not touch: the database.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use chrono::Utc;

use crate::trail::tree;

/// The right edge of each trust's log as this store last appended it, so that the next append
/// need not read it back. It is used only while the log still holds this store's mark (its
/// size and this store's random writer id, set by every append): after a rollback or another
/// writer's append the mark differs and the edge is read from the database again.
#[derive(Debug)]
pub(crate) struct Edges {
    pub(crate) writer: i64,
    last: Mutex<HashMap<String, (tree::Edge, Option<String>)>>,
}

impl Edges {
    pub(crate) fn new() -> Self {
        let mut id = [0u8; 8];
        // Without randomness the clock is unique enough: a mismatch only costs a read.
        if getrandom::fill(&mut id).is_err() {
            id = Utc::now()
                .timestamp_nanos_opt()
                .unwrap_or_default()
                .to_le_bytes();
        }
        Self {
            writer: i64::from_le_bytes(id),
            last: Mutex::default(),
        }
    }

    /// The edge and last event time this store left.
    pub(crate) fn take(&self, trust: &str) -> Option<(tree::Edge, Option<String>)> {
        self.last
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(trust)
    }

    pub(crate) fn keep(&self, trust: &str, edge: tree::Edge, last_at: Option<String>) {
        self.last
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(trust.to_owned(), (edge, last_at));
    }
}
