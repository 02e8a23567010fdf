//! A set of 128-bit ids kept in an unlinked temporary file, so that a run over any corpus
//! holds the same memory: an open-addressing table of 64-bit keys read and written with
//! positioned I/O (the page cache holds it, not this process), doubled when 70% full.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

#[cfg(unix)]
use std::os::unix::fs::FileExt;

const SLOT: u64 = 8;

/// See the module docs.
pub struct IdSet {
    file: File,
    dir: PathBuf,
    slots: u64,
    len: u64,
}

fn key(id: u128) -> u64 {
    // Ids are hashes already; fold them and keep 0 for empty slots.
    let k = (id as u64) ^ ((id >> 64) as u64);
    if k == 0 { 1 } else { k }
}

#[cfg(unix)]
fn read_at(f: &File, buf: &mut [u8], at: u64) -> io::Result<()> {
    f.read_exact_at(buf, at)
}

#[cfg(unix)]
fn write_at(f: &File, buf: &[u8], at: u64) -> io::Result<()> {
    f.write_all_at(buf, at)
}

#[cfg(not(unix))]
fn read_at(f: &File, buf: &mut [u8], at: u64) -> io::Result<()> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = f;
    f.seek(SeekFrom::Start(at))?;
    f.read_exact(buf)
}

#[cfg(not(unix))]
fn write_at(f: &File, buf: &[u8], at: u64) -> io::Result<()> {
    use std::io::{Seek, SeekFrom, Write};
    let mut f = f;
    f.seek(SeekFrom::Start(at))?;
    f.write_all(buf)
}

fn temp_file(dir: &Path, slots: u64) -> io::Result<File> {
    let f = tempfile_in(dir)?;
    f.set_len(slots * SLOT)?;
    Ok(f)
}

/// An unlinked read-write file in `dir`.
fn tempfile_in(dir: &Path) -> io::Result<File> {
    for attempt in 0..100u32 {
        let name = dir.join(format!(
            ".llmem-ids-{}-{}-{attempt}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos())
        ));
        match std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&name)
        {
            Ok(f) => {
                let _ = std::fs::remove_file(&name);
                return Ok(f);
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::other("cannot create a temporary file"))
}

impl IdSet {
    /// An empty set whose table lives in a temporary file under `dir`.
    pub fn new(dir: &Path) -> io::Result<IdSet> {
        let slots = 1 << 12;
        Ok(IdSet {
            file: temp_file(dir, slots)?,
            dir: dir.into(),
            slots,
            len: 0,
        })
    }

    fn slot(&self, i: u64) -> io::Result<u64> {
        let mut b = [0u8; 8];
        read_at(&self.file, &mut b, i * SLOT)?;
        Ok(u64::from_le_bytes(b))
    }

    /// The slot holding `k`, or the empty slot where it would go.
    fn find(&self, k: u64) -> io::Result<(u64, bool)> {
        let mask = self.slots - 1;
        let mut i = k.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 20 & mask;
        loop {
            let v = self.slot(i)?;
            if v == k {
                return Ok((i, true));
            }
            if v == 0 {
                return Ok((i, false));
            }
            i = (i + 1) & mask;
        }
    }

    pub fn contains(&self, id: u128) -> io::Result<bool> {
        Ok(self.find(key(id))?.1)
    }

    /// Adds `id`; returns whether it was new.
    pub fn insert(&mut self, id: u128) -> io::Result<bool> {
        if (self.len + 1) * 10 > self.slots * 7 {
            self.grow()?;
        }
        let k = key(id);
        let (i, found) = self.find(k)?;
        if found {
            return Ok(false);
        }
        write_at(&self.file, &k.to_le_bytes(), i * SLOT)?;
        self.len += 1;
        Ok(true)
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn grow(&mut self) -> io::Result<()> {
        let old = std::mem::replace(&mut self.file, temp_file(&self.dir, self.slots * 2)?);
        let old_slots = self.slots;
        self.slots *= 2;
        let mut buf = vec![0u8; 64 * 1024];
        let mut at = 0;
        while at < old_slots * SLOT {
            let n = buf.len().min((old_slots * SLOT - at) as usize);
            read_at(&old, &mut buf[..n], at)?;
            for w in buf[..n].chunks_exact(8) {
                let k = u64::from_le_bytes(w.try_into().expect("8 bytes"));
                if k != 0 {
                    let (i, _) = self.find(k)?;
                    write_at(&self.file, &k.to_le_bytes(), i * SLOT)?;
                }
            }
            at += n as u64;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_many_ids_through_growth() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = IdSet::new(dir.path()).unwrap();
        for i in 0..20_000u128 {
            assert!(s.insert(i * 0x1_0000_0001 + 3).unwrap());
        }
        assert!(!s.insert(3).unwrap());
        assert_eq!(s.len(), 20_000);
        for i in 0..20_000u128 {
            assert!(s.contains(i * 0x1_0000_0001 + 3).unwrap());
        }
        assert!(!s.contains(2).unwrap());
        // Nothing left behind in the folder.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
