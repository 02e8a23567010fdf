//! Errors of the ledger: reserving, shrinking, and building a budget.

use crate::{Bytes, PoolName, PoolNameError};

/// A reservation or growth that does not fit: what was asked of which pool, and what it could
/// have had at that moment.
///
/// This is an ordinary outcome under memory pressure, returned as a value; the caller decides
/// whether to evict, demote, queue or refuse.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "pool `{pool}` is out of budget: requested {requested}, {available} available \
     (short by {} bytes)",
    requested.saturating_sub(*available).get()
)]
#[non_exhaustive]
pub struct OutOfBudget {
    /// The pool asked.
    pub pool: PoolName,
    /// The bytes asked for (the growth, for [`Reservation::grow`](crate::Reservation::grow)).
    pub requested: Bytes,
    /// What the pool could have been given when the request was refused, borrowing included.
    pub available: Bytes,
}

impl OutOfBudget {
    /// How many more bytes the request needed.
    #[must_use]
    pub fn shortfall(&self) -> Bytes {
        self.requested.saturating_sub(self.available)
    }
}

/// A shrink by more than the reservation holds.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("cannot shrink a reservation of {held} in pool `{pool}` by {requested}")]
#[non_exhaustive]
pub struct ShrinkError {
    /// The reservation's pool.
    pub pool: PoolName,
    /// The bytes the reservation holds.
    pub held: Bytes,
    /// The bytes asked to give back.
    pub requested: Bytes,
}

/// Why a budget's layout was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// A budget of zero bytes.
    #[error("the total is zero bytes")]
    ZeroTotal,
    /// No pools at all.
    #[error("a budget needs at least one pool")]
    NoPools,
    /// More pools than [`MAX_POOLS`](crate::MAX_POOLS).
    #[error("{count} pools; at most {max} are allowed")]
    TooManyPools {
        /// Pools given.
        count: usize,
        /// The cap.
        max: usize,
    },
    /// A pool name that is not valid.
    #[error(transparent)]
    InvalidPoolName(#[from] PoolNameError),
    /// Two pools with one name.
    #[error("pool `{name}` is defined twice")]
    DuplicatePool {
        /// The repeated name.
        name: PoolName,
    },
    /// The pools' limits add up to more than the total.
    #[error(
        "pool limits add up to {sum} with `{pool}`, past the total of {total} \
         (over by {} bytes)",
        sum.saturating_sub(*total).get()
    )]
    OverCommitted {
        /// The pool whose limit first pushed the sum past the total.
        pool: PoolName,
        /// The running sum of limits up to and including `pool`.
        sum: Bytes,
        /// The budget's total.
        total: Bytes,
    },
    /// A priority entry naming no pool.
    #[error("priority entry {position} names `{name}`, which is not a pool")]
    UnknownPriorityPool {
        /// The name in the priority list.
        name: String,
        /// Its 0-based position in the list.
        position: usize,
    },
    /// A pool listed twice in the priority order.
    #[error("priority entry {position} lists `{name}` a second time")]
    DuplicatePriorityPool {
        /// The repeated name.
        name: String,
        /// 0-based position of the second mention.
        position: usize,
    },
}
