//! Streaming kernels (read, write, copy, triad) over `f64` arrays, one set per instruction
//! set, chosen at run time.
//!
//! The definitions follow STREAM (McCalpin): copy `c = a`, triad `a = b + q·c`, on
//! doubles. Read (a sum) and write (a fill) complete the set. Each kernel touches every
//! element once per pass; byte counts are in [`crate::Op::bytes_per_element`].

use serde::{Deserialize, Serialize};

#[cfg(target_arch = "aarch64")]
mod neon;
mod portable;
#[cfg(target_arch = "x86_64")]
mod x86;

/// The kernel family used on this CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Isa {
    /// x86-64 with AVX2 and FMA (256-bit loads and stores; streaming stores available).
    Avx2Fma,
    /// aarch64 Advanced SIMD (128-bit); no streaming-store variant is measured (see
    /// `docs/design/membench.md`).
    Neon,
    /// Plain Rust loops, left to the compiler.
    Portable,
}

impl Isa {
    /// The best kernel family this CPU supports.
    #[must_use]
    pub fn detect() -> Isa {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            return Isa::Avx2Fma;
        }
        #[cfg(target_arch = "aarch64")]
        if std::arch::is_aarch64_feature_detected!("neon") {
            return Isa::Neon;
        }
        Isa::Portable
    }

    /// Whether this family has non-temporal (cache-bypassing) store kernels.
    #[must_use]
    pub fn has_nontemporal_stores(self) -> bool {
        matches!(self, Isa::Avx2Fma)
    }

    /// Name for reports.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Isa::Avx2Fma => "avx2+fma",
            Isa::Neon => "neon",
            Isa::Portable => "portable",
        }
    }
}

/// How a kernel writes its output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stores {
    /// Ordinary stores: each written line is first read into the cache (write-allocate).
    Temporal,
    /// Streaming stores that bypass the cache (`vmovntpd` + `sfence` on x86-64): no
    /// write-allocate read, but slow when the data would have fit in cache.
    NonTemporal,
}

impl Stores {
    /// Name for reports.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Stores::Temporal => "temporal",
            Stores::NonTemporal => "nontemporal",
        }
    }
}

/// A kernel family checked against the running CPU; the only way to call the kernels.
///
/// # Invariants
/// `isa` is supported by the CPU (it came from [`Isa::detect`] or is `Portable`), and
/// `Stores::NonTemporal` is only used when `isa.has_nontemporal_stores()`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Kernels {
    isa: Isa,
}

impl Kernels {
    /// Kernels for the running CPU.
    pub(crate) fn detect() -> Kernels {
        Kernels { isa: Isa::detect() }
    }

    /// Portable kernels, available everywhere (used by tests to cross-check).
    #[cfg(test)]
    pub(crate) fn portable() -> Kernels {
        Kernels { isa: Isa::Portable }
    }

    pub(crate) fn isa(self) -> Isa {
        self.isa
    }

    /// `stores` if this family has it, else temporal stores.
    fn stores(self, stores: Stores) -> Stores {
        if self.isa.has_nontemporal_stores() {
            stores
        } else {
            Stores::Temporal
        }
    }

    /// Sum of `a` (the read kernel).
    pub(crate) fn read(self, a: &[f64]) -> f64 {
        match self.isa {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `Avx2Fma` is only constructed when the CPU has AVX2 and FMA.
            Isa::Avx2Fma => unsafe { x86::read(a) },
            #[cfg(target_arch = "aarch64")]
            // SAFETY: `Neon` is only constructed when the CPU has Advanced SIMD.
            Isa::Neon => unsafe { neon::read(a) },
            _ => portable::read(a),
        }
    }

    /// `a[i] = value` (the write kernel).
    pub(crate) fn write(self, a: &mut [f64], value: f64, stores: Stores) {
        match (self.isa, self.stores(stores)) {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `Avx2Fma` is only constructed when the CPU has AVX2 and FMA.
            (Isa::Avx2Fma, s) => unsafe { x86::write(a, value, s) },
            #[cfg(target_arch = "aarch64")]
            // SAFETY: `Neon` is only constructed when the CPU has Advanced SIMD.
            (Isa::Neon, _) => unsafe { neon::write(a, value) },
            _ => portable::write(a, value),
        }
    }

    /// `dst[i] = src[i]` (STREAM copy).
    ///
    /// # Panics
    /// If the slices differ in length (a bug in the caller).
    pub(crate) fn copy(self, dst: &mut [f64], src: &[f64], stores: Stores) {
        assert_eq!(dst.len(), src.len(), "copy operands differ in length");
        match (self.isa, self.stores(stores)) {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: CPU support as above; lengths checked.
            (Isa::Avx2Fma, s) => unsafe { x86::copy(dst, src, s) },
            #[cfg(target_arch = "aarch64")]
            // SAFETY: CPU support as above; lengths checked.
            (Isa::Neon, _) => unsafe { neon::copy(dst, src) },
            _ => portable::copy(dst, src),
        }
    }

    /// `a[i] = b[i] + q·c[i]` (STREAM triad).
    ///
    /// # Panics
    /// If the slices differ in length (a bug in the caller).
    pub(crate) fn triad(self, a: &mut [f64], b: &[f64], c: &[f64], q: f64, stores: Stores) {
        assert!(
            a.len() == b.len() && a.len() == c.len(),
            "triad operands differ in length"
        );
        match (self.isa, self.stores(stores)) {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: CPU support as above; lengths checked.
            (Isa::Avx2Fma, s) => unsafe { x86::triad(a, b, c, q, s) },
            #[cfg(target_arch = "aarch64")]
            // SAFETY: CPU support as above; lengths checked.
            (Isa::Neon, _) => unsafe { neon::triad(a, b, c, q) },
            _ => portable::triad(a, b, c, q),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(n: usize, seed: f64) -> Vec<f64> {
        (0..n).map(|i| seed + (i % 97) as f64 * 0.25).collect()
    }

    /// Every length near the unroll widths, and every misalignment of a 32-byte vector,
    /// gives the portable answer exactly (the sums are of quarters, so exact in `f64`).
    #[test]
    fn simd_kernels_match_portable_for_all_lengths_and_offsets() {
        let simd = Kernels::detect();
        let plain = Kernels::portable();
        for offset in 0..4 {
            for n in [0, 1, 3, 4, 7, 15, 16, 17, 31, 32, 33, 63, 64, 65, 200, 1023] {
                let a = data(n + offset, 1.0);
                assert_eq!(
                    simd.read(&a[offset..]),
                    plain.read(&a[offset..]),
                    "read n={n}"
                );
                for stores in [Stores::Temporal, Stores::NonTemporal] {
                    let mut w = vec![0.0; n + offset];
                    simd.write(&mut w[offset..], 2.5, stores);
                    assert!(w[offset..].iter().all(|x| *x == 2.5));
                    assert!(w[..offset].iter().all(|x| *x == 0.0));

                    let src = data(n + offset, 3.0);
                    let mut dst = vec![0.0; n + offset];
                    simd.copy(&mut dst[offset..], &src[offset..], stores);
                    assert_eq!(dst[offset..], src[offset..]);

                    let (b, c) = (data(n + offset, 5.0), data(n + offset, 0.5));
                    let mut got = vec![0.0; n + offset];
                    let mut want = vec![0.0; n + offset];
                    simd.triad(&mut got[offset..], &b[offset..], &c[offset..], 3.0, stores);
                    plain.triad(&mut want[offset..], &b[offset..], &c[offset..], 3.0, stores);
                    assert_eq!(got, want, "triad n={n} offset={offset} {stores:?}");
                }
            }
        }
    }

    #[test]
    fn portable_kernels_compute_stream_definitions() {
        let k = Kernels::portable();
        assert_eq!(k.read(&[1.0, 2.0, 3.5]), 6.5);
        let mut a = [0.0; 3];
        k.triad(
            &mut a,
            &[1.0, 2.0, 3.0],
            &[1.0, 1.0, 2.0],
            3.0,
            Stores::Temporal,
        );
        assert_eq!(a, [4.0, 5.0, 9.0]);
    }

    #[test]
    fn nontemporal_falls_back_where_unsupported() {
        let k = Kernels::portable();
        assert_eq!(k.stores(Stores::NonTemporal), Stores::Temporal);
        assert!(!Isa::Portable.has_nontemporal_stores());
    }
}
