//! Writing a batch's keys and values for one layer at once, from the f32 rows the model
//! computed, converted to f16 straight into their blocks and spread over a thread pool.
//!
//! A prompt's micro-batch writes hundreds of rows a layer. One at a time through
//! [`KvCache::write`] each row pays a sequence lookup, the block checks and a copy out of
//! a staging buffer, on the thread that drives the engine while the others wait: on 16
//! cores that serial part was about a tenth of a prefill. Here every check is made
//! first, once per block a run touches (so on error nothing was written), then each
//! block's rows are converted by one thread, blocks apart: no two threads touch a block.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};

use kernels::pool::ThreadPool;

use crate::pool::BlockId;
use crate::seq::{KvCache, KvError, SeqId};

/// Rows at which a layer's writes are shared across the pool's threads (fewer convert
/// faster than the threads wake).
const PAR_ROWS: usize = 32;

/// One run of a batch's rows: `len` consecutive positions of `seq` from `pos0`, whose
/// keys and values are rows `row0..row0 + len` of the f32 inputs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WriteRun {
    pub seq: SeqId,
    pub pos0: usize,
    pub len: usize,
    pub row0: usize,
}

/// The rows of one run that fall in one block: block rows `t0..t1`, input rows from `row0`.
#[derive(Clone, Copy)]
struct Span {
    t0: usize,
    t1: usize,
    row0: usize,
}

/// A block's storage, handed to the one thread that writes it.
struct BlockPtr(*mut u16, usize);
// SAFETY: each BlockPtr is used by one thread at a time (one work item per block), and
// distinct blocks own disjoint storage.
unsafe impl Sync for BlockPtr {}

impl KvCache {
    /// Writes the keys and values of `runs` for `layer`: `k` and `v` hold f32 rows of
    /// `n_kv_heads × head_dim` (run `r`'s token `i` at row `r.row0 + i`), stored as f16
    /// as [`KvCache::write`] stores them, with its checks, all made before anything is
    /// written: on error nothing was. Layouts with sliding-window layers (whose rows may
    /// go to a host block) write row by row through [`KvCache::write`], so there an error
    /// leaves the rows before it written.
    pub fn write_runs(
        &mut self,
        layer: usize,
        runs: &[WriteRun],
        (k, v): (&[f32], &[f32]),
        pool: &ThreadPool,
    ) -> Result<(), KvError> {
        let l = *self.layout();
        self.check_layer(layer)?;
        let row = l.n_kv_heads() * l.head_dim();
        let rows = runs.iter().map(|r| r.row0 + r.len).max().unwrap_or(0);
        for got in [k.len(), v.len()] {
            if got < rows * row {
                return Err(KvError::BadRow {
                    got,
                    expected: rows * row,
                });
            }
        }
        if l.window().is_some() {
            return self.write_rows_one_by_one(layer, runs, (k, v));
        }
        let bt = l.block_tokens();
        let mut spans: BTreeMap<BlockId, Vec<Span>> = BTreeMap::new();
        for r in runs.iter().filter(|r| r.len > 0) {
            let s = self.get(r.seq)?;
            let end = r.pos0 + r.len;
            if end > s.reserved_tokens {
                return Err(KvError::OutOfRange {
                    seq: r.seq,
                    pos: end - 1,
                    reserved: s.reserved_tokens,
                });
            }
            for b in r.pos0 / bt..end.div_ceil(bt) {
                let id = s.blocks[b];
                if self.pool.meta(id).thin {
                    return Err(KvError::Thinned(id));
                }
                if self.pool.meta(id).ref_count > 1 {
                    return Err(KvError::SharedBlock(id));
                }
                let (p0, p1) = (r.pos0.max(b * bt), end.min((b + 1) * bt));
                spans.entry(id).or_default().push(Span {
                    t0: p0 - b * bt,
                    t1: p1 - b * bt,
                    row0: r.row0 + (p0 - r.pos0),
                });
            }
        }
        let mut blocks = Vec::with_capacity(spans.len());
        for (&id, sp) in &spans {
            let data = self.pool.data_mut(id).ok_or(KvError::NotWritable(id))?;
            blocks.push((BlockPtr(data.as_mut_ptr(), data.len()), sp));
        }
        let hd = l.head_dim();
        let write_block = |(dst, sp): &(BlockPtr, &Vec<Span>)| {
            // SAFETY: this block's storage is written by this call alone (one work item
            // per block; distinct blocks are disjoint), while `self` is borrowed mutably.
            let data = unsafe { std::slice::from_raw_parts_mut(dst.0, dst.1) };
            for s in sp.iter() {
                for t in s.t0..s.t1 {
                    let src = (s.row0 + t - s.t0) * row;
                    for h in 0..l.n_kv_heads() {
                        let ko = l.k_base(layer) + h * l.head_stride() + t * hd;
                        let vo = l.v_base(layer) + h * l.head_stride() + t * hd;
                        let x = src + h * hd..src + (h + 1) * hd;
                        kernels::ops::f32_to_f16(&k[x.clone()], &mut data[ko..ko + hd]);
                        kernels::ops::f32_to_f16(&v[x], &mut data[vo..vo + hd]);
                    }
                }
            }
        };
        if rows < PAR_ROWS || blocks.len() < 2 {
            blocks.iter().for_each(write_block);
        } else {
            let next = AtomicUsize::new(0);
            pool.run(|_| {
                while let Some(b) = blocks.get(next.fetch_add(1, Ordering::Relaxed)) {
                    write_block(b);
                }
            });
        }
        for (&id, sp) in &spans {
            let t1 = sp.iter().map(|s| s.t1).max().unwrap_or(0);
            let m = self.pool.meta_mut(id);
            m.filled = m.filled.max(t1 as u16);
        }
        Ok(())
    }

    /// [`KvCache::write_runs`] through [`KvCache::write`], one row at a time.
    fn write_rows_one_by_one(
        &mut self,
        layer: usize,
        runs: &[WriteRun],
        (k, v): (&[f32], &[f32]),
    ) -> Result<(), KvError> {
        let row = self.layout().n_kv_heads() * self.layout().head_dim();
        let (mut kf, mut vf) = (vec![0u16; row], vec![0u16; row]);
        for r in runs {
            for i in 0..r.len {
                let x = (r.row0 + i) * row..(r.row0 + i + 1) * row;
                kernels::ops::f32_to_f16(&k[x.clone()], &mut kf);
                kernels::ops::f32_to_f16(&v[x], &mut vf);
                self.write(r.seq, layer, r.pos0 + i, &kf, &vf)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::KvLayout;
    use kernels::kvquant::KvBlock;

    /// Every block of `seq`, as f16 bits.
    fn blocks(kv: &KvCache, seq: SeqId) -> Vec<Vec<u16>> {
        let mut views = Vec::new();
        kv.block_views(seq, &mut views).unwrap();
        views
            .iter()
            .map(|b| match b {
                KvBlock::F16(x) => x.to_vec(),
                _ => panic!("a fresh block is f16"),
            })
            .collect()
    }

    /// Rows of distinct values (exact in f16), `salt` apart between K and V.
    fn rows(n: usize, row: usize, salt: f32) -> Vec<f32> {
        (0..n * row)
            .map(|i| (i % 2039) as f32 * 0.25 + salt)
            .collect()
    }

    #[test]
    fn runs_write_what_row_by_row_writes_on_any_pool() {
        // 2 layers, 2 KV heads of 8, 16-token blocks; three sequences, runs that start
        // and end inside blocks, 70 rows in all (over PAR_ROWS: the pool takes them).
        let layout = KvLayout::new(2, 2, 8, 16).unwrap();
        let row = 16;
        let runs_of = |seqs: &[SeqId]| {
            vec![
                WriteRun {
                    seq: seqs[0],
                    pos0: 5,
                    len: 30,
                    row0: 0,
                },
                WriteRun {
                    seq: seqs[1],
                    pos0: 0,
                    len: 33,
                    row0: 30,
                },
                WriteRun {
                    seq: seqs[2],
                    pos0: 17,
                    len: 7,
                    row0: 63,
                },
            ]
        };
        let (k, v) = (rows(70, row, 0.0), rows(70, row, 1000.0));
        let mut want = KvCache::new(layout, 16);
        let ws: Vec<SeqId> = (0..3).map(|_| want.seq_new()).collect();
        for &s in &ws {
            want.seq_reserve(s, 40).unwrap();
        }
        for layer in 0..2 {
            for r in runs_of(&ws) {
                for i in 0..r.len {
                    let x = (r.row0 + i) * row..(r.row0 + i + 1) * row;
                    let (mut kf, mut vf) = (vec![0u16; row], vec![0u16; row]);
                    kernels::ops::f32_to_f16(&k[x.clone()], &mut kf);
                    kernels::ops::f32_to_f16(&v[x], &mut vf);
                    want.write(r.seq, layer, r.pos0 + i, &kf, &vf).unwrap();
                }
            }
        }
        for threads in [1, 4] {
            let pool = ThreadPool::new(threads).unwrap();
            let mut got = KvCache::new(layout, 16);
            let gs: Vec<SeqId> = (0..3).map(|_| got.seq_new()).collect();
            for &s in &gs {
                got.seq_reserve(s, 40).unwrap();
            }
            for layer in 0..2 {
                got.write_runs(layer, &runs_of(&gs), (&k, &v), &pool)
                    .unwrap();
            }
            for (a, b) in ws.iter().zip(&gs) {
                assert_eq!(blocks(&got, *b), blocks(&want, *a), "{threads} threads");
                let filled = |kv: &KvCache, s| -> Vec<u16> {
                    let ids = kv.seq_blocks(s).unwrap().to_vec();
                    ids.iter().map(|&id| kv.pool().meta(id).filled).collect()
                };
                assert_eq!(filled(&got, *b), filled(&want, *a));
            }
        }
    }

    #[test]
    fn a_bad_run_writes_nothing() {
        let layout = KvLayout::new(1, 1, 8, 16).unwrap();
        let pool = ThreadPool::new(2).unwrap();
        let mut kv = KvCache::new(layout, 8);
        let a = kv.seq_new();
        kv.seq_reserve(a, 24).unwrap();
        let (k, v) = (rows(40, 8, 1.0), rows(40, 8, 2.0));
        let before = blocks(&kv, a);
        let ok = WriteRun {
            seq: a,
            pos0: 0,
            len: 8,
            row0: 0,
        };
        // Past what was reserved: refused before the good run is written.
        let far = WriteRun {
            seq: a,
            pos0: 20,
            len: 13,
            row0: 8,
        };
        assert!(matches!(
            kv.write_runs(0, &[ok, far], (&k, &v), &pool),
            Err(KvError::OutOfRange { pos: 32, .. })
        ));
        assert!(matches!(
            kv.write_runs(1, &[ok], (&k, &v), &pool),
            Err(KvError::BadLayer { layer: 1, .. })
        ));
        assert!(matches!(
            kv.write_runs(0, &[ok], (&k[..8 * 7], &v), &pool),
            Err(KvError::BadRow { .. })
        ));
        // A block shared with a copy is read-only: the fork shares block 0 (full) and
        // owns a copy of block 1 (partial), whose run is refused with it.
        kv.write_runs(0, &[ok], (&k, &v), &pool).unwrap();
        let written = blocks(&kv, a);
        assert_ne!(written, before);
        let fork = kv.seq_copy(a).unwrap();
        let shared = WriteRun {
            seq: fork,
            pos0: 0,
            len: 1,
            row0: 0,
        };
        let own = WriteRun {
            seq: fork,
            pos0: 16,
            len: 1,
            row0: 0,
        };
        let fork_before = blocks(&kv, fork);
        assert!(matches!(
            kv.write_runs(0, &[own, shared], (&k, &v), &pool),
            Err(KvError::SharedBlock(_))
        ));
        assert_eq!(blocks(&kv, fork), fork_before, "nothing written");
        assert_eq!(blocks(&kv, a), written);
    }
}
