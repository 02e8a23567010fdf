//! `BudgetBuilder`, and the validated `Layout` a budget is made from.

use crate::{Budget, BuildError, Bytes, Policy, PoolName, PoolSpec};

/// Most pools one budget may have; DESIGN.md names five, profiles may split them further.
pub const MAX_POOLS: usize = 64;

/// Collects a total, pools and a priority order, and validates them once in
/// [`build`](BudgetBuilder::build).
///
/// ```
/// use budget::{BudgetBuilder, Bytes, Policy};
///
/// let budget = BudgetBuilder::new(Bytes::gib(16))
///     .pool("weights", Policy::Persistent, Bytes::gib(8))
///     .pool("kv", Policy::Tiered, Bytes::gib(4))
///     .pool("reserve", Policy::Reserved, Bytes::gib(2))
///     .priority(["weights", "kv"])
///     .build()?;
/// assert_eq!(budget.total(), Bytes::gib(16));
/// # Ok::<(), budget::BuildError>(())
/// ```
#[derive(Clone, Debug)]
#[must_use]
pub struct BudgetBuilder {
    total: Bytes,
    pools: Vec<(String, Policy, Bytes)>,
    priority: Vec<String>,
}

impl BudgetBuilder {
    /// A budget of `total` bytes with no pools yet.
    pub fn new(total: Bytes) -> BudgetBuilder {
        BudgetBuilder {
            total,
            pools: Vec::new(),
            priority: Vec::new(),
        }
    }

    /// Adds a pool entitled to `limit` bytes.
    pub fn pool(mut self, name: &str, policy: Policy, limit: Bytes) -> BudgetBuilder {
        self.pools.push((name.to_owned(), policy, limit));
        self
    }

    /// Sets the priority order, highest first. Pools left out follow, in declaration order.
    ///
    /// Priority decides who gives way: when a pool takes back bytes it lent, borrowers are
    /// asked to return them lowest priority first, and slack is lent lowest priority first.
    pub fn priority<I, S>(mut self, order: I) -> BudgetBuilder
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        self.priority = order.into_iter().map(|s| s.as_ref().to_owned()).collect();
        self
    }

    /// Validates the layout and makes the budget.
    ///
    /// # Errors
    /// [`BuildError`] for a zero total, no pools, more than [`MAX_POOLS`], a bad or repeated
    /// pool name, limits that add up past the total, or a priority list naming an unknown
    /// pool or one pool twice.
    pub fn build(self) -> Result<Budget, BuildError> {
        let mut pools = Vec::with_capacity(self.pools.len());
        for (name, policy, limit) in self.pools {
            pools.push(PoolSpec::new(PoolName::new(&name)?, policy, limit));
        }
        Ok(Budget::from_layout(Layout::new(
            self.total,
            pools,
            &self.priority,
        )?))
    }
}

/// A checked budget layout.
///
/// # Invariants
/// - `total > 0`; `1 <= pools.len() <= MAX_POOLS`; pool names are unique.
/// - The sum of all limits is at most `total` (no overflow).
/// - `priority` is a permutation of `0..pools.len()`, highest priority first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Layout {
    pub(crate) total: Bytes,
    pub(crate) pools: Vec<PoolSpec>,
    pub(crate) priority: Vec<usize>,
}

impl Layout {
    pub(crate) fn new(
        total: Bytes,
        pools: Vec<PoolSpec>,
        priority: &[impl AsRef<str>],
    ) -> Result<Layout, BuildError> {
        if total == Bytes::ZERO {
            return Err(BuildError::ZeroTotal);
        }
        if pools.is_empty() {
            return Err(BuildError::NoPools);
        }
        if pools.len() > MAX_POOLS {
            return Err(BuildError::TooManyPools {
                count: pools.len(),
                max: MAX_POOLS,
            });
        }
        let mut sum = Bytes::ZERO;
        for (i, pool) in pools.iter().enumerate() {
            if pools[..i].iter().any(|p| p.name() == pool.name()) {
                return Err(BuildError::DuplicatePool {
                    name: pool.name().clone(),
                });
            }
            sum = sum.saturating_add(pool.limit());
            if sum > total {
                return Err(BuildError::OverCommitted {
                    pool: pool.name().clone(),
                    sum,
                    total,
                });
            }
        }
        let mut order = Vec::with_capacity(pools.len());
        for (position, name) in priority.iter().enumerate() {
            let name = name.as_ref();
            let index = pools
                .iter()
                .position(|p| p.name().as_str() == name)
                .ok_or_else(|| BuildError::UnknownPriorityPool {
                    name: name.to_owned(),
                    position,
                })?;
            if order.contains(&index) {
                return Err(BuildError::DuplicatePriorityPool {
                    name: name.to_owned(),
                    position,
                });
            }
            order.push(index);
        }
        for index in 0..pools.len() {
            if !order.contains(&index) {
                order.push(index);
            }
        }
        Ok(Layout {
            total,
            pools,
            priority: order,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, limit: u64) -> PoolSpec {
        match PoolName::new(name) {
            Ok(n) => PoolSpec::new(n, Policy::Tiered, Bytes(limit)),
            Err(e) => panic!("test pool name: {e}"),
        }
    }

    #[test]
    fn priority_is_completed_in_declaration_order() {
        let layout = Layout::new(
            Bytes(10),
            vec![spec("a", 1), spec("b", 1), spec("c", 1)],
            &["c"],
        );
        assert_eq!(layout.map(|l| l.priority), Ok(vec![2, 0, 1]));
    }

    #[test]
    fn bad_layouts_are_refused() {
        let none: &[&str] = &[];
        assert_eq!(
            Layout::new(Bytes(0), vec![spec("a", 0)], none),
            Err(BuildError::ZeroTotal)
        );
        assert_eq!(
            Layout::new(Bytes(1), vec![], none),
            Err(BuildError::NoPools)
        );
        assert!(matches!(
            Layout::new(Bytes(10), vec![spec("a", 6), spec("b", 5)], none),
            Err(BuildError::OverCommitted { pool, sum: Bytes(11), total: Bytes(10) })
                if pool.as_str() == "b"
        ));
        assert!(matches!(
            Layout::new(Bytes(10), vec![spec("a", 1), spec("a", 1)], none),
            Err(BuildError::DuplicatePool { .. })
        ));
        assert!(matches!(
            Layout::new(Bytes(10), vec![spec("a", 1)], &["b"]),
            Err(BuildError::UnknownPriorityPool { name, position: 0 }) if name == "b"
        ));
        assert!(matches!(
            Layout::new(Bytes(10), vec![spec("a", 1)], &["a", "a"]),
            Err(BuildError::DuplicatePriorityPool { position: 1, .. })
        ));
        let many: Vec<_> = (0..=MAX_POOLS).map(|i| spec(&format!("p{i}"), 0)).collect();
        assert!(matches!(
            Layout::new(Bytes(1), many, none),
            Err(BuildError::TooManyPools { .. })
        ));
        assert!(matches!(
            BudgetBuilder::new(Bytes(1))
                .pool("Bad", Policy::Tiered, Bytes(0))
                .build(),
            Err(BuildError::InvalidPoolName(_))
        ));
    }
}
