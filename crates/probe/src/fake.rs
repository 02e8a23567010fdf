//! [`FakeProbe`]: scripted readings, for tests here and in other crates.

use std::collections::VecDeque;
use std::io;
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard, PoisonError};

use crate::error::ProbeError;
use crate::memory_probe::MemoryProbe;
use crate::pressure::Pressure;
use crate::snapshot::{GpuSnapshot, PlatformInfo, ProcessSnapshot, SystemSnapshot};

/// One scripted step: what the fake reports until the next [`FakeProbe::advance`].
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct FakeReading {
    /// The system view.
    pub system: SystemSnapshot,
    /// This process.
    pub process: ProcessSnapshot,
    /// A pressure value to report instead of judging `system`; `None` judges it.
    pub pressure: Option<f64>,
}

impl FakeReading {
    /// A step with the given system and process views, pressure judged from `system`.
    #[must_use]
    pub fn new(system: SystemSnapshot, process: ProcessSnapshot) -> Self {
        Self {
            system,
            process,
            pressure: None,
        }
    }

    /// The same step, reporting `value` as the pressure.
    #[must_use]
    pub fn with_pressure(mut self, value: f64) -> Self {
        self.pressure = Some(value);
        self
    }
}

/// Which reading a scripted fault breaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum FakeFault {
    /// [`MemoryProbe::platform`] fails.
    Platform,
    /// [`MemoryProbe::system`] (and so [`MemoryProbe::pressure`]) fails.
    System,
    /// [`MemoryProbe::process`] fails.
    Process,
    /// [`MemoryProbe::gpus`] fails.
    Gpus,
}

#[derive(Debug)]
struct State {
    platform: PlatformInfo,
    current: FakeReading,
    script: VecDeque<FakeReading>,
    gpus: Vec<GpuSnapshot>,
    fault: Option<FakeFault>,
}

/// A probe whose readings are set by the test.
///
/// Starts as a 16 GiB machine with 12 GiB available and a 1 GiB process. Readings change
/// through the setters, or by [`FakeProbe::script`]ing a sequence and stepping through it
/// with [`FakeProbe::advance`]. Every method takes `&self`, so a fake owned by a
/// [`crate::Monitor`] can be driven through [`crate::Monitor::probe`].
///
/// ```
/// use probe::{FakeProbe, MemoryProbe, PressureLevel};
///
/// let fake = FakeProbe::new();
/// fake.set_pressure(Some(0.9));
/// assert_eq!(fake.pressure().unwrap().level, PressureLevel::Warning);
/// ```
#[derive(Debug)]
pub struct FakeProbe {
    state: Mutex<State>,
}

impl Default for FakeProbe {
    fn default() -> Self {
        Self::new()
    }
}

impl FakeProbe {
    /// A 16 GiB machine, 12 GiB available, a 1 GiB process, no GPUs.
    #[must_use]
    pub fn new() -> Self {
        let total = 16 << 30;
        let platform = PlatformInfo {
            mem_total_bytes: total,
            physical_cores: Some(4),
            logical_cores: 8,
            usable_cpus: 8,
            ..PlatformInfo::default()
        };
        let current = FakeReading::new(
            SystemSnapshot::new(total, 12 << 30),
            ProcessSnapshot::new(1 << 30),
        );
        Self {
            state: Mutex::new(State {
                platform,
                current,
                script: VecDeque::new(),
                gpus: Vec::new(),
                fault: None,
            }),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A test that panicked while holding the lock has already failed; its readings
        // are still whole values, so carry on with them.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Sets the platform facts.
    pub fn set_platform(&self, platform: PlatformInfo) {
        self.state().platform = platform;
    }

    /// Sets the system view.
    pub fn set_system(&self, system: SystemSnapshot) {
        self.state().current.system = system;
    }

    /// Sets this process's view.
    pub fn set_process(&self, process: ProcessSnapshot) {
        self.state().current.process = process;
    }

    /// Reports `value` as the pressure (`None`: judge the system view).
    pub fn set_pressure(&self, value: Option<f64>) {
        self.state().current.pressure = value;
    }

    /// Sets the GPUs.
    pub fn set_gpus(&self, gpus: Vec<GpuSnapshot>) {
        self.state().gpus = gpus;
    }

    /// Makes one reading fail until cleared with `None`.
    pub fn set_fault(&self, fault: Option<FakeFault>) {
        self.state().fault = fault;
    }

    /// Queues readings; each [`FakeProbe::advance`] makes the next one current.
    pub fn script(&self, readings: impl IntoIterator<Item = FakeReading>) {
        self.state().script.extend(readings);
    }

    /// Makes the next scripted reading current. Returns `false` (and changes nothing) when
    /// the script is used up.
    pub fn advance(&self) -> bool {
        let mut state = self.state();
        match state.script.pop_front() {
            Some(next) => {
                state.current = next;
                true
            }
            None => false,
        }
    }

    /// Scripted readings not yet reached.
    #[must_use]
    pub fn remaining(&self) -> usize {
        self.state().script.len()
    }

    fn check(&self, what: FakeFault) -> Result<(), ProbeError> {
        if self.state().fault == Some(what) {
            return Err(ProbeError::Read {
                path: PathBuf::from(format!("fake/{what:?}")),
                cause: io::Error::other("fault scripted by the test"),
            });
        }
        Ok(())
    }
}

impl MemoryProbe for FakeProbe {
    fn platform(&self) -> Result<PlatformInfo, ProbeError> {
        self.check(FakeFault::Platform)?;
        Ok(self.state().platform.clone())
    }

    fn system(&self) -> Result<SystemSnapshot, ProbeError> {
        self.check(FakeFault::System)?;
        Ok(self.state().current.system.clone())
    }

    fn process(&self) -> Result<ProcessSnapshot, ProbeError> {
        self.check(FakeFault::Process)?;
        Ok(self.state().current.process.clone())
    }

    fn pressure_of(&self, system: &SystemSnapshot) -> Pressure {
        match self.state().current.pressure {
            Some(value) => Pressure::scripted(value, system),
            None => Pressure::assess(system),
        }
    }

    fn gpus(&self, _system: &SystemSnapshot) -> Result<Vec<GpuSnapshot>, ProbeError> {
        self.check(FakeFault::Gpus)?;
        Ok(self.state().gpus.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pressure::{PressureLevel, PressureSource};

    #[test]
    fn script_steps_and_stops() {
        let fake = FakeProbe::new();
        fake.script([
            FakeReading::new(SystemSnapshot::new(100, 10), ProcessSnapshot::new(5)),
            FakeReading::new(SystemSnapshot::new(100, 90), ProcessSnapshot::new(6))
                .with_pressure(0.97),
        ]);
        assert_eq!(fake.remaining(), 2);
        assert!(fake.advance());
        let p = fake.pressure().unwrap();
        assert_eq!(
            (p.source, p.level),
            (PressureSource::MemAvailable, PressureLevel::Warning)
        );
        assert!(fake.advance());
        assert_eq!(fake.process().unwrap().rss_bytes, 6);
        assert_eq!(fake.pressure().unwrap().level, PressureLevel::Critical);
        assert!(!fake.advance());
        assert_eq!(fake.process().unwrap().rss_bytes, 6);
    }

    #[test]
    fn faults_break_one_reading() {
        let fake = FakeProbe::new();
        fake.set_fault(Some(FakeFault::System));
        assert!(matches!(fake.system(), Err(ProbeError::Read { .. })));
        assert!(fake.pressure().is_err());
        assert!(fake.process().is_ok());
        fake.set_fault(None);
        assert!(fake.system().is_ok());
    }
}
