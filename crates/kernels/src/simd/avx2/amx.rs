//! Intel AMX (Advanced Matrix Extensions): whether this CPU and its operating system let a
//! thread use the int8 tile unit, the tile configuration the kernels load, and the tile
//! instructions, written as inline assembly (the compiler's own tile intrinsics are not
//! stable; the assembler knows the instructions).
//!
//! A tile is up to 16 rows of up to 64 bytes; one `tdpbsud`/`tdpbssd` adds to a 16 × 16
//! tile of i32 the products of a 16 × K tile of signed bytes (tokens × values) and a
//! K × 16 one (values × weight rows, stored four values of a row together: row `k / 4`
//! of the tile holds values `4(k / 4)..4(k / 4) + 4` of each of the 16 weight rows).
//! That is 16 · 16 · K multiply-adds in one instruction, exact in integers.

use std::arch::asm;
use std::arch::x86_64::*;

use super::super::OutPtr;

/// `LLMEM_NO_AMX=1` keeps the kernels off the tile unit (for comparisons, or a
/// hypervisor that reports AMX but does not preserve its state).
pub(crate) const NO_AMX_ENV: &str = "LLMEM_NO_AMX";

/// Whether the tile kernels may run: AMX-TILE and AMX-INT8 in CPUID, the AVX-512 subsets
/// their bookkeeping uses, the operating system's permission for this process to use
/// tile data (Linux: `arch_prctl(ARCH_REQ_XCOMP_PERM)`, asked once), and no
/// `LLMEM_NO_AMX`.
pub(crate) fn has_amx() -> bool {
    static AMX: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *AMX.get_or_init(|| {
        let off = std::env::var(NO_AMX_ENV).is_ok_and(|v| !v.is_empty() && v != "0");
        !off && super::has_avx512() && cpu_has_amx_int8() && os_permits_tiles()
    })
}

fn cpu_has_amx_int8() -> bool {
    // CPUID leaf 7 is read only where leaf 0 says it exists.
    let max = std::arch::x86_64::__cpuid(0).eax;
    if max < 7 {
        return false;
    }
    let l7 = std::arch::x86_64::__cpuid_count(7, 0);
    // EDX bit 24: AMX-TILE, bit 25: AMX-INT8.
    (l7.edx >> 24) & 1 == 1 && (l7.edx >> 25) & 1 == 1
}

#[cfg(target_os = "linux")]
fn os_permits_tiles() -> bool {
    const ARCH_REQ_XCOMP_PERM: i64 = 0x1023;
    const XFEATURE_XTILEDATA: i64 = 18;
    let rc: i64;
    // SAFETY: arch_prctl (syscall 158) with ARCH_REQ_XCOMP_PERM only asks the kernel to
    // allow this process's threads the tile state; it touches no memory of ours.
    unsafe {
        asm!(
            "syscall",
            inlateout("rax") 158i64 => rc,
            in("rdi") ARCH_REQ_XCOMP_PERM,
            in("rsi") XFEATURE_XTILEDATA,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    rc == 0
}

#[cfg(not(target_os = "linux"))]
fn os_permits_tiles() -> bool {
    false
}

/// Most tokens per block of the tile kernels: a row tile's weights are decoded once per
/// block, so a longer block spends less on decoding, as long as the block's token rows
/// (read again for every 16 rows) stay in L2: see [`ROWS_BYTES`].
pub(crate) const TOKEN_BLOCK: usize = 512;
/// Bytes of token rows a block keeps in L2 (blocks stay at 128 tokens or more).
const ROWS_BYTES: usize = 1 << 20;

/// The blocks `n_tokens` tokens of `cols` values split into: near-equal, at most
/// [`TOKEN_BLOCK`], each of 16 tokens or more when `n_tokens` is.
pub(crate) fn token_blocks(
    n_tokens: usize,
    cols: usize,
) -> impl Iterator<Item = std::ops::Range<usize>> {
    let block = (ROWS_BYTES / cols.max(1)).clamp(128, TOKEN_BLOCK);
    let nblk = n_tokens.div_ceil(block);
    (0..nblk).map(move |k| k * n_tokens / nblk..(k + 1) * n_tokens / nblk)
}

/// Lanes `0..nr` of each of tokens `tb..tb + acc.len()`'s accumulators (16 rows from
/// `r`) into `out`.
///
/// # Safety
/// AVX-512F must be present; the caller owns `(tb + t, r..r + nr)` of `out`, `nr ≤ 16`.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl,avx512bw,avx512vnni")]
pub(crate) unsafe fn store_tokens(acc: &[__m512], out: OutPtr, tb: usize, r: usize, nr: usize) {
    let mask: __mmask16 = if nr >= 16 { !0 } else { (1 << nr) - 1 };
    for (t, acc) in acc.iter().enumerate() {
        let o = out.ptr.wrapping_add((tb + t) * out.ld + r);
        // SAFETY: the caller owns (tb + t, r + i) of `out` for i < nr.
        unsafe { _mm512_mask_storeu_ps(o, mask, *acc) };
    }
}

/// A tile configuration (palette 1), as `ldtilecfg` reads it: 64 bytes.
#[repr(C, align(64))]
pub(crate) struct TileConfig {
    palette: u8,
    start_row: u8,
    reserved: [u8; 14],
    colsb: [u16; 16],
    rows: [u8; 16],
    tail: [u8; 16],
}

impl TileConfig {
    /// Tiles `0..8` shaped `(rows, bytes per row)`.
    pub(crate) const fn new(shapes: [(u8, u16); 8]) -> TileConfig {
        let mut c = TileConfig {
            palette: 1,
            start_row: 0,
            reserved: [0; 14],
            colsb: [0; 16],
            rows: [0; 16],
            tail: [0; 16],
        };
        let mut i = 0;
        while i < 8 {
            c.rows[i] = shapes[i].0;
            c.colsb[i] = shapes[i].1;
            i += 1;
        }
        c
    }
}

/// The calling thread's tile registers shaped by `cfg` until the guard drops, which
/// releases them (so that a context switch does not save 8 KiB of tile state for a
/// thread that has moved on to other kernels).
pub(crate) struct Tiles(());

impl Tiles {
    /// # Safety
    /// [`has_amx`] must have returned true.
    pub(crate) unsafe fn load(cfg: &TileConfig) -> Tiles {
        // SAFETY: AMX usable (caller); cfg is a valid 64-byte palette-1 configuration.
        unsafe {
            asm!("ldtilecfg [{}]", in(reg) cfg as *const TileConfig, options(nostack, readonly))
        };
        Tiles(())
    }
}

impl Drop for Tiles {
    fn drop(&mut self) {
        // SAFETY: a Tiles exists only after a successful ldtilecfg on this thread.
        unsafe { asm!("tilerelease", options(nostack, nomem)) };
    }
}

/// Tile instructions on literal tile numbers; every use is `unsafe` (a live [`Tiles`] on
/// this thread, pointers valid for the tile's rows × bytes at the given stride).
macro_rules! tile {
    (zero $t:literal) => {
        ::std::arch::asm!(concat!("tilezero tmm", $t), options(nostack, nomem))
    };
    (load $t:literal, $p:expr, $stride:expr) => {
        ::std::arch::asm!(
            concat!("tileloadd tmm", $t, ", [{p} + {s}*1]"),
            p = in(reg) $p,
            s = in(reg) $stride,
            options(nostack, readonly)
        )
    };
    (store $t:literal, $p:expr, $stride:expr) => {
        ::std::arch::asm!(
            concat!("tilestored [{p} + {s}*1], tmm", $t),
            p = in(reg) $p,
            s = in(reg) $stride,
            options(nostack)
        )
    };
    // C += A (signed bytes) × B (unsigned bytes).
    (dpbsud $c:literal, $a:literal, $b:literal) => {
        ::std::arch::asm!(
            concat!("tdpbsud tmm", $c, ", tmm", $a, ", tmm", $b),
            options(nostack, nomem)
        )
    };
    // C += A (signed bytes) × B (signed bytes).
    (dpbssd $c:literal, $a:literal, $b:literal) => {
        ::std::arch::asm!(
            concat!("tdpbssd tmm", $c, ", tmm", $a, ", tmm", $b),
            options(nostack, nomem)
        )
    };
}
pub(crate) use tile;
