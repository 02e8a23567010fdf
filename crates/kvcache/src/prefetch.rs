//! Background promotion: a worker thread reads and verifies disk-tier blocks ahead of the
//! step that needs them, so [`KvCache::seq_prepare_with`] finds them in memory instead of
//! waiting on the disk.
//!
//! The bytes read ahead are in the ledger before they exist: [`Prefetcher::request`]
//! grows the prefetcher's own reservation by the block's payload size, or leaves the block
//! to be loaded synchronously later when the budget refuses. Taking a payload gives those
//! bytes back (the pool then accounts for the block it installs). A file that fails its
//! checksum fails in the worker exactly as it would in a synchronous load: the block is
//! reported lost and recomputed, never used.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, Sender, channel};
use std::thread::JoinHandle;

use budget::{Bytes, Reservation};
use kvdisk::BlockStore;

use crate::pool::{BlockId, Storage, Tier};
use crate::seq::{KvCache, KvError, SeqId};

/// What the worker read for one key: the payload, `None` when there is no such file, or
/// why the file was refused.
type Fetched = Result<Option<Vec<u8>>, String>;

/// Counts for metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PrefetchStats {
    /// Blocks asked for.
    pub requested: u64,
    /// Blocks not read ahead because the budget had no room for them then.
    pub refused: u64,
    /// Disk blocks promoted from a payload read ahead.
    pub hits: u64,
    /// Disk blocks promoted without one (read when needed).
    pub misses: u64,
}

/// Stack of the read-ahead thread, set so that the memory plan can count it (Rust's
/// default is 2 MiB). It reads a file, checks its xxh3 sum and decodes lz4 or zstd, whose
/// working memory is on the heap; 256 KiB is the compute workers' size
/// (`kernels::pool::WORKER_STACK_BYTES`), several times what this path needs.
pub const PREFETCH_STACK_BYTES: usize = 256 * 1024;

/// A worker thread reading disk-tier blocks ahead; see the module doc.
pub struct Prefetcher {
    jobs: Option<Sender<u64>>,
    done: Receiver<(u64, Fetched)>,
    worker: Option<JoinHandle<()>>,
    /// Requested keys → bytes reserved for them; results not yet taken are in `ready`.
    pending: HashMap<u64, u64>,
    ready: HashMap<u64, Fetched>,
    reservation: Reservation,
    stats: PrefetchStats,
}

impl Prefetcher {
    /// Starts the worker on `store`; read-ahead bytes are reserved in `reservation`
    /// (usually an empty one opened in the kv pool).
    ///
    /// # Errors
    /// When the OS cannot start a thread.
    pub fn new(store: Arc<BlockStore>, reservation: Reservation) -> std::io::Result<Self> {
        let (jobs, rx) = channel::<u64>();
        let (tx, done) = channel();
        let worker = std::thread::Builder::new()
            .name("llmem-kv-prefetch".into())
            .stack_size(PREFETCH_STACK_BYTES)
            .spawn(move || {
                for key in rx {
                    let got = store.get(key).map_err(|e| e.to_string());
                    if tx.send((key, got)).is_err() {
                        break;
                    }
                }
            })?;
        Ok(Prefetcher {
            jobs: Some(jobs),
            done,
            worker: Some(worker),
            pending: HashMap::new(),
            ready: HashMap::new(),
            reservation,
            stats: PrefetchStats::default(),
        })
    }

    /// Asks for `key` (a payload of `bytes`) to be read ahead. Returns `false`, asking
    /// nothing, when the ledger has no room for it now or it is already asked for.
    pub fn request(&mut self, key: u64, bytes: u64) -> bool {
        if self.pending.contains_key(&key) {
            return false;
        }
        if self.reservation.try_grow(Bytes(bytes)).is_err() {
            self.stats.refused += 1;
            return false;
        }
        let sent = self.jobs.as_ref().is_some_and(|j| j.send(key).is_ok());
        if !sent {
            let _ = self.reservation.shrink(Bytes(bytes));
            return false;
        }
        self.pending.insert(key, bytes);
        self.stats.requested += 1;
        true
    }

    /// Whether `key` was asked for and not yet taken.
    pub fn is_pending(&self, key: u64) -> bool {
        self.pending.contains_key(&key)
    }

    /// The payload read for `key`, waiting for the worker if it is still reading; `None`
    /// when `key` was never asked for (or already taken).
    pub fn take(&mut self, key: u64) -> Option<Fetched> {
        let bytes = *self.pending.get(&key)?;
        while !self.ready.contains_key(&key) {
            match self.done.recv() {
                Ok((k, got)) => {
                    self.ready.insert(k, got);
                }
                Err(_) => {
                    self.ready
                        .insert(key, Err("the prefetch worker stopped".into()));
                }
            }
        }
        self.pending.remove(&key);
        let _ = self.reservation.shrink(Bytes(bytes));
        self.ready.remove(&key)
    }

    /// Blocks until every requested read has finished (their payloads stay until taken).
    pub fn wait_all(&mut self) {
        while self.ready.len() < self.pending.len() {
            match self.done.recv() {
                Ok((k, got)) => {
                    self.ready.insert(k, got);
                }
                Err(_) => break,
            }
        }
    }

    /// Drops every payload not taken and gives its bytes back.
    pub fn clear(&mut self) {
        self.wait_all();
        let held: u64 = self.pending.drain().map(|(_, b)| b).sum();
        self.ready.clear();
        let _ = self.reservation.shrink(Bytes(held));
    }

    /// Bytes reserved for reads in flight or not yet taken.
    pub fn reserved_bytes(&self) -> u64 {
        self.reservation.size().0
    }

    pub fn stats(&self) -> PrefetchStats {
        self.stats
    }
}

impl Drop for Prefetcher {
    fn drop(&mut self) {
        self.jobs = None; // ends the worker's loop once it finishes its queue
        if let Some(w) = self.worker.take() {
            let _ = w.join();
        }
    }
}

impl KvCache {
    /// Asks `pf` to read `seq`'s disk-tier blocks ahead, in order; returns how many it
    /// took on (the others load synchronously when the sequence is prepared).
    pub fn seq_prefetch(&self, seq: SeqId, pf: &mut Prefetcher) -> Result<usize, KvError> {
        let mut n = 0;
        for &id in self.seq_blocks(seq)? {
            if let Some((key, bytes)) = self.disk_key(id) {
                n += usize::from(pf.request(key, bytes));
            }
        }
        Ok(n)
    }

    /// Payload bytes of `seq`'s disk-tier blocks that `pf` is not reading ahead: what
    /// [`KvCache::seq_prefetch`] still needs room for.
    pub fn seq_unfetched_bytes(&self, seq: SeqId, pf: &Prefetcher) -> Result<u64, KvError> {
        Ok(self
            .seq_blocks(seq)?
            .iter()
            .filter_map(|&id| self.disk_key(id))
            .filter(|(key, _)| !pf.is_pending(*key))
            .map(|(_, bytes)| bytes)
            .sum())
    }

    /// [`KvCache::seq_prepare`], taking disk blocks from what `pf` read ahead where it
    /// has them.
    pub fn seq_prepare_with(
        &mut self,
        seq: SeqId,
        store: Option<&BlockStore>,
        mut pf: Option<&mut Prefetcher>,
    ) -> Result<(), KvError> {
        let blocks = self.seq_blocks(seq)?.to_vec();
        for (b, id) in blocks.into_iter().enumerate() {
            if self.pool().meta(id).compressed {
                self.pool_mut().decompress(id)?;
            }
            let Some((key, _)) = self.disk_key(id) else {
                continue;
            };
            let fetched = pf.as_deref_mut().and_then(|p| p.take(key));
            let hit = fetched.is_some();
            let r = match (fetched, store) {
                (Some(got), _) => self.pool_mut().load_fetched(id, got),
                (None, Some(st)) => self.pool_mut().load(id, st),
                (None, None) => Err(KvError::Lost(id, "no disk store is open".into())),
            };
            match r {
                Err(e @ KvError::Lost(..)) => {
                    self.seq_truncate(seq, b * self.layout().block_tokens())?;
                    return Err(e);
                }
                // No room to load it now (over budget): nothing is lost, try later.
                Err(e) => return Err(e),
                // A spill file is this block's alone (its key is never reused): once the
                // block is back in RAM the file is garbage. Best effort; trimming catches
                // what is left.
                Ok(()) => {
                    if let Some(st) = store {
                        let _ = st.remove(key);
                    }
                }
            }
            if let Some(p) = pf.as_deref_mut() {
                if hit {
                    p.stats.hits += 1;
                } else {
                    p.stats.misses += 1;
                }
            }
        }
        Ok(())
    }

    /// (file key, payload bytes) of a disk-tier block.
    pub(crate) fn disk_key(&self, id: BlockId) -> Option<(u64, u64)> {
        if self.pool().meta(id).tier != Tier::Disk {
            return None;
        }
        match *self.pool().storage(id) {
            Storage::Disk { format, key } => Some((key, self.pool().bytes_in(id, format) + 3)),
            _ => None,
        }
    }
}
