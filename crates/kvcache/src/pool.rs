//! The block pool: metadata, storage in every tier, and the free queue (moves between
//! tiers are in `moves`).
//!
//! # Invariants
//! - A block is either free (in `free`, ref count 0) or in use (ref count ≥ 1), never both.
//! - A free block is on the free queue's stocked list exactly when it keeps f16 storage,
//!   and on its bare list exactly when it has none.
//! - `used` equals the number of blocks with a ref count ≥ 1.
//! - Every block in use has storage in exactly one tier, and its [`BlockMeta::tier`] and
//!   [`BlockMeta::format`] say which; free blocks hold f16 storage or none.
//! - A thin block ([`BlockMeta::thin`]) holds its global layers only (a prefix of the
//!   fat block in every format, [`KvLayout::thin_geom`]); free blocks are never thin.
//! - `storage_bytes` equals the RAM bytes of all storage (in use or kept for reuse);
//!   disk-tier blocks cost no RAM.
//! - At most `capacity` blocks exist.
//! - With a ledger reservation attached, its size equals `storage_bytes` after every
//!   public operation: every byte of block storage is accounted in the `kv` pool.

use budget::{Bytes, OutOfBudget, Reservation};
use kernels::kvquant::{self, KvBlock, KvFormat};
use kernels::pool::ThreadPool;
use kvdisk::{BlockStore, Compression};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::free::{FreeQueue, Stock};
use crate::layout::KvLayout;
use crate::seq::KvError;

mod moves;

/// A block's index in its pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlockId(pub u32);

/// Where a block's bytes live, precision falling with temperature (DESIGN.md, "KV cache").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Tier {
    /// f16 in RAM, read directly by attention.
    Hot,
    /// int8 in RAM, read directly by attention (dequantized inside the kernel).
    Warm,
    /// 4- or 2-bit in RAM, read directly while uncompressed; compressed blocks are
    /// promoted (decompressed) before a step reads them.
    Cold,
    /// In a checksummed file; loaded and verified before use.
    Disk,
}

/// Everything the cache knows about a block except its bytes.
#[derive(Clone, Debug, PartialEq)]
pub struct BlockMeta {
    /// Block-table entries that point here; 0 = free.
    pub ref_count: u32,
    /// Chained content hash of a full block (set by prefix sharing), if any.
    pub hash: Option<u64>,
    pub tier: Tier,
    pub format: KvFormat,
    /// Cold blocks: compressed in RAM.
    pub compressed: bool,
    /// Tokens written (the block's first `filled` positions).
    pub filled: u16,
    /// Pins: a pinned block is never demoted or evicted by pressure.
    pub pins: u32,
    /// Logical clock of the last access (for eviction scores).
    pub last_use: u64,
    /// Accesses since allocation (for eviction scores).
    pub use_count: u32,
    /// Its windowed layers were dropped ([`BlockPool::thin`]): it holds the global
    /// layers' slots only.
    pub thin: bool,
    /// The first `lent` rows of its windowed layers hold the tokens of a later block of
    /// the same sequence (its *guest*, see `ring`), not its own: a query that sees those
    /// rows of this block must not read it. 0 for a block whose rows are all its own.
    pub lent: u16,
    /// A guest writes its windowed rows here now: the block stays hot f16 and pinned.
    pub hosting: bool,
}

impl BlockMeta {
    fn fresh() -> Self {
        BlockMeta {
            ref_count: 0,
            hash: None,
            tier: Tier::Hot,
            format: KvFormat::F16,
            compressed: false,
            filled: 0,
            pins: 0,
            last_use: 0,
            use_count: 0,
            thin: false,
            lent: 0,
            hosting: false,
        }
    }
}

/// A block's bytes.
#[derive(Debug)]
pub(crate) enum Storage {
    None,
    F16(Box<[u16]>),
    Quant(KvFormat, Box<[u8]>),
    /// Compressed quantized bytes; `raw` is the uncompressed length.
    Packed {
        format: KvFormat,
        codec: Compression,
        raw: usize,
        bytes: Box<[u8]>,
    },
    /// In the disk store under `key`.
    Disk {
        format: KvFormat,
        key: u64,
    },
}

impl Storage {
    fn ram_bytes(&self) -> u64 {
        match self {
            Storage::None | Storage::Disk { .. } => 0,
            Storage::F16(b) => b.len() as u64 * 2,
            Storage::Quant(_, b) => b.len() as u64,
            Storage::Packed { bytes, .. } => bytes.len() as u64,
        }
    }
    fn tier(&self) -> Option<(Tier, KvFormat, bool)> {
        Some(match self {
            Storage::None => return None,
            Storage::F16(_) => (Tier::Hot, KvFormat::F16, false),
            Storage::Quant(KvFormat::Q8, _) => (Tier::Warm, KvFormat::Q8, false),
            Storage::Quant(f, _) => (Tier::Cold, *f, false),
            Storage::Packed { format, .. } => (Tier::Cold, *format, true),
            Storage::Disk { format, .. } => (Tier::Disk, *format, false),
        })
    }
}

/// A fixed-capacity pool of KV blocks.
#[derive(Debug)]
pub struct BlockPool {
    layout: KvLayout,
    capacity: usize,
    metas: Vec<BlockMeta>,
    storage: Vec<Storage>,
    /// Free blocks, with and without storage (O(1) to take, return and count).
    free: FreeQueue,
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
            free: FreeQueue::new(),
            used: 0,
            storage_bytes: 0,
            clock: 0,
            reservation: None,
        }
    }

    /// An empty reservation in the same ledger pool as this pool's (for buffers that
    /// serve it, such as read-ahead); `None` without a ledger.
    pub fn sibling_reservation(&self) -> Option<Reservation> {
        let r = self.reservation.as_ref()?;
        r.budget().reserve(r.pool(), Bytes(0)).ok()
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

    /// Bytes the ledger grants this pool now (`None` if unbudgeted).
    pub fn reserved(&self) -> Option<u64> {
        self.reservation.as_ref().map(|r| r.size().0)
    }

    /// Makes sure the ledger covers `extra` more bytes of storage (all or nothing).
    pub(crate) fn grow_account(&mut self, extra: u64) -> Result<(), OutOfBudget> {
        if let Some(r) = &mut self.reservation {
            let want = self.storage_bytes + extra;
            if want > r.size().0 {
                r.try_grow(Bytes(want - r.size().0))?;
            }
        }
        Ok(())
    }

    /// Makes sure the ledger covers `n` more blocks being handed out: blocks on the free
    /// list that still hold storage cost nothing; the rest grow the reservation, all or
    /// nothing.
    pub(crate) fn account_for(&mut self, n: usize) -> Result<(), OutOfBudget> {
        self.grow_account(self.new_storage_bytes(n))
    }

    /// Bytes of new storage that handing out `n` more blocks allocates: the free blocks
    /// that keep f16 storage are handed out first and cost nothing.
    pub fn new_storage_bytes(&self, n: usize) -> u64 {
        n.saturating_sub(self.free.len(Stock::Stocked)) as u64 * self.layout.block_bytes()
    }

    /// Bytes the ledger could grant this pool's storage now beyond what it holds (`None`
    /// if unbudgeted).
    pub fn available_bytes(&self) -> Option<u64> {
        let r = self.reservation.as_ref()?;
        Some(r.budget().available(r.pool()).0)
    }

    pub(crate) fn sync_reservation(&mut self) {
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
    /// Bytes of block storage currently in RAM (in use or kept for reuse).
    pub fn storage_bytes(&self) -> u64 {
        self.storage_bytes
    }
    /// Blocks in use per tier, in the order hot, warm, cold, disk.
    pub fn tier_counts(&self) -> [usize; 4] {
        let mut n = [0; 4];
        for m in self.metas.iter().filter(|m| m.ref_count > 0) {
            n[m.tier as usize] += 1;
        }
        n
    }
    /// RAM bytes of blocks in use per tier (hot, warm, cold, disk = 0).
    pub fn tier_bytes(&self) -> [u64; 4] {
        let mut n = [0; 4];
        for (m, s) in self.metas.iter().zip(&self.storage) {
            if m.ref_count > 0 {
                n[m.tier as usize] += s.ram_bytes();
            }
        }
        n
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

    fn set_storage(&mut self, id: BlockId, s: Storage) {
        let i = id.0 as usize;
        self.storage_bytes -= self.storage[i].ram_bytes();
        self.storage_bytes += s.ram_bytes();
        if let Some((tier, format, compressed)) = s.tier() {
            let m = &mut self.metas[i];
            (m.tier, m.format, m.compressed) = (tier, format, compressed);
        }
        self.storage[i] = s;
    }

    /// Takes a hot block with ref count 1, or `None` if the pool is full. The ledger
    /// must already cover it ([`BlockPool::account_for`]).
    pub(crate) fn alloc(&mut self) -> Option<BlockId> {
        // Prefer a free block that still has f16 storage.
        let id = self.take_slot(&[Stock::Stocked, Stock::Bare])?;
        if !matches!(self.storage[id.0 as usize], Storage::F16(_)) {
            let fresh = vec![0u16; self.layout.block_elems()].into_boxed_slice();
            self.set_storage(id, Storage::F16(fresh));
        }
        self.hand_out(id, false);
        Some(id)
    }

    /// Takes a block whose storage is thin from the start (hot f16, ref count 1): a
    /// *guest*, whose windowed rows live in its host ([`crate::KvCache`]'s `ring`). Never
    /// one of the free blocks that keep whole storage; the ledger must already cover
    /// [`BlockPool::thin_bytes`] for it.
    pub(crate) fn alloc_thin(&mut self) -> Option<BlockId> {
        self.layout.window()?;
        let id = self.take_slot(&[Stock::Bare])?;
        let len = self.layout.thin_geom().block_bytes(KvFormat::F16) / 2;
        self.set_storage(id, Storage::F16(vec![0u16; len].into_boxed_slice()));
        self.hand_out(id, true);
        Some(id)
    }

    /// A free block from the first of `stocks` that has one, else a new slot; `None` if
    /// the pool is full.
    fn take_slot(&mut self, stocks: &[Stock]) -> Option<BlockId> {
        if self.used >= self.capacity {
            return None;
        }
        if let Some(id) = stocks.iter().find_map(|&st| self.free.pop(st)) {
            return Some(id);
        }
        let id = BlockId(u32::try_from(self.metas.len()).ok()?);
        self.metas.push(BlockMeta::fresh());
        self.storage.push(Storage::None);
        Some(id)
    }

    /// Marks block `id` (with its storage in place) as used by one table.
    fn hand_out(&mut self, id: BlockId, thin: bool) {
        self.clock += 1;
        self.metas[id.0 as usize] = BlockMeta {
            ref_count: 1,
            last_use: self.clock,
            thin,
            ..BlockMeta::fresh()
        };
        self.used += 1;
    }

    /// Bytes of a thin block's f16 storage.
    pub fn thin_bytes(&self) -> u64 {
        self.layout.thin_geom().block_bytes(KvFormat::F16) as u64
    }

    /// Bytes of new storage that handing out `whole` more whole blocks
    /// ([`BlockPool::new_storage_bytes`]) and `thin` thin guests takes.
    pub(crate) fn new_blocks_bytes(&self, whole: usize, thin: usize) -> u64 {
        self.new_storage_bytes(whole) + thin as u64 * self.thin_bytes()
    }

    /// Gives the guest `guest` (thin) the whole storage of its host `host`, whose windowed
    /// rows now hold the guest's tokens, and the host the guest's thin storage: the
    /// global slots of the two are exchanged first, so each keeps its own. No byte is
    /// allocated; afterwards the guest is whole and the host thin.
    pub(crate) fn swap_windowed(&mut self, guest: BlockId, host: BlockId) {
        let (g, h) = (guest.0 as usize, host.0 as usize);
        assert!(self.metas[g].thin && !self.metas[h].thin);
        let Ok([Storage::F16(thin), Storage::F16(whole)]) = self.storage.get_disjoint_mut([g, h])
        else {
            panic!("a guest and its host are hot f16");
        };
        let n = thin.len();
        thin.swap_with_slice(&mut whole[..n]);
        self.storage.swap(g, h);
        self.metas[g].thin = false;
        let m = &mut self.metas[h];
        (m.thin, m.lent) = (true, 0);
    }

    /// Makes the guest `guest` whole on its own: its global slots and the first `rows`
    /// rows of its windowed layers, read from its host `host`, in a new whole storage.
    /// The host keeps `lent` (those rows are still not its own).
    pub(crate) fn unfold(&mut self, guest: BlockId, host: BlockId) -> Result<(), KvError> {
        let (g, h) = (guest.0 as usize, host.0 as usize);
        let (Storage::F16(thin), Storage::F16(whole)) = (&self.storage[g], &self.storage[h]) else {
            panic!("a guest and its host are hot f16");
        };
        let mut fat = whole.clone();
        fat[..thin.len()].copy_from_slice(thin);
        let extra = (fat.len() - thin.len()) as u64 * 2;
        self.grow_account(extra)?;
        self.set_storage(guest, Storage::F16(fat));
        self.sync_reservation();
        self.metas[g].thin = false;
        Ok(())
    }

    /// Adds a reference (a second block table now points here).
    pub(crate) fn retain(&mut self, id: BlockId) {
        let m = &mut self.metas[id.0 as usize];
        debug_assert!(m.ref_count > 0, "retain of a free block");
        m.ref_count += 1;
    }

    /// Drops a reference; at zero the block returns to the free list (keeping f16
    /// storage for reuse, dropping any other) and its former hash is returned.
    pub(crate) fn release(&mut self, id: BlockId) -> Option<u64> {
        let m = &mut self.metas[id.0 as usize];
        debug_assert!(m.ref_count > 0, "release of a free block");
        m.ref_count -= 1;
        if m.ref_count > 0 {
            return None;
        }
        let hash = m.hash.take();
        m.pins = 0;
        (m.lent, m.hosting) = (0, false);
        // A thin block's storage is short of a fresh block's: not kept for reuse.
        let thin = std::mem::take(&mut m.thin);
        self.used -= 1;
        if !thin && matches!(self.storage[id.0 as usize], Storage::F16(_)) {
            self.free.push(id, Stock::Stocked);
        } else {
            self.set_storage(id, Storage::None);
            self.sync_reservation();
            self.free.push(id, Stock::Bare);
        }
        hash
    }

    /// Frees the storage of blocks on the free list (gives memory back to the system).
    pub fn trim(&mut self) {
        self.trim_to(0);
    }

    fn trim_to(&mut self, keep_free_storage: usize) {
        while self.free.len(Stock::Stocked) > keep_free_storage {
            let id = self.free.pop(Stock::Stocked).expect("counted above");
            self.set_storage(id, Storage::None);
            self.free.push(id, Stock::Bare);
        }
        self.sync_reservation();
    }

    pub fn meta(&self, id: BlockId) -> &BlockMeta {
        &self.metas[id.0 as usize]
    }
    pub(crate) fn meta_mut(&mut self, id: BlockId) -> &mut BlockMeta {
        &mut self.metas[id.0 as usize]
    }
    /// Number of block slots ever created (ids are below this).
    pub fn slots(&self) -> usize {
        self.metas.len()
    }
    /// Logical clock (advanced by every access).
    pub fn clock(&self) -> u64 {
        self.clock
    }

    /// Marks an access (recency and frequency for eviction).
    pub fn touch(&mut self, id: BlockId) {
        self.clock += 1;
        let m = &mut self.metas[id.0 as usize];
        m.last_use = self.clock;
        m.use_count = m.use_count.saturating_add(1);
    }

    /// Pins a block (pressure never demotes or evicts it) or releases one pin.
    pub fn pin(&mut self, id: BlockId, on: bool) {
        let m = &mut self.metas[id.0 as usize];
        m.pins = if on {
            m.pins + 1
        } else {
            m.pins.saturating_sub(1)
        };
    }

    pub(crate) fn storage(&self, id: BlockId) -> &Storage {
        &self.storage[id.0 as usize]
    }

    /// The shape of block `id`'s storage: thin or whole.
    pub(crate) fn geom_of(&self, id: BlockId) -> kvquant::BlockGeom {
        if self.metas[id.0 as usize].thin {
            self.layout.thin_geom()
        } else {
            self.layout.geom()
        }
    }

    /// Bytes block `id` takes in `format` (thin or whole, as it is).
    pub fn bytes_in(&self, id: BlockId, format: KvFormat) -> u64 {
        self.geom_of(id).block_bytes(format) as u64
    }

    /// Drops the windowed layers of resident block `id` (its storage is cut to the global
    /// layers' slots, which come first in every format) and returns the bytes freed. The
    /// caller guarantees that no query will read them again. A compressed or spilled
    /// block stays as it is (0), as does one already thin or a layout without windows.
    pub(crate) fn thin(&mut self, id: BlockId) -> u64 {
        let i = id.0 as usize;
        if self.layout.window().is_none() || self.metas[i].thin {
            return 0;
        }
        let g = self.layout.thin_geom();
        let cut = match &self.storage[i] {
            Storage::F16(b) => Storage::F16(b[..g.block_bytes(KvFormat::F16) / 2].into()),
            Storage::Quant(f, b) => Storage::Quant(*f, b[..g.block_bytes(*f)].into()),
            _ => return 0,
        };
        let before = self.storage_bytes;
        self.set_storage(id, cut);
        self.metas[i].thin = true;
        self.metas[i].lent = 0;
        self.sync_reservation();
        before - self.storage_bytes
    }

    /// RAM bytes of one block's storage now.
    pub fn block_ram_bytes(&self, id: BlockId) -> u64 {
        self.storage[id.0 as usize].ram_bytes()
    }

    /// The f16 contents of a hot block.
    ///
    /// # Panics
    /// If the block is not hot (a bug in the caller).
    pub fn data(&self, id: BlockId) -> &[u16] {
        match &self.storage[id.0 as usize] {
            Storage::F16(b) => b,
            s => panic!("data() of block {id:?} stored as {:?}", s.tier()),
        }
    }

    /// The block as attention reads it, or `NotResident` if it must first be promoted.
    pub fn view(&self, id: BlockId) -> Result<KvBlock<'_>, KvError> {
        match &self.storage[id.0 as usize] {
            Storage::F16(b) => Ok(KvBlock::F16(b)),
            Storage::Quant(f, b) => Ok(KvBlock::Quant(*f, b)),
            _ => Err(KvError::NotResident(id)),
        }
    }

    pub(crate) fn data_mut(&mut self, id: BlockId) -> Option<&mut [u16]> {
        match &mut self.storage[id.0 as usize] {
            Storage::F16(b) => Some(b),
            _ => None,
        }
    }

    /// Copies block `src`'s storage (any resident format) into the fresh block `dst`,
    /// accounting any size difference.
    pub(crate) fn copy_block(&mut self, src: BlockId, dst: BlockId) -> Result<(), KvError> {
        assert_ne!(src, dst);
        let s = match &self.storage[src.0 as usize] {
            Storage::F16(b) => Storage::F16(b.clone()),
            Storage::Quant(f, b) => Storage::Quant(*f, b.clone()),
            _ => return Err(KvError::NotResident(src)),
        };
        let extra = s.ram_bytes();
        let had = self.storage[dst.0 as usize].ram_bytes();
        self.grow_account(extra.saturating_sub(had))?;
        self.set_storage(dst, s);
        self.sync_reservation();
        let (filled, thin) = (
            self.metas[src.0 as usize].filled,
            self.metas[src.0 as usize].thin,
        );
        self.metas[dst.0 as usize].filled = filled;
        self.metas[dst.0 as usize].thin = thin;
        Ok(())
    }

    /// Writes block `src`'s contents, decoded to f16 if it is quantized, into the f16
    /// storage of the fresh block `dst` (copy on write of a partial block: the copy is
    /// written next, so it must be f16). Allocates nothing.
    pub(crate) fn copy_into_f16(&mut self, src: BlockId, dst: BlockId) -> Result<(), KvError> {
        assert_ne!(src, dst);
        if self.metas[src.0 as usize].thin {
            return Err(KvError::Thinned(src));
        }
        let (s, d) = if src.0 < dst.0 {
            let (a, b) = self.storage.split_at_mut(dst.0 as usize);
            (&a[src.0 as usize], &mut b[0])
        } else {
            let (a, b) = self.storage.split_at_mut(src.0 as usize);
            (&b[0], &mut a[dst.0 as usize])
        };
        let Storage::F16(out) = d else {
            return Err(KvError::NotWritable(dst));
        };
        match s {
            Storage::F16(b) => out.copy_from_slice(b),
            Storage::Quant(f, b) => kvquant::decode_block(*f, &self.layout.geom(), b, out),
            _ => return Err(KvError::NotResident(src)),
        }
        let filled = self.metas[src.0 as usize].filled;
        self.metas[dst.0 as usize].filled = filled;
        Ok(())
    }

    /// Checks the invariants in this type's docs.
    ///
    /// # Panics
    /// If any invariant is broken.
    pub fn check_invariants(&self) {
        self.free.check_invariants();
        for i in 0..self.metas.len() {
            let Some(list) = self.free.list_of(BlockId(i as u32)) else {
                continue;
            };
            assert_eq!(self.metas[i].ref_count, 0, "free block {i} has references");
            assert!(!self.metas[i].thin, "free block {i} is thin");
            let want = match self.storage[i] {
                Storage::F16(_) => Stock::Stocked,
                Storage::None => Stock::Bare,
                _ => panic!("free block {i} keeps non-f16 storage"),
            };
            assert_eq!(list, want, "free block {i} on the wrong list");
        }
        let used = self.metas.iter().filter(|m| m.ref_count > 0).count();
        assert_eq!(used, self.used, "used count drifted");
        assert_eq!(
            used + self.free.total(),
            self.metas.len(),
            "a block is neither free nor used"
        );
        for (i, (m, s)) in self.metas.iter().zip(&self.storage).enumerate() {
            if m.ref_count == 0 {
                continue;
            }
            assert!(
                !m.thin || self.layout.window().is_some(),
                "block {i} is thin in a layout without windowed layers"
            );
            assert!(
                !m.hosting || (!m.thin && matches!(s, Storage::F16(_))),
                "host {i} is not a whole f16 block"
            );
            let geom = self.geom_of(BlockId(i as u32));
            let (tier, format, compressed) = s
                .tier()
                .unwrap_or_else(|| panic!("block {i} in use without storage"));
            assert_eq!(
                (m.tier, m.format, m.compressed),
                (tier, format, compressed),
                "block {i}: metadata disagrees with its storage"
            );
            match s {
                Storage::Quant(f, b) => assert_eq!(b.len(), geom.block_bytes(*f), "block {i} size"),
                Storage::F16(b) => {
                    assert_eq!(
                        b.len(),
                        geom.block_bytes(KvFormat::F16) / 2,
                        "block {i} size"
                    )
                }
                _ => {}
            }
        }
        let bytes: u64 = self.storage.iter().map(Storage::ram_bytes).sum();
        assert_eq!(bytes, self.storage_bytes, "storage bytes drifted");
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
