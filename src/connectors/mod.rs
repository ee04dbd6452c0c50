//! Connectors (SPEC §3): one declarative file per target system under `connectors/`,
//! describing its transport (`http_json`, `webhook`, `csv_file`), authentication, endpoints
//! per record kind, limits, and how a response is classified (success / retry / permanent,
//! including a 2xx whose body reports an error) and where the created record's id is found.
//! Every key is documented in `docs/connectors.md`.
//!
//! Owns: reading connector files, and the transports themselves (`http`, `csv`): one
//! request or one row at a time, classified. May not touch: routing, mapping, the store —
//! what to send and what to record is the delivery engine's.

pub mod csv;
pub mod http;
pub mod template;

mod file;
mod load;

use std::time::Duration;

pub use file::{
    AuthScheme, Connector, CsvRules, Endpoint, Limits, Lookup, LostAnswer, OnlineCheck, Reconcile,
    RequestRules, ResponseRules, TargetId, TokenExchange, TransportKind, UpdateBody,
};
pub use load::{ConnectorError, Connectors};

/// What one attempt came to.
#[derive(Debug, Clone, PartialEq)]
pub enum Attempt {
    Delivered {
        target_id: Option<String>,
        status: Option<u16>,
    },
    /// Worth trying again: 5xx, 429, timeouts, connection errors.
    Retry {
        reason: String,
        status: Option<u16>,
        retry_after: Option<Duration>,
        response: Option<String>,
    },
    /// Sent, and no answer came (a timeout, a connection dropped after sending): worth
    /// trying again, but the request may have taken effect — a create may exist.
    Unanswered { reason: String },
    /// Will not succeed as it stands: goes to the dead letters with the response.
    Permanent {
        reason: String,
        status: Option<u16>,
        response: Option<String>,
    },
}
