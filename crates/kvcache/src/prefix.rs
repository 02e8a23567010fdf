//! Chained block hashes for prefix sharing.
//!
//! A full block's hash is `xxh3(parent hash ‖ model digest ‖ its token ids)`: equal hashes
//! mean equal token prefixes from position 0 under the same model, so the block's KV is
//! the same and may be shared (and found again on disk in a later run).

/// The chained hash of one full block.
pub fn block_hash(parent: u64, tokens: &[u32], model_digest: u64) -> u64 {
    let mut buf = Vec::with_capacity(16 + tokens.len() * 4);
    buf.extend_from_slice(&parent.to_le_bytes());
    buf.extend_from_slice(&model_digest.to_le_bytes());
    for t in tokens {
        buf.extend_from_slice(&t.to_le_bytes());
    }
    xxhash_rust::xxh3::xxh3_64(&buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_chain_depends_on_parent_tokens_and_model() {
        let a = block_hash(0, &[1, 2, 3], 9);
        assert_eq!(a, block_hash(0, &[1, 2, 3], 9));
        assert_ne!(a, block_hash(1, &[1, 2, 3], 9));
        assert_ne!(a, block_hash(0, &[1, 2, 4], 9));
        assert_ne!(a, block_hash(0, &[1, 2, 3], 8));
    }
}
