//! `Reservation`: bytes held in one pool, given back on drop.

use std::fmt;

use crate::ledger::{Hold, Mode};
use crate::{Budget, Bytes, OutOfBudget, PoolId, ShrinkError};

/// Bytes held in one pool of a [`Budget`], given back when dropped.
///
/// Made by [`Budget::reserve`] or [`Budget::try_reserve`]; resized with
/// [`grow`](Reservation::grow), [`try_grow`](Reservation::try_grow) and
/// [`shrink`](Reservation::shrink). It keeps its budget alive, so it may outlive the handle
/// it came from and move between threads.
///
/// # Invariants
/// The ledger's count for the pool includes exactly `size` bytes for this reservation, from
/// creation until drop.
#[must_use = "a reservation gives its bytes back as soon as it is dropped"]
pub struct Reservation {
    budget: Budget,
    pool: usize,
    size: u64,
}

impl Reservation {
    pub(crate) fn new(budget: Budget, pool: usize, size: u64) -> Reservation {
        Reservation { budget, pool, size }
    }

    /// The bytes held.
    #[must_use]
    pub fn size(&self) -> Bytes {
        Bytes(self.size)
    }

    /// The pool the bytes are held in.
    #[must_use]
    pub fn pool(&self) -> PoolId {
        self.budget.id_at(self.pool)
    }

    /// The budget the bytes are held in.
    #[must_use]
    pub fn budget(&self) -> &Budget {
        &self.budget
    }

    /// Holds `by` more bytes, recalling lent bytes like [`Budget::reserve`].
    ///
    /// # Errors
    /// [`OutOfBudget`] (with `requested = by`) when the growth does not fit; the reservation
    /// is unchanged.
    pub fn grow(&mut self, by: Bytes) -> Result<(), OutOfBudget> {
        self.budget
            .acquire(self.pool, by.0, Mode::MayRecall, Hold::Part)?;
        self.size += by.0;
        Ok(())
    }

    /// Holds `by` more bytes if they fit now, like [`Budget::try_reserve`].
    ///
    /// # Errors
    /// [`OutOfBudget`] (with `requested = by`) when the growth does not fit; the reservation
    /// is unchanged.
    pub fn try_grow(&mut self, by: Bytes) -> Result<(), OutOfBudget> {
        self.budget
            .acquire(self.pool, by.0, Mode::Immediate, Hold::Part)?;
        self.size += by.0;
        Ok(())
    }

    /// Gives `by` bytes back and keeps the rest.
    ///
    /// # Errors
    /// [`ShrinkError`] when `by` is more than the reservation holds; nothing changes.
    pub fn shrink(&mut self, by: Bytes) -> Result<(), ShrinkError> {
        if by.0 > self.size {
            return Err(ShrinkError {
                pool: self.budget.pool_name_at(self.pool).clone(),
                held: Bytes(self.size),
                requested: by,
            });
        }
        self.size -= by.0;
        self.budget.release(self.pool, by.0, Hold::Part);
        Ok(())
    }

    /// Gives every byte back now; the same as dropping, said out loud.
    pub fn release(self) {
        drop(self);
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.budget.release(self.pool, self.size, Hold::Whole);
    }
}

impl fmt::Debug for Reservation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reservation")
            .field("pool", self.budget.pool_name_at(self.pool))
            .field("size", &Bytes(self.size))
            .finish()
    }
}
