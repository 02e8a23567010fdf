//! Paged KV-cache memory for llmem: fixed-size blocks in tiers (hot f16, warm int8, cold
//! 4/2-bit and compressed, disk), prefix sharing by chained block hashes, and a block
//! table per sequence.
//!
//! A block holds `block_tokens` consecutive tokens of one sequence for **all** layers, so
//! a sequence's cache is a list of block ids (its block table) and growing it by one block
//! is one allocation. With sliding-window layers ([`KvLayout::with_window`]) a block that
//! no query's window sees any more is thinned to its global layers
//! ([`KvCache::seq_thin`]). Block metadata ([`BlockMeta`]) is kept apart from block storage, so
//! a tier change moves bytes, not names. Hot and warm (and uncompressed cold) blocks are
//! read in place by attention ([`KvBlock`]); compressed and disk blocks are promoted by
//! [`KvCache::seq_prepare`] first, disk blocks read ahead on a [`Prefetcher`]'s thread. The [`TierMix`] says which precision each block of a
//! sequence gets by age, and [`KvType`] names the mixes a user chooses (`--kv-type`) with
//! what a token costs in each; [`policy`] chooses what to demote or evict under the ledger's
//! limit. This crate knows nothing of models or the engine; it is tested without a model.
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

mod free;
mod kvtype;
mod layout;
mod mix;
mod plan;
pub mod policy;
mod pool;
mod prefetch;
mod prefix;
mod ring;
mod seq;
mod write;

pub use kernels::kvquant::{KvBlock, KvFormat};
pub use kvdisk::{Access, BlockStore, Compression};
pub use kvtype::{KvType, UnknownKvType, stored_block_bytes};
pub use layout::{KvLayout, LayoutError};
pub use mix::TierMix;
pub use plan::{NoRoom, Plan, PlanError};
pub use pool::{BlockId, BlockMeta, BlockPool, Tier};
pub use prefetch::{PREFETCH_STACK_BYTES, PrefetchStats, Prefetcher};
pub use prefix::{Persisted, ReuseRule, block_hash, disk_key};
pub use seq::{KvCache, KvError, SeqId};
pub use write::WriteRun;
