//! The authenticated structure over the record store: a complete binary
//! SHA-256 Merkle tree of fixed depth over 2^16 buckets (record ids grouped
//! by their first two bytes). The core keeps the whole tree (4 MiB, the same
//! for any number of users) and its root in NVRAM; the store keeps records
//! and leaf hashes, which the core checks against its tree on every read.

use std::collections::BTreeMap;

use ring::digest::{Context, SHA256};
use subtle::ConstantTimeEq;

/// Depth of the tree.
pub const DEPTH: u32 = 16;
/// Number of buckets (leaves).
pub const BUCKETS: usize = 1 << DEPTH;

/// A bucket number: the first two bytes of a record id.
pub fn bucket_of(record_id: &[u8; 32]) -> u16 {
    u16::from_be_bytes([record_id[0], record_id[1]])
}

/// `SHA-256("coffer/v1/leaf" || n u32 || (id || SHA-256(sealed))*)` over the
/// bucket's records sorted by id.
pub fn leaf_hash(records: &[(&[u8; 32], &[u8])]) -> [u8; 32] {
    let mut sorted: Vec<_> = records.to_vec();
    sorted.sort_by(|a, b| a.0.cmp(b.0));
    let mut ctx = Context::new(&SHA256);
    ctx.update(b"coffer/v1/leaf");
    ctx.update(&(sorted.len() as u32).to_be_bytes());
    for (id, sealed) in sorted {
        ctx.update(id);
        ctx.update(ring::digest::digest(&SHA256, sealed).as_ref());
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

fn node_hash(left: &[u8; 32], right: &[u8; 32]) -> [u8; 32] {
    let mut ctx = Context::new(&SHA256);
    ctx.update(&[1]);
    ctx.update(left);
    ctx.update(right);
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

/// The tree, heap-indexed: node 1 is the root, leaves are `BUCKETS + b`.
pub struct Tree {
    nodes: Vec<[u8; 32]>,
}

impl Tree {
    /// Builds the tree from the store's leaf hashes; absent leaves are empty buckets.
    pub fn build(leaves: impl IntoIterator<Item = (u16, [u8; 32])>) -> Self {
        let empty = leaf_hash(&[]);
        let mut nodes = vec![[0u8; 32]; 2 * BUCKETS];
        for n in nodes[BUCKETS..].iter_mut() {
            *n = empty;
        }
        for (b, h) in leaves {
            nodes[BUCKETS + usize::from(b)] = h;
        }
        for i in (1..BUCKETS).rev() {
            nodes[i] = node_hash(&nodes[2 * i], &nodes[2 * i + 1]);
        }
        Self { nodes }
    }

    /// The root.
    pub fn root(&self) -> [u8; 32] {
        self.nodes[1]
    }

    /// A bucket's leaf hash.
    pub fn leaf(&self, bucket: u16) -> [u8; 32] {
        self.nodes[BUCKETS + usize::from(bucket)]
    }

    /// Whether `records` (as the host read them) are exactly what the
    /// bucket's leaf commits to: the leaf hash of the list, compared in
    /// constant time. How every bucket read is verified.
    pub fn bucket_matches(&self, bucket: u16, records: &[([u8; 32], Vec<u8>)]) -> bool {
        let list: Vec<(&[u8; 32], &[u8])> =
            records.iter().map(|(k, v)| (k, v.as_slice())).collect();
        bool::from(leaf_hash(&list).ct_eq(&self.leaf(bucket)))
    }

    /// The root the tree would have with `leaves` set (a later pair for the
    /// same bucket wins), without changing the tree: at most 16 hashes per
    /// changed leaf. Equals [`Tree::root`] after [`Tree::set_leaf`] of each.
    pub fn root_with(&self, leaves: &[(u16, [u8; 32])]) -> [u8; 32] {
        let mut level: BTreeMap<usize, [u8; 32]> = leaves
            .iter()
            .map(|(b, h)| (BUCKETS + usize::from(*b), *h))
            .collect();
        if level.is_empty() {
            return self.root();
        }
        for _ in 0..DEPTH {
            let mut up = BTreeMap::new();
            for &i in level.keys() {
                let p = i / 2;
                if up.contains_key(&p) {
                    continue;
                }
                let get = |j: usize| level.get(&j).copied().unwrap_or(self.nodes[j]);
                up.insert(p, node_hash(&get(2 * p), &get(2 * p + 1)));
            }
            level = up;
        }
        level.get(&1).copied().unwrap_or_else(|| self.root())
    }

    /// Sets a leaf and rehashes its path (16 hashes).
    pub fn set_leaf(&mut self, bucket: u16, hash: [u8; 32]) {
        let mut i = BUCKETS + usize::from(bucket);
        self.nodes[i] = hash;
        while i > 1 {
            i /= 2;
            self.nodes[i] = node_hash(&self.nodes[2 * i], &self.nodes[2 * i + 1]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_leaf_change_changes_the_root_and_back() {
        let mut t = Tree::build([]);
        let r0 = t.root();
        let old = t.leaf(7);
        t.set_leaf(7, [9; 32]);
        assert_ne!(t.root(), r0);
        let rebuilt = Tree::build([(7u16, [9u8; 32])]);
        assert_eq!(rebuilt.root(), t.root());
        t.set_leaf(7, old);
        assert_eq!(t.root(), r0);
    }

    #[test]
    fn root_with_matches_set_leaf_and_leaves_the_tree_alone() {
        let mut t = Tree::build([(3u16, [3u8; 32]), (65535, [5; 32])]);
        let r0 = t.root();
        assert_eq!(t.root_with(&[]), r0);
        let changes = [
            (0u16, [1u8; 32]),
            (1, [2; 32]),
            (40000, [4; 32]),
            (65535, [6; 32]),
        ];
        let predicted = t.root_with(&changes);
        assert_eq!(t.root(), r0);
        for (b, h) in changes {
            t.set_leaf(b, h);
        }
        assert_eq!(predicted, t.root());
        assert_ne!(predicted, r0);
    }

    #[test]
    fn leaf_hash_is_order_independent_and_content_bound() {
        let a = [1u8; 32];
        let b = [2u8; 32];
        let h1 = leaf_hash(&[(&a, b"x"), (&b, b"y")]);
        let h2 = leaf_hash(&[(&b, b"y"), (&a, b"x")]);
        assert_eq!(h1, h2);
        assert_ne!(h1, leaf_hash(&[(&a, b"x"), (&b, b"z")]));
        assert_ne!(h1, leaf_hash(&[(&a, b"x")]));
    }
}
