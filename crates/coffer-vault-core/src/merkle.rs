//! The authenticated structure over the record store: a complete binary
//! SHA-256 Merkle tree of fixed depth over 2^16 buckets (record ids grouped
//! by their first two bytes). The core keeps the whole tree (4 MiB, the same
//! for any number of users) and its root in NVRAM; the store keeps records
//! and leaf hashes, which the core checks against its tree on every read.

use ring::digest::{Context, SHA256};

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
