//! The pool's free blocks: two intrusive stacks threaded through one link per block slot,
//! so that taking, returning and counting free blocks is O(1) whatever the pool's size.
//!
//! A free block either keeps its f16 storage for reuse ([`Stock::Stocked`]: handing it out
//! costs no allocation and no ledger growth) or has none ([`Stock::Bare`]). The pool hands
//! out stocked blocks first, most recently freed first (its bytes are the likeliest to be
//! in cache), and counts stocked blocks when it asks the ledger for new ones.
//!
//! ```text
//! slot:   0     1     2     3     4
//! list:  [S]   [-]   [B]   [S]   [B]        heads: S → 3 → 0 → NIL
//! next:  NIL    ·     NIL   0     2                B → 4 → 2 → NIL
//! ```
//!
//! # Invariants
//! - A slot is on at most one list, and `lists[i]` says which (or none).
//! - Following `next` from a list's head visits exactly the slots whose `lists` entry is
//!   that list, `lens[list]` of them, and ends at `NIL`.

use crate::pool::BlockId;

const NIL: u32 = u32::MAX;

/// Which free list a block is on: whether it still holds storage.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Stock {
    /// Keeps its f16 storage: reused without allocating.
    Stocked = 0,
    /// Holds no storage: storage is allocated when it is handed out.
    Bare = 1,
}

/// Per-slot link and membership; see the module docs.
#[derive(Debug, Default)]
pub(crate) struct FreeQueue {
    next: Vec<u32>,
    lists: Vec<Option<Stock>>,
    heads: [u32; 2],
    lens: [usize; 2],
}

impl FreeQueue {
    pub(crate) fn new() -> Self {
        FreeQueue {
            next: Vec::new(),
            lists: Vec::new(),
            heads: [NIL; 2],
            lens: [0; 2],
        }
    }

    /// Free blocks on `list`.
    pub(crate) fn len(&self, list: Stock) -> usize {
        self.lens[list as usize]
    }

    /// Free blocks on both lists.
    pub(crate) fn total(&self) -> usize {
        self.lens[0] + self.lens[1]
    }

    /// Which list `id` is on, if any.
    pub(crate) fn list_of(&self, id: BlockId) -> Option<Stock> {
        self.lists.get(id.0 as usize).copied().flatten()
    }

    /// Puts `id` on top of `list`.
    ///
    /// # Panics
    /// If `id` is already free (a double free: a bug in the pool).
    pub(crate) fn push(&mut self, id: BlockId, list: Stock) {
        let i = id.0 as usize;
        if i >= self.next.len() {
            self.next.resize(i + 1, NIL);
            self.lists.resize(i + 1, None);
        }
        assert!(self.lists[i].is_none(), "block {i} freed twice");
        self.lists[i] = Some(list);
        self.next[i] = self.heads[list as usize];
        self.heads[list as usize] = id.0;
        self.lens[list as usize] += 1;
    }

    /// Takes the block on top of `list`.
    pub(crate) fn pop(&mut self, list: Stock) -> Option<BlockId> {
        let head = self.heads[list as usize];
        if head == NIL {
            return None;
        }
        let i = head as usize;
        self.heads[list as usize] = self.next[i];
        self.next[i] = NIL;
        self.lists[i] = None;
        self.lens[list as usize] -= 1;
        Some(BlockId(head))
    }

    /// The blocks on `list`, top first.
    pub(crate) fn iter(&self, list: Stock) -> impl Iterator<Item = BlockId> + '_ {
        let mut at = self.heads[list as usize];
        std::iter::from_fn(move || {
            (at != NIL).then(|| {
                let id = BlockId(at);
                at = self.next[at as usize];
                id
            })
        })
    }

    /// Checks the invariants in the module docs.
    ///
    /// # Panics
    /// If any is broken.
    pub(crate) fn check_invariants(&self) {
        let mut seen = vec![false; self.lists.len()];
        for list in [Stock::Stocked, Stock::Bare] {
            let mut n = 0;
            for id in self.iter(list) {
                let i = id.0 as usize;
                assert!(!seen[i], "slot {i} reached twice");
                seen[i] = true;
                assert_eq!(self.lists[i], Some(list), "slot {i} on the wrong list");
                n += 1;
                assert!(n <= self.lists.len(), "a free list loops");
            }
            assert_eq!(n, self.lens[list as usize], "{list:?} length drifted");
        }
        for (i, l) in self.lists.iter().enumerate() {
            assert_eq!(
                l.is_some(),
                seen[i],
                "slot {i} marked free but not on a list"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Op {
        Push(u32, bool),
        Pop(bool),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0..24u32, any::<bool>()).prop_map(|(i, s)| Op::Push(i, s)),
            any::<bool>().prop_map(Op::Pop),
        ]
    }

    fn stock(stocked: bool) -> Stock {
        if stocked { Stock::Stocked } else { Stock::Bare }
    }

    proptest! {
        /// Against a naive reference (one Vec per list, scanned): the same blocks come back
        /// in the same (last in, first out) order, the counts agree, and the links stay
        /// consistent after every step.
        #[test]
        fn free_queue_matches_a_naive_reference(ops in proptest::collection::vec(op(), 1..200)) {
            let mut q = FreeQueue::new();
            let mut naive: [Vec<BlockId>; 2] = [Vec::new(), Vec::new()];
            for op in ops {
                match op {
                    Op::Push(i, s) => {
                        let id = BlockId(i);
                        // Only blocks not already free are pushed (the pool never double-frees).
                        if naive.iter().any(|l| l.contains(&id)) {
                            prop_assert!(q.list_of(id).is_some());
                            continue;
                        }
                        q.push(id, stock(s));
                        naive[stock(s) as usize].push(id);
                    }
                    Op::Pop(s) => {
                        prop_assert_eq!(q.pop(stock(s)), naive[stock(s) as usize].pop());
                    }
                }
                q.check_invariants();
                for l in [Stock::Stocked, Stock::Bare] {
                    prop_assert_eq!(q.len(l), naive[l as usize].len());
                    let top_first: Vec<BlockId> = naive[l as usize].iter().rev().copied().collect();
                    prop_assert_eq!(q.iter(l).collect::<Vec<_>>(), top_first);
                    for id in &naive[l as usize] {
                        prop_assert_eq!(q.list_of(*id), Some(l));
                    }
                }
                prop_assert_eq!(q.total(), naive[0].len() + naive[1].len());
            }
        }
    }

    #[test]
    #[should_panic(expected = "freed twice")]
    fn a_double_free_is_caught() {
        let mut q = FreeQueue::new();
        q.push(BlockId(3), Stock::Bare);
        q.push(BlockId(3), Stock::Stocked);
    }
}
