//! Reading a profile from YAML: every refusal names the key and the line.

use serde_saphyr::Spanned;

use super::node::Node;
use super::{Profile, ProfileError};
use crate::builder::Layout;
use crate::{BuildError, Bytes, Policy, PoolName, PoolSpec, Share, Size, SizeError};

/// Longest profile read; real ones are well under a kilobyte.
pub const MAX_PROFILE_BYTES: usize = 64 * 1024;
/// Deepest nesting read; a profile needs three levels.
const MAX_DEPTH: usize = 8;
/// Most YAML nodes read; far above [`MAX_POOLS`](crate::MAX_POOLS) pools of three nodes.
const MAX_NODES: usize = 4096;

const TOP_KEYS: &str = "`name`, `total`, `priority` or `pools`";
const POOL_KEYS: &str = "`policy` or `limit`";
const SIZE: &str = "a size such as `70GiB`, `4096` or `0.25`";

/// A value with the dotted key that leads to it and its line.
struct Field<'a> {
    key: String,
    line: u64,
    node: &'a Node,
}

impl Field<'_> {
    fn wrong_type(&self, expected: &'static str) -> ProfileError {
        let key = if self.key.is_empty() {
            "(document)"
        } else {
            &self.key
        };
        ProfileError::WrongType {
            key: key.to_owned(),
            line: self.line,
            expected,
            found: self.node.kind(),
        }
    }

    fn text(&self, expected: &'static str) -> Result<&str, ProfileError> {
        match self.node {
            Node::Text(text) => Ok(text),
            _ => Err(self.wrong_type(expected)),
        }
    }

    fn size(&self) -> Result<Size, ProfileError> {
        let invalid = |cause: SizeError| ProfileError::InvalidSize {
            key: self.key.clone(),
            line: self.line,
            cause,
        };
        match self.node {
            Node::Unsigned(n) => Ok(Size::Bytes(Bytes(*n))),
            Node::Signed(n) => Err(invalid(SizeError::Negative {
                text: n.to_string(),
            })),
            Node::Float(f) if *f < 0.0 => Err(invalid(SizeError::Negative {
                text: f.to_string(),
            })),
            Node::Float(f) => Share::new(*f).map(Size::Share).map_err(invalid),
            Node::Text(text) => text.parse().map_err(invalid),
            _ => Err(self.wrong_type(SIZE)),
        }
    }

    /// The entries of a mapping, each checked against `known` keys.
    fn entries(
        &self,
        known: &[&str],
        expected: &'static str,
    ) -> Result<Vec<(&str, Field<'_>)>, ProfileError> {
        let Node::Map(entries) = self.node else {
            return Err(self.wrong_type("a mapping"));
        };
        let mut fields = Vec::with_capacity(entries.len());
        for (key, value) in entries {
            let name = key.value.as_str();
            let path = if self.key.is_empty() {
                name.to_owned()
            } else {
                format!("{}.{name}", self.key)
            };
            if !known.is_empty() && !known.contains(&name) {
                return Err(ProfileError::UnknownKey {
                    key: path,
                    line: line(key),
                    expected,
                });
            }
            fields.push((
                name,
                Field {
                    key: path,
                    line: line(value),
                    node: &value.value,
                },
            ));
        }
        Ok(fields)
    }
}

fn line<T>(spanned: &Spanned<T>) -> u64 {
    spanned.referenced.line()
}

fn missing(key: String, line: u64) -> ProfileError {
    ProfileError::MissingKey { key, line }
}

/// Where each pool's pieces were written, to place layout errors.
struct PoolLines {
    name: String,
    name_line: u64,
    limit_line: u64,
}

pub(super) fn read(yaml: &str) -> Result<Profile, ProfileError> {
    if yaml.len() > MAX_PROFILE_BYTES {
        return Err(ProfileError::TooLarge {
            len: yaml.len(),
            max: MAX_PROFILE_BYTES,
        });
    }
    let root: Spanned<Node> =
        serde_saphyr::from_str_with_options(yaml, options()).map_err(|e| ProfileError::Yaml {
            line: e.location().map(|l| l.line()),
            message: e.without_snippet().to_string(),
        })?;
    let root = Field {
        key: String::new(),
        line: line(&root).max(1),
        node: &root.value,
    };
    if let Node::Other("null") = root.node {
        return Err(ProfileError::MissingKey {
            key: "total".to_owned(),
            line: 1,
        });
    }
    let (mut name, mut total, mut priority, mut pools) = (None, None, None, None);
    for (key, field) in root.entries(&["name", "total", "priority", "pools"], TOP_KEYS)? {
        let slot = match key {
            "name" => &mut name,
            "total" => &mut total,
            "priority" => &mut priority,
            _ => &mut pools,
        };
        *slot = Some(field);
    }
    let name = match &name {
        Some(field) => field.text("the profile's name as text")?.to_owned(),
        None => "custom".to_owned(),
    };
    let total_field = total.ok_or_else(|| missing("total".to_owned(), root.line))?;
    let total = match total_field.size()? {
        Size::Bytes(bytes) => bytes,
        Size::Share(share) => {
            return Err(ProfileError::InvalidSize {
                key: total_field.key,
                line: total_field.line,
                cause: SizeError::ShareNotAllowed {
                    text: share.to_string(),
                },
            });
        }
    };
    let pools_field = pools.ok_or_else(|| missing("pools".to_owned(), root.line))?;
    let (specs, lines) = read_pools(&pools_field, total)?;
    let (order, order_lines) = match &priority {
        Some(field) => read_priority(field)?,
        None => (Vec::new(), Vec::new()),
    };
    let layout = Layout::new(total, specs, &order).map_err(|cause| {
        let pool_line = |pool: &str| lines.iter().find(|l| l.name == pool);
        let (key, line) = match &cause {
            BuildError::ZeroTotal => (total_field.key.clone(), total_field.line),
            BuildError::OverCommitted { pool, .. } => match pool_line(pool.as_str()) {
                Some(l) => (format!("pools.{}.limit", l.name), l.limit_line),
                None => (pools_field.key.clone(), pools_field.line),
            },
            BuildError::DuplicatePool { name } => match pool_line(name.as_str()) {
                Some(l) => (format!("pools.{}", l.name), l.name_line),
                None => (pools_field.key.clone(), pools_field.line),
            },
            BuildError::UnknownPriorityPool { position, .. }
            | BuildError::DuplicatePriorityPool { position, .. } => (
                format!("priority[{position}]"),
                order_lines.get(*position).copied().unwrap_or_default(),
            ),
            _ => (pools_field.key.clone(), pools_field.line),
        };
        ProfileError::InvalidLayout { key, line, cause }
    })?;
    Ok(Profile { name, layout })
}

fn read_pools(
    field: &Field<'_>,
    total: Bytes,
) -> Result<(Vec<PoolSpec>, Vec<PoolLines>), ProfileError> {
    let entries = field.entries(&[], POOL_KEYS)?;
    if entries.is_empty() {
        return Err(ProfileError::InvalidLayout {
            key: field.key.clone(),
            line: field.line,
            cause: BuildError::NoPools,
        });
    }
    let mut specs = Vec::with_capacity(entries.len());
    let mut lines = Vec::with_capacity(entries.len());
    for (raw_name, pool) in entries {
        let name = PoolName::new(raw_name).map_err(|source| ProfileError::InvalidLayout {
            key: pool.key.clone(),
            line: pool.line,
            cause: BuildError::InvalidPoolName(source),
        })?;
        let (mut policy, mut limit) = (None, None);
        for (key, value) in pool.entries(&["policy", "limit"], POOL_KEYS)? {
            if key == "policy" {
                policy = Some(value);
            } else {
                limit = Some(value);
            }
        }
        let policy_field =
            policy.ok_or_else(|| missing(format!("{}.policy", pool.key), pool.line))?;
        let policy: Policy = policy_field
            .text("a policy name")?
            .parse()
            .map_err(|cause| ProfileError::UnknownPolicy {
                key: policy_field.key.clone(),
                line: policy_field.line,
                cause,
            })?;
        let limit_field = limit.ok_or_else(|| missing(format!("{}.limit", pool.key), pool.line))?;
        let limit = limit_field.size()?.resolve(total);
        lines.push(PoolLines {
            name: raw_name.to_owned(),
            name_line: pool.line,
            limit_line: limit_field.line,
        });
        specs.push(PoolSpec::new(name, policy, limit));
    }
    Ok((specs, lines))
}

fn read_priority(field: &Field<'_>) -> Result<(Vec<String>, Vec<u64>), ProfileError> {
    let Node::Seq(items) = field.node else {
        return Err(field.wrong_type("a list of pool names"));
    };
    let mut names = Vec::with_capacity(items.len());
    let mut lines = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let entry = Field {
            key: format!("{}[{i}]", field.key),
            line: line(item),
            node: &item.value,
        };
        names.push(entry.text("a pool name")?.to_owned());
        lines.push(entry.line);
    }
    Ok((names, lines))
}

fn options() -> serde_saphyr::Options {
    let mut budget = serde_saphyr::Budget::default();
    budget.max_depth = MAX_DEPTH;
    budget.max_nodes = MAX_NODES;
    budget.max_reader_input_bytes = Some(MAX_PROFILE_BYTES);
    let mut options = serde_saphyr::Options::default();
    options.budget = Some(budget);
    options.with_snippet = false;
    options
}
