//! Windowed layers in a ring of exactly their window.
//!
//! With sliding-window layers a query at position `p` reads the windowed rows of
//! positions `p + 1 - window ..= p` only. When the window is a whole number `wb` of
//! blocks, the row of position `p` can take the place of the row of `p - window`: that
//! row left every window when `p` is read. So a new block `b` of a sequence is
//! allocated *thin* (its global layers only) and its windowed rows are written into
//! block `b - wb`, its *host*, row by row over the host's own. When the guest is full
//! the two exchange storage ([`crate::BlockPool`]'s `swap_windowed`): the guest becomes
//! whole, the host thin. A sequence's windowed layers then never hold more than the
//! window — 512 tokens for Gemma 3, not the window and the block being written.
//!
//! Rules that keep it sound:
//! - A host is a whole, hot f16 block the sequence owns alone, with none of its rows
//!   lent before, complete — or a guest, whose new guest writes where its rows live (a
//!   chain, settled in order). The block holding a guest's rows (its *home*) is marked
//!   `BlockMeta::hosting`: the tier mix and pressure pass it by until the guest settles,
//!   and the prefix index never offers it for another block.
//! - Rows are replaced only after every query of the step that needs the old ones has
//!   read them: a step of one token per sequence writes first (its query never reads
//!   the row it replaces); a longer one reads its own rows from scratch and writes after
//!   the layer's attention (the engine's part). So the ring is on only for engines that
//!   do so ([`KvCache::set_ring`]).
//! - `BlockMeta::lent` counts the host's rows that are not its own; every verb that lets
//!   a query see a block (reuse, truncation, shift) treats those rows as missing, as it
//!   treats a thin block's — all of a hosting block's rows for anyone but the sequence
//!   whose guest writes there. Fork, shift and key re-rotation first give each guest
//!   storage of its own ([`KvCache::seq_unfold`]).

use kernels::kvquant::{KvBlock, KvFormat};

use crate::pool::{BlockId, Tier};
use crate::seq::{KvCache, KvError, SeqId, Sequence};

impl KvCache {
    /// Turns the ring on or off for blocks allocated from now on (off by default). On is
    /// for an engine that writes a step's windowed rows as this module's doc says; a
    /// layout without windowed layers, or whose window is not whole blocks, ignores it.
    pub fn set_ring(&mut self, on: bool) {
        self.ring = on;
    }

    /// Blocks in the window, if the ring is on and can run on this layout.
    fn ring_blocks(&self) -> Option<usize> {
        self.window_blocks().filter(|_| self.ring)
    }

    /// Where the windowed rows of table index `b` of `s` live: the block itself if it
    /// is whole, else (a guest) its host's home, following guests of guests — `None` for a
    /// thin block that is no guest.
    pub(crate) fn home(&self, s: &Sequence, mut b: usize) -> Option<BlockId> {
        let wb = self.window_blocks()?;
        loop {
            let id = s.blocks[b];
            if !self.pool.meta(id).thin {
                return Some(id);
            }
            if !s.guests.contains(&b) {
                return None;
            }
            b -= wb;
        }
    }

    /// Whether block `b` of `s` (about to be appended, `b ≥ s.blocks.len()`) can be a
    /// guest: its host qualifies. A host appended in the same call always does (whole or
    /// a guest itself, its rows are written before the new block's).
    fn has_host(&self, s: &Sequence, b: usize) -> bool {
        let Some(h) = self.ring_blocks().and_then(|wb| b.checked_sub(wb)) else {
            return false;
        };
        if h >= s.blocks.len() {
            return true;
        }
        let Some(home) = self.home(s, h) else {
            return false;
        };
        let m = self.pool.meta(home);
        // A whole host: complete, all its rows its own, no guest yet. A host that is
        // itself a guest: the new block continues its chain.
        let own_rows = s.blocks[h] != home
            || ((m.filled as usize) == self.layout().block_tokens() && !m.hosting && m.lent == 0);
        own_rows
            && m.ref_count == 1
            && m.tier == Tier::Hot
            && m.format == KvFormat::F16
            && !m.compressed
    }

    /// For each of the next `n` blocks of `seq`: whether it is allocated as a thin guest.
    fn append_guests(&self, seq: SeqId, n: usize) -> Result<Vec<bool>, KvError> {
        let s = self.get(seq)?;
        Ok((0..n)
            .map(|i| self.has_host(s, s.blocks.len() + i))
            .collect())
    }

    /// How the next `n` blocks of `seq` would be allocated: (whole, thin guests).
    pub(crate) fn append_shape(&self, seq: SeqId, n: usize) -> Result<(usize, usize), KvError> {
        let thin = self.append_guests(seq, n)?.iter().filter(|&&g| g).count();
        Ok((n - thin, thin))
    }

    /// Appends `n` blocks to `seq`'s table — thin guests where a host qualifies, whole
    /// blocks elsewhere — after the ledger granted their bytes. The caller checked the
    /// free blocks.
    pub(crate) fn append_blocks(&mut self, seq: SeqId, n: usize) -> Result<(), KvError> {
        let plan = self.append_guests(seq, n)?;
        let thin = plan.iter().filter(|&&g| g).count();
        self.pool
            .grow_account(self.pool.new_blocks_bytes(n - thin, thin))?;
        let first = self.get(seq)?.blocks.len();
        // Cannot fail for want of blocks: the caller counted the free ones.
        let ids: Vec<BlockId> = plan
            .iter()
            .map(|&guest| {
                if guest {
                    self.pool.alloc_thin().expect("free block counted")
                } else {
                    self.pool.alloc().expect("free block counted")
                }
            })
            .collect();
        let s = self.seqs.get_mut(&seq).expect("checked");
        s.blocks.extend(ids);
        s.guests
            .extend((first..first + n).filter(|&b| plan[b - first]));
        self.pool.sync_reservation();
        self.set_hosting(seq, true);
        Ok(())
    }

    /// Marks (or unmarks) the home of every guest of `seq` as hosting.
    fn set_hosting(&mut self, seq: SeqId, on: bool) {
        let Some(s) = self.seqs.get(&seq) else { return };
        let homes: Vec<BlockId> = s.guests.iter().filter_map(|&g| self.home(s, g)).collect();
        for id in homes {
            self.pool.meta_mut(id).hosting = on;
        }
    }

    /// Ends the guests of `seq` that are full: each takes its home's storage (whose
    /// windowed rows are all the guest's now, or its own guest's) and the home becomes
    /// thin. Called before thinning and publishing, when the step that filled them is
    /// over.
    pub(crate) fn settle(&mut self, seq: SeqId) {
        let bt = self.layout().block_tokens();
        let Some(s) = self.seqs.get(&seq) else { return };
        let full: Vec<usize> = s
            .guests
            .iter()
            .copied()
            .filter(|&g| self.pool.meta(s.blocks[g]).filled as usize == bt)
            .collect();
        if full.is_empty() {
            return;
        }
        self.set_hosting(seq, false);
        // In order: a guest's host may be a guest that settles first (and is whole, so
        // its own home, when the next one looks).
        for &g in &full {
            let s = &self.seqs[&seq];
            let home = self.home(s, g).expect("a guest has a home");
            self.pool.swap_windowed(s.blocks[g], home);
        }
        let s = self.seqs.get_mut(&seq).expect("checked");
        s.guests.retain(|g| !full.contains(g));
        self.set_hosting(seq, true);
    }

    /// Gives every guest of `seq` storage of its own (its rows copied out of its home),
    /// before a verb that would otherwise share or move a host: fork, shift, re-rotation.
    /// The hosts keep their `lent` rows marked.
    pub fn seq_unfold(&mut self, seq: SeqId) -> Result<(), KvError> {
        let guests = self.get(seq)?.guests.clone();
        if guests.is_empty() {
            return Ok(());
        }
        self.set_hosting(seq, false);
        let mut result = Ok(());
        for g in guests {
            let s = &self.seqs[&seq];
            let home = self.home(s, g).expect("a guest has a home");
            let guest = s.blocks[g];
            if let Err(e) = self.pool.unfold(guest, home) {
                result = Err(e);
                break;
            }
            self.seqs
                .get_mut(&seq)
                .expect("checked")
                .guests
                .retain(|&x| x != g);
        }
        self.set_hosting(seq, true);
        self.debug_check();
        result
    }

    /// Stops the guests of `seq` at or after table index `keep` (about to be dropped)
    /// from hosting; their hosts keep their `lent` rows marked.
    pub(crate) fn drop_guests_from(&mut self, seq: SeqId, keep: usize) {
        if self.seqs.get(&seq).is_none_or(|s| s.guests.is_empty()) {
            return;
        }
        self.set_hosting(seq, false);
        if let Some(s) = self.seqs.get_mut(&seq) {
            s.guests.retain(|&g| g < keep);
        }
        self.set_hosting(seq, true);
    }

    /// The window in blocks, for a sequence that may have guests.
    fn window_blocks(&self) -> Option<usize> {
        let l = self.layout();
        let w = l.window()?;
        w.is_multiple_of(l.block_tokens())
            .then(|| w / l.block_tokens())
    }

    /// Where `layer`'s row of table index `b` of `s` is stored: the block itself, or its
    /// home for a guest's windowed rows (`true`). `Thinned` for a thin block's windowed
    /// layer.
    pub(crate) fn row_home(
        &self,
        s: &Sequence,
        layer: usize,
        b: usize,
    ) -> Result<(BlockId, bool), KvError> {
        let id = s.blocks[b];
        if !self.pool.meta(id).thin || !self.layout().is_windowed(layer) {
            return Ok((id, false));
        }
        match self.home(s, b) {
            Some(home) => Ok((home, true)),
            None => Err(KvError::Thinned(id)),
        }
    }

    /// Marks row `t` of the windowed layers as lent along guest `b`'s chain of hosts (a
    /// write of the guest's row `t` replaced theirs).
    pub(crate) fn lend(&mut self, seq: SeqId, mut b: usize, t: usize) {
        let Some(wb) = self.window_blocks() else {
            return;
        };
        let s = &self.seqs[&seq];
        let mut hops = Vec::new();
        while s.guests.contains(&b) {
            b -= wb;
            hops.push(s.blocks[b]);
        }
        for id in hops {
            let m = self.pool.meta_mut(id);
            m.lent = m.lent.max(t as u16 + 1);
        }
    }

    /// Reads one token's keys and values of `layer` at `pos` of `seq` (f16, as written).
    pub fn read(
        &self,
        seq: SeqId,
        layer: usize,
        pos: usize,
        k: &mut [u16],
        v: &mut [u16],
    ) -> Result<(), KvError> {
        let l = *self.layout();
        self.check_layer(layer)?;
        let s = self.get(seq)?;
        if pos >= s.reserved_tokens {
            return Err(KvError::OutOfRange {
                seq,
                pos,
                reserved: s.reserved_tokens,
            });
        }
        let (id, _) = self.row_home(s, layer, pos / l.block_tokens())?;
        let data = match self.pool.view(id)? {
            KvBlock::F16(d) => d,
            _ => return Err(KvError::NotWritable(id)),
        };
        let (t, hd) = (pos % l.block_tokens(), l.head_dim());
        for h in 0..l.n_kv_heads() {
            let ko = l.k_base(layer) + h * l.head_stride() + t * hd;
            let vo = l.v_base(layer) + h * l.head_stride() + t * hd;
            k[h * hd..(h + 1) * hd].copy_from_slice(&data[ko..ko + hd]);
            v[h * hd..(h + 1) * hd].copy_from_slice(&data[vo..vo + hd]);
        }
        Ok(())
    }

    /// Appends to `out` a view of each block of `seq` as `layer`'s attention reads it: a
    /// guest's view is its home's for a windowed layer (the home's rows past the
    /// guest's are its own, which that query still sees).
    pub fn layer_views<'a>(
        &'a self,
        seq: SeqId,
        layer: usize,
        out: &mut Vec<KvBlock<'a>>,
    ) -> Result<(), KvError> {
        let s = self.get(seq)?;
        for b in 0..s.blocks.len() {
            let id = match self.row_home(s, layer, b) {
                Ok((id, _)) => id,
                // Out of every window: attention starts past it.
                Err(KvError::Thinned(id)) => id,
                Err(e) => return Err(e),
            };
            out.push(self.pool.view(id)?);
        }
        Ok(())
    }

    /// Whether a windowed query at `next` of `s` (`None`: a sequence about to take the
    /// block) would see rows of block `id`, its table index `b`, that it does not hold: a
    /// thin block's (unless a guest of `s`: its rows are in its home), or the rows a host
    /// lent. The sequence whose guest writes into a home misses the rows lent so far;
    /// anyone else all of a hosting block's rows, since that guest writes on.
    pub(crate) fn missing_in_sight(
        &self,
        s: Option<&Sequence>,
        id: BlockId,
        b: usize,
        next: usize,
    ) -> bool {
        let guest = s.is_some_and(|s| s.guests.contains(&b));
        let owner = s.is_some_and(|s| s.guests.iter().any(|&g| self.home(s, g) == Some(id)));
        let l = self.layout();
        if !l.window_sees(b, next) {
            return false;
        }
        let m = self.pool.meta(id);
        if m.thin && !guest {
            return true;
        }
        let bt = l.block_tokens();
        let first_seen = (next + 1).saturating_sub(l.window().unwrap_or(0));
        let row0 = first_seen.saturating_sub(b * bt);
        let lent = if m.hosting && !owner {
            bt
        } else {
            m.lent as usize
        };
        row0 < lent
    }
}
