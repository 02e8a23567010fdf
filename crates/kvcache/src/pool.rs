//! The block pool: metadata, storage in every tier, and the free queue.
//!
//! # Invariants
//! - A block is either free (in `free`, ref count 0) or in use (ref count ≥ 1), never both.
//! - A free block is on the free queue's stocked list exactly when it keeps f16 storage,
//!   and on its bare list exactly when it has none.
//! - `used` equals the number of blocks with a ref count ≥ 1.
//! - Every block in use has storage in exactly one tier, and its [`BlockMeta::tier`] and
//!   [`BlockMeta::format`] say which; free blocks hold f16 storage or none.
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
    fn grow_account(&mut self, extra: u64) -> Result<(), OutOfBudget> {
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
        if self.used >= self.capacity {
            return None;
        }
        // Prefer a free block that still has f16 storage.
        let id = match self
            .free
            .pop(Stock::Stocked)
            .or_else(|| self.free.pop(Stock::Bare))
        {
            Some(id) => id,
            None => {
                let id = BlockId(u32::try_from(self.metas.len()).ok()?);
                self.metas.push(BlockMeta::fresh());
                self.storage.push(Storage::None);
                id
            }
        };
        let i = id.0 as usize;
        if !matches!(self.storage[i], Storage::F16(_)) {
            let fresh = vec![0u16; self.layout.block_elems()].into_boxed_slice();
            self.set_storage(id, Storage::F16(fresh));
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
        self.used -= 1;
        if matches!(self.storage[id.0 as usize], Storage::F16(_)) {
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
        let filled = self.metas[src.0 as usize].filled;
        self.metas[dst.0 as usize].filled = filled;
        Ok(())
    }

    /// Writes block `src`'s contents, decoded to f16 if it is quantized, into the f16
    /// storage of the fresh block `dst` (copy on write of a partial block: the copy is
    /// written next, so it must be f16). Allocates nothing.
    pub(crate) fn copy_into_f16(&mut self, src: BlockId, dst: BlockId) -> Result<(), KvError> {
        assert_ne!(src, dst);
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

    /// Re-encodes a resident block in `format` (demotion to lower precision, or
    /// promotion back to f16 — precision lost stays lost). The ledger must grant any
    /// growth; on error nothing changes.
    pub fn set_format(&mut self, id: BlockId, format: KvFormat) -> Result<(), KvError> {
        match self.encoded(id, format)? {
            Some(new) => self.install(id, new),
            None => Ok(()),
        }
    }

    /// As [`BlockPool::set_format`] for each `(block, format)` of `changes`, encoding on
    /// `threads` when given (blocks are independent, and encoding is most of the work) and
    /// then installing in order. One block per thread is encoded at a time, so the transient
    /// beyond the ledger stays what it is for one block per thread. Stops at the first
    /// error; blocks before it are changed, the one that failed and those after it are not.
    pub fn set_formats(
        &mut self,
        changes: &[(BlockId, KvFormat)],
        threads: Option<&ThreadPool>,
    ) -> Result<(), KvError> {
        let Some(threads) = threads.filter(|t| t.n_threads() > 1) else {
            return changes
                .iter()
                .try_for_each(|&(id, format)| self.set_format(id, format));
        };
        for batch in changes.chunks(threads.n_threads()) {
            let slots: Vec<OnceLock<Result<Option<Storage>, KvError>>> =
                batch.iter().map(|_| OnceLock::new()).collect();
            let next = AtomicUsize::new(0);
            let this = &*self;
            threads.run(|_| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(&(id, format)) = batch.get(i) else {
                        break;
                    };
                    // Each index is taken once, so each slot is set once.
                    let _ = slots[i].set(this.encoded(id, format));
                }
            });
            for (slot, &(id, _)) in slots.into_iter().zip(batch) {
                // `run` returned, so every index was taken and every slot set.
                if let Some(new) = slot.into_inner().unwrap_or(Ok(None))? {
                    self.install(id, new)?;
                }
            }
        }
        Ok(())
    }

    /// Block `id` encoded in `format`, or `None` when it already is.
    fn encoded(&self, id: BlockId, format: KvFormat) -> Result<Option<Storage>, KvError> {
        let geom = self.layout.geom();
        if !format.supports(&geom) {
            return Err(KvError::Unsupported(format));
        }
        let m = &self.metas[id.0 as usize];
        if m.format == format && !m.compressed && m.tier != Tier::Disk {
            return Ok(None);
        }
        let nt = m.filled as usize;
        Ok(Some(match (self.view(id)?, format) {
            (KvBlock::F16(_), KvFormat::F16) => return Ok(None),
            (KvBlock::Quant(from, b), KvFormat::F16) => {
                let mut d = vec![0u16; self.layout.block_elems()].into_boxed_slice();
                kvquant::decode_block(from, &geom, b, &mut d);
                Storage::F16(d)
            }
            (v, f) => Storage::Quant(f, kvquant::transcode(&geom, v, f, nt).into_boxed_slice()),
        }))
    }

    /// Replaces block `id`'s storage with `new`, after the ledger granted any growth.
    fn install(&mut self, id: BlockId, new: Storage) -> Result<(), KvError> {
        let old = self.storage[id.0 as usize].ram_bytes();
        self.grow_account(new.ram_bytes().saturating_sub(old))?;
        self.set_storage(id, new);
        self.sync_reservation();
        Ok(())
    }

    /// Compresses a cold (4/2-bit) block in RAM; it must be promoted before attention
    /// reads it again. Kept uncompressed if compression would not shrink it.
    pub fn compress(&mut self, id: BlockId, codec: Compression) -> Result<(), KvError> {
        let Storage::Quant(format, raw) = &self.storage[id.0 as usize] else {
            return Err(KvError::NotResident(id));
        };
        let mut out = Vec::new();
        kvdisk::compress(codec, raw, &mut out).map_err(|e| KvError::Disk(e.to_string()))?;
        if out.len() >= raw.len() {
            return Ok(());
        }
        let s = Storage::Packed {
            format: *format,
            codec,
            raw: raw.len(),
            bytes: out.into_boxed_slice(),
        };
        self.set_storage(id, s);
        self.sync_reservation();
        Ok(())
    }

    /// Brings a compressed block back to its readable quantized form.
    pub fn decompress(&mut self, id: BlockId) -> Result<(), KvError> {
        let Storage::Packed {
            format,
            codec,
            raw,
            bytes,
        } = &self.storage[id.0 as usize]
        else {
            return Ok(());
        };
        let (format, raw) = (*format, *raw);
        let mut out = Vec::with_capacity(raw);
        kvdisk::decompress(*codec, bytes, raw, &mut out)
            .map_err(|e| KvError::Disk(e.to_string()))?;
        let grow = raw as u64 - bytes.len() as u64;
        self.grow_account(grow)?;
        self.set_storage(id, Storage::Quant(format, out.into_boxed_slice()));
        Ok(())
    }

    /// Writes a resident block to `store` under `key` and frees its RAM. If the write
    /// fails (a full disk, a read-only store) the block stays as it was.
    pub fn spill(&mut self, id: BlockId, store: &BlockStore, key: u64) -> Result<(), KvError> {
        let payload = match &self.storage[id.0 as usize] {
            // Decoded into a transient buffer rather than installed: a failed write must
            // not leave the block bigger than before.
            Storage::Packed {
                format,
                codec,
                raw,
                bytes,
            } => {
                let mut out = Vec::with_capacity(*raw);
                kvdisk::decompress(*codec, bytes, *raw, &mut out)
                    .map_err(|e| KvError::Disk(e.to_string()))?;
                encode_payload(*format, self.metas[id.0 as usize].filled, &out)
            }
            _ => self.payload(id)?,
        };
        store
            .put(key, &payload)
            .map_err(|e| KvError::Disk(e.to_string()))?;
        let format = self.metas[id.0 as usize].format;
        self.set_storage(id, Storage::Disk { format, key });
        self.sync_reservation();
        Ok(())
    }

    /// Reads a disk-tier block back into RAM, verified. A missing, corrupt or mismatched
    /// file is reported as [`KvError::Lost`]: the block must be recomputed, never used.
    pub fn load(&mut self, id: BlockId, store: &BlockStore) -> Result<(), KvError> {
        let Storage::Disk { key, .. } = self.storage[id.0 as usize] else {
            return Ok(());
        };
        self.load_fetched(id, store.get(key).map_err(|e| e.to_string()))
    }

    /// [`BlockPool::load`] from what a read of the block's file gave (a payload, no file,
    /// or why the file was refused), read here or ahead by a prefetcher.
    pub(crate) fn load_fetched(
        &mut self,
        id: BlockId,
        got: Result<Option<Vec<u8>>, String>,
    ) -> Result<(), KvError> {
        let Storage::Disk { format, .. } = self.storage[id.0 as usize] else {
            return Ok(());
        };
        let payload = match got {
            Ok(Some(p)) => p,
            Ok(None) => return Err(KvError::Lost(id, "block file missing".into())),
            Err(e) => return Err(KvError::Lost(id, e)),
        };
        self.install_payload(id, &payload, Some(format))
    }

    /// Fills a fresh block from a verified disk payload (prefix reuse across runs), which
    /// must hold a block in `format`.
    pub(crate) fn fill_prefix_payload(
        &mut self,
        id: BlockId,
        payload: &[u8],
        format: KvFormat,
    ) -> Result<(), KvError> {
        self.install_payload(id, payload, Some(format))
    }

    /// Replaces block `id`'s storage with a payload's, if it matches the layout (and
    /// `expect`, when given); the ledger must grant any growth.
    fn install_payload(
        &mut self,
        id: BlockId,
        payload: &[u8],
        expect: Option<KvFormat>,
    ) -> Result<(), KvError> {
        let (f, filled, body) = decode_payload(payload, &self.layout)
            .ok_or_else(|| KvError::Lost(id, "block payload does not match the layout".into()))?;
        if expect.is_some_and(|e| e != f) {
            return Err(KvError::Lost(id, "block file holds another format".into()));
        }
        let s = make_storage(f, body);
        let had = self.storage[id.0 as usize].ram_bytes();
        self.grow_account(s.ram_bytes().saturating_sub(had))?;
        self.set_storage(id, s);
        self.sync_reservation();
        self.metas[id.0 as usize].filled = filled;
        Ok(())
    }

    /// The payload [`BlockPool::spill`] writes for a resident block.
    pub(crate) fn payload(&self, id: BlockId) -> Result<Vec<u8>, KvError> {
        let filled = self.metas[id.0 as usize].filled;
        match &self.storage[id.0 as usize] {
            Storage::Quant(f, b) => Ok(encode_payload(*f, filled, b)),
            Storage::F16(b) => Ok(encode_payload(
                KvFormat::F16,
                filled,
                &b.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>(),
            )),
            _ => Err(KvError::NotResident(id)),
        }
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
        let geom = self.layout.geom();
        for (i, (m, s)) in self.metas.iter().zip(&self.storage).enumerate() {
            if m.ref_count == 0 {
                continue;
            }
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
                Storage::F16(b) => assert_eq!(b.len(), self.layout.block_elems(), "block {i} size"),
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

fn make_storage(f: KvFormat, body: &[u8]) -> Storage {
    match f {
        KvFormat::F16 => Storage::F16(
            body.chunks_exact(2)
                .map(|c| u16::from_le_bytes([c[0], c[1]]))
                .collect(),
        ),
        f => Storage::Quant(f, body.to_vec().into_boxed_slice()),
    }
}

/// `[format id u8][filled u16 le][block bytes]`.
fn encode_payload(f: KvFormat, filled: u16, body: &[u8]) -> Vec<u8> {
    let mut p = Vec::with_capacity(body.len() + 3);
    p.push(payload_tag(f));
    p.extend_from_slice(&filled.to_le_bytes());
    p.extend_from_slice(body);
    p
}

/// A payload's first byte: its format, and for quantized ones the chunk layout — 0x40
/// marks the layout with one-byte log scales; payloads of the earlier layout (f16 scales,
/// tagged by bits alone) no longer decode and are recomputed, never misread.
fn payload_tag(f: KvFormat) -> u8 {
    match f {
        KvFormat::F16 => 16,
        q => 0x40 | q.bits() as u8,
    }
}

fn decode_payload<'a>(p: &'a [u8], layout: &KvLayout) -> Option<(KvFormat, u16, &'a [u8])> {
    let (&id, rest) = p.split_first()?;
    let f = KvFormat::ALL.into_iter().find(|&f| payload_tag(f) == id)?;
    let filled = u16::from_le_bytes([*rest.first()?, *rest.get(1)?]);
    let body = &rest[2..];
    (body.len() == layout.geom().block_bytes(f) && filled as usize <= layout.block_tokens())
        .then_some((f, filled, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_of_the_earlier_chunk_layout_are_refused() {
        let layout = KvLayout::new(2, 1, 32, 16).unwrap();
        let body = vec![0u8; layout.geom().block_bytes(KvFormat::Q4)];
        let p = encode_payload(KvFormat::Q4, 16, &body);
        assert_eq!(decode_payload(&p, &layout).map(|d| d.0), Some(KvFormat::Q4));
        // The same body tagged as the f16-scale layout tagged it (bits alone).
        let mut old = p.clone();
        old[0] = 4;
        assert!(decode_payload(&old, &layout).is_none());
        let f16 = vec![0u8; layout.geom().block_bytes(KvFormat::F16)];
        let p = encode_payload(KvFormat::F16, 16, &f16);
        assert_eq!(
            decode_payload(&p, &layout).map(|d| d.0),
            Some(KvFormat::F16)
        );
    }
}
