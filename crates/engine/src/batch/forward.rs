//! [`Engine::decode`]: checking a batch, grouping it into runs and micro-batches, the KV
//! plan, and one micro-batch's forward pass.
//!
//! A **run** is a sequence's consecutive items computed in one attention call (a prefill
//! chunk: `n_q > 1`; a decode step: `n_q = 1`). A sequence's items are cut into runs of at
//! most `run_cap` tokens counted from its first item in the batch — the chunks a
//! [`Session`](crate::forward::Session) would cut the same tokens into — and a
//! **micro-batch** takes at most one run of each sequence, as many as fit `ubatch` tokens.
//! So a sequence's runs go through the model in order, one per forward pass, and with a
//! mixed cache its blocks are demoted between them as a session demotes them.

use std::collections::{BTreeMap, VecDeque};

use kernels::attention::{AttnCall, AttnShape, PagedKv, attention_many, scratch_len_many};
use kvcache::{KvBlock, KvError, PlanError, SeqId, WriteRun};

use super::{Batch, BatchItem, BatchOutput, Engine};
use crate::forward::{BLOCK_TOKENS, EvalError, MIXED_UBATCH};
use crate::layers;
use crate::phases::{self, Phase};

/// Consecutive items of one sequence, attended in one call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Run {
    seq: SeqId,
    /// Position of its first token.
    pos0: usize,
    /// Its items are `order[start..start + len]`.
    start: usize,
    len: usize,
}

/// Groups `items` by sequence (in order of first appearance, each sequence's items in
/// batch order) into `order`, cuts each sequence's items into runs of at most `run_cap`,
/// and packs the runs into micro-batches of at most `ubatch` tokens, at most one run of a
/// sequence per micro-batch. Requires `1 ≤ run_cap ≤ ubatch`.
fn schedule(items: &[BatchItem], run_cap: usize, ubatch: usize) -> (Vec<usize>, Vec<Vec<Run>>) {
    debug_assert!((1..=ubatch).contains(&run_cap));
    let mut first_seen: Vec<SeqId> = Vec::new();
    let mut by_seq: BTreeMap<SeqId, Vec<usize>> = BTreeMap::new();
    for (i, it) in items.iter().enumerate() {
        by_seq
            .entry(it.seq)
            .or_insert_with(|| {
                first_seen.push(it.seq);
                Vec::new()
            })
            .push(i);
    }
    let mut order = Vec::with_capacity(items.len());
    let mut queues: Vec<VecDeque<Run>> = Vec::with_capacity(first_seen.len());
    for seq in first_seen {
        let idx = &by_seq[&seq];
        let mut q = VecDeque::new();
        for chunk in idx.chunks(run_cap) {
            q.push_back(Run {
                seq,
                pos0: items[chunk[0]].pos,
                start: order.len(),
                len: chunk.len(),
            });
            order.extend_from_slice(chunk);
        }
        queues.push(q);
    }
    let mut micro = Vec::new();
    while queues.iter().any(|q| !q.is_empty()) {
        let (mut mb, mut used) = (Vec::new(), 0);
        for q in &mut queues {
            if let Some(r) = q.front()
                && used + r.len <= ubatch
            {
                used += r.len;
                mb.push(q.pop_front().expect("front exists"));
            }
        }
        micro.push(mb);
    }
    (order, micro)
}

impl Engine<'_, '_> {
    /// Decodes `batch`: appends every item's token to its sequence and returns the logits
    /// of the items that asked for them.
    ///
    /// A sequence's items must be consecutive positions starting at its length (in batch
    /// order; they may be interleaved with other sequences' items). With an all-f16 cache
    /// the whole batch's KV is planned and reserved before anything is computed: on error
    /// nothing changed ([`EvalError::NoRoom`] says what was short). With a mixed cache the
    /// KV grows one micro-batch at a time and is demoted between them, so a long prompt
    /// holds at most one micro-batch of f16 beyond its mix; if the cache refuses part-way,
    /// the micro-batches already computed stay ([`Engine::seq_tokens`] says how far each
    /// sequence got) and the error says why.
    pub fn decode(&mut self, batch: &Batch) -> Result<BatchOutput<'_>, EvalError> {
        phases::begin();
        let items = batch.items();
        let grows = self.check(items)?;
        let c = &self.model.cfg;
        let (vocab, hd) = (c.vocab, c.head_dim);
        let all_f16 = self.cfg.kv_mix.is_all_f16();
        let run_cap = if all_f16 {
            self.cfg.ubatch
        } else {
            self.cfg.ubatch.min(MIXED_UBATCH)
        };
        let (order, micro) = schedule(items, run_cap, self.cfg.ubatch);
        let n_out = items.iter().filter(|i| i.wants_logits).count();
        let attn_need = micro
            .iter()
            .map(|mb| {
                let shapes: Vec<AttnShape> = mb.iter().map(|r| self.shape(r)).collect();
                scratch_len_many(&shapes, hd)
            })
            .max()
            .unwrap_or(0);
        let own_need = micro
            .iter()
            .map(|mb| {
                mb.iter()
                    .map(|r| layers::own_rows_len(c, r.pos0, r.len))
                    .sum::<usize>()
            })
            .max()
            .unwrap_or(0);
        self.w.account(n_out * vocab, attn_need, own_need)?;
        if !self.stepwise() {
            self.grow_kv(&grows)?;
        }
        self.w.fit(n_out * vocab, attn_need, own_need);
        self.rows.clear();
        self.rows.resize(items.len(), None);
        phases::mark(Phase::Plan);
        if let Err(e) = self.run_micro_batches(items, &order, &micro) {
            // Part of a mixed cache's batch may have been computed (see above); no item
            // has logits.
            self.rows.clear();
            self.w.logits.clear();
            self.debug_check();
            return Err(e);
        }
        // Recency and frequency of use, for the eviction score.
        for &(seq, _) in &grows {
            self.kv.seq_touch(seq)?;
        }
        self.debug_check();
        phases::mark(Phase::Finish);
        Ok(BatchOutput {
            vocab,
            logits: &self.w.logits[..n_out * vocab],
            rows: &self.rows,
        })
    }

    /// Runs `micro` in order: KV growth (per micro-batch for a mixed cache), the forward
    /// pass, then each sequence's tokens, published blocks and tier mix.
    fn run_micro_batches(
        &mut self,
        items: &[BatchItem],
        order: &[usize],
        micro: &[Vec<Run>],
    ) -> Result<(), EvalError> {
        let all_f16 = self.cfg.kv_mix.is_all_f16();
        let stepwise = self.stepwise();
        let mut next_row = 0;
        for mb in micro {
            if stepwise {
                let g: Vec<(SeqId, usize)> = mb.iter().map(|r| (r.seq, r.len)).collect();
                self.grow_kv(&g)?;
                phases::mark(Phase::Plan);
            }
            let wanted = self.forward(items, order, mb, next_row)?;
            phases::mark(Phase::Head);
            for i in wanted {
                self.rows[i] = Some(next_row as u32);
                next_row += 1;
            }
            let share = self.share_rule();
            for r in mb {
                let st = self.seqs.get_mut(&r.seq).expect("checked");
                st.tokens.extend(
                    order[r.start..r.start + r.len]
                        .iter()
                        .map(|&i| items[i].token),
                );
                self.computed_tokens += r.len as u64;
                // Blocks out of every window of the next query drop their windowed
                // layers (none without sliding-window layers); full guests settle.
                let next = st.tokens.len();
                self.kv.seq_thin(r.seq, next)?;
                if let Some(rule) = &share {
                    self.kv
                        .seq_publish(r.seq, &st.tokens, rule.digest, rule.format)?;
                }
                if !all_f16 {
                    self.kv
                        .seq_apply_mix(r.seq, &self.cfg.kv_mix, Some(&self.pool))?;
                }
            }
            phases::mark(Phase::Finish);
        }
        Ok(())
    }

    /// Checks every item (known sequence, token in the vocabulary, positions in order,
    /// room in the context) and returns each sequence's new tokens, in id order.
    fn check(&self, items: &[BatchItem]) -> Result<Vec<(SeqId, usize)>, EvalError> {
        let vocab = self.model.cfg.vocab;
        // Per sequence: (length before the batch, next position expected).
        let mut at: BTreeMap<SeqId, (usize, usize)> = BTreeMap::new();
        for it in items {
            if it.token as usize >= vocab {
                return Err(EvalError::BadToken {
                    id: it.token,
                    vocab,
                });
            }
            let (_, next) = match at.entry(it.seq) {
                std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::btree_map::Entry::Vacant(e) => {
                    let st = self.seqs.get(&it.seq).ok_or(KvError::UnknownSeq(it.seq))?;
                    e.insert((st.tokens.len(), st.tokens.len()))
                }
            };
            if it.pos != *next {
                return Err(EvalError::BadPosition {
                    seq: it.seq,
                    pos: it.pos,
                    expected: *next,
                });
            }
            *next += 1;
        }
        let n_ctx = self.cfg.n_ctx;
        at.into_iter()
            .map(|(seq, (have, end))| {
                if end > n_ctx {
                    return Err(EvalError::ContextFull {
                        have,
                        adding: end - have,
                        n_ctx,
                    });
                }
                Ok((seq, end - have))
            })
            .collect()
    }

    /// Whether the KV grows a micro-batch at a time rather than a step at once: a mixed
    /// cache (demoted between micro-batches), or a model with sliding-window layers
    /// (whose windowed layers then hold their window, not the step).
    fn stepwise(&self) -> bool {
        !self.cfg.kv_mix.is_all_f16() || self.kv.layout().window().is_some()
    }

    /// Plans and applies growing each `(seq, tokens)`; no room is returned as a value.
    fn grow_kv(&mut self, grows: &[(SeqId, usize)]) -> Result<(), EvalError> {
        let plan = self.kv.plan(grows).map_err(|e| match e {
            PlanError::NoRoom(n) => EvalError::NoRoom(n),
            PlanError::Kv(e) => EvalError::Kv(e),
        })?;
        self.kv.apply(plan)?;
        self.note_kv_peak();
        Ok(())
    }

    fn shape(&self, r: &Run) -> AttnShape {
        let c = &self.model.cfg;
        AttnShape {
            n_q: r.len,
            pos0: r.pos0,
            n_heads: c.n_heads,
            n_kv_heads: c.n_kv_heads,
            scale: c.hooks.attn_scale,
            window: None,
        }
    }

    /// Runs one micro-batch — the tokens of `runs`, row by row — through the model, its
    /// KV into the cache (reserved already), and writes the logits of the rows that want
    /// them from logits row `row0` on. Returns those rows' item indices, in order.
    fn forward(
        &mut self,
        items: &[BatchItem],
        order: &[usize],
        runs: &[Run],
        row0: usize,
    ) -> Result<Vec<usize>, EvalError> {
        let m = self.model;
        let c = &m.cfg;
        let qd = c.n_heads * c.head_dim;
        let kvd = c.n_kv_heads * c.head_dim;
        let rows: Vec<usize> = runs
            .iter()
            .flat_map(|r| order[r.start..r.start + r.len].iter().copied())
            .collect();
        let n = rows.len();
        let shapes: Vec<AttnShape> = runs.iter().map(|r| self.shape(r)).collect();
        let n_blocks: usize = runs
            .iter()
            .map(|r| (r.pos0 + r.len).div_ceil(BLOCK_TOKENS))
            .sum();
        let layout = *self.kv.layout();
        let geom = layout.geom();
        let pool = &self.pool;
        let s = &mut self.w.s;

        layers::embed(m, &self.ropes, s, n, |t| {
            (items[rows[t]].token, items[rows[t]].pos)
        });
        // Each run's first row.
        let firsts: Vec<usize> = runs
            .iter()
            .scan(0, |at, r| {
                let first = *at;
                *at += r.len;
                Some(first)
            })
            .collect();
        for (li, l) in m.layers.iter().enumerate() {
            layers::project_qkv(pool, c, l, li, &self.ropes, s, n, li > 0);
            // A sliding-window layer's run of several tokens reads its own rows from
            // scratch and writes them after (they may replace rows it reads: the ring).
            let own = |r: &Run| layers::reads_own_rows(c.layer_window(li), r.len);
            let write = |kv: &mut kvcache::KvCache, s: &layers::Scratch, later: bool| {
                let wr: Vec<WriteRun> = runs
                    .iter()
                    .zip(&firsts)
                    .filter(|(r, _)| own(r) == later)
                    .map(|(r, &first)| WriteRun {
                        seq: r.seq,
                        pos0: r.pos0,
                        len: r.len,
                        row0: first,
                    })
                    .collect();
                kv.write_runs(li, &wr, (&s.k[..n * kvd], &s.v[..n * kvd]), pool)
                    .expect("positions were reserved");
            };
            write(&mut self.kv, s, false);
            s.own.clear();
            let mut own_at = Vec::with_capacity(runs.len());
            for (r, &first) in runs.iter().zip(&firsts) {
                let at = s.own.len();
                if own(r) {
                    let span = first * kvd..(first + r.len) * kvd;
                    layers::own_rows(
                        &self.kv,
                        r.seq,
                        li,
                        r.pos0,
                        (&s.k[span.clone()], &s.v[span]),
                        &mut s.own,
                    )?;
                }
                own_at.push(at..s.own.len());
            }
            let slot = layout.slot(li);
            // Every run's blocks in one list, each run's calls over its own span.
            let mut views: Vec<KvBlock<'_>> = Vec::with_capacity(n_blocks);
            let mut spans = Vec::with_capacity(runs.len());
            for (r, at) in runs.iter().zip(own_at) {
                let first = views.len();
                self.kv.layer_views(r.seq, li, &mut views)?;
                if own(r) {
                    views.truncate(first + r.pos0 / BLOCK_TOKENS);
                    views.extend(layers::own_views(&s.own[at], kvd));
                }
                spans.push(first..views.len());
            }
            phases::mark(Phase::Kv);
            let mut calls = Vec::with_capacity(runs.len());
            let (mut q_rest, mut out_rest) = (&s.q[..n * qd], &mut s.att[..n * qd]);
            for ((r, span), shape) in runs.iter().zip(spans).zip(&shapes) {
                let (q, rest) = q_rest.split_at(r.len * qd);
                q_rest = rest;
                let (out, rest) = std::mem::take(&mut out_rest).split_at_mut(r.len * qd);
                out_rest = rest;
                calls.push(AttnCall {
                    q,
                    kv: PagedKv {
                        blocks: &views[span],
                        geom,
                        layer: slot,
                    },
                    shape: AttnShape {
                        window: c.layer_window(li),
                        ..*shape
                    },
                    out,
                });
            }
            attention_many(pool, &mut calls, &mut s.attn);
            phases::mark(Phase::Attention);
            drop(calls);
            drop(views);
            write(&mut self.kv, s, true);
            phases::mark(Phase::Kv);
            layers::finish_layer(pool, c, (l, m.layers.get(li + 1)), s, n);
        }

        let wanted: Vec<usize> = (0..n).filter(|&t| items[rows[t]].wants_logits).collect();
        if !wanted.is_empty() {
            let vocab = c.vocab;
            layers::output_logits(
                pool,
                m,
                s,
                |j| wanted[j],
                wanted.len(),
                &mut self.w.logits[row0 * vocab..(row0 + wanted.len()) * vocab],
            );
        }
        // The output head leaves `s.x` as it was: the hidden states are still there.
        self.pool_rows(items, &rows);
        Ok(wanted.into_iter().map(|t| rows[t]).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(seq: u32, pos: usize) -> BatchItem {
        BatchItem {
            seq: SeqId(seq),
            pos,
            token: 0,
            wants_logits: false,
        }
    }

    #[test]
    fn runs_follow_each_sequence_and_micro_batches_take_one_run_of_each() {
        // Sequence 1: 5 tokens, interleaved with sequence 0's 2 and sequence 2's 1.
        let items = [
            item(1, 0),
            item(0, 7),
            item(1, 1),
            item(1, 2),
            item(0, 8),
            item(2, 3),
            item(1, 3),
            item(1, 4),
        ];
        let (order, micro) = schedule(&items, 2, 4);
        // Grouped by first appearance: sequence 1, then 0, then 2.
        assert_eq!(order, vec![0, 2, 3, 6, 7, 1, 4, 5]);
        let runs = |mb: &[Run]| -> Vec<(u32, usize, usize)> {
            mb.iter().map(|r| (r.seq.0, r.pos0, r.len)).collect()
        };
        assert_eq!(micro.len(), 3);
        // 1's runs: [0,1] [2,3] [4]; 0's: [7,8]; 2's: [3].
        assert_eq!(runs(&micro[0]), vec![(1, 0, 2), (0, 7, 2)]);
        assert_eq!(runs(&micro[1]), vec![(1, 2, 2), (2, 3, 1)]);
        assert_eq!(runs(&micro[2]), vec![(1, 4, 1)]);
        for mb in &micro {
            assert!(mb.iter().map(|r| r.len).sum::<usize>() <= 4);
        }
    }

    #[test]
    fn a_decode_step_of_many_sequences_is_one_micro_batch() {
        let items: Vec<BatchItem> = (0..32).map(|s| item(s, 100)).collect();
        let (order, micro) = schedule(&items, 512, 512);
        assert_eq!(order, (0..32).collect::<Vec<_>>());
        assert_eq!(micro.len(), 1);
        assert!(micro[0].iter().all(|r| r.len == 1));
    }
}
