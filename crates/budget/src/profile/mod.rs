//! Profiles: a budget's layout from YAML, from the built-in tables, or sized for one model.
//!
//! A profile file:
//!
//! ```yaml
//! name: workstation
//! total: 64GiB                 # absolute: B, KiB, MiB, GiB, TiB, kB, MB, GB, TB
//! priority: [scratch, weights, kv, documents]   # optional, highest first
//! pools:
//!   weights:   { policy: persistent,   limit: 0.5 }     # a share of the total
//!   kv:        { policy: tiered,       limit: 12GiB }
//!   scratch:   { policy: circular,     limit: 2GiB }
//!   documents: { policy: content-hash, limit: 12.5% }
//!   reserve:   { policy: reserved,     limit: 8GiB }
//! ```
//!
//! The built-in `production` and `development` profiles keep the seed's partition, merged into
//! DESIGN.md's five pools and scaled to the machine; `docs/design/budget.md` gives the mapping
//! and its reasons.

mod node;
mod yaml;

use crate::builder::Layout;
use crate::{Budget, BuildError, Bytes, Policy, PoolName, PoolSpec, SizeError, UnknownPolicy};

pub use yaml::MAX_PROFILE_BYTES;

/// A validated budget layout with a name: total, pools and priority.
///
/// # Invariants
/// The layout passed [`BudgetBuilder::build`](crate::BudgetBuilder::build)'s checks, so
/// [`to_budget`](Profile::to_budget) cannot fail.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Profile {
    name: String,
    layout: Layout,
}

/// What a model needs, for [`Profile::auto`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ModelNeeds {
    /// Resident weight bytes (the GGUF tensor data).
    pub weights: Bytes,
    /// KV cache bytes wanted (context × sequences × bytes per token).
    pub kv: Bytes,
    /// Peak scratch bytes (activations, logits, workspace).
    pub scratch: Bytes,
}

/// The seed's machine: its figures are GiB of 128 GiB.
const SEED_MACHINE_GIB: u64 = 128;

/// A built-in pool: name, policy and GiB of the seed's 128 GiB machine.
type SeedPool = (&'static str, Policy, u64);

/// Seed production: weights 70, kv 15, inference 5, documents 8 + features 4 + qa 6,
/// system 8 + monitoring 2 + emergency 5.
const PRODUCTION: [SeedPool; 5] = [
    ("weights", Policy::Persistent, 70),
    ("kv", Policy::Tiered, 15),
    ("scratch", Policy::Circular, 5),
    ("documents", Policy::ContentHash, 8 + 4 + 6),
    ("reserve", Policy::Reserved, 8 + 2 + 5),
];

/// Seed development: weights 50, kv 12, inference 4, documents 6 + features 3 + qa 4,
/// system 16 + monitoring 3 + debugging 5.
const DEVELOPMENT: [SeedPool; 5] = [
    ("weights", Policy::Persistent, 50),
    ("kv", Policy::Tiered, 12),
    ("scratch", Policy::Circular, 4),
    ("documents", Policy::ContentHash, 6 + 3 + 4),
    ("reserve", Policy::Reserved, 16 + 3 + 5),
];

/// Who gives way first is last: documents drain cheaply, KV demotes, weights reload from
/// disk, and scratch cannot shrink mid-step.
const PRIORITY: [&str; 4] = ["scratch", "weights", "kv", "documents"];

impl Profile {
    /// Names accepted by [`builtin`](Profile::builtin).
    pub const BUILTIN: [&'static str; 2] = ["production", "development"];

    /// Reads a profile from YAML text.
    ///
    /// # Errors
    /// [`ProfileError`] naming the key and line of the first problem: YAML syntax, unknown or
    /// missing keys, values of the wrong type, bad sizes (negative, unknown unit, a share as
    /// the total), unknown policies, a zero total, pool limits that add up past the total, a
    /// bad pool name, or a priority list naming an unknown pool.
    pub fn from_yaml_str(yaml: &str) -> Result<Profile, ProfileError> {
        yaml::read(yaml)
    }

    /// Reads a profile from the YAML file at `path`, reading at most
    /// [`MAX_PROFILE_BYTES`] + 1 bytes: a longer file (`/dev/zero`, a log named by mistake)
    /// is refused once the cap is passed, not after it has been read whole.
    ///
    /// # Errors
    /// [`ProfileFileError::Read`] when the file cannot be opened or read (a directory
    /// included), [`ProfileFileError::Invalid`] with the [`ProfileError`] of
    /// [`from_yaml_str`](Profile::from_yaml_str), [`ProfileError::TooLarge`] past the cap
    /// and a YAML error for text that is not UTF-8.
    pub fn from_yaml_file(path: &std::path::Path) -> Result<Profile, ProfileFileError> {
        use std::io::Read;
        let read = |cause| ProfileFileError::Read {
            path: path.to_owned(),
            cause,
        };
        let invalid = |cause| ProfileFileError::Invalid {
            path: path.to_owned(),
            cause,
        };
        let file = std::fs::File::open(path).map_err(read)?;
        let mut bytes = Vec::new();
        file.take(MAX_PROFILE_BYTES as u64 + 1)
            .read_to_end(&mut bytes)
            .map_err(read)?;
        if bytes.len() > MAX_PROFILE_BYTES {
            return Err(invalid(ProfileError::TooLarge {
                len: bytes.len(),
                max: MAX_PROFILE_BYTES,
            }));
        }
        let text = String::from_utf8(bytes).map_err(|e| {
            invalid(ProfileError::Yaml {
                line: None,
                message: format!("not UTF-8 text (byte {})", e.utf8_error().valid_up_to()),
            })
        })?;
        Profile::from_yaml_str(&text).map_err(invalid)
    }

    /// A built-in profile scaled to a machine with `machine_total` bytes of memory; the total
    /// is the machine's memory and each pool keeps its share of the seed's 128 GiB.
    ///
    /// ```
    /// use budget::{Bytes, Profile};
    ///
    /// let profile = Profile::builtin("production", Bytes::gib(128))?;
    /// let weights = profile.pools().iter().find(|p| p.name().as_str() == "weights");
    /// assert_eq!(weights.map(|p| p.limit()), Some(Bytes::gib(70)));
    /// # Ok::<(), budget::ProfileError>(())
    /// ```
    ///
    /// # Errors
    /// [`ProfileError::UnknownProfile`] for a name not in [`Profile::BUILTIN`];
    /// [`ProfileError::Generated`] for a machine of zero bytes.
    pub fn builtin(name: &str, machine_total: Bytes) -> Result<Profile, ProfileError> {
        let table = match name {
            "production" => &PRODUCTION,
            "development" => &DEVELOPMENT,
            _ => {
                return Err(ProfileError::UnknownProfile {
                    name: name.to_owned(),
                });
            }
        };
        let pools = table
            .iter()
            .map(|&(pool, policy, gib)| {
                Ok(PoolSpec::new(
                    pool_name(pool)?,
                    policy,
                    seed_share(machine_total, gib),
                ))
            })
            .collect::<Result<Vec<_>, BuildError>>();
        generated(
            name,
            pools.and_then(|pools| Layout::new(machine_total, pools, &PRIORITY)),
        )
    }

    /// A profile sized for one model on a machine with `machine_total` bytes: the reserve
    /// keeps production's share (15 of 128 GiB); weights, kv and scratch get exactly what
    /// the model needs; documents get production's share (18 of 128 GiB) or what is left if
    /// less; the rest stays unassigned, lendable to any pool.
    ///
    /// # Errors
    /// [`ProfileError::DoesNotFit`] when the model needs more than the machine less the
    /// reserve; [`ProfileError::Generated`] for a machine of zero bytes.
    pub fn auto(machine_total: Bytes, needs: &ModelNeeds) -> Result<Profile, ProfileError> {
        let reserve = seed_share(machine_total, PRODUCTION[4].2);
        let usable = machine_total.saturating_sub(reserve);
        let needed = needs
            .weights
            .checked_add(needs.kv)
            .and_then(|b| b.checked_add(needs.scratch))
            .unwrap_or(Bytes(u64::MAX));
        if needed > usable && machine_total > Bytes::ZERO {
            return Err(ProfileError::DoesNotFit {
                needs: *needs,
                needed,
                usable,
                machine_total,
            });
        }
        let documents = usable
            .saturating_sub(needed)
            .min(seed_share(machine_total, PRODUCTION[3].2));
        let sizes = [needs.weights, needs.kv, needs.scratch, documents, reserve];
        let pools = PRODUCTION
            .iter()
            .zip(sizes)
            .map(|(&(pool, policy, _), limit)| Ok(PoolSpec::new(pool_name(pool)?, policy, limit)))
            .collect::<Result<Vec<_>, BuildError>>();
        generated(
            "auto",
            pools.and_then(|pools| Layout::new(machine_total, pools, &PRIORITY)),
        )
    }

    /// A new budget with this layout, all pools empty.
    #[must_use]
    pub fn to_budget(&self) -> Budget {
        Budget::from_layout(self.layout.clone())
    }

    /// The profile's name (`custom` when a file gives none).
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The budget's total.
    #[must_use]
    pub fn total(&self) -> Bytes {
        self.layout.total
    }

    /// The pools, in declaration order.
    #[must_use]
    pub fn pools(&self) -> &[PoolSpec] {
        &self.layout.pools
    }

    /// Pool names from highest to lowest priority.
    #[must_use]
    pub fn priority(&self) -> impl ExactSizeIterator<Item = &PoolName> {
        self.layout
            .priority
            .iter()
            .map(|&i| self.layout.pools[i].name())
    }
}

/// `gib` GiB of the seed's 128 GiB machine, as a share of `machine_total`.
fn seed_share(machine_total: Bytes, gib: u64) -> Bytes {
    let part = u128::from(machine_total.0) * u128::from(gib) / u128::from(SEED_MACHINE_GIB);
    // gib <= SEED_MACHINE_GIB in every table, so the part never exceeds the machine.
    Bytes(u64::try_from(part).unwrap_or(machine_total.0))
}

fn pool_name(name: &str) -> Result<PoolName, BuildError> {
    Ok(PoolName::new(name)?)
}

fn generated(name: &str, layout: Result<Layout, BuildError>) -> Result<Profile, ProfileError> {
    match layout {
        Ok(layout) => Ok(Profile {
            name: name.to_owned(),
            layout,
        }),
        Err(cause) => Err(ProfileError::Generated {
            profile: name.to_owned(),
            cause,
        }),
    }
}

/// Why a profile file could not be used.
///
/// Like [`ProfileError`], each variant's message includes its cause and does not also
/// return it from `source()`: a caller printing the error chain (anyhow's `{:#}`) would
/// otherwise print the cause twice.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProfileFileError {
    /// The file cannot be opened or read.
    #[error("cannot read {}: {cause}", path.display())]
    Read {
        /// The file.
        path: std::path::PathBuf,
        /// What the OS said.
        cause: std::io::Error,
    },
    /// The file was read but is not a valid profile.
    #[error("{}: {cause}", path.display())]
    Invalid {
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong with it.
        cause: ProfileError,
    },
}

/// Why a profile was refused. Errors from files name the dotted key (`pools.kv.limit`) and
/// the 1-based line. A variant with a cause shows it in its message and does not also
/// return it from `source()` (an error chain would print it twice).
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ProfileError {
    /// The text is longer than [`MAX_PROFILE_BYTES`].
    #[error("the profile is over {max} bytes, the most that is read")]
    TooLarge {
        /// Bytes given (from a file: the bytes read, one past the cap).
        len: usize,
        /// The cap.
        max: usize,
    },
    /// Not valid YAML, or past the parser's limits.
    #[error("YAML error: {message}")]
    Yaml {
        /// Line of the error, when the parser knows it.
        line: Option<u64>,
        /// The parser's message.
        message: String,
    },
    /// A key the profile format does not have.
    #[error("line {line}: unknown key `{key}`; expected {expected}")]
    UnknownKey {
        /// The dotted key.
        key: String,
        /// Its line.
        line: u64,
        /// The keys allowed there.
        expected: &'static str,
    },
    /// A required key is absent.
    #[error("line {line}: missing key `{key}`")]
    MissingKey {
        /// The dotted key.
        key: String,
        /// Line of the mapping that should hold it.
        line: u64,
    },
    /// A value of the wrong kind, such as a list where a size belongs.
    #[error("line {line}: `{key}` must be {expected}, not {found}")]
    WrongType {
        /// The dotted key.
        key: String,
        /// Its line.
        line: u64,
        /// What belongs there.
        expected: &'static str,
        /// What was written.
        found: &'static str,
    },
    /// A size that cannot be read.
    #[error("line {line}: `{key}`: {cause}")]
    InvalidSize {
        /// The dotted key.
        key: String,
        /// Its line.
        line: u64,
        /// Why.
        cause: SizeError,
    },
    /// A policy name that does not exist.
    #[error("line {line}: `{key}`: {cause}")]
    UnknownPolicy {
        /// The dotted key.
        key: String,
        /// Its line.
        line: u64,
        /// The name found.
        cause: UnknownPolicy,
    },
    /// The layout breaks a budget rule: zero total, limits past the total, a bad or repeated
    /// pool name, a bad priority list.
    #[error("line {line}: `{key}`: {cause}")]
    InvalidLayout {
        /// The dotted key of the offending value.
        key: String,
        /// Its line.
        line: u64,
        /// The rule broken.
        cause: BuildError,
    },
    /// A built-in name that does not exist.
    #[error("unknown built-in profile `{name}`; built-in profiles are production and development")]
    UnknownProfile {
        /// The name asked for.
        name: String,
    },
    /// A built-in or automatic profile could not be made for this machine.
    #[error("profile `{profile}`: {cause}")]
    Generated {
        /// The profile's name.
        profile: String,
        /// The rule broken.
        cause: BuildError,
    },
    /// The model does not fit the machine less its reserve.
    #[error(
        "the model needs {needed} (weights {}, kv {}, scratch {}) but only {usable} of the \
         machine's {machine_total} is usable after the reserve: short by {} bytes",
        needs.weights, needs.kv, needs.scratch, needed.saturating_sub(*usable).get()
    )]
    DoesNotFit {
        /// What was asked for.
        needs: ModelNeeds,
        /// Their sum.
        needed: Bytes,
        /// The machine less the reserve.
        usable: Bytes,
        /// The machine's memory.
        machine_total: Bytes,
    },
}
