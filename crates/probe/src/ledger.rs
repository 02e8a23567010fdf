//! [`LedgerView`]: llmem's own accounting as the caller hands it in.
//!
//! The probe never imports the budget crate (both are leaves); the binary copies the
//! ledger's numbers into this plain struct each tick.

use serde::{Deserialize, Serialize};

/// One pool of the ledger.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct PoolUsage {
    /// `weights`, `kv`, `scratch`, `documents`, `reserve`, … (a Prometheus label value).
    pub name: String,
    /// The pool's budget.
    pub limit_bytes: u64,
    /// Reserved from it now.
    pub used_bytes: u64,
}

impl PoolUsage {
    /// A pool.
    #[must_use]
    pub fn new(name: impl Into<String>, limit_bytes: u64, used_bytes: u64) -> Self {
        Self {
            name: name.into(),
            limit_bytes,
            used_bytes,
        }
    }
}

/// llmem's ledger at one moment.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct LedgerView {
    /// Each pool.
    pub pools: Vec<PoolUsage>,
    /// Bytes the ledger accounts for in this process (reservations that are resident).
    pub total_tracked_bytes: u64,
    /// Fragmentation inside llmem's pools in [0, 1] (for example KV slots reserved in
    /// partly filled blocks over all reserved KV), when the caller measures it. Preferred
    /// over the OS's fragmentation by the monitor and the health score.
    pub fragmentation: Option<f64>,
}

impl LedgerView {
    /// A view with the given pools; the tracked total is their sum.
    #[must_use]
    pub fn from_pools(pools: Vec<PoolUsage>) -> Self {
        let total_tracked_bytes = pools.iter().map(|p| p.used_bytes).sum();
        Self {
            pools,
            total_tracked_bytes,
            fragmentation: None,
        }
    }

    /// The same view with a fragmentation measure.
    #[must_use]
    pub fn with_fragmentation(mut self, fragmentation: f64) -> Self {
        self.fragmentation = Some(fragmentation.clamp(0.0, 1.0));
        self
    }

    /// Sum of pool limits.
    #[must_use]
    pub fn limit_bytes(&self) -> u64 {
        self.pools.iter().map(|p| p.limit_bytes).sum()
    }

    /// `footprint − tracked`: memory the process holds that the ledger does not know
    /// about (negative when reservations are not yet resident).
    #[must_use]
    pub fn untracked_bytes(&self, footprint_bytes: u64) -> i64 {
        let clamp = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        clamp(footprint_bytes).saturating_sub(clamp(self.total_tracked_bytes))
    }
}
