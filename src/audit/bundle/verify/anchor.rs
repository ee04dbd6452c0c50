//! Anchoring a bundle to a checkpoint the auditor already holds: the trusted checkpoint's
//! signature and log, and the bundle's RFC 9162 consistency proof (`consistency.json`) from it.
//! Owns: [`check_anchor`]. May not touch: entries or records.

use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use ct_merkle::{ConsistencyProof, RootHash};
use sha2::{Digest, Sha256};

use super::report::Anchor;
use super::{CONSISTENCY, ConsistencyFile, VerifyFailure, fail};
use crate::audit::note::{Checkpoint, Verifier, checkpoint_note};
use crate::audit::tree::Hash;

/// Checks the trusted checkpoint (if given) and the bundle's consistency proof (if any);
/// returns the anchor and `consistency.json`'s hash.
pub(super) fn check_anchor(
    dir: &Path,
    verifier: &Verifier,
    checkpoint: &Checkpoint,
    trusted: Option<&str>,
) -> Result<(Anchor, Option<String>), VerifyFailure> {
    let too_large = std::fs::metadata(dir.join(CONSISTENCY)).is_ok_and(|m| m.len() > 1 << 20);
    if too_large {
        return Err(fail(
            CONSISTENCY,
            "larger than any consistency proof (1 MiB)",
        ));
    }
    let bytes = match std::fs::read(dir.join(CONSISTENCY)) {
        Ok(b) => Some(b),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(fail(CONSISTENCY, format!("cannot read: {}", e.kind()))),
    };
    let hash = bytes.as_ref().map(|b| hex::encode(Sha256::digest(b)));
    let proof: Option<ConsistencyFile> = bytes
        .map(|b| {
            serde_json::from_slice(&b)
                .map_err(|e| fail(CONSISTENCY, format!("not a consistency proof: {e}")))
        })
        .transpose()?;
    // The bundle's own proof is checked whether or not a trusted checkpoint is given.
    if let Some(p) = &proof {
        let root = B64
            .decode(&p.from_root)
            .ok()
            .and_then(|r| Hash::try_from(r.as_slice()).ok())
            .ok_or_else(|| fail(CONSISTENCY, "from_root is not a base64 SHA-256 hash"))?;
        check_consistency(p, &root, checkpoint)?;
    }
    let Some(note) = trusted else {
        return Ok((
            Anchor::NotAnchored {
                proves_from: proof.map(|p| p.from_size),
            },
            hash,
        ));
    };
    let what = "--trusted-checkpoint";
    let note = checkpoint_note(note, verifier, &checkpoint.origin);
    let text = verifier.open(note).map_err(|e| {
        fail(
            what,
            format!("its signature does not verify with the bundle's key: {e}"),
        )
    })?;
    let old = Checkpoint::parse(text).map_err(|e| fail(what, e.to_string()))?;
    if old.origin != checkpoint.origin {
        return Err(fail(
            what,
            format!(
                "it is a checkpoint of {}, the bundle's is of {}",
                old.origin, checkpoint.origin
            ),
        ));
    }
    if old.size > checkpoint.size {
        return Err(fail(
            what,
            format!(
                "its size {} is above the bundle's tree size {}: the bundle is older than it",
                old.size, checkpoint.size
            ),
        ));
    }
    if old.size == checkpoint.size {
        if old.root != checkpoint.root {
            return Err(fail(
                "checkpoint",
                format!(
                    "the bundle's tree at size {} has another root than the trusted checkpoint's: \
                     the log was rewritten",
                    old.size
                ),
            ));
        }
        return Ok((Anchor::Anchored { size: old.size }, hash));
    }
    let Some(p) = proof else {
        return Err(fail(
            what,
            format!(
                "the bundle carries no consistency proof from size {} (export it with \
                 --prove-from that checkpoint)",
                old.size
            ),
        ));
    };
    if p.from_size != old.size || B64.decode(&p.from_root).ok().as_deref() != Some(&old.root[..]) {
        return Err(fail(
            CONSISTENCY,
            format!(
                "it proves from the checkpoint at size {}, not the trusted one at size {}",
                p.from_size, old.size
            ),
        ));
    }
    Ok((Anchor::Anchored { size: old.size }, hash))
}

/// That the proof takes the tree at `from_size` with `root` to the bundle's checkpoint.
fn check_consistency(
    p: &ConsistencyFile,
    root: &Hash,
    checkpoint: &Checkpoint,
) -> Result<(), VerifyFailure> {
    let mut bytes = Vec::with_capacity(p.proof.len() * 32);
    for h in &p.proof {
        let mut hash = [0u8; 32];
        hex::decode_to_slice(h, &mut hash)
            .map_err(|_| fail(CONSISTENCY, "a proof hash is not hex SHA-256"))?;
        bytes.extend_from_slice(&hash);
    }
    if p.from_size == 0 || p.from_size > checkpoint.size {
        return Err(fail(
            CONSISTENCY,
            format!(
                "from_size {} is not between 1 and the tree size {}",
                p.from_size, checkpoint.size
            ),
        ));
    }
    let old = RootHash::<Sha256>::new((*root).into(), p.from_size);
    let new = RootHash::<Sha256>::new(checkpoint.root.into(), checkpoint.size);
    let ok = if p.from_size == checkpoint.size {
        p.proof.is_empty() && root == &checkpoint.root
    } else {
        ConsistencyProof::<Sha256>::try_from_bytes(bytes)
            .ok()
            .is_some_and(|proof| new.verify_consistency(&old, &proof).is_ok())
    };
    if !ok {
        return Err(fail(
            CONSISTENCY,
            format!(
                "the proof does not take the tree at size {} to the checkpoint's at size {}: \
                 the log was rewritten",
                p.from_size, checkpoint.size
            ),
        ));
    }
    Ok(())
}
