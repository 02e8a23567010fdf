//! A consistent copy of the ledger's numbers, for reports and JSON.

use serde::Serialize;

use crate::{Bytes, Policy, PoolName};

/// The whole ledger at one instant. Serializes with `_bytes` field names and exact integers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct BudgetSnapshot {
    /// The budget's total.
    #[serde(rename = "total_bytes")]
    pub total: Bytes,
    /// Bytes held by all reservations.
    #[serde(rename = "used_bytes")]
    pub used: Bytes,
    /// Highest `used` since the budget was made or its peaks were reset.
    #[serde(rename = "peak_bytes")]
    pub peak: Bytes,
    /// Bytes that no pool's limit claims; lent before any pool's slack.
    #[serde(rename = "unassigned_bytes")]
    pub unassigned: Bytes,
    /// Of `unassigned`, the bytes borrowed right now.
    #[serde(rename = "unassigned_lent_bytes")]
    pub unassigned_lent: Bytes,
    /// Each pool, in declaration order.
    pub pools: Vec<PoolSnapshot>,
}

/// One pool at one instant.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct PoolSnapshot {
    /// The pool's name.
    pub name: PoolName,
    /// The pool's policy.
    pub policy: Policy,
    /// The bytes the pool is entitled to.
    #[serde(rename = "limit_bytes")]
    pub limit: Bytes,
    /// Bytes held by the pool's reservations.
    #[serde(rename = "used_bytes")]
    pub used: Bytes,
    /// Bytes held beyond the limit: `used - limit` when positive.
    #[serde(rename = "borrowed_bytes")]
    pub borrowed: Bytes,
    /// Bytes of this pool's unused limit that other pools are holding.
    #[serde(rename = "lent_bytes")]
    pub lent: Bytes,
    /// Highest `used` since the budget was made or its peaks were reset.
    #[serde(rename = "peak_bytes")]
    pub peak: Bytes,
    /// Live reservations in the pool.
    pub reservations: u64,
}
