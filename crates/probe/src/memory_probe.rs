//! The [`MemoryProbe`] trait every backend implements.

use std::sync::Arc;

use crate::error::ProbeError;
use crate::pressure::Pressure;
use crate::snapshot::{GpuSnapshot, PlatformInfo, ProcessSnapshot, SystemSnapshot};

/// What the operating system and drivers say about memory.
///
/// Readings are independent calls so a caller pays only for what it shows; each one is a
/// handful of small file reads or system calls. Signals a platform may lack (PSI, cgroup
/// v2, NVML, Metal) read as `None` or an empty list, never as an error.
pub trait MemoryProbe {
    /// Facts that do not change while llmem runs.
    ///
    /// # Errors
    /// A file or call every supported system has failed.
    fn platform(&self) -> Result<PlatformInfo, ProbeError>;

    /// The machine's memory now, with the raw pressure signals.
    ///
    /// # Errors
    /// A file or call every supported system has failed.
    fn system(&self) -> Result<SystemSnapshot, ProbeError>;

    /// This process's memory now.
    ///
    /// # Errors
    /// A file or call every supported system has failed.
    fn process(&self) -> Result<ProcessSnapshot, ProbeError>;

    /// Pressure judged from a system snapshot. Backends keep the default,
    /// [`Pressure::assess`]; a fake may script it.
    fn pressure_of(&self, system: &SystemSnapshot) -> Pressure {
        Pressure::assess(system)
    }

    /// Pressure now (reads [`MemoryProbe::system`]).
    ///
    /// # Errors
    /// As [`MemoryProbe::system`].
    fn pressure(&self) -> Result<Pressure, ProbeError> {
        Ok(self.pressure_of(&self.system()?))
    }

    /// The GPUs and their memory. `system` is the view a unified-memory GPU falls back to
    /// when its driver does not report memory. No GPU driver means an empty list.
    ///
    /// # Errors
    /// A driver that loaded failed a query.
    fn gpus(&self, system: &SystemSnapshot) -> Result<Vec<GpuSnapshot>, ProbeError> {
        let _ = system;
        Ok(Vec::new())
    }
}

macro_rules! forward_probe {
    ($($ty:ty),*) => {$(
        impl<P: MemoryProbe + ?Sized> MemoryProbe for $ty {
            fn platform(&self) -> Result<PlatformInfo, ProbeError> {
                (**self).platform()
            }
            fn system(&self) -> Result<SystemSnapshot, ProbeError> {
                (**self).system()
            }
            fn process(&self) -> Result<ProcessSnapshot, ProbeError> {
                (**self).process()
            }
            fn pressure_of(&self, system: &SystemSnapshot) -> Pressure {
                (**self).pressure_of(system)
            }
            fn pressure(&self) -> Result<Pressure, ProbeError> {
                (**self).pressure()
            }
            fn gpus(&self, system: &SystemSnapshot) -> Result<Vec<GpuSnapshot>, ProbeError> {
                (**self).gpus(system)
            }
        }
    )*};
}

forward_probe!(&P, Box<P>, Arc<P>);
