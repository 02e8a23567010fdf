//! Advanced SIMD (NEON) kernels for aarch64.
//!
//! No streaming-store variant: aarch64's non-temporal hint (`STNP`) is a pair store whose
//! effect differs by core and is not exposed as a stable intrinsic; Apple's cores combine
//! full-line writes without a read for ownership anyway.

use std::arch::aarch64::{
    float64x2_t, vaddq_f64, vaddvq_f64, vdupq_n_f64, vfmaq_f64, vld1q_f64, vst1q_f64,
};

/// Doubles in one 128-bit vector.
const W: usize = 2;

/// Sum of `a`, eight vector accumulators wide (keeps the loop load-bound, not add-bound).
///
/// # Safety
/// The CPU must support Advanced SIMD (every aarch64 CPU Rust targets does).
#[target_feature(enable = "neon")]
pub(super) unsafe fn read(a: &[f64]) -> f64 {
    let n = a.len();
    let p = a.as_ptr();
    let mut acc: [float64x2_t; 8] = [vdupq_n_f64(0.0); 8];
    let mut i = 0;
    while i + 8 * W <= n {
        for (k, s) in acc.iter_mut().enumerate() {
            // SAFETY: i + 8·W <= n, so the two doubles at i + k·W are inside `a`.
            *s = vaddq_f64(*s, unsafe { vld1q_f64(p.add(i + k * W)) });
        }
        i += 8 * W;
    }
    let mut v = acc[0];
    for s in &acc[1..] {
        v = vaddq_f64(v, *s);
    }
    vaddvq_f64(v) + a[i..].iter().sum::<f64>()
}

/// `a[i] = value`.
///
/// # Safety
/// The CPU must support Advanced SIMD.
#[target_feature(enable = "neon")]
pub(super) unsafe fn write(a: &mut [f64], value: f64) {
    let n = a.len();
    let v = vdupq_n_f64(value);
    let p = a.as_mut_ptr();
    let mut i = 0;
    while i + 4 * W <= n {
        for k in 0..4 {
            // SAFETY: i + 4·W <= n.
            unsafe { vst1q_f64(p.add(i + k * W), v) };
        }
        i += 4 * W;
    }
    a[i..].fill(value);
}

/// `dst[i] = src[i]`.
///
/// # Safety
/// The CPU must support Advanced SIMD, and `dst.len() == src.len()`.
#[target_feature(enable = "neon")]
pub(super) unsafe fn copy(dst: &mut [f64], src: &[f64]) {
    let n = dst.len();
    let (d, s) = (dst.as_mut_ptr(), src.as_ptr());
    let mut i = 0;
    while i + 4 * W <= n {
        for k in 0..4 {
            // SAFETY: i + 4·W <= n and both slices have length n.
            unsafe { vst1q_f64(d.add(i + k * W), vld1q_f64(s.add(i + k * W))) };
        }
        i += 4 * W;
    }
    dst[i..].copy_from_slice(&src[i..]);
}

/// `a[i] = b[i] + q·c[i]`, fused multiply-add.
///
/// # Safety
/// The CPU must support Advanced SIMD, and the three slices must have equal lengths.
#[target_feature(enable = "neon")]
pub(super) unsafe fn triad(a: &mut [f64], b: &[f64], c: &[f64], q: f64) {
    let n = a.len();
    let (pa, pb, pc) = (a.as_mut_ptr(), b.as_ptr(), c.as_ptr());
    let vq = vdupq_n_f64(q);
    let mut i = 0;
    while i + 4 * W <= n {
        for k in 0..4 {
            let at = i + k * W;
            // SAFETY: at + W <= n and all three slices have length n.
            unsafe {
                vst1q_f64(
                    pa.add(at),
                    vfmaq_f64(vld1q_f64(pb.add(at)), vld1q_f64(pc.add(at)), vq),
                )
            };
        }
        i += 4 * W;
    }
    for j in i..n {
        a[j] = q.mul_add(c[j], b[j]);
    }
}
