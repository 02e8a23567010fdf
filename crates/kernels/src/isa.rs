//! Which instruction set the kernels use, detected once at run time.

use std::sync::OnceLock;

/// The SIMD flavour a kernel call dispatches to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Isa {
    /// Plain Rust; the reference every SIMD path is tested against.
    Portable,
    /// x86-64 with AVX2, FMA and F16C.
    Avx2,
    /// aarch64 Advanced SIMD (always present on aarch64).
    Neon,
}

impl Isa {
    /// The best instruction set this CPU supports (cached after the first call).
    pub fn detect() -> Isa {
        static ISA: OnceLock<Isa> = OnceLock::new();
        *ISA.get_or_init(detect_uncached)
    }

    /// Every instruction set usable on this CPU, the portable one first (for tests).
    pub fn available() -> Vec<Isa> {
        let mut v = vec![Isa::Portable];
        if Isa::detect() != Isa::Portable {
            v.push(Isa::detect());
        }
        v
    }

    /// A short lowercase name for reports.
    pub fn name(self) -> &'static str {
        match self {
            Isa::Portable => "portable",
            Isa::Avx2 => "avx2",
            Isa::Neon => "neon",
        }
    }
}

fn detect_uncached() -> Isa {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma")
            && std::arch::is_x86_feature_detected!("f16c")
        {
            return Isa::Avx2;
        }
    }
    #[cfg(target_arch = "aarch64")]
    {
        return Isa::Neon;
    }
    #[allow(unreachable_code)]
    Isa::Portable
}
