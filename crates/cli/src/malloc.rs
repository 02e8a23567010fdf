//! The C allocator's settings for this process, chosen so that resident memory follows the
//! ledger.
//!
//! Every buffer of 64 KiB or more that llmem holds is covered by a reservation
//! (DESIGN.md). glibc's malloc, left alone, serves such buffers from its heaps once one of
//! that size has been freed (its mmap threshold rises to the largest freed mapping, up to
//! 32 MiB) and keeps freed heap memory resident. A KV cache that re-encodes blocks frees
//! and allocates blocks all the time, so the ledger went down while the process stayed as
//! large: 4 to 8 MiB resident outside the ledger at 512 tokens (issue 13, finding 4).
//! A fixed threshold at the ledger's own line makes each such buffer its own mapping,
//! returned to the OS when it is freed; the heaps then hold only small blocks.
//!
//! The price is one `mmap`/`munmap` pair and fresh zeroed pages per large allocation; KV
//! blocks are allocated once per 16 tokens, scratch once per session, so decode speed does
//! not move (measured in docs/design/plan.md). Other allocators (macOS's) are left as they
//! are.

/// Allocations at or above this size get their own mapping: the ledger's line.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub const MMAP_THRESHOLD_BYTES: usize = 64 * 1024;

/// Applies the settings; call first thing in `main`, before any thread starts.
pub fn tune() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let threshold = i32::try_from(MMAP_THRESHOLD_BYTES).expect("64 KiB fits an int");
        // SAFETY: mallopt only sets a malloc parameter; it is called before any other
        // thread exists. A refusal (return 0) leaves glibc's default, which is only looser.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, threshold);
        }
    }
}
