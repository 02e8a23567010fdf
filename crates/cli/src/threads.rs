//! `--threads` and `--threads-oversubscribe`: the one definition of the flags, their
//! default, their validation and the cap, for every command that runs compute threads.
//!
//! A thread count is a memory figure too: each compute thread has its stack and its share
//! of the allocator, counted in the plan's runtime line (docs/design/plan.md). So nothing
//! is silent (issue 13): `--threads 0` is refused (exit 2), and more threads than the CPUs
//! this process may use are capped to that count with a one-line warning on stderr, unless
//! `--threads-oversubscribe` says the count is meant (measurements, tests).

use clap::Args;
use probe::{MemoryProbe, PlatformInfo};

/// Most compute threads any command runs (the thread pool's own ceiling).
pub const MAX_THREADS: u16 = 1024;

#[derive(Args, Debug, Clone, Default)]
pub struct ThreadsArgs {
    /// Compute threads, 1 to 1024 (default: the physical cores; `bench memory`: every CPU
    /// this process may use). More than the CPUs this process may use are capped to that
    /// count, with a warning, unless --threads-oversubscribe.
    #[arg(long, value_name = "N",
          value_parser = clap::value_parser!(u16).range(1..=i64::from(MAX_THREADS)))]
    pub threads: Option<u16>,
    /// Run the --threads given even beyond the CPUs this process may use (to measure
    /// oversubscription; every thread is still counted in the memory plan).
    #[arg(long, requires = "threads")]
    pub threads_oversubscribe: bool,
}

/// How a thread count compares with the CPUs (see [`ThreadsArgs::resolve_with`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resolved {
    /// The count to run, as asked or by default.
    Run(usize),
    /// Asked for `asked` threads beyond the `usable` CPUs: run `usable`.
    Capped { asked: usize, usable: usize },
}

impl Resolved {
    pub fn threads(self) -> usize {
        match self {
            Resolved::Run(n) => n,
            Resolved::Capped { usable, .. } => usable,
        }
    }
}

impl ThreadsArgs {
    /// The compute threads to run on this machine, warning on stderr when the count asked
    /// for is capped.
    pub fn resolve(&self) -> usize {
        let r = self.resolve_with(&cpus());
        if let Resolved::Capped { asked, usable } = r {
            eprintln!(
                "llmem: warning: --threads {asked} is more than the {usable} CPUs this process \
                 may use; running {usable} (--threads-oversubscribe runs {asked})"
            );
        }
        r.threads()
    }

    /// The thread count asked for, capped as [`ThreadsArgs::resolve`] does; `None` when
    /// none was given (for commands whose default is their own).
    pub fn requested(&self) -> Option<usize> {
        self.threads.map(|_| self.resolve())
    }

    /// [`ThreadsArgs::resolve`] against `platform`'s CPUs, without printing.
    pub fn resolve_with(&self, platform: &PlatformInfo) -> Resolved {
        let usable = platform.usable_cpus.max(1) as usize;
        let Some(asked) = self.threads.map(usize::from) else {
            return Resolved::Run(platform.default_threads() as usize);
        };
        if asked > usable && !self.threads_oversubscribe {
            Resolved::Capped { asked, usable }
        } else {
            Resolved::Run(asked)
        }
    }
}

/// The CPU facts of this machine (one CPU if the OS will not say).
fn cpus() -> PlatformInfo {
    probe::NativeProbe::new().platform().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn machine(physical: u32, usable: u32) -> PlatformInfo {
        let mut p = probe::FakeProbe::new().platform().unwrap();
        p.physical_cores = Some(physical);
        p.logical_cores = usable;
        p.usable_cpus = usable;
        p
    }

    fn args(threads: Option<u16>, oversubscribe: bool) -> ThreadsArgs {
        ThreadsArgs {
            threads,
            threads_oversubscribe: oversubscribe,
        }
    }

    #[test]
    fn finding4_threads_beyond_the_cpus_are_capped_unless_oversubscribed() {
        let m = machine(2, 4);
        assert_eq!(args(None, false).resolve_with(&m), Resolved::Run(2));
        assert_eq!(args(Some(3), false).resolve_with(&m), Resolved::Run(3));
        assert_eq!(args(Some(4), false).resolve_with(&m), Resolved::Run(4));
        assert_eq!(
            args(Some(512), false).resolve_with(&m),
            Resolved::Capped {
                asked: 512,
                usable: 4
            }
        );
        assert_eq!(args(Some(512), false).resolve_with(&m).threads(), 4);
        assert_eq!(args(Some(512), true).resolve_with(&m), Resolved::Run(512));
    }
}
