//! Page-backed working-set buffers, aligned and optionally backed by huge pages.

use crate::error::BenchError;

/// Alignment of every array carved from a region: covers the 64-byte x86-64 line and the
/// 128-byte Apple line, so no array shares a line with another and aligned SIMD stores
/// (which non-temporal stores require) need no head loop.
pub(crate) const ARRAY_ALIGN_BYTES: usize = 128;

/// Huge page size the kernel uses for transparent huge pages on x86-64 and most aarch64
/// Linux systems; the buffer is aligned to it so the first and last pages can be huge too.
#[cfg(target_os = "linux")]
const HUGE_PAGE_BYTES: usize = 2 << 20;

/// Which pages back a region.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pages {
    /// Whatever the OS gives by default (4 KiB on x86-64 Linux, 16 KiB on macOS arm64).
    Base,
    /// Transparent huge pages requested with `madvise(MADV_HUGEPAGE)` (Linux only; the
    /// kernel may still decline, see [`Region::huge_page_bytes`]).
    Huge,
}

/// An anonymous memory mapping owned by the benchmark.
///
/// # Invariants
/// `ptr` is aligned to [`ARRAY_ALIGN_BYTES`] (and to 2 MiB when huge pages were asked
/// for), points at `len` readable and writable bytes that stay mapped until drop, and
/// `map_ptr`/`map_len` describe the whole mapping to unmap.
pub(crate) struct Region {
    ptr: *mut u8,
    len: usize,
    map_ptr: *mut u8,
    map_len: usize,
}

// SAFETY: the region is plain memory owned by this value; the benchmark hands disjoint
// parts of it to different threads and never frees it while a worker can reach it (jobs
// hold an `Arc<Region>`).
unsafe impl Send for Region {}
// SAFETY: as above; shared references only expose the raw pointer, and every write through
// it is to a range owned by exactly one worker.
unsafe impl Sync for Region {}

impl Region {
    /// Maps `len` bytes of zeroed anonymous memory. The pages are not yet touched.
    pub(crate) fn new(len: usize, pages: Pages) -> Result<Region, BenchError> {
        let align = match pages {
            #[cfg(target_os = "linux")]
            Pages::Huge => HUGE_PAGE_BYTES,
            _ => ARRAY_ALIGN_BYTES,
        };
        let map_len = len
            .max(1)
            .checked_add(align)
            .ok_or_else(|| BenchError::Alloc {
                bytes: len as u64,
                cause: std::io::Error::from(std::io::ErrorKind::OutOfMemory),
            })?;
        let map_ptr = map(map_len)?;
        let offset = map_ptr.align_offset(align);
        // SAFETY: `align_offset` of a page-aligned pointer with a power-of-two alignment is
        // below `align`, and the mapping has `align` spare bytes, so the result stays inside.
        let ptr = unsafe { map_ptr.add(offset) };
        let region = Region {
            ptr,
            len,
            map_ptr,
            map_len,
        };
        if pages == Pages::Huge {
            region.advise_huge();
        }
        Ok(region)
    }

    /// Start of the usable bytes.
    pub(crate) fn as_ptr(&self) -> *mut u8 {
        self.ptr
    }

    /// Usable bytes.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    #[cfg(target_os = "linux")]
    fn advise_huge(&self) {
        // SAFETY: the range lies inside our own mapping; MADV_HUGEPAGE only changes how the
        // kernel backs it. Failure (THP disabled) leaves base pages, which
        // `huge_page_bytes` then reports.
        unsafe {
            libc::madvise(self.ptr.cast(), self.len, libc::MADV_HUGEPAGE);
        }
    }

    #[cfg(not(target_os = "linux"))]
    fn advise_huge(&self) {}

    /// Bytes of this region the kernel backs with huge pages, from `/proc/self/smaps`.
    /// `None` where that file is unavailable (not Linux).
    pub(crate) fn huge_page_bytes(&self) -> Option<u64> {
        let smaps = std::fs::read_to_string("/proc/self/smaps").ok()?;
        // smaps counts per mapping, and a mapping may reach past the region.
        let mapped = anon_huge_bytes_in(&smaps, self.ptr as u64, self.ptr as u64 + self.len as u64);
        Some(mapped.min(self.len as u64))
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: `map_ptr`/`map_len` are exactly what `map` returned, and no worker holds
        // the region any more (it is dropped through the last `Arc`).
        unsafe { unmap(self.map_ptr, self.map_len) }
    }
}

#[cfg(unix)]
fn map(len: usize) -> Result<*mut u8, BenchError> {
    // SAFETY: an anonymous private mapping with no address hint touches no existing memory.
    let ptr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANON,
            -1,
            0,
        )
    };
    if ptr == libc::MAP_FAILED {
        return Err(BenchError::Alloc {
            bytes: len as u64,
            cause: std::io::Error::last_os_error(),
        });
    }
    Ok(ptr.cast())
}

/// # Safety
/// `ptr` and `len` must be a mapping returned by [`map`] that nothing uses any more.
#[cfg(unix)]
unsafe fn unmap(ptr: *mut u8, len: usize) {
    // SAFETY: guaranteed by the caller.
    unsafe {
        libc::munmap(ptr.cast(), len);
    }
}

#[cfg(not(unix))]
fn map(len: usize) -> Result<*mut u8, BenchError> {
    let layout = std::alloc::Layout::from_size_align(len, 4096).map_err(|_| BenchError::Alloc {
        bytes: len as u64,
        cause: std::io::Error::from(std::io::ErrorKind::InvalidInput),
    })?;
    // SAFETY: the layout has a non-zero size (callers map at least one alignment's worth).
    let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
    if ptr.is_null() {
        return Err(BenchError::Alloc {
            bytes: len as u64,
            cause: std::io::Error::from(std::io::ErrorKind::OutOfMemory),
        });
    }
    Ok(ptr)
}

/// # Safety
/// `ptr` and `len` must be an allocation returned by [`map`] that nothing uses any more.
#[cfg(not(unix))]
unsafe fn unmap(ptr: *mut u8, len: usize) {
    // SAFETY: same layout as in `map`, guaranteed by the caller.
    unsafe {
        std::alloc::dealloc(
            ptr,
            std::alloc::Layout::from_size_align_unchecked(len, 4096),
        )
    }
}

/// Sums `AnonHugePages` over the `/proc/<pid>/smaps` entries overlapping `[start, end)`.
fn anon_huge_bytes_in(smaps: &str, start: u64, end: u64) -> u64 {
    let mut inside = false;
    let mut total = 0;
    for line in smaps.lines() {
        if let Some((lo, hi)) = mapping_range(line) {
            inside = lo < end && start < hi;
        } else if inside && let Some(rest) = line.strip_prefix("AnonHugePages:") {
            let kib: u64 = rest
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse()
                .unwrap_or(0);
            total += kib * 1024;
        }
    }
    total
}

/// The address range of an smaps header line (`7f0000000000-7f0000200000 rw-p ...`).
fn mapping_range(line: &str) -> Option<(u64, u64)> {
    let range = line.split_ascii_whitespace().next()?;
    let (lo, hi) = range.split_once('-')?;
    Some((
        u64::from_str_radix(lo, 16).ok()?,
        u64::from_str_radix(hi, 16).ok()?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regions_are_aligned_and_writable() {
        for pages in [Pages::Base, Pages::Huge] {
            let region = Region::new(3 * 4096 + 5, pages).unwrap();
            assert_eq!(region.as_ptr() as usize % ARRAY_ALIGN_BYTES, 0);
            assert_eq!(region.len(), 3 * 4096 + 5);
            // SAFETY: the region owns `len` writable bytes.
            let bytes = unsafe { std::slice::from_raw_parts_mut(region.as_ptr(), region.len()) };
            assert!(bytes.iter().all(|b| *b == 0));
            bytes.fill(7);
            assert_eq!(bytes[region.len() - 1], 7);
        }
    }

    #[test]
    fn smaps_huge_pages_are_summed_for_overlapping_mappings_only() {
        let smaps = "\
7f0000000000-7f0000400000 rw-p 00000000 00:00 0
Size:               4096 kB
AnonHugePages:      2048 kB
7f0000400000-7f0000800000 rw-p 00000000 00:00 0
AnonHugePages:      4096 kB
7f0000800000-7f0000a00000 r--p 00000000 08:01 42   /usr/lib/libc.so.6
AnonHugePages:         0 kB
";
        assert_eq!(
            anon_huge_bytes_in(smaps, 0x7f00_0000_0000, 0x7f00_0040_0000),
            2 << 20
        );
        assert_eq!(
            anon_huge_bytes_in(smaps, 0x7f00_0010_0000, 0x7f00_0050_0000),
            6 << 20
        );
        assert_eq!(anon_huge_bytes_in(smaps, 0x1000, 0x2000), 0);
    }
}
