//! Signing checkpoints of a trust's log and proving one checkpoint's log extends another's
//! (RFC 9162 consistency), from the store: the library calls behind `audit checkpoint`,
//! `audit consistency` and the checkpoint every `ingest`/`sync` signs.
//!
//! Owns: which checkpoints are signed and kept, and the consistency check. May not touch:
//! how the tree is stored (`store`), how notes are encoded (`note`).

use ct_merkle::{ConsistencyProof, RootHash};
use sha2::Sha256;

use super::bundle::{ExportError, checkpoint_at};
use super::tree::{self, Hash};
use super::{Checkpoint, NoteSigner};
use crate::store::{Store, StoreError};

/// The signed note of a trust's log at `size`, kept in the store as issued.
pub async fn sign<S: Store>(
    store: &S,
    signer: &NoteSigner,
    trust: &str,
    size: u64,
) -> Result<String, ExportError> {
    let cp = checkpoint_at(store, signer, trust, size).await?;
    let note = signer.sign(&cp.to_text());
    store.audit_save_checkpoint(trust, size, &note).await?;
    Ok(note)
}

/// One trust's checkpoint, or why it could not be signed.
#[derive(Debug)]
pub struct Signed {
    pub trust: String,
    pub size: u64,
    pub note: Result<String, ExportError>,
}

/// Signs and keeps the checkpoint of every trust's non-empty log (or of `only` that
/// trust's), in trust order. A trust that fails does not stop the others.
pub async fn sign_all<S: Store>(
    store: &S,
    signer: &NoteSigner,
    only: Option<&str>,
) -> Result<Vec<Signed>, StoreError> {
    let mut signed = Vec::new();
    for (trust, size) in store.audit_sizes().await? {
        if only.is_some_and(|want| want != trust) || size == 0 {
            continue;
        }
        let note = sign(store, signer, &trust, size).await;
        signed.push(Signed { trust, size, note });
    }
    Ok(signed)
}

/// What a consistency check between two checkpoints found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Consistency {
    /// The new log extends the old one; the proof's hashes, in RFC 9162 order.
    Consistent { proof: Vec<Hash> },
    /// The checkpoints name different logs.
    DifferentLogs,
    /// The old size is 0 or above the new size.
    SizesOutOfOrder,
    /// The proof from the store does not take the old root to the new one.
    NotExtended,
}

#[derive(Debug, thiserror::Error)]
pub enum ConsistencyError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the store lacks nodes of {0}'s log")]
    MissingNodes(String),
}

/// Proves from the store that `new`'s log extends `old`'s. The checkpoints' signatures are
/// the caller's to check first (with the deployment's verifier key).
pub async fn consistency<S: Store>(
    store: &S,
    old: &Checkpoint,
    new: &Checkpoint,
) -> Result<Consistency, ConsistencyError> {
    if old.origin != new.origin {
        return Ok(Consistency::DifferentLogs);
    }
    if old.size > new.size || old.size == 0 {
        return Ok(Consistency::SizesOutOfOrder);
    }
    let trust = old.origin.rsplit('/').next().unwrap_or_default();
    let ranges = tree::consistency_ranges(old.size, new.size);
    let nodes = store.audit_nodes(trust, &tree::nodes_for(&ranges)).await?;
    let proof = tree::assemble(&ranges, &nodes)
        .ok_or_else(|| ConsistencyError::MissingNodes(trust.to_owned()))?;
    let old_root = RootHash::<Sha256>::new(old.root.into(), old.size);
    let new_root = RootHash::<Sha256>::new(new.root.into(), new.size);
    let verified = ConsistencyProof::<Sha256>::try_from_bytes(proof.concat())
        .ok()
        .is_some_and(|p| new_root.verify_consistency(&old_root, &p).is_ok());
    Ok(if verified {
        Consistency::Consistent { proof }
    } else {
        Consistency::NotExtended
    })
}
