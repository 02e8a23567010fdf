//! What `MappedFile::content_digest` costs on a file: read with the file's pages dropped
//! from the page cache first (cold: as after a reboot), with them in it (warm), and
//! from the digest cache; and the process's resident memory before and after, to show the
//! hash does not make the mapping resident.
//!
//! `cargo run --release -p weights --example digest_cost -- FILE [ROUNDS]`

use std::time::Instant;

use weights::{DigestCache, MappedFile};

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// Asks the kernel to drop the file's clean pages from the page cache.
fn drop_cached_pages(path: &std::path::Path) {
    use std::os::fd::AsRawFd;
    let f = std::fs::File::open(path).unwrap();
    // SAFETY: a valid descriptor; advice only.
    unsafe {
        libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED);
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let path = std::path::PathBuf::from(args.next().expect("FILE"));
    let rounds: usize = args.next().map_or(5, |r| r.parse().unwrap());
    let cache_dir = std::env::temp_dir().join(format!("digest-cost-{}", std::process::id()));
    let cache = DigestCache::In(cache_dir.clone());
    let file = MappedFile::open(&path).unwrap();
    let len = file.bytes().len() as f64;
    let rss0 = rss_kib();
    let times = |what: &str, setup: &dyn Fn(), c: &DigestCache| {
        let mut ms: Vec<f64> = (0..rounds)
            .map(|_| {
                setup();
                let t = Instant::now();
                std::hint::black_box(file.content_digest(c).unwrap());
                t.elapsed().as_secs_f64() * 1e3
            })
            .collect();
        ms.sort_by(f64::total_cmp);
        let med = ms[ms.len() / 2];
        println!(
            "{what:>6}: median {med:8.2} ms ({:.2} GB/s), min {:.2}, max {:.2}",
            len / med / 1e6,
            ms[0],
            ms[ms.len() - 1]
        );
    };
    times("cold", &|| drop_cached_pages(&path), &DigestCache::Off);
    times("warm", &|| {}, &DigestCache::Off);
    file.content_digest(&cache).unwrap();
    times("cached", &|| {}, &cache);
    println!(
        "file {:.1} MiB; RSS {} KiB before, {} KiB after",
        len / 1048576.0,
        rss0,
        rss_kib()
    );
    let _ = std::fs::remove_dir_all(cache_dir);
}
