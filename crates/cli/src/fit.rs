//! Whether what a command will hold fits, checked before it holds anything: against the
//! budget the flags give, or, without one, the memory this process may use (physical
//! memory, or its cgroup's limit where that is lower).

use budget::{Bytes, Policy, Profile};
use engine::memory::Accounts;
use probe::MemoryProbe;

use crate::exit::{CliError, input};
use crate::plan::BudgetArgs;

/// The memory a command must fit in, and where that figure came from.
pub struct Limit {
    /// The profile the flags named; `None`: the machine's memory is the limit.
    pub profile: Option<Profile>,
    /// The profile's total, or the machine's memory limit.
    pub total_bytes: u64,
    /// What a plan may use: the total less the profile's reserved pools.
    pub usable_bytes: u64,
    /// `budget`, `machine memory` or `cgroup memory limit`, for messages and reports.
    pub source: String,
}

/// The memory this process may use: physical memory, or its cgroup's limit where lower
/// (v1 or v2), with which of the two it is.
pub fn machine_memory() -> Result<(u64, &'static str), CliError> {
    let system = probe::NativeProbe::new().system().map_err(|e| {
        CliError::Runtime(anyhow::Error::new(e).context("cannot read the machine's memory"))
    })?;
    let limit = system.memory_limit_bytes();
    let source = if limit < system.mem_total_bytes {
        "cgroup memory limit"
    } else {
        "machine memory"
    };
    Ok((limit, source))
}

impl Limit {
    /// The limit `args` give: `--budget`, `--profile`, or else the machine's memory. A
    /// built-in profile is scaled to the machine's memory limit, cgroup included.
    pub fn of(args: &BudgetArgs) -> Result<Limit, CliError> {
        let (machine, machine_source) = machine_memory()?;
        let Some(profile) = args.profile(Bytes(machine))? else {
            return Ok(Limit {
                profile: None,
                total_bytes: machine,
                usable_bytes: machine,
                source: machine_source.to_string(),
            });
        };
        let reserved = profile
            .pools()
            .iter()
            .filter(|s| s.policy() == Policy::Reserved)
            .fold(0u64, |sum, s| sum.saturating_add(s.limit().0));
        Ok(Limit {
            total_bytes: profile.total().0,
            usable_bytes: profile.total().0.saturating_sub(reserved),
            source: format!("profile {}", profile.name()),
            profile: Some(profile),
        })
    }

    /// The ledger the engine reserves in: the profile's pools, or an unlimited ledger
    /// that only counts (the machine's limit was checked by [`Limit::check`]).
    pub fn accounts(&self) -> Result<Accounts, CliError> {
        match &self.profile {
            Some(p) => Accounts::of(&p.to_budget()).map_err(input),
            None => Ok(Accounts::unlimited()),
        }
    }

    /// Refuses (exit 2) when `need_bytes` is more than the limit allows; `what` names the
    /// thing that needs it ("this run"), `tips` gives the changes that would fit, cheapest
    /// first (asked only on refusal).
    pub fn check(
        &self,
        what: &str,
        need_bytes: u64,
        tips: impl FnOnce() -> Vec<String>,
    ) -> Result<(), CliError> {
        if need_bytes <= self.usable_bytes {
            return Ok(());
        }
        let tips = tips();
        let allows = if self.profile.is_some() {
            "the budget allows".to_string()
        } else {
            format!("the {} is", self.source)
        };
        Err(input(anyhow::anyhow!(
            "{what} needs {} ({need_bytes} bytes) but {allows} {} ({} bytes): short by {} \
             bytes; cheapest change: {}",
            Bytes(need_bytes),
            Bytes(self.usable_bytes),
            self.usable_bytes,
            need_bytes - self.usable_bytes,
            tips.first().map_or("a larger --budget", String::as_str)
        )))
    }
}
