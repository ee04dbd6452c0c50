//! `audit prove --record FILE`: proves that a record text someone holds (from the MIS, a
//! printout's JSON) is exactly a revision the log received — its RFC 8785 canonical text's
//! SHA-256 is the content hash a `received` leaf carries — with that leaf, its inclusion proof
//! and a checkpoint signed now. It needs the log only, never the stored content, so it still
//! holds after the content is gone.
//! Owns: [`prove`], [`Proven`], [`ProveError`]. May not touch: the content store (`records`
//! tables): the proof must not depend on it.

use serde_json::Value;

use super::NoteSigner;
use super::bundle::{ExportError, checkpoint_at};
use super::tree::{self, Hash};
use crate::records::{ContentHash, canonical_json};
use crate::store::{DeliveryStore, StoreError};

/// A received revision, proven.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proven {
    pub trust: String,
    pub content_hash: String,
    /// The leaf's index and exact text.
    pub index: u64,
    pub leaf: String,
    /// The RFC 9162 inclusion proof of the leaf in the tree of `size`.
    pub proof: Vec<Hash>,
    pub size: u64,
    /// The signed checkpoint of that tree.
    pub checkpoint: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ProveError {
    #[error("the record is not JSON: {0}")]
    NotJson(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Export(#[from] ExportError),
    #[error("the store's proof of leaf {0} does not verify: the store is damaged")]
    Damaged(u64),
}

/// Leaves read at once while looking for the record's.
const PAGE: usize = 4_096;

/// The proof that `text` is a revision the log received, or `None` when no `received` leaf
/// carries its content hash. Searches the log of the trust the record names (every log if it
/// names none), only the leaves of its school when it names one.
pub async fn prove<S: DeliveryStore>(
    store: &S,
    signer: &NoteSigner,
    text: &str,
) -> Result<Option<Proven>, ProveError> {
    let value: Value =
        serde_json::from_str(text).map_err(|e| ProveError::NotJson(e.to_string()))?;
    let hash = ContentHash::of_canonical(&canonical_json(&value)).to_hex();
    let named_trust = value.get("trust").and_then(Value::as_str);
    let school = value.pointer("/school/urn").and_then(Value::as_str);
    let wanted = format!(r#""content_hash":"{hash}""#);
    for (trust, size) in store.audit_sizes().await? {
        if named_trust.is_some_and(|t| t != trust) {
            continue;
        }
        let mut start = 0;
        loop {
            let page = store
                .audit_leaves(&trust, school, start, size, PAGE)
                .await?;
            let Some(&(last, _)) = page.last() else {
                break;
            };
            start = last + 1;
            let found = page.into_iter().find(|(_, leaf)| {
                leaf.contains(&wanted)
                    && serde_json::from_str::<Value>(leaf).is_ok_and(|l| {
                        l["event"] == "received" && l["content_hash"] == hash.as_str()
                    })
            });
            if let Some((index, leaf)) = found {
                return proven(store, signer, &trust, size, index, leaf, hash)
                    .await
                    .map(Some);
            }
        }
    }
    Ok(None)
}

/// The leaf's inclusion proof and a checkpoint signed at `size`, checked before it is given.
async fn proven<S: DeliveryStore>(
    store: &S,
    signer: &NoteSigner,
    trust: &str,
    size: u64,
    index: u64,
    leaf: String,
    content_hash: String,
) -> Result<Proven, ProveError> {
    let ranges = tree::inclusion_ranges(index, size);
    let nodes = store.audit_nodes(trust, &tree::nodes_for(&ranges)).await?;
    let proof = tree::assemble(&ranges, &nodes).ok_or(ProveError::Damaged(index))?;
    let cp = checkpoint_at(store, signer, trust, size).await?;
    tree::ProofVerifier::new(cp.root, size)
        .verify(index, leaf.as_bytes(), proof.as_slice())
        .map_err(|_| ProveError::Damaged(index))?;
    let checkpoint = signer.sign(&cp.to_text());
    if !store.is_read_only() {
        store
            .audit_save_checkpoint(trust, size, &checkpoint)
            .await?;
    }
    Ok(Proven {
        trust: trust.to_owned(),
        content_hash,
        index,
        leaf,
        proof,
        size,
        checkpoint,
    })
}
