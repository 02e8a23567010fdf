//! AVX2 + FMA kernels for x86-64.
//!
//! Loads are unaligned (`loadu`: no penalty on aligned data since Haswell/Zen, and no
//! undefined behaviour on misaligned slices). Streaming stores need 32-byte alignment, so
//! the non-temporal paths run a scalar head up to the first aligned element; the
//! benchmark's arrays are 128-byte aligned, so the head is empty there. Every
//! non-temporal path ends with `sfence`, which orders the weakly-ordered streaming stores
//! before anything that follows (the end-of-pass timestamp, the next pass's loads).

use std::arch::x86_64::{
    __m256d, _MM_HINT_T0, _mm_add_pd, _mm_cvtsd_f64, _mm_prefetch, _mm_sfence, _mm_unpackhi_pd,
    _mm256_add_pd, _mm256_castpd256_pd128, _mm256_extractf128_pd, _mm256_fmadd_pd, _mm256_loadu_pd,
    _mm256_set1_pd, _mm256_setzero_pd, _mm256_storeu_pd, _mm256_stream_pd,
};

use super::Stores;

/// Doubles in one 256-bit vector.
const W: usize = 4;

/// Elements before the first 32-byte aligned one (`p` is 8-byte aligned, as every `f64`).
fn head_len(p: *const f64, n: usize) -> usize {
    p.align_offset(32).min(n)
}

/// Elements (1 KiB) ahead of the current position the non-temporal copy prefetches its
/// source. With streaming stores the loads are left to the hardware prefetcher alone, and
/// on Zen 3 it does not keep enough misses in flight: prefetching 1 KiB ahead raised the
/// 2-thread DRAM copy by 10–20% in interleaved runs (512 B to 8 KiB all did about as
/// well), as glibc's large `memcpy` also does. The triad showed no clear gain.
const PREFETCH_AHEAD: usize = 1024 / 8;

/// Prefetches the two 64-byte lines at `p` into L1 (`prefetcht0`).
#[target_feature(enable = "avx2,fma")]
fn prefetch_two_lines(p: *const f64) {
    // A prefetch never faults and reads nothing in the language's sense, so `p` may point
    // past the slice (it is formed with `wrapping_add`).
    _mm_prefetch::<_MM_HINT_T0>(p.cast());
    _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(8).cast());
}

/// Sum of `a`, eight vector accumulators wide (two loads per cycle × four-cycle add
/// latency needs eight chains to stay load-bound in L1).
///
/// # Safety
/// The CPU must support AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn read(a: &[f64]) -> f64 {
    let n = a.len();
    let p = a.as_ptr();
    let mut acc: [__m256d; 8] = [_mm256_setzero_pd(); 8];
    let mut i = 0;
    while i + 8 * W <= n {
        for (k, s) in acc.iter_mut().enumerate() {
            // SAFETY: i + 8·W <= n, so the four doubles at i + k·W are inside `a`.
            *s = _mm256_add_pd(*s, unsafe { _mm256_loadu_pd(p.add(i + k * W)) });
        }
        i += 8 * W;
    }
    while i + W <= n {
        // SAFETY: i + W <= n.
        acc[0] = _mm256_add_pd(acc[0], unsafe { _mm256_loadu_pd(p.add(i)) });
        i += W;
    }
    let mut v = acc[0];
    for s in &acc[1..] {
        v = _mm256_add_pd(v, *s);
    }
    let half = _mm_add_pd(_mm256_castpd256_pd128(v), _mm256_extractf128_pd::<1>(v));
    let total = _mm_cvtsd_f64(_mm_add_pd(half, _mm_unpackhi_pd(half, half)));
    total + a[i..].iter().sum::<f64>()
}

/// `a[i] = value`.
///
/// # Safety
/// The CPU must support AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn write(a: &mut [f64], value: f64, stores: Stores) {
    let n = a.len();
    let v = _mm256_set1_pd(value);
    let head = if stores == Stores::NonTemporal {
        head_len(a.as_ptr(), n)
    } else {
        0
    };
    a[..head].fill(value);
    let p = a.as_mut_ptr();
    let mut i = head;
    while i + 4 * W <= n {
        for k in 0..4 {
            // SAFETY: i + 4·W <= n; on the non-temporal path p + i is 32-byte aligned
            // (head skipped to alignment, and i advances by whole vectors).
            unsafe {
                match stores {
                    Stores::Temporal => _mm256_storeu_pd(p.add(i + k * W), v),
                    Stores::NonTemporal => _mm256_stream_pd(p.add(i + k * W), v),
                }
            }
        }
        i += 4 * W;
    }
    if stores == Stores::NonTemporal {
        _mm_sfence();
    }
    a[i..].fill(value);
}

/// `dst[i] = src[i]`.
///
/// # Safety
/// The CPU must support AVX2 and FMA, and `dst.len() == src.len()`.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn copy(dst: &mut [f64], src: &[f64], stores: Stores) {
    let n = dst.len();
    let head = if stores == Stores::NonTemporal {
        head_len(dst.as_ptr(), n)
    } else {
        0
    };
    dst[..head].copy_from_slice(&src[..head]);
    let (d, s) = (dst.as_mut_ptr(), src.as_ptr());
    let mut i = head;
    while i + 4 * W <= n {
        if stores == Stores::NonTemporal {
            prefetch_two_lines(s.wrapping_add(i + PREFETCH_AHEAD));
        }
        // SAFETY: i + 4·W <= n = src.len(), so all four loads are inside `src`.
        let x: [__m256d; 4] = unsafe { std::array::from_fn(|k| _mm256_loadu_pd(s.add(i + k * W))) };
        for (k, x) in x.into_iter().enumerate() {
            // SAFETY: inside `dst` as above; aligned on the non-temporal path (see `write`).
            unsafe {
                match stores {
                    Stores::Temporal => _mm256_storeu_pd(d.add(i + k * W), x),
                    Stores::NonTemporal => _mm256_stream_pd(d.add(i + k * W), x),
                }
            }
        }
        i += 4 * W;
    }
    if stores == Stores::NonTemporal {
        _mm_sfence();
    }
    dst[i..].copy_from_slice(&src[i..]);
}

/// `a[i] = b[i] + q·c[i]`, fused multiply-add.
///
/// # Safety
/// The CPU must support AVX2 and FMA, and the three slices must have equal lengths.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn triad(a: &mut [f64], b: &[f64], c: &[f64], q: f64, stores: Stores) {
    let n = a.len();
    let head = if stores == Stores::NonTemporal {
        head_len(a.as_ptr(), n)
    } else {
        0
    };
    for j in 0..head {
        a[j] = q.mul_add(c[j], b[j]);
    }
    let (pa, pb, pc) = (a.as_mut_ptr(), b.as_ptr(), c.as_ptr());
    let vq = _mm256_set1_pd(q);
    let mut i = head;
    while i + 4 * W <= n {
        for k in 0..4 {
            let at = i + k * W;
            // SAFETY: at + W <= n and all three slices have length n; the store is aligned
            // on the non-temporal path (see `write`).
            unsafe {
                let x =
                    _mm256_fmadd_pd(vq, _mm256_loadu_pd(pc.add(at)), _mm256_loadu_pd(pb.add(at)));
                match stores {
                    Stores::Temporal => _mm256_storeu_pd(pa.add(at), x),
                    Stores::NonTemporal => _mm256_stream_pd(pa.add(at), x),
                }
            }
        }
        i += 4 * W;
    }
    if stores == Stores::NonTemporal {
        _mm_sfence();
    }
    for j in i..n {
        a[j] = q.mul_add(c[j], b[j]);
    }
}
