//! NVIDIA GPUs through NVML, loaded with `dlopen` at run time (`nvml-wrapper`), so that
//! building needs no driver and one binary runs on machines with and without one.

use nvml_wrapper::Nvml;
use nvml_wrapper::error::NvmlError;

use crate::error::ProbeError;
use crate::snapshot::{GpuMemorySource, GpuSnapshot, SystemSnapshot};

/// A loaded NVML.
pub(crate) struct NvmlGpus {
    nvml: Nvml,
}

impl std::fmt::Debug for NvmlGpus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NvmlGpus").finish_non_exhaustive()
    }
}

impl NvmlGpus {
    /// Loads `libnvidia-ml.so.1`. Any failure — no library, no driver loaded, no
    /// permission — means "no NVIDIA GPUs here", which is not an error.
    pub(crate) fn load() -> Option<Self> {
        Nvml::init().ok().map(|nvml| Self { nvml })
    }

    /// Memory and utilization of each GPU. A GPU whose driver answers "not supported" for
    /// memory (unified-memory parts such as GH200 and GB10) reports the system view.
    pub(crate) fn snapshots(
        &self,
        system: &SystemSnapshot,
    ) -> Result<Vec<GpuSnapshot>, ProbeError> {
        let nvml_err = |call| {
            move |source| ProbeError::Nvml {
                call,
                cause: source,
            }
        };
        let count = self
            .nvml
            .device_count()
            .map_err(nvml_err("nvmlDeviceGetCount"))?;
        let mut gpus = Vec::with_capacity(count as usize);
        for index in 0..count {
            let device = self
                .nvml
                .device_by_index(index)
                .map_err(nvml_err("nvmlDeviceGetHandleByIndex"))?;
            let name = device
                .name()
                .unwrap_or_else(|_| format!("NVIDIA GPU {index}"));
            let mut gpu = match device.memory_info() {
                Ok(memory) => {
                    let mut gpu = GpuSnapshot::new(index, name, memory.total, memory.used);
                    gpu.free_bytes = memory.free;
                    gpu.unified_memory = Some(false);
                    gpu
                }
                Err(NvmlError::NotSupported) => {
                    let mut gpu = GpuSnapshot::new(
                        index,
                        name,
                        system.mem_total_bytes,
                        system.mem_used_bytes(),
                    );
                    gpu.free_bytes = system.mem_available_bytes;
                    gpu.memory_source = GpuMemorySource::System;
                    gpu.unified_memory = Some(true);
                    gpu
                }
                Err(source) => {
                    return Err(ProbeError::Nvml {
                        call: "nvmlDeviceGetMemoryInfo_v2",
                        cause: source,
                    });
                }
            };
            gpu.utilization = match device.utilization_rates() {
                Ok(rates) => Some(f64::from(rates.gpu.min(100)) / 100.0),
                Err(NvmlError::NotSupported) => None,
                Err(source) => {
                    return Err(ProbeError::Nvml {
                        call: "nvmlDeviceGetUtilizationRates",
                        cause: source,
                    });
                }
            };
            gpus.push(gpu);
        }
        Ok(gpus)
    }
}
