//! Evidence trail (SPEC §5), above the store: which events intake and delivery make
//! (`events`), signed checkpoints and consistency (`checkpoint`, `note`), proving that a record
//! text someone holds was received (`prove`), and the auditor's export bundle and its offline
//! verifier (`bundle`). The log itself — leaves and the
//! Merkle tree — is `crate::trail`, below the store; re-exported here as `leaf` and `tree`.
//!
//! Owns: events, checkpoints, bundles. May not touch: delivery.

pub mod bundle;
pub mod checkpoint;
pub mod events;
pub mod note;
pub mod prove;

pub use crate::trail::{Event, EventType, leaf, tree};
pub use bundle::{
    ExportError, ExportRequest, ExportSummary, Progress, Quiet, VerifyFailure, VerifyOptions,
    VerifyReport, export, verify,
};
pub use events::{TrailedDeliveries, TrailedStore};
pub use note::{Checkpoint, NoteError, NoteSigner, Verifier};
