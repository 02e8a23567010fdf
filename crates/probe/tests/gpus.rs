//! GPUs on the live machine: NVML when a driver is there, nothing (and no error) when not.
#![cfg(target_os = "linux")]

use probe::{GpuMemorySource, LinuxProbe, MemoryProbe};

#[test]
fn gpus_are_listed_or_absent_without_error() {
    let probe = LinuxProbe::new();
    let system = probe.system().unwrap();
    let gpus = probe.gpus(&system).unwrap();
    if !probe.has_nvml() {
        assert!(gpus.is_empty(), "no NVML, no GPUs");
        return;
    }
    assert!(!gpus.is_empty(), "NVML loaded but listed no GPU");
    for (i, gpu) in gpus.iter().enumerate() {
        println!("{gpu:?}");
        assert_eq!(gpu.index as usize, i);
        assert!(!gpu.name.is_empty());
        assert!(gpu.total_bytes > 0);
        assert!(gpu.used_bytes <= gpu.total_bytes);
        assert!(gpu.free_bytes <= gpu.total_bytes);
        if gpu.memory_source == GpuMemorySource::System {
            assert_eq!(gpu.total_bytes, system.mem_total_bytes);
        }
        if let Some(u) = gpu.utilization {
            assert!((0.0..=1.0).contains(&u));
        }
    }
}

#[test]
fn fixture_roots_never_load_nvml() {
    assert!(!LinuxProbe::with_root("/").has_nvml());
}
