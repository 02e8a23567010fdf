//! The AVX2 and AVX-512 builds of the matrix product: which kernel each weight kind
//! takes (`brows` for 32-value blocks, `krows` and `kgemm` for k-quants), and the float
//! weights' product.

use std::arch::x86_64::*;

use super::super::{OutPtr, RowsRef};
use super::amx::has_amx;
use super::{has_avx512, hsum};
use crate::quant::{BlockQ8, WType};

/// Tokens per cache block in the prefill loop: 64 tokens of activations (≈46 KiB for a
/// 576-wide model) stay in L2 while every row tile of the chunk streams past them.
pub(super) const TOKEN_BLOCK: usize = 64;

/// The kinds with an AMX tile kernel.
fn takes_tiles(wtype: WType) -> bool {
    matches!(
        wtype,
        WType::Q4_K
            | WType::Q5_K
            | WType::Q6_K
            | WType::Q4_0
            | WType::Q4_1
            | WType::Q5_0
            | WType::Q5_1
            | WType::Q8_0
    )
}

/// Fewest tokens the AMX tiles take (a tile holds 16; below, the row panels).
const AMX_MIN_TOKENS: usize = 16;

/// How far ahead of the current block the weight stream is prefetched.
pub(super) const PREFETCH_BYTES: usize = 4096;

/// How far ahead of the block being read a decode row (one token, rows read one at a
/// time front to back) prefetches. The hardware prefetcher keeps up with one stream but
/// does not cross a page; 2 KiB ahead measured best on a Zen 4 (1 and 4 KiB, or none,
/// 5–10% slower).
pub(super) const DECODE_AHEAD: usize = 2048;

/// Pointers to the `N` rows from `r` of `w`, those past the first `nr` repeating row `r`
/// (computed, never stored).
pub(super) fn row_ptrs<const N: usize>(w: &RowsRef<'_>, r: usize, nr: usize) -> [*const u8; N] {
    let base = w.data.as_ptr();
    std::array::from_fn(|i| base.wrapping_add((r + if i < nr { i } else { 0 }) * w.row_bytes))
}

#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
pub(super) unsafe fn f16x2(p: *const u8) -> (f32, f32) {
    // SAFETY: the caller guarantees 4 readable bytes at p.
    let bits = unsafe { std::ptr::read_unaligned(p.cast::<i32>()) };
    let v = _mm_cvtph_ps(_mm_cvtsi32_si128(bits));
    (_mm_cvtss_f32(v), _mm_cvtss_f32(_mm_movehdup_ps(v)))
}

/// # Safety
/// AVX2+FMA+F16C must be present; see [`super::super::gemm_q8`] for the output contract.
pub(crate) unsafe fn gemm_q8(
    w: RowsRef<'_>,
    rows: std::ops::Range<usize>,
    acts: &[BlockQ8],
    token_rows: Option<&[i8]>,
    n_tokens: usize,
    out: OutPtr,
) {
    // SAFETY: forwarded contract.
    unsafe { gemm_q8_on(Build::best(), w, rows, acts, token_rows, n_tokens, out) }
}

/// Whether a product of `wtype` over `n_tokens` tokens reads token rows (see
/// [`super::super::pack_token_rows`]), which its caller may then pack once for every
/// row range.
pub(crate) fn wants_token_rows(wtype: WType, n_tokens: usize) -> bool {
    takes_tiles(wtype) && n_tokens >= AMX_MIN_TOKENS && Build::best() == Build::Amx
}

/// Which build of the x86-64 kernels a product takes; every one gives the same bits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Build {
    /// AVX2 + FMA + F16C.
    Avx2,
    /// AVX-512F/VL/BW/VNNI.
    Avx512,
    /// The AVX-512 build, with the prefill of the k-quants and 32-value kinds on AMX
    /// tiles.
    Amx,
}

impl Build {
    /// The fastest build this CPU (and, for AMX, its operating system) allows.
    pub(crate) fn best() -> Build {
        if has_amx() {
            Build::Amx
        } else if has_avx512() {
            Build::Avx512
        } else {
            Build::Avx2
        }
    }

    /// Every build this CPU allows (tests compare them).
    #[cfg(test)]
    pub(crate) fn available() -> Vec<Build> {
        [Build::Avx2, Build::Avx512, Build::Amx]
            .into_iter()
            .filter(|&b| match b {
                Build::Avx2 => true,
                Build::Avx512 => has_avx512(),
                Build::Amx => has_amx(),
            })
            .collect()
    }
}

/// As [`gemm_q8`], on a chosen build (tests compare them).
///
/// # Safety
/// As [`gemm_q8`], and the CPU must allow `build` (see [`Build::best`]).
pub(crate) unsafe fn gemm_q8_on(
    build: Build,
    w: RowsRef<'_>,
    rows: std::ops::Range<usize>,
    acts: &[BlockQ8],
    token_rows: Option<&[i8]>,
    n_tokens: usize,
    out: OutPtr,
) {
    if build == Build::Amx && takes_tiles(w.wtype) && n_tokens >= AMX_MIN_TOKENS {
        // The caller's token rows, or rows packed here for this call alone.
        let own;
        let token_rows = match token_rows {
            Some(r) => r,
            None => {
                let mut r = vec![0i8; n_tokens * w.cols];
                super::super::pack_token_rows(acts, w.cols, 0..n_tokens, &mut r);
                own = r;
                &own
            }
        };
        assert!(
            token_rows.len() >= n_tokens * w.cols,
            "gemm: token rows too short"
        );
        // SAFETY: forwarded contract; AMX only where `has_amx` said so.
        unsafe {
            if matches!(w.wtype, WType::Q4_K | WType::Q5_K | WType::Q6_K) {
                super::krows::gemm_k_amx(w, rows, acts, token_rows, n_tokens, out)
            } else {
                super::brows::gemm_b_amx(w, rows, acts, token_rows, n_tokens, out)
            }
        }
        return;
    }
    let wide = build != Build::Avx2;
    // SAFETY: forwarded contract; `wide` only where the CPU has AVX-512F/VL/BW/VNNI.
    unsafe {
        match (w.wtype, wide) {
            (WType::Q4_0 | WType::Q4_1 | WType::Q5_0 | WType::Q5_1 | WType::Q8_0, _) => {
                super::brows::gemm_b(wide, w, rows, acts, n_tokens, out)
            }
            (WType::Q4_K | WType::Q5_K | WType::Q6_K, _) => {
                super::krows::gemm_k(wide, w, rows, acts, n_tokens, out)
            }
            (WType::Q3_K, _) => super::kgemm::gemm_k(wide, w, rows, acts, n_tokens, out),
            // Q2_K (per-16 offsets, rare in downloaded models) takes the portable loop.
            (WType::Q2_K, _) => super::super::portable::gemm_q8(w, rows, acts, n_tokens, out),
            (WType::F16 | WType::F32 | WType::BF16, _) => {
                unreachable!("float weights take f32 activations")
            }
        }
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn load8(wtype: WType, row: *const u8, i: usize) -> __m256 {
    // SAFETY: the caller guarantees 8 elements at index i inside the row.
    unsafe {
        match wtype {
            WType::F16 => _mm256_cvtph_ps(_mm_loadu_si128(row.add(2 * i).cast())),
            WType::BF16 => _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(
                _mm_loadu_si128(row.add(2 * i).cast()),
            ))),
            _ => _mm256_loadu_ps(row.add(4 * i).cast()),
        }
    }
}

/// # Safety
/// AVX2+FMA+F16C must be present; see [`super::super::gemm_q8`] for the output contract.
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn gemm_f32(
    w: RowsRef<'_>,
    rows: std::ops::Range<usize>,
    x: &[f32],
    n_tokens: usize,
    out: OutPtr,
) {
    let k = w.cols;
    assert!(x.len() >= n_tokens * k && rows.end * w.row_bytes <= w.data.len());
    let esz = if w.wtype == WType::F32 { 4 } else { 2 };
    for t in 0..n_tokens {
        let xt = &x[t * k..(t + 1) * k];
        for r in rows.clone() {
            // SAFETY: row r is inside w.data (asserted).
            let row = unsafe { w.data.as_ptr().add(r * w.row_bytes) };
            let mut acc = _mm256_setzero_ps();
            let mut i = 0;
            while i + 8 <= k {
                // SAFETY: i + 8 ≤ k elements in both the row and xt.
                unsafe {
                    acc = _mm256_fmadd_ps(load8(w.wtype, row, i), _mm256_loadu_ps(&xt[i]), acc);
                }
                i += 8;
            }
            // SAFETY: AVX present.
            let mut s = unsafe { hsum(acc) };
            while i < k {
                let bytes = &w.data[r * w.row_bytes + i * esz..];
                let wv = if w.wtype == WType::BF16 {
                    crate::quant::read_bf16(bytes, 0)
                } else if esz == 2 {
                    crate::quant::read_f16(bytes, 0)
                } else {
                    f32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]])
                };
                s += wv * xt[i];
                i += 1;
            }
            // SAFETY: the caller owns (t, r).
            unsafe { *out.ptr.add(t * out.ld + r) = s };
        }
    }
}
