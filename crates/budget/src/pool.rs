//! Pool identity and configuration: `PoolId`, `PoolName`, `Policy`, `PoolSpec`.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use serde::{Serialize, Serializer};

use crate::Bytes;

/// A pool of one [`Budget`](crate::Budget), cheap to copy and compare.
///
/// Ids are only meaningful to the budget that issued them (see [`Budget::pool_id`]); each
/// carries its budget's serial number so that a mix-up is caught instead of charging the
/// wrong pool.
///
/// [`Budget::pool_id`]: crate::Budget::pool_id
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PoolId {
    pub(crate) budget_serial: u32,
    pub(crate) index: u32,
}

impl PoolId {
    /// Position of the pool in its budget's declaration order.
    #[must_use]
    pub fn index(self) -> usize {
        self.index as usize
    }
}

/// Longest pool name accepted.
pub const MAX_POOL_NAME: usize = 32;

/// A validated pool name: 1 to 32 characters of `a-z`, `0-9`, `_` and `-`, starting with a
/// letter. Cheap to clone (shared string).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PoolName(Arc<str>);

impl PoolName {
    /// Checks and wraps a name.
    ///
    /// # Errors
    /// [`PoolNameError`] when the name is empty, too long, or has a character outside
    /// `a-z 0-9 _ -` (or does not start with a letter).
    pub fn new(name: &str) -> Result<PoolName, PoolNameError> {
        let owned = || name.to_owned();
        if name.is_empty() {
            return Err(PoolNameError::Empty);
        }
        if name.len() > MAX_POOL_NAME {
            return Err(PoolNameError::TooLong { name: owned() });
        }
        let valid_char = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || "_-".contains(c);
        if !name.starts_with(|c: char| c.is_ascii_lowercase()) || !name.chars().all(valid_char) {
            return Err(PoolNameError::InvalidCharacter { name: owned() });
        }
        Ok(PoolName(name.into()))
    }

    /// The name as text.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for PoolName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for PoolName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl Serialize for PoolName {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

/// Why a pool name was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PoolNameError {
    /// The name is empty.
    #[error("empty pool name")]
    Empty,
    /// Longer than [`MAX_POOL_NAME`].
    #[error("pool name `{name}` is longer than {MAX_POOL_NAME} characters")]
    TooLong {
        /// The name as given.
        name: String,
    },
    /// A character outside `a-z 0-9 _ -`, or a first character that is not a letter.
    #[error("pool name `{name}` must start with a-z and use only a-z, 0-9, `_` and `-`")]
    InvalidCharacter {
        /// The name as given.
        name: String,
    },
}

/// How a pool's memory behaves, which decides how it is reclaimed and whether it is lent.
///
/// | policy | holds | reclaims by |
/// |---|---|---|
/// | persistent | resident weight layers | evicting cold layers (lazy mode) |
/// | tiered | KV blocks, all tiers | demoting hot→warm→cold→disk, dropping unpinned |
/// | circular | activations, logits, workspace | never mid-step |
/// | content-hash | document chunks in flight | dropping chunks already written out |
/// | reserved | headroom for the OS and other programs | never: it is not lent, never borrows |
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum Policy {
    /// Long-lived bytes such as model weights.
    Persistent,
    /// Bytes that move between precision tiers, such as the KV cache.
    Tiered,
    /// Scratch reused every step.
    Circular,
    /// Content-addressed buffers, such as document chunks.
    ContentHash,
    /// Headroom kept free for everything outside llmem; never lent, never borrows.
    Reserved,
}

impl Policy {
    /// Every policy, in the order of DESIGN.md's table.
    pub const ALL: [Policy; 5] = [
        Policy::Persistent,
        Policy::Tiered,
        Policy::Circular,
        Policy::ContentHash,
        Policy::Reserved,
    ];

    /// The policy's name as profiles write it.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Policy::Persistent => "persistent",
            Policy::Tiered => "tiered",
            Policy::Circular => "circular",
            Policy::ContentHash => "content-hash",
            Policy::Reserved => "reserved",
        }
    }

    /// Whether pools of this policy share: lend their slack and borrow others'.
    #[must_use]
    pub fn shares(self) -> bool {
        self != Policy::Reserved
    }
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Policy {
    type Err = UnknownPolicy;

    fn from_str(text: &str) -> Result<Policy, UnknownPolicy> {
        Policy::ALL
            .into_iter()
            .find(|p| p.as_str() == text)
            .ok_or_else(|| UnknownPolicy {
                found: text.to_owned(),
            })
    }
}

/// A policy name that is not one of [`Policy::ALL`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown policy `{found}`: expected persistent, tiered, circular, content-hash or reserved"
)]
pub struct UnknownPolicy {
    /// The name as written.
    pub found: String,
}

/// One pool's configuration: its name, policy and limit.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PoolSpec {
    name: PoolName,
    policy: Policy,
    limit: Bytes,
}

impl PoolSpec {
    /// A pool of `limit` bytes.
    #[must_use]
    pub fn new(name: PoolName, policy: Policy, limit: Bytes) -> PoolSpec {
        PoolSpec {
            name,
            policy,
            limit,
        }
    }

    /// The pool's name.
    #[must_use]
    pub fn name(&self) -> &PoolName {
        &self.name
    }

    /// The pool's policy.
    #[must_use]
    pub fn policy(&self) -> Policy {
        self.policy
    }

    /// The bytes the pool is entitled to; it may hold more by borrowing.
    #[must_use]
    pub fn limit(&self) -> Bytes {
        self.limit
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_names_are_checked() {
        assert_eq!(
            PoolName::new("kv").map(|n| n.to_string()),
            Ok("kv".to_owned())
        );
        assert!(PoolName::new("content-hash_2").is_ok());
        assert_eq!(PoolName::new(""), Err(PoolNameError::Empty));
        assert!(matches!(
            PoolName::new("KV"),
            Err(PoolNameError::InvalidCharacter { .. })
        ));
        assert!(matches!(
            PoolName::new("2kv"),
            Err(PoolNameError::InvalidCharacter { .. })
        ));
        assert!(matches!(
            PoolName::new("k v"),
            Err(PoolNameError::InvalidCharacter { .. })
        ));
        assert!(matches!(
            PoolName::new(&"a".repeat(33)),
            Err(PoolNameError::TooLong { .. })
        ));
    }

    #[test]
    fn policies_round_trip_through_their_names() {
        for policy in Policy::ALL {
            assert_eq!(policy.as_str().parse(), Ok(policy));
        }
        assert_eq!(
            "lru".parse::<Policy>(),
            Err(UnknownPolicy {
                found: "lru".to_owned()
            })
        );
        assert!(!Policy::Reserved.shares());
        assert!(Policy::Tiered.shares());
    }
}
