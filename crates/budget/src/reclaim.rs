//! Reclaim hooks: how the ledger asks a pool's owner to free memory.

use crate::{Bytes, PoolId};

/// Frees memory of one pool on request.
///
/// The owner of a pool (the KV cache, lazy weights, ingest) registers a hook with
/// [`Budget::set_reclaim`](crate::Budget::set_reclaim). The ledger calls it with no lock held,
/// so the hook may drop, shrink or even take reservations of any pool. The hook frees what it
/// can (demote KV blocks, release cold layers, drain buffers) by dropping or shrinking its
/// [`Reservation`](crate::Reservation)s, and returns how many bytes it gave back. The ledger
/// trusts its own counts, not that number: a hook that frees nothing only makes the waiting
/// request fail.
///
/// A hook that itself calls [`Budget::reserve`](crate::Budget::reserve) may be called again
/// before it returns, if that reservation recalls bytes from its pool; hooks that need bytes
/// should use [`Budget::try_reserve`](crate::Budget::try_reserve).
///
/// Any `Fn(ReclaimRequest) -> Bytes + Send + Sync` closure is a hook.
pub trait Reclaim: Send + Sync {
    /// Frees up to `request.want` bytes of `request.pool` and returns the bytes freed.
    fn reclaim(&self, request: ReclaimRequest) -> Bytes;
}

impl<F> Reclaim for F
where
    F: Fn(ReclaimRequest) -> Bytes + Send + Sync,
{
    fn reclaim(&self, request: ReclaimRequest) -> Bytes {
        self(request)
    }
}

/// What a reclaim hook is asked to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReclaimRequest {
    /// The pool whose owner is asked (the hook's own pool).
    pub pool: PoolId,
    /// Bytes wanted: only the shortfall, never more than the pool can give for this reason.
    pub want: Bytes,
    /// Why the bytes are wanted.
    pub reason: ReclaimReason,
}

/// Why a pool is asked to free memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ReclaimReason {
    /// The pool has borrowed beyond its limit and the lender wants its bytes back; `want` is at
    /// most what the pool holds beyond its limit.
    Recall {
        /// The pool taking its bytes back.
        lender: PoolId,
    },
    /// Someone outside the ledger (the pressure ladder) called
    /// [`Budget::reclaim`](crate::Budget::reclaim).
    Pressure,
}
