//! Evidence trail (SPEC §5): the per-trust RFC 9162 Merkle log of events, signed
//! checkpoints, and the auditor's export bundle and offline verifier.
//!
//! Owns: leaves, tree hashing, proofs, checkpoints, bundles. May not touch: delivery.

pub mod events;
pub mod leaf;
pub mod tree;

pub use leaf::{Event, EventType};
pub mod note;

pub use note::{Checkpoint, NoteError, NoteSigner, Verifier};
pub mod bundle;
pub mod checkpoint;

pub use bundle::{
    ExportError, ExportRequest, ExportSummary, Progress, Quiet, VerifyFailure, VerifyReport,
    export, verify,
};
