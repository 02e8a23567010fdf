//! Decode calls that read the same blocks: work units of one split shared by every
//! one-token call whose blocks there are the same f16 blocks (a prefix their sequences
//! share), each block read and converted once for all of them.

use super::*;

/// The f16 block `b`'s address, the key calls are matched by for sharing.
fn f16_addr(b: &KvBlock<'_>) -> Option<usize> {
    match b {
        KvBlock::F16(x) => Some(x.as_ptr() as usize),
        _ => None,
    }
}

/// Cuts the work items into units for the threads: `members` lists items, `units` runs
/// of it (start, length). A unit of several items is one split of one KV head in calls
/// of one query token each whose blocks there are the same f16 blocks (a prefix they
/// share): [`run_shared`] reads each block once for all of them. Every other item is a
/// unit alone. Prompt tiles come first, the longest ahead. Each row goes through the
/// same steps either way, and in any order, so the results do not depend on what shares
/// or on what runs first.
pub(super) fn shared_units(
    ins: &[(&[f32], PagedKv<'_>, AttnShape)],
    plans: &[CallPlan],
    items: usize,
) -> (Vec<u32>, Vec<(u32, u32)>) {
    let mut taken = vec![false; items];
    let mut members = Vec::with_capacity(items);
    let mut units = Vec::with_capacity(items);
    // The threads take units in order, so the longest go first: a prompt's tiles (up to
    // 32 tokens' rows over all the keys before them, tens of times a decode split's work), the
    // latest tile of the longest prompt ahead, so that no thread starts one while the
    // others run out of work.
    let mut heavy: Vec<(usize, usize)> = Vec::new();
    for (ci, (_, kv, sh)) in ins.iter().enumerate() {
        if splits_keys(sh) {
            continue;
        }
        let p = plans[ci];
        for tile in 0..p.q_tiles {
            let (_, nt) = tile_tokens(sh, tile);
            let (b0, b1) = split_blocks(sh, kv.geom.block_tokens, tile, 0);
            for h in 0..sh.n_kv_heads {
                heavy.push(((b1 - b0) * nt, p.first + h * p.q_tiles + tile));
            }
        }
    }
    heavy.sort_unstable_by(|a, b| b.cmp(a));
    for &(_, it) in &heavy {
        taken[it] = true;
        units.push((members.len() as u32, 1));
        members.push(it as u32);
    }
    // (split, its last block, call) for every whole split of every call that may share
    // (one query token, no window): calls whose split ends in the same f16 block hold the
    // same prefix up to there. Matching on the first block instead put every sequence
    // that began with the same system prompt in one group, and sharing then went to the
    // first one's siblings alone.
    let mut cand: Vec<(usize, usize, usize)> = Vec::new();
    for (ci, (_, kv, sh)) in ins.iter().enumerate() {
        if sh.n_q != 1 || sh.window.is_some() || plans[ci].splits < 2 {
            continue;
        }
        let bt = kv.geom.block_tokens;
        let wb = split_width(sh) / bt;
        let n_blocks = (sh.pos0 + sh.n_q - 1) / bt + 1;
        for s in 0..n_blocks / wb {
            if let Some(a) = f16_addr(&kv.blocks[(s + 1) * wb - 1]) {
                cand.push((s, a, ci));
            }
        }
    }
    cand.sort_unstable();
    let mut group = Vec::new();
    for run in cand
        .chunk_by(|a, b| (a.0, a.1) == (b.0, b.1))
        .filter(|r| r.len() > 1)
    {
        let s = run[0].0;
        let (_, lkv, lsh) = &ins[run[0].2];
        let w = split_width(lsh);
        let span = s * w / lkv.geom.block_tokens..(s + 1) * w / lkv.geom.block_tokens;
        // The split's blocks must all be the lead's: the unit reads the lead's.
        group.clear();
        group.extend(run.iter().map(|c| c.2).filter(|&ci| {
            let (_, kv, sh) = &ins[ci];
            split_width(sh) == w
                && sh.scale == lsh.scale
                && kv.geom == lkv.geom
                && kv.layer == lkv.layer
                && span.clone().all(|b| {
                    matches!((f16_addr(&kv.blocks[b]), f16_addr(&lkv.blocks[b])),
                             (Some(a), Some(l)) if a == l)
                })
        }));
        if group.len() < 2 {
            continue;
        }
        for h in 0..lsh.n_kv_heads {
            let start = members.len();
            for &ci in &group {
                let it = plans[ci].first + h * plans[ci].splits + s;
                taken[it] = true;
                members.push(it as u32);
            }
            units.push((start as u32, (members.len() - start) as u32));
        }
    }
    for (it, _) in taken.iter().enumerate().filter(|(_, t)| !**t) {
        units.push((members.len() as u32, 1));
        members.push(it as u32);
    }
    (members, units)
}

/// One unit of several items ([`shared_units`]): the same blocks of the same KV head,
/// read and converted once, then each item's rows through them as [`run_item`] would.
pub(super) fn run_shared<'s>(
    isa: Isa,
    unit: &[u32],
    ins: &[(&[f32], PagedKv<'_>, AttnShape)],
    locate: &dyn Fn(usize) -> (usize, usize, (usize, usize, usize)),
    slot_of: &dyn Fn(usize) -> &'s mut [f32],
    (kf, vf, sc): (&mut [f32], &mut [f32], &mut RowScratch),
) {
    let (lead, _, (h, tile, split)) = locate(unit[0] as usize);
    let (_, lkv, lsh) = &ins[lead];
    let (hd, bt) = (lkv.geom.head_dim, lkv.geom.block_tokens);
    let (b0, b1) = split_blocks(lsh, bt, tile, split);
    // Each item's call, query tile and output slot, looked up once.
    let mut rows: Vec<(usize, usize, &mut [f32])> = unit
        .iter()
        .map(|&it| {
            let (ci, _, (_, tile, _)) = locate(it as usize);
            (ci, tile, slot_of(it as usize))
        })
        .collect();
    for (ci, _, slot) in rows.iter_mut() {
        init_part(slot, ins[*ci].2.group(), hd);
    }
    for b in b0..b1.min(b0 + PREFETCH_BLOCKS) {
        head_rows(lkv, b, h, bt).prefetch();
    }
    // Each row's (query, part), made again for every block (the parts are also lent
    // to `block_rows` as slices).
    let mut ptrs: Vec<(*const f32, *mut f32)> = Vec::with_capacity(rows.len() * MAX_GROUP);
    for b in b0..b1 {
        if b + PREFETCH_BLOCKS < b1 {
            head_rows(lkv, b + PREFETCH_BLOCKS, h, bt).prefetch();
        }
        // Rows that see all of the block go through it together when the kernel for that
        // runs here (the same bits as one by one).
        if rows
            .iter()
            .all(|(ci, tile, _)| tile_keys(&ins[*ci].2, bt, *tile, b) == bt)
        {
            ptrs.clear();
            ptrs.extend(rows.iter_mut().flat_map(|(ci, _, slot)| {
                let (q, _, shape) = &ins[*ci];
                let g = shape.group();
                let base = slot.as_mut_ptr();
                (0..g).map(move |gi| {
                    let qr = q[(h * g + gi) * hd..].as_ptr();
                    // SAFETY: row gi of the slot's g rows of hd + 2.
                    (qr, unsafe { base.add(gi * (hd + 2)) })
                })
            }));
            if attend_block_exact(isa, lkv, (b, h), &ptrs, lsh.scale, (kf, vf)) {
                continue;
            }
        }
        // Every call sees the whole block but maybe the last one's latest keys.
        let nk = rows
            .iter()
            .map(|&(ci, _, _)| tile_keys(&ins[ci].2, bt, 0, b))
            .max()
            .unwrap_or(bt);
        let codes = load_block(isa, lkv, b, h, nk, kf, vf, &mut sc.ksm, &mut sc.vsm);
        debug_assert!(!codes, "only f16 blocks are shared");
        for (ci, tile, slot) in rows.iter_mut() {
            let (q, kv, shape) = &ins[*ci];
            let keys = tile_keys(shape, bt, *tile, b);
            block_rows(
                isa,
                q,
                kv,
                shape,
                (b, h, 0, 1, keys),
                false,
                (kf, vf),
                sc,
                slot,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The calls `(shape, blocks)`, all over `q`, planned as `attention_many` plans them;
    /// their units from [`shared_units`], checked to hold every item once.
    #[allow(clippy::type_complexity)]
    fn plan_units<'a>(
        q: &'a [f32],
        geom: BlockGeom,
        calls: impl IntoIterator<Item = (AttnShape, &'a [KvBlock<'a>])>,
    ) -> (
        Vec<CallPlan>,
        Vec<(&'a [f32], PagedKv<'a>, AttnShape)>,
        (Vec<u32>, Vec<(u32, u32)>),
    ) {
        let (mut plans, mut items) = (Vec::new(), 0);
        let ins: Vec<_> = calls
            .into_iter()
            .map(|(shape, blocks)| {
                let (n, splits, q_tiles) = plan(&shape);
                plans.push(CallPlan {
                    first: items,
                    base: 0,
                    splits,
                    q_tiles,
                    slot: 0,
                    group0: 0,
                });
                items += n;
                let kv = PagedKv {
                    blocks,
                    geom,
                    layer: 0,
                };
                (q, kv, shape)
            })
            .collect();
        let (members, units) = shared_units(&ins, &plans, items);
        let mut sorted = members.clone();
        sorted.sort_unstable();
        assert!(sorted.iter().enumerate().all(|(i, &m)| m as usize == i));
        (plans, ins, (members, units))
    }

    /// Decode calls over a prefix of shared blocks: those that share whole splits are
    /// put in units together, split by split. (That their outputs are still their own
    /// bits is `simd_equals_portable`'s test.)
    #[test]
    fn decode_calls_sharing_whole_splits_of_prefix_blocks_share_units() {
        let (bt, n_kv) = (16usize, 3usize);
        let geom = BlockGeom {
            n_layers: 1,
            n_kv_heads: n_kv,
            head_dim: 64,
            block_tokens: bt,
        };
        // Blocks per split; the shared prefix is three splits long.
        let wb = SPLIT_KEYS / bt;
        let data: Vec<Vec<u16>> = (0..5 * wb + 12)
            .map(|_| vec![0u16; 2 * n_kv * bt * 64])
            .collect();
        let (shared, rest) = data.split_at(3 * wb);
        let (other, own) = rest.split_at(2 * wb);
        // (shared blocks, own blocks, keys, query tokens): two at the same depth, one
        // leaving the prefix in its third split, one in its second, one on its own, one
        // of three query tokens (never shared), one within a single split.
        let seqs = [
            (3 * wb, 2usize, 3 * wb * bt + 20, 1usize),
            (3 * wb, 2, 3 * wb * bt + 20, 1),
            (2 * wb + 2, 1, (2 * wb + 2) * bt + 3, 1),
            (wb + 2, 3, (wb + 2) * bt + 40, 1),
            (0, 8, 8 * bt - 1, 1),
            (3 * wb, 1, 3 * wb * bt + 2, 3),
            (wb - 1, 0, (wb - 1) * bt, 1),
            // Two more that begin with the first block alone (a system prompt every
            // sequence opens with), then share two splits of their own.
            (1, 2, 2 * wb * bt + 5, 1),
            (1, 2, 2 * wb * bt + 9, 1),
        ];
        let views: Vec<Vec<KvBlock<'_>>> = seqs
            .iter()
            .enumerate()
            .map(|(i, &(ns, no, _, _))| {
                let mut v: Vec<KvBlock<'_>> =
                    shared[..ns].iter().map(|b| KvBlock::F16(b)).collect();
                if i >= 7 {
                    v.extend(other[..2 * wb - 1].iter().map(|b| KvBlock::F16(b)));
                }
                v.extend(own[i..i + no].iter().map(|b| KvBlock::F16(b)));
                v
            })
            .collect();
        let q = vec![0.0f32; 3 * 9 * 64];
        let shape = |keys: usize, n_q: usize| AttnShape {
            n_q,
            pos0: keys - n_q,
            n_heads: 9,
            n_kv_heads: n_kv,
            scale: 0.125,
            window: None,
        };
        let (plans, _, (members, units)) = plan_units(
            &q,
            geom,
            seqs.iter()
                .zip(&views)
                .map(|(&(_, _, keys, n_q), v)| (shape(keys, n_q), &v[..])),
        );
        let call_of = |it: u32| plans.partition_point(|p| p.first <= it as usize) - 1;
        let mut got: Vec<Vec<usize>> = units
            .iter()
            .filter(|u| u.1 > 1)
            .map(|u| {
                let mut c: Vec<usize> = members[u.0 as usize..][..u.1 as usize]
                    .iter()
                    .map(|&m| call_of(m))
                    .collect();
                c.sort_unstable();
                c
            })
            .collect();
        got.sort_unstable();
        // The first split's blocks are shared by calls 0-3, the second's by 0-2 (call 3
        // leaves the prefix in it), the third's by 0 and 1 (so does call 2); calls 7 and
        // 8 share both of their whole splits; one unit per KV head.
        let mut want = Vec::new();
        for c in [
            vec![0, 1],
            vec![0, 1, 2],
            vec![0, 1, 2, 3],
            vec![7, 8],
            vec![7, 8],
        ] {
            want.extend(std::iter::repeat_n(c, n_kv));
        }
        assert_eq!(got, want);
    }

    /// Prompt tiles go to the threads first, the one with the most work (rows times
    /// blocks) ahead, so that a long tile never starts last.
    #[test]
    fn prompt_tiles_come_first_longest_ahead() {
        let (bt, n_kv) = (16usize, 2usize);
        let geom = BlockGeom {
            n_layers: 1,
            n_kv_heads: n_kv,
            head_dim: 64,
            block_tokens: bt,
        };
        let data: Vec<Vec<u16>> = (0..40).map(|_| vec![0u16; 2 * n_kv * bt * 64]).collect();
        let views: Vec<KvBlock<'_>> = data.iter().map(|b| KvBlock::F16(b)).collect();
        // (keys before, query tokens): a decode call, a long prompt, a short one after a
        // long prefix, and another decode call.
        let calls = [(300usize, 1usize), (0, 100), (500, 20), (40, 1)];
        let q = vec![0.0f32; 100 * 4 * 64];
        let (plans, ins, (members, units)) = plan_units(
            &q,
            geom,
            calls.iter().map(|&(pos0, n_q)| {
                let shape = AttnShape {
                    n_q,
                    pos0,
                    n_heads: 4,
                    n_kv_heads: n_kv,
                    scale: 0.125,
                    window: None,
                };
                (shape, &views[..(pos0 + n_q).div_ceil(bt)])
            }),
        );
        assert!(units.iter().all(|u| u.1 == 1), "nothing here shares");
        // Each prompt tile's work: its tokens times the blocks it reads.
        let work = |it: usize| {
            let ci = plans.partition_point(|p| p.first <= it) - 1;
            let (_, kv, sh) = &ins[ci];
            let tile = (it - plans[ci].first) % plans[ci].q_tiles;
            let (b0, b1) = split_blocks(sh, kv.geom.block_tokens, tile, 0);
            (ci, (b1 - b0) * tile_tokens(sh, tile).1)
        };
        let prompt_items: usize = [1, 2].iter().map(|&ci| plans[ci].q_tiles * n_kv).sum();
        let head: Vec<(usize, usize)> = members[..prompt_items]
            .iter()
            .map(|&m| work(m as usize))
            .collect();
        assert!(head.iter().all(|&(ci, _)| ci == 1 || ci == 2));
        assert!(head.windows(2).all(|w| w[0].1 >= w[1].1), "{head:?}");
        // The short prompt's tiles, each over its 500-key prefix, outweigh the long
        // prompt's first tiles.
        assert_eq!(head[0].0, 2);
        assert!(head.last().is_some_and(|&(ci, _)| ci == 1));
    }
}
