//! Per-ISA inner loops. Each flavour implements the same functions; `matmul` and
//! `attention` pick one by [`crate::Isa`]. The portable flavour is the reference.

pub(crate) mod portable;

#[cfg(target_arch = "x86_64")]
pub(crate) mod avx2;

#[cfg(target_arch = "aarch64")]
pub(crate) mod neon;

use crate::quant::{BlockQ8, WType};

/// Output of a row range: `out[t * ld + r]` for token `t` and row `r`.
#[derive(Clone, Copy)]
pub(crate) struct OutPtr {
    pub ptr: *mut f32,
    pub ld: usize,
}

/// A matrix in ggml layout: `rows` rows of `row_bytes` bytes each.
#[derive(Clone, Copy)]
pub(crate) struct RowsRef<'a> {
    pub wtype: WType,
    pub data: &'a [u8],
    pub row_bytes: usize,
    pub cols: usize,
}

/// Whether [`gemm_q8`] on `isa` reads `token_rows` for `wtype` over `n_tokens` tokens:
/// the tile kernels take 64 values of a token at once, from its quantized values laid
/// out in order without the blocks' scales ([`pack_token_rows`]).
pub(crate) fn wants_token_rows(isa: crate::Isa, wtype: WType, n_tokens: usize) -> bool {
    match isa {
        #[cfg(target_arch = "x86_64")]
        crate::Isa::Avx2 => avx2::wants_token_rows(wtype, n_tokens),
        _ => {
            let _ = (wtype, n_tokens);
            false
        }
    }
}

/// Tokens `tokens` of `acts` as token rows of `cols` values each, into `out`.
pub(crate) fn pack_token_rows(
    acts: &[BlockQ8],
    cols: usize,
    tokens: std::ops::Range<usize>,
    out: &mut [i8],
) {
    let nb = cols / crate::quant::QK;
    let blocks = &acts[tokens.start * nb..tokens.end * nb];
    for (o, b) in out.chunks_exact_mut(crate::quant::QK).zip(blocks) {
        o.copy_from_slice(&b.qs);
    }
}

/// Quantized-activation product over rows `r0..r1`, for all `n_tokens` tokens; where
/// [`wants_token_rows`] says so, `token_rows` may hold the activations packed by
/// [`pack_token_rows`] (otherwise the kernel packs its own).
///
/// # Safety
/// `out` must be valid for writes at `t * ld + r` for every token `t < n_tokens` and row
/// `r` in `r0..r1`, and no other thread may write those elements concurrently.
pub(crate) unsafe fn gemm_q8(
    isa: crate::Isa,
    w: RowsRef<'_>,
    rows: std::ops::Range<usize>,
    acts: &[BlockQ8],
    token_rows: Option<&[i8]>,
    n_tokens: usize,
    out: OutPtr,
) {
    // Only the x86-64 tile kernels read token rows.
    #[cfg(not(target_arch = "x86_64"))]
    let _ = token_rows;
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: Isa::Avx2 is only reported when AVX2, FMA and F16C are present; the
        // caller upholds the output contract.
        crate::Isa::Avx2 => unsafe { avx2::gemm_q8(w, rows, acts, token_rows, n_tokens, out) },
        #[cfg(target_arch = "aarch64")]
        // SAFETY: NEON is baseline on aarch64; the caller upholds the output contract.
        crate::Isa::Neon => unsafe { neon::gemm_q8(w, rows, acts, n_tokens, out) },
        // SAFETY: the caller upholds the output contract.
        _ => unsafe { portable::gemm_q8(w, rows, acts, n_tokens, out) },
    }
}

/// Float-activation product (F16 and F32 weights) over rows `r0..r1`.
///
/// # Safety
/// As [`gemm_q8`].
pub(crate) unsafe fn gemm_f32(
    isa: crate::Isa,
    w: RowsRef<'_>,
    rows: std::ops::Range<usize>,
    x: &[f32],
    n_tokens: usize,
    out: OutPtr,
) {
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: see gemm_q8.
        crate::Isa::Avx2 => unsafe { avx2::gemm_f32(w, rows, x, n_tokens, out) },
        // SAFETY: the caller upholds the output contract.
        _ => unsafe { portable::gemm_f32(w, rows, x, n_tokens, out) },
    }
}

/// Dot product of two f32 slices of equal length.
pub(crate) fn dot_f32(isa: crate::Isa, a: &[f32], b: &[f32]) -> f32 {
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AVX2+FMA present (see Isa::detect).
        crate::Isa::Avx2 => unsafe { avx2::dot_f32(a, b) },
        _ => portable::dot_f32(a, b),
    }
}

/// `y += a · x`.
pub(crate) fn axpy(isa: crate::Isa, a: f32, x: &[f32], y: &mut [f32]) {
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AVX2+FMA present (see Isa::detect).
        crate::Isa::Avx2 => unsafe { avx2::axpy(a, x, y) },
        _ => portable::axpy(a, x, y),
    }
}

/// Converts f16 bits to f32.
pub(crate) fn f16_to_f32(isa: crate::Isa, src: &[u16], dst: &mut [f32]) {
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: F16C present (see Isa::detect).
        crate::Isa::Avx2 => unsafe { avx2::f16_to_f32(src, dst) },
        _ => portable::f16_to_f32(src, dst),
    }
}

/// Converts f32 to f16 bits (round to nearest even).
pub(crate) fn f32_to_f16(isa: crate::Isa, src: &[f32], dst: &mut [u16]) {
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: F16C present (see Isa::detect).
        crate::Isa::Avx2 => unsafe { avx2::f32_to_f16(src, dst) },
        _ => portable::f32_to_f16(src, dst),
    }
}

/// `gate[i] = gate[i] / (1 + exp(-gate[i])) · up[i]`.
pub(crate) fn silu_mul(isa: crate::Isa, gate: &mut [f32], up: &[f32]) {
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AVX2+FMA present (see Isa::detect).
        crate::Isa::Avx2 => unsafe { avx2::silu_mul(gate, up) },
        _ => portable::silu_mul(gate, up),
    }
}

/// `x[i] = exp(x[i] - max)`, returning the sum.
pub(crate) fn exp_sub_sum(isa: crate::Isa, x: &mut [f32], max: f32) -> f32 {
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AVX2+FMA present (see Isa::detect).
        crate::Isa::Avx2 => unsafe { avx2::exp_sub_sum(x, max) },
        _ => portable::exp_sub_sum(x, max),
    }
}

/// Asks the CPU to bring `data` into cache ahead of use (a hint: no effect on results;
/// nothing where the ISA has no prefetch instruction).
pub(crate) fn prefetch<T>(data: &[T]) {
    #[cfg(target_arch = "x86_64")]
    {
        let p = data.as_ptr().cast::<i8>();
        let bytes = std::mem::size_of_val(data);
        for off in (0..bytes).step_by(64) {
            // SAFETY: a prefetch never faults and reads nothing into the program; the
            // address lies inside `data`.
            unsafe {
                std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p.add(off))
            };
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = data;
}
