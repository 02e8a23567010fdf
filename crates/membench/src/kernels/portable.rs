//! Plain-Rust kernels: the fallback on CPUs without a SIMD family here, and the reference
//! the SIMD kernels are tested against.

/// Independent partial sums, so the adds do not form one long dependency chain and the
/// loop is limited by loads rather than by add latency.
const LANES: usize = 8;

pub(super) fn read(a: &[f64]) -> f64 {
    let mut acc = [0.0; LANES];
    let mut chunks = a.chunks_exact(LANES);
    for chunk in &mut chunks {
        for (s, x) in acc.iter_mut().zip(chunk) {
            *s += x;
        }
    }
    let tail: f64 = chunks.remainder().iter().sum();
    acc.iter().sum::<f64>() + tail
}

pub(super) fn write(a: &mut [f64], value: f64) {
    a.fill(value);
}

pub(super) fn copy(dst: &mut [f64], src: &[f64]) {
    dst.copy_from_slice(src);
}

pub(super) fn triad(a: &mut [f64], b: &[f64], c: &[f64], q: f64) {
    for ((a, b), c) in a.iter_mut().zip(b).zip(c) {
        *a = b + q * c;
    }
}
