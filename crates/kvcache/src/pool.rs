//! The block pool: metadata, hot-tier storage and the free list.
//!
//! # Invariants
//! - A block is either free (in `free`, ref count 0) or in use (ref count ≥ 1), never both.
//! - `used` equals the number of blocks with a ref count ≥ 1.
//! - Storage exists for every block in use; `storage_bytes` equals the bytes of all
//!   allocated storage (free blocks keep theirs until [`BlockPool::trim`]).
//! - At most `capacity` blocks exist.
//! - With a ledger reservation attached, its size equals `storage_bytes` after every
//!   public operation: every byte of block storage is accounted in the `kv` pool.

use budget::{Bytes, OutOfBudget, Reservation};

use crate::layout::KvLayout;

/// A block's index in its pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlockId(pub u32);

/// Where a block's bytes live. Later issues add `Warm` (int8), `Cold` (4/2-bit,
/// compressed) and `Disk`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Tier {
    /// f16, read directly by attention.
    Hot,
}

/// Everything the cache knows about a block except its bytes.
#[derive(Clone, Debug, PartialEq)]
pub struct BlockMeta {
    /// Block-table entries that point here; 0 = free.
    pub ref_count: u32,
    /// Chained content hash of a full block (set by prefix sharing), if any.
    pub hash: Option<u64>,
    pub tier: Tier,
    /// Logical clock of the last access (for eviction scores).
    pub last_use: u64,
    /// Accesses since allocation (for eviction scores).
    pub use_count: u32,
}

impl BlockMeta {
    fn fresh() -> Self {
        BlockMeta {
            ref_count: 0,
            hash: None,
            tier: Tier::Hot,
            last_use: 0,
            use_count: 0,
        }
    }
}

/// A fixed-capacity pool of KV blocks.
#[derive(Debug)]
pub struct BlockPool {
    layout: KvLayout,
    capacity: usize,
    metas: Vec<BlockMeta>,
    storage: Vec<Option<Box<[u16]>>>,
    free: Vec<BlockId>,
    used: usize,
    storage_bytes: u64,
    clock: u64,
    /// The ledger's account for block storage, if the pool is budgeted.
    reservation: Option<Reservation>,
}

impl BlockPool {
    /// A pool that will hold at most `capacity` blocks; storage is allocated on first use.
    pub fn new(layout: KvLayout, capacity: usize) -> Self {
        BlockPool {
            layout,
            capacity,
            metas: Vec::new(),
            storage: Vec::new(),
            free: Vec::new(),
            used: 0,
            storage_bytes: 0,
            clock: 0,
            reservation: None,
        }
    }

    /// Accounts all block storage in `reservation` (an empty reservation in the ledger's
    /// KV pool); storage is then only allocated when the ledger grants it.
    pub fn set_reservation(&mut self, mut reservation: Reservation) -> Result<(), OutOfBudget> {
        let have = reservation.size().0;
        if have < self.storage_bytes {
            reservation.try_grow(Bytes(self.storage_bytes - have))?;
        } else if have > self.storage_bytes {
            let _ = reservation.shrink(Bytes(have - self.storage_bytes));
        }
        self.reservation = Some(reservation);
        Ok(())
    }

    /// Makes sure the ledger covers `n` more blocks being handed out: blocks on the free
    /// list that still hold storage cost nothing; the rest grow the reservation, all or
    /// nothing.
    pub(crate) fn account_for(&mut self, n: usize) -> Result<(), OutOfBudget> {
        let with_storage = self
            .free
            .iter()
            .filter(|id| self.storage[id.0 as usize].is_some())
            .count();
        let new_blocks = n.saturating_sub(with_storage) as u64;
        if let Some(r) = &mut self.reservation {
            let want = self.storage_bytes + new_blocks * self.layout.block_bytes();
            if want > r.size().0 {
                r.try_grow(Bytes(want - r.size().0))?;
            }
        }
        Ok(())
    }

    fn sync_reservation(&mut self) {
        if let Some(r) = &mut self.reservation {
            let have = r.size().0;
            if have > self.storage_bytes {
                let _ = r.shrink(Bytes(have - self.storage_bytes));
            }
        }
    }

    pub fn layout(&self) -> &KvLayout {
        &self.layout
    }
    /// Most blocks this pool may hold.
    pub fn capacity(&self) -> usize {
        self.capacity
    }
    /// Blocks with a reference.
    pub fn used_blocks(&self) -> usize {
        self.used
    }
    /// Blocks that can still be handed out.
    pub fn free_blocks(&self) -> usize {
        self.capacity - self.used
    }
    /// Bytes of block storage currently allocated (in use or kept for reuse).
    pub fn storage_bytes(&self) -> u64 {
        self.storage_bytes
    }

    /// Sets a new capacity; fails (returning the current one) if more blocks are in use.
    pub fn set_capacity(&mut self, capacity: usize) -> Result<(), usize> {
        if capacity < self.used {
            return Err(self.used);
        }
        self.capacity = capacity;
        self.trim_to(capacity);
        Ok(())
    }

    /// Takes a block with ref count 1, or `None` if the pool is full.
    pub(crate) fn alloc(&mut self) -> Option<BlockId> {
        if self.used >= self.capacity {
            return None;
        }
        let id = match self.free.pop() {
            Some(id) => id,
            None => {
                let id = BlockId(u32::try_from(self.metas.len()).ok()?);
                self.metas.push(BlockMeta::fresh());
                self.storage.push(None);
                id
            }
        };
        let i = id.0 as usize;
        if self.storage[i].is_none() {
            self.storage[i] = Some(vec![0u16; self.layout.block_elems()].into_boxed_slice());
            self.storage_bytes += self.layout.block_bytes();
        }
        self.clock += 1;
        self.metas[i] = BlockMeta {
            ref_count: 1,
            last_use: self.clock,
            ..BlockMeta::fresh()
        };
        self.used += 1;
        Some(id)
    }

    /// Adds a reference (a second block table now points here).
    pub(crate) fn retain(&mut self, id: BlockId) {
        let m = &mut self.metas[id.0 as usize];
        debug_assert!(m.ref_count > 0, "retain of a free block");
        m.ref_count += 1;
    }

    /// Drops a reference; the block returns to the free list at zero.
    pub(crate) fn release(&mut self, id: BlockId) {
        let m = &mut self.metas[id.0 as usize];
        debug_assert!(m.ref_count > 0, "release of a free block");
        m.ref_count -= 1;
        if m.ref_count == 0 {
            m.hash = None;
            self.used -= 1;
            self.free.push(id);
        }
    }

    /// Frees the storage of blocks on the free list (gives memory back to the system).
    pub fn trim(&mut self) {
        self.trim_to(0);
    }

    fn trim_to(&mut self, keep_free_storage: usize) {
        let mut kept = 0;
        for id in &self.free {
            let s = &mut self.storage[id.0 as usize];
            if s.is_some() {
                if kept < keep_free_storage {
                    kept += 1;
                    continue;
                }
                *s = None;
                self.storage_bytes -= self.layout.block_bytes();
            }
        }
        self.sync_reservation();
    }

    pub fn meta(&self, id: BlockId) -> &BlockMeta {
        &self.metas[id.0 as usize]
    }

    /// Marks an access (recency and frequency for eviction).
    pub fn touch(&mut self, id: BlockId) {
        self.clock += 1;
        let m = &mut self.metas[id.0 as usize];
        m.last_use = self.clock;
        m.use_count = m.use_count.saturating_add(1);
    }

    /// The f16 contents of a block in use.
    ///
    /// # Panics
    /// If the block is free (a bug in the caller: free blocks have no readers).
    pub fn data(&self, id: BlockId) -> &[u16] {
        self.storage[id.0 as usize]
            .as_deref()
            .expect("data() of a block without storage")
    }

    pub(crate) fn data_mut(&mut self, id: BlockId) -> &mut [u16] {
        self.storage[id.0 as usize]
            .as_deref_mut()
            .expect("data_mut() of a block without storage")
    }

    /// Copies block `src`'s contents into block `dst`.
    pub(crate) fn copy_block(&mut self, src: BlockId, dst: BlockId) {
        let (s, d) = (src.0 as usize, dst.0 as usize);
        assert_ne!(s, d);
        let (a, b) = if s < d {
            let (lo, hi) = self.storage.split_at_mut(d);
            (
                lo[s].as_deref().expect("src storage"),
                hi[0].as_deref_mut().expect("dst storage"),
            )
        } else {
            let (lo, hi) = self.storage.split_at_mut(s);
            (
                hi[0].as_deref().expect("src storage"),
                lo[d].as_deref_mut().expect("dst storage"),
            )
        };
        b.copy_from_slice(a);
    }

    /// Checks the invariants in this type's docs.
    ///
    /// # Panics
    /// If any invariant is broken.
    pub fn check_invariants(&self) {
        let mut in_free = vec![false; self.metas.len()];
        for id in &self.free {
            let i = id.0 as usize;
            assert!(!in_free[i], "block {i} twice on the free list");
            in_free[i] = true;
            assert_eq!(self.metas[i].ref_count, 0, "free block {i} has references");
        }
        let used = self.metas.iter().filter(|m| m.ref_count > 0).count();
        assert_eq!(used, self.used, "used count drifted");
        assert_eq!(
            used + self.free.len(),
            self.metas.len(),
            "a block is neither free nor used"
        );
        for (i, m) in self.metas.iter().enumerate() {
            if m.ref_count > 0 {
                assert!(
                    self.storage[i].is_some(),
                    "block {i} in use without storage"
                );
            }
        }
        let bytes = self.storage.iter().filter(|s| s.is_some()).count() as u64;
        assert_eq!(
            bytes * self.layout.block_bytes(),
            self.storage_bytes,
            "storage bytes drifted"
        );
        assert!(self.used <= self.capacity, "over capacity");
        if let Some(r) = &self.reservation {
            assert_eq!(
                r.size().0,
                self.storage_bytes,
                "ledger reservation differs from storage"
            );
        }
    }
}
