//! This crate keeps llmem's memory ledger: one byte budget split into named pools, from which
//! every large allocation takes a reservation.
//!
//! A [`Budget`] has a total and pools, each with a [`Policy`] (persistent weights, tiered KV
//! cache, circular scratch, content-hash documents, reserved headroom). [`Budget::reserve`]
//! returns a [`Reservation`], which gives its bytes back when dropped, or an [`OutOfBudget`]
//! value saying what was asked and what was available. A pool may borrow the unused limit of
//! others; a lender gets its bytes back by asking borrowers through their [`Reclaim`] hooks.
//! [`Budget::snapshot`] reports use, borrowing, lending and peaks per pool as a
//! serializable [`BudgetSnapshot`].
//!
//! Layouts come from [`BudgetBuilder`] or from a [`Profile`]: YAML files, the built-in
//! `production` and `development` profiles scaled to the machine, or [`Profile::auto`] sized
//! for one model. Sizes are [`Bytes`], written with units (`512MiB`, `70GiB`) or as a
//! [`Share`] of the total (`0.5`, `25%`).
//!
//! The crate knows nothing of the rest of llmem and does not probe the operating system: the
//! machine's memory is an argument.
//!
//! ```
//! use budget::{Bytes, Profile};
//!
//! let budget = Profile::builtin("production", Bytes::gib(24))?.to_budget();
//! let kv = budget.pool_id("kv").ok_or("no kv pool")?;
//!
//! let mut blocks = budget.reserve(kv, Bytes::mib(512))?;
//! blocks.grow(Bytes::mib(512))?;
//! assert_eq!(budget.used(kv), Bytes::gib(1));
//!
//! // Far more than the machine has: refused with a value, not a panic.
//! let refused = budget.try_reserve(kv, Bytes::gib(64)).unwrap_err();
//! assert_eq!(refused.requested, Bytes::gib(64));
//!
//! drop(blocks);
//! assert_eq!(budget.used(kv), Bytes::ZERO);
//! assert_eq!(budget.snapshot().peak, Bytes::gib(1));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![warn(missing_docs)]

mod builder;
mod bytes;
mod error;
mod ledger;
mod pool;
mod profile;
mod reclaim;
mod reservation;
mod snapshot;

pub use builder::{BudgetBuilder, MAX_POOLS};
pub use bytes::{Bytes, Share, Size, SizeError};
pub use error::{BuildError, OutOfBudget, ShrinkError};
pub use ledger::Budget;
pub use pool::{MAX_POOL_NAME, Policy, PoolId, PoolName, PoolNameError, PoolSpec, UnknownPolicy};
pub use profile::{MAX_PROFILE_BYTES, ModelNeeds, Profile, ProfileError, ProfileFileError};
pub use reclaim::{Reclaim, ReclaimReason, ReclaimRequest};
pub use reservation::Reservation;
pub use snapshot::{BudgetSnapshot, PoolSnapshot};
