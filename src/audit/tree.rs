//! RFC 9162 §2.1 Merkle tree hashing and proofs over a tree whose complete subtrees are stored.
//!
//! Leaf hash `SHA-256(0x00 || leaf)`, node hash `SHA-256(0x01 || left || right)`. A stored tree
//! keeps the hash of every *complete* subtree, named by (level, index): level 0 are the leaf
//! hashes, and node (l, i) covers leaves `[i·2^l, (i+1)·2^l)`. Any range the RFC's proofs need
//! is either such a node or a right-edge range, which is a fold of at most log₂ n complete
//! nodes — so a proof costs O(log n) node reads, never a rehash of the log.
//!
//! Proofs are generated in two steps so a database can serve them in one query: first the
//! nodes a proof needs ([`inclusion_nodes`], [`consistency_nodes`]), then the proof from their
//! hashes ([`assemble`]). Verification of bundles uses the `ct-merkle` crate, an independent
//! implementation of the same RFC, and both are tested against transparency-dev's vectors.

use std::collections::HashMap;

use sha2::{Digest, Sha256};

pub type Hash = [u8; 32];

/// A complete subtree: `level` 0 is a leaf; covers `[index << level, (index + 1) << level)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId {
    pub level: u32,
    pub index: u64,
}

pub fn leaf_hash(leaf: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([0u8]);
    h.update(leaf);
    h.finalize().into()
}

pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([1u8]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// The largest power of two strictly below `n` (n ≥ 2).
fn split(n: u64) -> u64 {
    1 << (63 - (n - 1).leading_zeros())
}

/// The complete subtrees whose hashes make MTH(D[lo:hi]), left to right. `lo` must be aligned
/// as the RFC's recursion leaves it (a multiple of the largest power of two ≤ hi − lo).
pub fn range_nodes(lo: u64, hi: u64) -> Vec<NodeId> {
    let mut out = Vec::new();
    let mut start = lo;
    while start < hi {
        let size = hi - start;
        let level = 63 - size.leading_zeros();
        out.push(NodeId {
            level,
            index: start >> level,
        });
        start += 1 << level;
    }
    out
}

/// MTH of a range from the hashes of its [`range_nodes`], folded from the right as the
/// left-balanced tree is built.
pub fn fold_range(hashes: &[Hash]) -> Option<Hash> {
    let (last, rest) = hashes.split_last()?;
    Some(rest.iter().rev().fold(*last, |acc, h| node_hash(h, &acc)))
}

/// The ranges whose MTH, in order, form the inclusion proof of leaf `m` in a tree of `n`
/// (RFC 9162 §2.1.3.1, PATH(m, D[0:n])).
pub fn inclusion_ranges(m: u64, n: u64) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    path(m, 0, n, &mut out);
    out
}

fn path(m: u64, lo: u64, hi: u64, out: &mut Vec<(u64, u64)>) {
    if hi - lo <= 1 {
        return;
    }
    let k = split(hi - lo);
    if m - lo < k {
        path(m, lo, lo + k, out);
        out.push((lo + k, hi));
    } else {
        path(m, lo + k, hi, out);
        out.push((lo, lo + k));
    }
}

/// The ranges whose MTH, in order, form the consistency proof from size `m` to size `n`
/// (RFC 9162 §2.1.4.1, PROOF(m, D[0:n])); empty when m == n.
pub fn consistency_ranges(m: u64, n: u64) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    if 0 < m && m < n {
        subproof(m, 0, n, true, &mut out);
    }
    out
}

fn subproof(m: u64, lo: u64, hi: u64, complete: bool, out: &mut Vec<(u64, u64)>) {
    let n = hi - lo;
    if m == n {
        if !complete {
            out.push((lo, hi));
        }
        return;
    }
    let k = split(n);
    if m <= k {
        subproof(m, lo, lo + k, complete, out);
        out.push((lo + k, hi));
    } else {
        subproof(m - k, lo + k, hi, false, out);
        out.push((lo, lo + k));
    }
}

/// Every node a list of ranges needs, without repeats.
pub fn nodes_for(ranges: &[(u64, u64)]) -> Vec<NodeId> {
    let mut nodes: Vec<NodeId> = ranges
        .iter()
        .flat_map(|&(lo, hi)| range_nodes(lo, hi))
        .collect();
    nodes.sort();
    nodes.dedup();
    nodes
}

/// The proof (a list of hashes) for `ranges`, from the hashes of their nodes. `None` if a
/// node is missing.
pub fn assemble(ranges: &[(u64, u64)], nodes: &HashMap<NodeId, Hash>) -> Option<Vec<Hash>> {
    ranges
        .iter()
        .map(|&(lo, hi)| {
            let hashes: Option<Vec<Hash>> = range_nodes(lo, hi)
                .iter()
                .map(|id| nodes.get(id).copied())
                .collect();
            fold_range(&hashes?)
        })
        .collect()
}

/// The root of a tree of `n` leaves needs these nodes (the binary decomposition of n).
pub fn root_nodes(n: u64) -> Vec<NodeId> {
    range_nodes(0, n)
}

/// Appends leaf hashes to a tree of `size` leaves whose right-edge nodes (`frontier`, as
/// [`root_nodes`] names them) are known; returns every complete node the new leaves finish,
/// level 0 included, and the new frontier.
pub fn append(
    size: u64,
    frontier: &HashMap<NodeId, Hash>,
    leaves: &[Hash],
) -> (Vec<(NodeId, Hash)>, HashMap<NodeId, Hash>) {
    let mut edge: HashMap<NodeId, Hash> = frontier.clone();
    let mut made = Vec::with_capacity(leaves.len() * 2);
    for (n, leaf) in (size..).zip(leaves) {
        let mut id = NodeId { level: 0, index: n };
        let mut hash = *leaf;
        made.push((id, hash));
        // Each completed pair joins with its left sibling on the edge, up the levels.
        while id.index % 2 == 1 {
            let left_id = NodeId {
                level: id.level,
                index: id.index - 1,
            };
            let Some(left) = edge.remove(&left_id) else {
                break;
            };
            hash = node_hash(&left, &hash);
            id = NodeId {
                level: id.level + 1,
                index: id.index / 2,
            };
            made.push((id, hash));
        }
        edge.insert(id, hash);
    }
    (made, edge)
}

/// Why an inclusion proof does not verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ProofError {
    #[error("index {0} is not below the tree size {1}")]
    IndexOutOfRange(u64, u64),
    #[error("the proof has {got} hashes; a leaf of this tree needs {want}")]
    WrongLength { got: usize, want: usize },
    #[error("the proof does not lead to the signed root")]
    Mismatch,
}

/// Verifies inclusion proofs against one signed root (RFC 9162 §2.1.3.2, in the order
/// [`inclusion_ranges`] gives), remembering every node a verified proof proves: a later proof
/// stops as soon as it reaches a proven node, so a bundle of neighbouring leaves costs about
/// two hashes a leaf instead of log₂ n.
pub struct ProvenNodes {
    size: u64,
    known: HashMap<(u64, u64), Hash>,
}

impl ProvenNodes {
    pub fn new(root: Hash, size: u64) -> Self {
        let mut known = HashMap::new();
        known.insert((0, size), root);
        Self { size, known }
    }

    pub fn verify(&mut self, index: u64, leaf: &[u8], proof: &[Hash]) -> Result<(), ProofError> {
        if index >= self.size {
            return Err(ProofError::IndexOutOfRange(index, self.size));
        }
        let ranges = inclusion_ranges(index, self.size);
        if ranges.len() != proof.len() {
            return Err(ProofError::WrongLength {
                got: proof.len(),
                want: ranges.len(),
            });
        }
        let (mut lo, mut hi) = (index, index + 1);
        let mut hash = leaf_hash(leaf);
        let mut path = Vec::with_capacity(ranges.len() + 1);
        for (&(slo, shi), sibling) in ranges.iter().zip(proof) {
            if let Some(known) = self.known.get(&(lo, hi)) {
                return self.settle(*known == hash, path);
            }
            path.push(((lo, hi), hash));
            hash = if slo < lo {
                node_hash(sibling, &hash)
            } else {
                node_hash(&hash, sibling)
            };
            lo = lo.min(slo);
            hi = hi.max(shi);
        }
        let matches = self.known.get(&(lo, hi)) == Some(&hash);
        self.settle(matches, path)
    }

    fn settle(&mut self, matches: bool, path: Vec<((u64, u64), Hash)>) -> Result<(), ProofError> {
        if !matches {
            return Err(ProofError::Mismatch);
        }
        self.known.extend(path);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An in-memory tree built by `append`: every complete node kept.
    fn build(leaves: &[&[u8]]) -> (HashMap<NodeId, Hash>, u64) {
        let hashes: Vec<Hash> = leaves.iter().map(|l| leaf_hash(l)).collect();
        let mut all = HashMap::new();
        let mut frontier = HashMap::new();
        let mut size = 0;
        // Append in uneven steps to exercise the frontier hand-over.
        for chunk in hashes.chunks(3) {
            let (made, edge) = append(size, &frontier, chunk);
            all.extend(made);
            frontier = edge;
            size += chunk.len() as u64;
        }
        assert_eq!(frontier.len(), root_nodes(size).len());
        (all, size)
    }

    fn root(all: &HashMap<NodeId, Hash>, n: u64) -> Hash {
        let hashes: Vec<Hash> = root_nodes(n).iter().map(|id| all[id]).collect();
        fold_range(&hashes).unwrap()
    }

    #[test]
    fn range_decomposition() {
        assert_eq!(
            range_nodes(0, 7),
            vec![
                NodeId { level: 2, index: 0 },
                NodeId { level: 1, index: 2 },
                NodeId { level: 0, index: 6 },
            ]
        );
        assert_eq!(range_nodes(4, 8), vec![NodeId { level: 2, index: 1 }]);
        assert_eq!(split(5), 4);
        assert_eq!(split(4), 2);
        assert_eq!(split(2), 1);
    }

    #[test]
    fn matches_ct_merkle_for_every_size_and_index() {
        let data: Vec<Vec<u8>> = (0..70u32).map(|i| i.to_be_bytes().to_vec()).collect();
        let refs: Vec<&[u8]> = data.iter().map(Vec::as_slice).collect();
        let (all, _) = build(&refs);
        let mut reference = ct_merkle::mem_backed_tree::MemoryBackedTree::<Sha256, Vec<u8>>::new();
        for (n, leaf) in data.iter().enumerate() {
            reference.push(leaf.clone());
            let n = n as u64 + 1;
            assert_eq!(
                root(&all, n),
                <[u8; 32]>::from(*reference.root().as_bytes()),
                "root {n}"
            );
            for m in 0..n {
                let proof = assemble(&inclusion_ranges(m, n), &all).unwrap();
                let want = reference.prove_inclusion(m as usize);
                assert_eq!(proof.concat(), want.as_bytes(), "inclusion {m} of {n}");
            }
            for old in 1..=n {
                let proof = assemble(&consistency_ranges(old, n), &all).unwrap();
                let want = reference.prove_consistency((n - old) as usize);
                assert_eq!(proof.concat(), want.as_bytes(), "consistency {old} to {n}");
            }
        }
    }
}
