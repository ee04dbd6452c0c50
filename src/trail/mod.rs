//! The evidence trail's log as data (SPEC §5): a leaf is one event's exact bytes, and the
//! per-trust RFC 9162 Merkle tree over them is hashed, stored in tiles and proven here.
//!
//! Owns: the leaf format, how new leaves are sequenced, and the tree's arithmetic. A leaf below `store` (which keeps the
//! tree) and `audit` (which decides the events, signs checkpoints and exports bundles):
//! imports nothing of the crate but `records`.

pub mod leaf;
pub mod sequence;
pub mod tree;

pub use leaf::{Event, EventType};
pub use sequence::Tail;
