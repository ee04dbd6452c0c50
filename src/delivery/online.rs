//! `config check --online`: each destination reached as a sync would reach it — its token
//! fetched, one read made (the connector's `[check]`), per school where it has schools —
//! and a line said for each. Nothing is sent: a webhook takes deliveries only, so it is
//! not called; a CSV destination's folder is made and written to.
//!
//! Owns: the online check. May not touch: deliveries or the store.

use std::sync::Arc;

use crate::connectors::http::loggable;
use crate::connectors::{Attempt, TransportKind};

use super::Engine;
use super::attempt::expand_path;
use super::destinations::{Dest, Transport, http_sink};

/// What reaching one destination (for one school) came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reached {
    pub trust: String,
    pub destination: String,
    pub school: Option<String>,
    pub outcome: Reach,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reach {
    Ok(String),
    Failed(String),
    /// Not reached, and why (a webhook; a connector with no `[check]`).
    Skipped(String),
}

impl Engine {
    /// Reaches every destination, paused ones too (the check comes before un-pausing).
    pub async fn check_online(&self, out_dir: &std::path::Path) -> Vec<Reached> {
        let mut all = Vec::new();
        for d in &self.dests {
            all.extend(reach(d, out_dir).await);
        }
        all
    }
}

async fn reach(d: &Arc<Dest>, out_dir: &std::path::Path) -> Vec<Reached> {
    let line = |school: Option<&String>, outcome: Reach| Reached {
        trust: d.trust.clone(),
        destination: d.name.clone(),
        school: school.cloned(),
        outcome,
    };
    match d.connector.transport {
        TransportKind::CsvFile => {
            let folder = out_dir.join(&d.trust);
            let probe = folder.join(".doorstep-check");
            let outcome = std::fs::create_dir_all(&folder)
                .and_then(|()| std::fs::write(&probe, b"check\n"))
                .and_then(|()| std::fs::remove_file(&probe));
            return vec![line(
                None,
                match outcome {
                    Ok(()) => Reach::Ok(format!("writes under {}", folder.display())),
                    Err(e) => Reach::Failed(format!(
                        "cannot write under {}: {}",
                        folder.display(),
                        e.kind()
                    )),
                },
            )];
        }
        TransportKind::Webhook => {
            return vec![line(
                None,
                Reach::Skipped(
                    "a webhook takes deliveries only: nothing is sent by a check".into(),
                ),
            )];
        }
        TransportKind::HttpJson => {}
    }
    let Some(check) = d.connector.check.as_ref() else {
        return vec![line(
            None,
            Reach::Skipped(format!("connector `{}` has no [check]", d.connector.name)),
        )];
    };
    // A paused destination's credentials were not read; read them now.
    let transport = match (&d.transport, d.paused) {
        (Transport::Http(s), false) => s.clone(),
        _ => match http_sink(&d.folder, &d.config, &d.connector, d.url.as_deref()) {
            Ok(s) => Arc::new(s),
            Err(reason) => return vec![line(None, Reach::Failed(reason))],
        },
    };
    let schools: Vec<Option<&String>> = if d.config.schools.is_empty() {
        vec![None]
    } else {
        d.config.schools.keys().map(Some).collect()
    };
    let mut out = Vec::new();
    for school in schools {
        let vars = d
            .config
            .vars_for(school.map(String::as_str).unwrap_or_default());
        let base = d.url.as_deref().unwrap_or_default().trim_end_matches('/');
        let outcome = match expand_path(&format!("{base}{}", check.path), &vars, None) {
            Err(reason) => Reach::Failed(reason),
            Ok(url) => match transport.get(&url, &vars).await {
                Ok(_) => Reach::Ok(format!("authenticated; read {} answered", check.path)),
                Err(
                    Attempt::Retry { reason, .. }
                    | Attempt::Permanent { reason, .. }
                    | Attempt::Unanswered { reason },
                ) => Reach::Failed(loggable(&reason).to_owned()),
                Err(Attempt::Delivered { .. }) => Reach::Ok("answered".into()),
            },
        };
        out.push(line(school, outcome));
    }
    out
}
