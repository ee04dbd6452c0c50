//! RFC 9162 §2.1 Merkle tree hashing and proofs over a tree stored in tiles.
//!
//! Leaf hash `SHA-256(0x00 || leaf)`, node hash `SHA-256(0x01 || left || right)`. A complete
//! subtree is named by (level, index): level 0 are the leaf hashes, and node (l, i) covers
//! leaves `[i·2^l, (i+1)·2^l)`. Any range the RFC's proofs need is either such a node or a
//! right-edge range, which is a fold of at most log₂ n complete nodes. The store keeps the
//! leaves and the nodes of every 8th level (C2SP `tlog-tiles`' cut, see [`TILE_HEIGHT`]); any
//! other complete node is folded from one tile of at most 256 stored hashes — so a proof costs
//! O(log n) reads, never a rehash of the log, and an append writes one row per 256 leaves.
//!
//! Proofs are generated in two steps so a database can serve them in a few queries: first the
//! nodes a proof needs ([`inclusion_ranges`] / [`consistency_ranges`] → [`nodes_for`] →
//! [`tiles_for`]), then the proof from their hashes ([`nodes_from_tiles`], [`assemble`]). The
//! tests check every proof against the `ct-merkle` crate, an independent implementation of
//! the same RFC, and tests/audit.rs against transparency-dev's vectors.

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

/// Interior nodes are stored only every `TILE_HEIGHT` levels (8, 16, 24, …), as C2SP
/// `tlog-tiles` cut a tree: a *tile* is `TILE_WIDTH` consecutive nodes of one stored level
/// (level 0 = the leaves, kept in bundles of `TILE_WIDTH`), and every node of the levels up to
/// the next stored one is folded from a single tile. So an append writes about one row per
/// 256 leaves, and a node still costs one read (of at most 256 hashes).
pub const TILE_HEIGHT: u32 = 8;
pub const TILE_WIDTH: u64 = 1 << TILE_HEIGHT;

/// `TILE_WIDTH` nodes of stored level `level` from index `index · TILE_WIDTH` (fewer at the
/// tree's right edge).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TileId {
    pub level: u32,
    pub index: u64,
}

impl NodeId {
    /// The tile this node is folded from, the level above the tile's base it sits at, and its
    /// index among that level's nodes inside the tile.
    pub fn in_tile(self) -> (TileId, u32, u64) {
        let up = self.level % TILE_HEIGHT;
        let tile = TileId {
            level: self.level - up,
            index: (self.index << up) / TILE_WIDTH,
        };
        let first = tile.index << (TILE_HEIGHT - up);
        (tile, up, self.index - first)
    }
}

/// The complete nodes above a run of same-level hashes starting at an aligned index, level by
/// level: `[0]` is `base`, `[s]` the nodes `2^s` base nodes wide, up to `height` levels.
pub fn levels_above(base: Vec<Hash>, height: u32) -> Vec<Vec<Hash>> {
    let mut levels = vec![base];
    for _ in 0..height {
        let Some(below) = levels.last().filter(|l| l.len() >= 2) else {
            break;
        };
        let next = below
            .chunks_exact(2)
            .map(|pair| node_hash(&pair[0], &pair[1]))
            .collect();
        levels.push(next);
    }
    levels
}

/// The tiles that hold `ids`, without repeats.
pub fn tiles_for(ids: &[NodeId]) -> Vec<TileId> {
    let mut tiles: Vec<TileId> = ids.iter().map(|id| id.in_tile().0).collect();
    tiles.sort();
    tiles.dedup();
    tiles
}

/// The hashes of `ids` folded from their tiles' nodes; an id whose tile is missing or too
/// short (a node not complete yet, or a store that lost rows) is left out.
pub fn nodes_from_tiles(
    ids: &[NodeId],
    tiles: &HashMap<TileId, Vec<Hash>>,
) -> HashMap<NodeId, Hash> {
    let mut by_tile: HashMap<TileId, Vec<(NodeId, u32, u64)>> = HashMap::new();
    for id in ids {
        let (tile, up, at) = id.in_tile();
        by_tile.entry(tile).or_default().push((*id, up, at));
    }
    let mut out = HashMap::with_capacity(ids.len());
    for (tile, wanted) in by_tile {
        let Some(base) = tiles.get(&tile) else {
            continue;
        };
        let top = wanted.iter().map(|w| w.1).max().unwrap_or(0);
        let levels = levels_above(base.clone(), top);
        for (id, up, at) in wanted {
            let hash = usize::try_from(at)
                .ok()
                .and_then(|at| levels.get(up as usize)?.get(at));
            if let Some(hash) = hash {
                out.insert(id, *hash);
            }
        }
    }
    out
}

/// The right edge of a stored tree: at each stored level, the nodes of its unfinished tile.
/// That is all an append needs to make the stored nodes its leaves complete.
#[derive(Debug, Clone)]
pub struct Edge {
    size: u64,
    tiles: Vec<Vec<Hash>>,
}

impl Edge {
    /// The unfinished tiles of a tree of `size` leaves and how many nodes each holds.
    pub fn tiles(size: u64) -> Vec<(TileId, usize)> {
        let mut out = Vec::new();
        let (mut count, mut level) = (size, 0);
        while count > 0 {
            out.push((
                TileId {
                    level,
                    index: count / TILE_WIDTH,
                },
                (count % TILE_WIDTH) as usize,
            ));
            count /= TILE_WIDTH;
            level += TILE_HEIGHT;
        }
        out
    }

    /// The edge of a tree of `size` leaves from its unfinished tiles as read; `None` names the
    /// first tile that is short.
    pub fn new(size: u64, mut read: HashMap<TileId, Vec<Hash>>) -> Result<Self, TileId> {
        let tiles = Self::tiles(size)
            .into_iter()
            .map(|(id, count)| {
                let mut nodes = read.remove(&id).unwrap_or_default();
                if nodes.len() < count {
                    return Err(id);
                }
                nodes.truncate(count);
                Ok(nodes)
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { size, tiles })
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// Appends one leaf hash; pushes onto `made` each stored-level node (8, 16, …) it completes.
    pub fn push(&mut self, leaf: Hash, made: &mut Vec<(NodeId, Hash)>) {
        self.size += 1;
        let mut hash = leaf;
        let mut k = 0;
        loop {
            if self.tiles.len() == k {
                self.tiles.push(Vec::with_capacity(TILE_WIDTH as usize));
            }
            self.tiles[k].push(hash);
            if self.tiles[k].len() < TILE_WIDTH as usize {
                return;
            }
            let full = std::mem::take(&mut self.tiles[k]);
            hash = levels_above(full, TILE_HEIGHT)[TILE_HEIGHT as usize][0];
            k += 1;
            let level = k as u32 * TILE_HEIGHT;
            made.push((
                NodeId {
                    level,
                    index: (self.size >> level) - 1,
                },
                hash,
            ));
        }
    }
}

/// A tree kept in memory as the database keeps it (leaf hashes and the nodes of stored
/// levels, appended through an [`Edge`] read back from it each time): the reference the
/// tests hold the store's layout to.
#[derive(Debug, Default)]
pub struct MemoryTree {
    nodes: HashMap<NodeId, Hash>,
    size: u64,
}

impl MemoryTree {
    fn tile(&self, id: TileId) -> Vec<Hash> {
        let first = id.index * TILE_WIDTH;
        (first..first + TILE_WIDTH)
            .map_while(|index| {
                self.nodes
                    .get(&NodeId {
                        level: id.level,
                        index,
                    })
                    .copied()
            })
            .collect()
    }

    /// Appends leaf hashes (`Err` names a tile of the edge that could not be read back).
    pub fn append(&mut self, leaves: &[Hash]) -> Result<(), TileId> {
        let read = Edge::tiles(self.size)
            .into_iter()
            .map(|(id, _)| (id, self.tile(id)))
            .collect();
        let mut edge = Edge::new(self.size, read)?;
        let mut made = Vec::new();
        for (i, leaf) in leaves.iter().enumerate() {
            let index = self.size + i as u64;
            self.nodes.insert(NodeId { level: 0, index }, *leaf);
            edge.push(*leaf, &mut made);
        }
        self.nodes.extend(made);
        self.size = edge.size();
        Ok(())
    }

    pub fn nodes(&self, ids: &[NodeId]) -> HashMap<NodeId, Hash> {
        let tiles = tiles_for(ids)
            .into_iter()
            .map(|t| (t, self.tile(t)))
            .collect();
        nodes_from_tiles(ids, &tiles)
    }

    /// The root of the first `n` leaves (`None` past the tree's size).
    pub fn root(&self, n: u64) -> Option<Hash> {
        let ids = root_nodes(n);
        let nodes = self.nodes(&ids);
        let hashes: Option<Vec<Hash>> = ids.iter().map(|id| nodes.get(id).copied()).collect();
        fold_range(&hashes?)
    }

    pub fn size(&self) -> u64 {
        self.size
    }
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
    #[error("proof hash {0} is not a SHA-256 hash")]
    NotAHash(usize),
}

/// The hashes of one inclusion proof, bottom first, as a bundle holds them (hex text, say):
/// the verifier decodes only those it must hash and compares the rest.
pub trait ProofHashes {
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The `k`-th hash, `None` if it is not one.
    fn hash(&self, k: usize) -> Option<Hash>;
    /// Whether the `k`-th hash is `known`.
    fn is(&self, k: usize, known: &Hash) -> bool {
        self.hash(k).as_ref() == Some(known)
    }
}

impl ProofHashes for [Hash] {
    fn len(&self) -> usize {
        <[Hash]>::len(self)
    }
    fn hash(&self, k: usize) -> Option<Hash> {
        self.get(k).copied()
    }
}

/// One step of a verified proof: the path's node (range and hash) and its sibling's hash.
#[derive(Debug, Clone, Copy)]
struct Step {
    path: (u64, u64),
    path_hash: Hash,
    sibling_hash: Hash,
}

/// Verifies inclusion proofs against one signed root (RFC 9162 §2.1.3.2, in the order
/// [`inclusion_ranges`] gives), every hash of every proof. It keeps the last proof it
/// verified: where the next one runs through the same nodes (those above the two leaves'
/// common ancestor) its hashes must equal the kept ones, which the root has proven, so only
/// the steps below the common ancestor are hashed — about two hashes a leaf for a bundle of
/// neighbouring leaves instead of log₂ n.
pub struct ProofVerifier {
    root: Hash,
    size: u64,
    last: Vec<Step>,
}

impl ProofVerifier {
    pub fn new(root: Hash, size: u64) -> Self {
        Self {
            root,
            size,
            last: Vec::new(),
        }
    }

    pub fn verify<P: ProofHashes + ?Sized>(
        &mut self,
        index: u64,
        leaf: &[u8],
        proof: &P,
    ) -> Result<(), ProofError> {
        if index >= self.size {
            return Err(ProofError::IndexOutOfRange(index, self.size));
        }
        let siblings = inclusion_ranges(index, self.size);
        if siblings.len() != proof.len() {
            return Err(ProofError::WrongLength {
                got: proof.len(),
                want: siblings.len(),
            });
        }
        // The path's ranges, leaf first.
        let mut paths = Vec::with_capacity(siblings.len());
        let mut at = (index, index + 1);
        for &(lo, hi) in &siblings {
            paths.push(at);
            at = (at.0.min(lo), at.1.max(hi));
        }
        // Steps shared with the last proof, aligned from the root down: from `shared` up.
        let (m, l) = (paths.len(), self.last.len());
        let mut shared = m;
        while shared > 0
            && l + shared > m
            && self.last[l + shared - m - 1].path == paths[shared - 1]
        {
            shared -= 1;
        }
        let mut steps = Vec::with_capacity(m);
        let mut hash = leaf_hash(leaf);
        for k in 0..shared {
            let sibling = proof.hash(k).ok_or(ProofError::NotAHash(k))?;
            steps.push(Step {
                path: paths[k],
                path_hash: hash,
                sibling_hash: sibling,
            });
            hash = if siblings[k].0 < paths[k].0 {
                node_hash(&sibling, &hash)
            } else {
                node_hash(&hash, &sibling)
            };
        }
        let offset = l + shared - m;
        let want = if shared == m {
            self.root
        } else {
            self.last[offset].path_hash
        };
        if hash != want {
            return Err(ProofError::Mismatch);
        }
        for k in shared..m {
            let kept = &self.last[l + k - m];
            if !proof.is(k, &kept.sibling_hash) {
                return Err(ProofError::Mismatch);
            }
        }
        steps.extend_from_slice(&self.last[offset.min(l)..]);
        self.last = steps;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// MTH(D[lo:hi]) straight from RFC 9162 §2.1.1's recursion.
    fn mth(leaves: &[Hash]) -> Hash {
        if leaves.len() == 1 {
            return leaves[0];
        }
        let k = split(leaves.len() as u64) as usize;
        node_hash(&mth(&leaves[..k]), &mth(&leaves[k..]))
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
        // 600 leaves: past two full tiles, so stored level-8 nodes take part.
        let data: Vec<Vec<u8>> = (0..600u32).map(|i| i.to_be_bytes().to_vec()).collect();
        let hashes: Vec<Hash> = data.iter().map(|l| leaf_hash(l)).collect();
        let mut stored = MemoryTree::default();
        // Append in uneven steps to exercise the edge's hand-over between appends.
        for chunk in hashes.chunks(37) {
            stored.append(chunk).unwrap();
        }
        let mut reference = ct_merkle::mem_backed_tree::MemoryBackedTree::<Sha256, Vec<u8>>::new();
        for (n, leaf) in data.iter().enumerate() {
            reference.push(leaf.clone());
            let n = n as u64 + 1;
            assert_eq!(
                stored.root(n).unwrap(),
                <[u8; 32]>::from(*reference.root().as_bytes()),
                "root {n}"
            );
            // Every index and old size at some sizes (all of them is 10^8 proofs).
            if n <= 40 || [255, 256, 257, 513, 600].contains(&n) {
                for m in 0..n {
                    let ranges = inclusion_ranges(m, n);
                    let proof = assemble(&ranges, &stored.nodes(&nodes_for(&ranges))).unwrap();
                    let want = reference.prove_inclusion(m as usize);
                    assert_eq!(proof.concat(), want.as_bytes(), "inclusion {m} of {n}");
                }
                for old in 1..=n {
                    let ranges = consistency_ranges(old, n);
                    let proof = assemble(&ranges, &stored.nodes(&nodes_for(&ranges))).unwrap();
                    let want = reference.prove_consistency((n - old) as usize);
                    assert_eq!(proof.concat(), want.as_bytes(), "consistency {old} to {n}");
                }
            }
        }
    }

    #[test]
    fn edge_makes_every_stored_level() {
        // Past 2^16 leaves so that a level-16 node is made, appended in batches as intake does.
        let n = (1 << 16) + 300;
        let hashes: Vec<Hash> = (0..n as u32).map(|i| leaf_hash(&i.to_le_bytes())).collect();
        let mut stored = MemoryTree::default();
        for chunk in hashes.chunks(1000) {
            stored.append(chunk).unwrap();
        }
        assert!(stored.nodes.contains_key(&NodeId {
            level: 16,
            index: 0
        }));
        assert_eq!(
            stored.nodes.keys().filter(|id| id.level > 0).count(),
            256 + 1 + 1
        );
        for size in [1, 255, 256, 257, 65_535, 65_536, 65_537, n] {
            assert_eq!(
                stored.root(size).unwrap(),
                mth(&hashes[..size as usize]),
                "root {size}"
            );
        }
    }

    #[test]
    fn a_short_tile_is_named() {
        let mut read = HashMap::new();
        read.insert(TileId { level: 0, index: 1 }, vec![[0; 32]; 3]);
        let missing = Edge::new(TILE_WIDTH + 4, read).unwrap_err();
        assert_eq!(missing, TileId { level: 0, index: 1 });
    }

    #[test]
    fn every_hash_of_every_proof_is_checked() {
        let hashes: Vec<Hash> = (0..300u32).map(|i| leaf_hash(&i.to_le_bytes())).collect();
        let mut t = MemoryTree::default();
        t.append(&hashes).unwrap();
        let n = 300;
        let root = t.root(n).unwrap();
        let proof = |i: u64| {
            let ranges = inclusion_ranges(i, n);
            assemble(&ranges, &t.nodes(&nodes_for(&ranges))).unwrap()
        };
        // Neighbours verify one after the other, any order, the far right edge too.
        let mut v = ProofVerifier::new(root, n);
        for i in (0..n).chain([299, 0, 150, 151, 7]) {
            v.verify(i, &i.to_le_bytes()[..4], proof(i).as_slice())
                .unwrap_or_else(|e| panic!("leaf {i}: {e}"));
        }
        // A changed hash at any height of a proof that follows its neighbour's is caught,
        // the top one too (which the neighbour's proof already covers).
        for k in 0..proof(41).len() {
            let mut v = ProofVerifier::new(root, n);
            v.verify(40, &40u64.to_le_bytes()[..4], proof(40).as_slice())
                .unwrap();
            let mut bad = proof(41);
            bad[k][31] ^= 1;
            assert_eq!(
                v.verify(41, &41u64.to_le_bytes()[..4], bad.as_slice()),
                Err(ProofError::Mismatch),
                "hash {k}"
            );
        }
    }
}
