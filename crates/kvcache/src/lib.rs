//! Paged KV-cache memory for llmem: fixed-size blocks of f16 keys and values, a block pool
//! with reference counts and a free list, and a block table per sequence.
//!
//! A block holds `block_tokens` consecutive tokens of one sequence for **all** layers, so
//! a sequence's cache is a list of block ids (its block table) and growing it by one block
//! is one allocation. Block metadata ([`BlockMeta`]) is kept apart from block storage so
//! that later tiers (int8, 4-bit, disk) change where bytes live, not how blocks are named.
//! This crate knows nothing of models or the engine; it is tested without a model.
//!
//! ```
//! use kvcache::{KvCache, KvLayout};
//! let layout = KvLayout::new(2, 1, 4, 16).unwrap(); // 2 layers, 1 KV head, dim 4, 16 tokens/block
//! let mut kv = KvCache::new(layout, 8);
//! let s = kv.seq_new();
//! kv.seq_reserve(s, 20).unwrap();                  // 20 tokens → 2 blocks
//! kv.write(s, 0, 17, &[1; 4], &[2; 4]).unwrap();   // layer 0, position 17
//! assert_eq!(kv.seq_blocks(s).unwrap().len(), 2);
//! let fork = kv.seq_copy(s).unwrap();              // shares the full block, copies the partial one
//! assert_eq!(kv.pool().used_blocks(), 3);
//! kv.seq_remove(s);
//! kv.seq_remove(fork);
//! assert_eq!(kv.pool().used_blocks(), 0);
//! ```

mod layout;
mod pool;
mod seq;

pub use layout::{KvLayout, LayoutError};
pub use pool::{BlockId, BlockMeta, BlockPool, Tier};
pub use seq::{KvCache, KvError, SeqId};
