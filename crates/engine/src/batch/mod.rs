//! The batched engine: many sequences in one forward pass.
//!
//! A [`Batch`] is a list of [`BatchItem`]s `{seq, pos, token, wants_logits}` from any
//! number of sequences. [`Engine::decode`] runs them together: the matrix products run
//! over all the batch's tokens at once, so a decode step of N sequences reads the weights
//! once instead of N times (decode is memory-bound: one token of SmolLM2-135M reads all
//! ~97 MB of its weights). Attention runs per sequence over its own block table, each
//! sequence's consecutive items in one call, all sequences' calls in one pool dispatch.
//! Logits are computed only for the items that ask for them.
//!
//! One [`Engine`] holds one thread pool, one [`KvCache`] for every sequence (so prefixes
//! are shared between live sequences through the cache's chained hashes), scratch sized
//! for a micro-batch of tokens (reserved in the ledger before it is allocated), and each
//! sequence's tokens. Sequences join ([`Engine::seq_new`], [`Engine::seq_fork`]) and leave
//! ([`Engine::seq_remove`]) between calls, so a scheduler can drive it step by step.
//!
//! ```no_run
//! # let file = weights::MappedFile::open("model.gguf".as_ref()).unwrap();
//! # let gguf = gguf::GgufFile::parse(file.bytes()).unwrap();
//! # let tm = engine::text::TextModel::from_gguf(&gguf).unwrap();
//! use engine::batch::{Batch, BatchConfig, Engine};
//! use engine::forward::Logits;
//! let mut e = Engine::unbudgeted(&tm.model, BatchConfig::new(512, 8, 2)).unwrap();
//! let (a, b) = (e.seq_new(), e.seq_new());
//! let mut batch = Batch::new();
//! batch.push_tokens(a, 0, &tm.encode("The capital of France is"), Logits::Last);
//! batch.push_tokens(b, 0, &tm.encode("Once upon a time"), Logits::Last);
//! let out = e.decode(&batch).unwrap();
//! let next_a = engine::sampler::argmax(out.logits(batch.len() - 1).unwrap());
//! ```

mod embed;
mod forward;

use std::collections::BTreeMap;

use kernels::pool::ThreadPool;
use kvcache::policy::{Rates, Reclaimed, Weights};
use kvcache::{BlockStore, Compression, KvCache, KvError, KvFormat, SeqId, TierMix};

use crate::forward::{BLOCK_TOKENS, EvalError, Logits};
use crate::layers::Workspace;
use crate::memory::Accounts;
use crate::model::Model;

/// Settings of a batched engine.
#[derive(Clone, Copy, Debug)]
pub struct BatchConfig {
    /// Most tokens one sequence may hold.
    pub n_ctx: usize,
    /// Sequences the cache is sized for: `⌈n_ctx / block⌉ × max_seqs` blocks, unless
    /// `kv_blocks` says otherwise.
    pub max_seqs: usize,
    pub n_threads: usize,
    /// Most tokens in one forward pass (scratch is sized for it); a longer batch is run
    /// in micro-batches.
    pub ubatch: usize,
    /// Precision of each sequence's KV blocks by age (default: all f16).
    pub kv_mix: TierMix,
    /// The cache's capacity in blocks, instead of the one `n_ctx × max_seqs` gives.
    pub kv_blocks: Option<usize>,
}

impl BatchConfig {
    /// `max_seqs` sequences of up to `n_ctx` tokens, an all-f16 cache, micro-batches of
    /// 512 tokens.
    pub fn new(n_ctx: usize, max_seqs: usize, n_threads: usize) -> Self {
        BatchConfig {
            n_ctx,
            max_seqs,
            n_threads,
            ubatch: 512,
            kv_mix: TierMix::uniform(KvFormat::F16),
            kv_blocks: None,
        }
    }

    /// The disk store's directory name for blocks this configuration computes of the
    /// model and build the digests identify (see the session's `kv_store_identity`).
    pub fn kv_store_identity(&self, model_file_digest: u64, build_digest: u64) -> u64 {
        crate::forward::seqs::store_identity(
            "batch",
            [model_file_digest, build_digest],
            &self.kv_mix,
            self.ubatch.clamp(1, 4096),
            self.n_threads,
        )
    }
}

/// One token of one sequence in a [`Batch`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchItem {
    pub seq: SeqId,
    /// Its position: a sequence's items in a batch are consecutive, starting at the
    /// number of tokens the sequence holds.
    pub pos: usize,
    pub token: u32,
    /// Whether [`BatchOutput`] gets a row of logits for it.
    pub wants_logits: bool,
}

/// Tokens of any number of sequences, decoded together by [`Engine::decode`].
#[derive(Clone, Debug, Default)]
pub struct Batch {
    items: Vec<BatchItem>,
}

impl Batch {
    pub fn new() -> Self {
        Batch::default()
    }

    pub fn push(&mut self, item: BatchItem) {
        self.items.push(item);
    }

    /// Appends `tokens` of `seq` at positions `pos0..`, asking logits for the last of them
    /// ([`Logits::Last`]) or for each ([`Logits::All`]).
    pub fn push_tokens(&mut self, seq: SeqId, pos0: usize, tokens: &[u32], which: Logits) {
        let last = tokens.len().saturating_sub(1);
        self.items
            .extend(tokens.iter().enumerate().map(|(i, &token)| BatchItem {
                seq,
                pos: pos0 + i,
                token,
                wants_logits: which == Logits::All || i == last,
            }));
    }

    pub fn items(&self) -> &[BatchItem] {
        &self.items
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    pub fn clear(&mut self) {
        self.items.clear();
    }
}

/// The logits of a decoded batch: one row for each item that asked for them.
#[derive(Debug)]
pub struct BatchOutput<'e> {
    vocab: usize,
    logits: &'e [f32],
    /// Each item's row in `logits`, if it asked for one.
    rows: &'e [Option<u32>],
}

impl BatchOutput<'_> {
    /// The logits of item `item` (its index in the batch), if it asked for them.
    pub fn logits(&self, item: usize) -> Option<&[f32]> {
        let r = (*self.rows.get(item)?)? as usize;
        Some(&self.logits[r * self.vocab..(r + 1) * self.vocab])
    }

    /// Rows of logits (items that asked for them).
    pub fn n_rows(&self) -> usize {
        self.logits.len() / self.vocab.max(1)
    }
}

/// A live sequence's state beside its KV blocks.
#[derive(Debug, Default, Clone)]
struct SeqState {
    /// Its tokens from position 0 (prefix hashing needs them); its length is the
    /// sequence's length, which always equals the tokens its KV blocks hold.
    tokens: Vec<u32>,
}

/// Runs batches of many sequences against one model. See the module docs.
///
/// # Invariants
/// - The live sequences here and in `kv` are the same, and each one's `tokens` are as
///   many as the tokens its KV blocks hold (`kv.seq_len`): a decode that fails before
///   computing changes neither, one that computes a micro-batch changes both.
/// - `rows` has one entry per item of the last batch, and the rows it names are the
///   rows of `logits` (each once).
pub struct Engine<'a, 'm> {
    model: &'a Model<'m>,
    cfg: BatchConfig,
    pool: ThreadPool,
    kv: KvCache,
    seqs: BTreeMap<SeqId, SeqState>,
    /// Tokens run through the model (shared prefixes are not counted).
    computed_tokens: u64,
    /// Most KV storage bytes held at once.
    peak_kv_bytes: u64,
    ropes: crate::layers::Ropes,
    /// Scratch, the last batch's logits (one row per item that asked) and the attention
    /// workspace, with their account in the ledger.
    w: Workspace,
    /// The last batch's row of each item.
    rows: Vec<Option<u32>>,
    /// Sequences being embedded ([`Engine::embed`]): the sum of their final-normed
    /// hidden states so far.
    pooled: BTreeMap<SeqId, Vec<f32>>,
}

impl<'a, 'm> Engine<'a, 'm> {
    /// An engine with its own unlimited ledger: accounting only, nothing is ever refused
    /// for memory. An explicit opt-out of the budget for tests and benches; a command
    /// that runs under a budget uses [`Engine::with_accounts`].
    pub fn unbudgeted(model: &'a Model<'m>, cfg: BatchConfig) -> Result<Self, EvalError> {
        Self::with_accounts(model, cfg, &Accounts::unlimited())
    }

    /// An engine whose buffers are reserved in `accounts`: scratch now (before it is
    /// allocated), KV blocks as sequences grow.
    pub fn with_accounts(
        model: &'a Model<'m>,
        cfg: BatchConfig,
        accounts: &Accounts,
    ) -> Result<Self, EvalError> {
        let layout = crate::forward::kv_layout(&model.cfg);
        let blocks = cfg
            .kv_blocks
            .unwrap_or(cfg.n_ctx.div_ceil(BLOCK_TOKENS) * cfg.max_seqs.max(1));
        let mut kv = KvCache::new(layout, blocks);
        kv.pool_mut().set_reservation(accounts.open(accounts.kv))?;
        // Windowed layers in a ring of their window (an all-f16 cache; see kvcache's ring).
        kv.set_ring(cfg.kv_mix.is_all_f16());
        // A mixed cache limits each sequence's run, not the micro-batch (see `decode`).
        let ubatch = cfg.ubatch.clamp(1, 4096);
        let w = Workspace::new(model, ubatch, accounts)?;
        Ok(Engine {
            model,
            cfg: BatchConfig { ubatch, ..cfg },
            pool: ThreadPool::new(cfg.n_threads)?,
            kv,
            seqs: BTreeMap::new(),
            computed_tokens: 0,
            peak_kv_bytes: 0,
            ropes: crate::layers::Ropes::new(model),
            w,
            rows: Vec::new(),
            pooled: BTreeMap::new(),
        })
    }

    pub fn model(&self) -> &Model<'m> {
        self.model
    }

    /// The settings in force (`ubatch` clamped to 1..=4096).
    pub fn config(&self) -> &BatchConfig {
        &self.cfg
    }

    /// The shared KV cache (tiers, block counts, prefix index).
    pub fn kv(&self) -> &KvCache {
        &self.kv
    }

    /// Bytes of KV block storage held now (in use or kept for reuse).
    pub fn kv_bytes(&self) -> u64 {
        self.kv.pool().storage_bytes()
    }

    /// The most KV storage bytes held at once so far.
    pub fn peak_kv_bytes(&self) -> u64 {
        self.peak_kv_bytes.max(self.kv_bytes())
    }

    /// Bytes of scratch, logits and attention workspace (as reserved in the ledger).
    pub fn scratch_bytes(&self) -> u64 {
        self.w.reserved_bytes()
    }

    /// Tokens run through the model so far (tokens attached from shared prefixes were
    /// not computed and are not counted).
    pub fn computed_tokens(&self) -> u64 {
        self.computed_tokens
    }

    /// Starts an empty sequence.
    pub fn seq_new(&mut self) -> SeqId {
        let id = self.kv.seq_new();
        self.seqs.insert(id, SeqState::default());
        id
    }

    /// Forks `src`: the new sequence shares `src`'s full blocks and gets its own copy of
    /// its partial last block, so both continue from the same tokens without recomputing
    /// them.
    pub fn seq_fork(&mut self, src: SeqId) -> Result<SeqId, EvalError> {
        let st = self.seqs.get(&src).ok_or(KvError::UnknownSeq(src))?.clone();
        let id = self.kv.seq_copy(src)?;
        self.seqs.insert(id, st);
        self.note_kv_peak();
        self.debug_check();
        Ok(id)
    }

    /// Ends `seq` (finished or cancelled): its blocks return to the pool, except those
    /// other sequences share. Unknown ids are ignored.
    pub fn seq_remove(&mut self, seq: SeqId) {
        if self.seqs.remove(&seq).is_some() {
            self.kv.seq_remove(seq);
        }
        self.debug_check();
    }

    /// For an empty `seq`: attaches the cached KV of the longest prefix of `prompt` that
    /// a live sequence has published, or that `store` holds (blocks an earlier sequence
    /// wrote with [`Engine::seq_persist`], maybe in an earlier process), leaving at least
    /// its last token to decode (its logits are wanted). Returns the tokens attached:
    /// decode `prompt[n..]` next.
    pub fn seq_attach_prefix(
        &mut self,
        seq: SeqId,
        prompt: &[u32],
        store: Option<&BlockStore>,
    ) -> Result<usize, EvalError> {
        let st = self.seqs.get(&seq).ok_or(KvError::UnknownSeq(seq))?;
        if !st.tokens.is_empty() || prompt.is_empty() {
            return Ok(0);
        }
        let Some(rule) = self.share_rule() else {
            return Ok(0);
        };
        let max = (prompt.len() - 1).min(self.cfg.n_ctx);
        let n = match store {
            Some(st) => self.kv.seq_attach_from_disk(seq, prompt, max, &rule, st)?,
            None => self.kv.seq_attach_prefix(seq, prompt, max, &rule)?,
        };
        let st = self.seqs.get_mut(&seq).expect("checked above");
        st.tokens.extend_from_slice(&prompt[..n]);
        self.debug_check();
        Ok(n)
    }

    /// Writes `seq`'s published blocks to `store` (those already there are kept if they
    /// verify), so a later sequence with the same prefix, in this process or a later
    /// one, attaches them instead of computing them. A write that fails (a full disk)
    /// stops the writing and is in [`kvcache::Persisted::failure`].
    pub fn seq_persist(
        &mut self,
        seq: SeqId,
        store: &BlockStore,
    ) -> Result<kvcache::Persisted, EvalError> {
        let Some(rule) = self.share_rule() else {
            return Ok(kvcache::Persisted::default());
        };
        Ok(self.kv.seq_persist(seq, store, rule.format)?)
    }

    /// Holds the disk store's root to `cap_bytes` of block files, least valuable first
    /// (see [`kvcache::KvCache::trim_store`]).
    pub fn trim_store(
        &self,
        store: &BlockStore,
        cap_bytes: u64,
    ) -> Result<kvcache::policy::Trimmed, EvalError> {
        let siblings = store.siblings();
        Ok(self.kv.trim_store(
            store,
            &siblings,
            cap_bytes,
            &Weights::default(),
            &Rates::default(),
        )?)
    }

    /// What a block shared between live sequences must match: the cache type's one
    /// format (a mix by age shares nothing: a block's precision depends on when it was
    /// demoted) and the block boundary. Unlike `--kv-dir` reuse (micro-batch aligned, see
    /// docs/design/kv.md), a sequence that continues from a shared block may round its
    /// next tokens' attention differently from a run alone: bit-identity holds for the
    /// shared blocks themselves, not for what follows them.
    pub(crate) fn share_rule(&self) -> Option<kvcache::ReuseRule> {
        Some(kvcache::ReuseRule {
            digest: self.model.digest,
            format: self.cfg.kv_mix.uniform_format()?,
            align_tokens: crate::forward::BLOCK_TOKENS,
        })
    }

    /// Marks `seq` running (its blocks are never chosen by [`Engine::reclaim`]) or
    /// paused (preempted: its blocks may be demoted, compressed or written to disk).
    pub fn seq_set_running(&mut self, seq: SeqId, running: bool) -> Result<(), EvalError> {
        Ok(self.kv.seq_set_running(seq, running)?)
    }

    /// Frees at least `shortfall` bytes of KV RAM from paused sequences' blocks if they
    /// allow: demoted (only if `demote`), then written to `store`. Returns what was done.
    pub fn reclaim(
        &mut self,
        shortfall: u64,
        store: Option<&BlockStore>,
        demote: bool,
    ) -> Result<Reclaimed, EvalError> {
        let r = self.kv.reclaim_with(
            shortfall,
            store,
            Compression::None,
            demote,
            &Weights::default(),
            &Rates::default(),
        )?;
        Ok(r)
    }

    /// Gives back the storage that free blocks keep for reuse; returns the bytes freed.
    pub fn trim_free_blocks(&mut self) -> u64 {
        let before = self.kv.pool().storage_bytes();
        self.kv.pool_mut().trim();
        before - self.kv.pool().storage_bytes()
    }

    /// Makes every block of `seq` readable by attention again (loads the ones written to
    /// `store`). A block that cannot be read back cuts the sequence before it: its
    /// tokens from there on must be computed again ([`Engine::seq_tokens`] says how many
    /// remain).
    pub fn seq_prepare(&mut self, seq: SeqId, store: Option<&BlockStore>) -> Result<(), EvalError> {
        let r = self.kv.seq_prepare(seq, store);
        if let (Err(KvError::Lost(..)), Some(st)) = (&r, self.seqs.get_mut(&seq)) {
            let held = self.kv.seq_len(seq)?;
            st.tokens.truncate(held);
        }
        self.note_kv_peak();
        self.debug_check();
        Ok(r?)
    }

    /// Tokens of one sequence the cache could ever hold: the pool's blocks, or what the
    /// ledger's `kv` pool grants at most in the cache's format, whichever is less. With
    /// sliding-window layers, what the plan's figure ([`TierMix::seq_bytes`]) fits.
    pub fn kv_capacity_tokens(&self) -> usize {
        let p = self.kv.pool();
        let bt = p.layout().block_tokens();
        let fmt = self.cfg.kv_mix.uniform_format().unwrap_or(KvFormat::F16);
        let block = p.layout().block_bytes_in(fmt).max(1);
        let by_count = p.capacity().saturating_mul(bt);
        let Some(avail) = p.available_bytes() else {
            return by_count;
        };
        let bytes = avail + p.storage_bytes();
        if p.layout().window().is_some() {
            // Sliding-window layers hold only their window: the plan's figure, inverted.
            let max = by_count.min(self.cfg.n_ctx.max(1));
            return self
                .cfg
                .kv_mix
                .tokens_within(p.layout(), bytes, max, self.cfg.ubatch);
        }
        by_count.min(((bytes / block) as usize).saturating_mul(bt))
    }

    /// Shrinks `seq` to its first `tokens` tokens (to compute the rest again) and returns
    /// the tokens kept: fewer when a sliding-window layer's window there would reach
    /// tokens whose windowed layers were dropped ([`KvCache::seq_truncate`]).
    pub fn seq_truncate(&mut self, seq: SeqId, tokens: usize) -> Result<usize, EvalError> {
        let st = self.seqs.get(&seq).ok_or(KvError::UnknownSeq(seq))?;
        let keep = tokens.min(st.tokens.len());
        let keep = self.kv.seq_truncate(seq, keep)?;
        self.seqs
            .get_mut(&seq)
            .expect("checked above")
            .tokens
            .truncate(keep);
        self.debug_check();
        Ok(keep)
    }

    /// The engine's compute threads, idle between forward passes (the scheduler samples
    /// many sequences' tokens on them at once).
    pub fn pool(&self) -> &ThreadPool {
        &self.pool
    }

    /// The logits of item `item` of the last batch [`Engine::decode`] ran, if it asked
    /// for them (what that call's [`BatchOutput::logits`] returned).
    pub fn last_logits(&self, item: usize) -> Option<&[f32]> {
        let vocab = self.model.cfg.vocab;
        let r = (*self.rows.get(item)?)? as usize;
        self.w.logits.get(r * vocab..(r + 1) * vocab)
    }

    /// Live sequences, in id order.
    pub fn seq_ids(&self) -> impl Iterator<Item = SeqId> + '_ {
        self.seqs.keys().copied()
    }

    /// The tokens `seq` holds, or `None` if it is unknown.
    pub fn seq_tokens(&self, seq: SeqId) -> Option<&[u32]> {
        self.seqs.get(&seq).map(|s| s.tokens.as_slice())
    }

    /// Checks the invariants in this type's docs (and the cache's).
    ///
    /// # Panics
    /// If any is broken.
    pub fn check_invariants(&self) {
        self.kv.check_invariants();
        let live: Vec<SeqId> = self.seqs.keys().copied().collect();
        assert_eq!(
            live,
            self.kv.seq_ids(),
            "engine and cache disagree on live sequences"
        );
        for (id, st) in &self.seqs {
            let held = self.kv.seq_len(*id).expect("live in the cache");
            assert_eq!(st.tokens.len(), held, "{id:?}: tokens vs KV length");
        }
        let mut named: Vec<u32> = self.rows.iter().flatten().copied().collect();
        named.sort_unstable();
        let n_rows = self.w.logits.len() / self.model.cfg.vocab.max(1);
        assert!(
            named.iter().copied().eq(0..n_rows as u32),
            "logits rows named once each"
        );
    }

    pub(crate) fn debug_check(&self) {
        #[cfg(debug_assertions)]
        self.check_invariants();
    }

    fn note_kv_peak(&mut self) {
        self.peak_kv_bytes = self.peak_kv_bytes.max(self.kv_bytes());
    }
}
