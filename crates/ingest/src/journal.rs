//! Exactly-once output: an append-only journal of finished chunks beside the output file.
//!
//! A chunk's records are appended to the output and the output is synced **before** the
//! journal line that marks the chunk done is appended and synced. Each journal line is
//! `<xxh3-64 of the payload, 16 hex digits> <payload JSON>\n`; the payload names the
//! chunk's id and the output's length once its records were written.
//!
//! Opening for a resumed run reads the journal line by line: a line whose checksum does not
//! match (a torn last write) ends it, and the journal is cut there. The output is then cut
//! to the length the last good line names, which drops a torn last line and every record
//! the journal does not cover. Done chunk ids go to an [`IdSet`] on disk, so memory does
//! not grow with the corpus.

use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::idset::IdSet;

/// One journal line's payload.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Entry {
    /// The chunk's id (hex of 128 bits): chunk hash and run configuration.
    pub chunk: String,
    /// Records written for it.
    pub records: u64,
    /// Output length after its records.
    pub end: u64,
}

/// What opening found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Recovery {
    /// Chunks already done.
    pub done: u64,
    /// Bytes cut from the journal's end (a torn line).
    pub journal_cut: u64,
    /// Bytes cut from the output's end (records the journal did not cover).
    pub output_cut: u64,
}

/// Why the output and its journal cannot be used together.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error(
        "another llmem qa is writing {out} (its journal {journal} is locked): wait for it \
         to finish, or give this run another --out"
    )]
    Busy { out: PathBuf, journal: PathBuf },
    #[error(
        "{out} is {len} bytes but its journal {journal} says {end} were written: the output \
         was changed outside llmem; move both away to start over"
    )]
    OutputShort {
        out: PathBuf,
        journal: PathBuf,
        len: u64,
        end: u64,
    },
}

/// The output file and its journal, opened for appending.
pub struct Journal {
    out: File,
    journal: File,
    out_len: u64,
    done: IdSet,
}

/// The journal's path for an output path: `qa.jsonl` → `qa.jsonl.journal`.
pub fn journal_path(out: &Path) -> PathBuf {
    let mut s = out.as_os_str().to_owned();
    s.push(".journal");
    PathBuf::from(s)
}

fn line(e: &Entry) -> String {
    let payload = serde_json::to_string(e).expect("plain fields");
    format!(
        "{:016x} {payload}\n",
        xxhash_rust::xxh3::xxh3_64(payload.as_bytes())
    )
}

fn parse(line: &[u8]) -> Option<Entry> {
    let line = line.strip_suffix(b"\n")?;
    let (sum, payload) = (line.get(..16)?, line.get(17..)?);
    let sum = u64::from_str_radix(std::str::from_utf8(sum).ok()?, 16).ok()?;
    if line.get(16) != Some(&b' ') || sum != xxhash_rust::xxh3::xxh3_64(payload) {
        return None;
    }
    serde_json::from_slice(payload).ok()
}

/// Parses a chunk id written by [`Journal::commit`].
pub fn id_hex(id: u128) -> String {
    format!("{id:032x}")
}

impl Journal {
    /// Opens (creating) `out` and its journal, recovering from an interrupted run as the
    /// module docs say.
    pub fn open(out_path: &Path) -> Result<(Journal, Recovery), JournalError> {
        let jpath = journal_path(out_path);
        let mut journal = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&jpath)?;
        // One writer at a time: a second run on the same output (say, started while the
        // first still finishes its chunks after Ctrl+C) would cut what the first is
        // writing and append the same records again. The lock goes with the process.
        match journal.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(JournalError::Busy {
                    out: out_path.to_path_buf(),
                    journal: jpath,
                });
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(e.into()),
        }
        let mut out = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(out_path)?;
        let dir = out_path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let mut done = IdSet::new(dir)?;
        let mut rec = Recovery::default();
        let mut good = 0u64;
        let mut end = 0u64;
        {
            journal.seek(SeekFrom::Start(0))?;
            let mut r = BufReader::new(&journal);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                let n = r.read_until(b'\n', &mut buf)?;
                if n == 0 {
                    break;
                }
                let Some(e) = parse(&buf) else {
                    break;
                };
                let Ok(id) = u128::from_str_radix(&e.chunk, 16) else {
                    break;
                };
                good += n as u64;
                done.insert(id)?;
                rec.done += 1;
                end = end.max(e.end);
            }
        }
        let jlen = journal.metadata()?.len();
        if jlen > good {
            journal.set_len(good)?;
            journal.sync_all()?;
            rec.journal_cut = jlen - good;
        }
        let olen = out.metadata()?.len();
        if olen < end {
            return Err(JournalError::OutputShort {
                out: out_path.into(),
                journal: jpath,
                len: olen,
                end,
            });
        }
        if olen > end {
            out.set_len(end)?;
            out.sync_all()?;
            rec.output_cut = olen - end;
        }
        out.seek(SeekFrom::End(0))?;
        Ok((
            Journal {
                out,
                journal,
                out_len: end,
                done,
            },
            rec,
        ))
    }

    /// Whether chunk `id` is done.
    pub fn is_done(&self, id: u128) -> io::Result<bool> {
        self.done.contains(id)
    }

    /// Appends a group of finished chunks: every record (`bytes`, whole JSON lines) to the
    /// output, syncs it, then their journal lines, and syncs the journal. `chunks` pairs
    /// each chunk id with the length of its records within `bytes`.
    pub fn commit(&mut self, bytes: &[u8], chunks: &[(u128, u64, usize)]) -> io::Result<()> {
        if chunks.is_empty() {
            return Ok(());
        }
        self.out.write_all(bytes)?;
        self.out.sync_data()?;
        let mut lines = String::new();
        let mut end = self.out_len;
        for &(id, records, len) in chunks {
            end += len as u64;
            lines.push_str(&line(&Entry {
                chunk: id_hex(id),
                records,
                end,
            }));
        }
        self.out_len += bytes.len() as u64;
        self.journal.write_all(lines.as_bytes())?;
        self.journal.sync_data()?;
        for &(id, ..) in chunks {
            self.done.insert(id)?;
        }
        Ok(())
    }

    /// Output bytes written and journaled.
    pub fn out_len(&self) -> u64 {
        self.out_len
    }

    /// Reads back the output as it stands (for rebuilding run state on resume).
    pub fn output_reader(&self) -> io::Result<BufReader<File>> {
        let mut f = self.out.try_clone()?;
        f.seek(SeekFrom::Start(0))?;
        Ok(BufReader::new(f))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn torn_lines_and_uncovered_records_are_cut_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("o.jsonl");
        let (mut j, rec) = Journal::open(&out).unwrap();
        assert_eq!(rec, Recovery::default());
        j.commit(b"{\"a\":1}\n{\"a\":2}\n", &[(7, 1, 8), (9, 1, 8)])
            .unwrap();
        drop(j);
        // A crash after writing output but before the journal line, then a torn line.
        let mut f = OpenOptions::new().append(true).open(&out).unwrap();
        f.write_all(b"{\"a\":3}\n{\"a\":").unwrap();
        let mut jf = OpenOptions::new()
            .append(true)
            .open(journal_path(&out))
            .unwrap();
        jf.write_all(b"0123456789abcdef {\"chunk\":").unwrap();
        let (j, rec) = Journal::open(&out).unwrap();
        assert_eq!(rec.done, 2);
        assert_eq!(rec.output_cut, 13);
        assert!(rec.journal_cut > 0);
        assert!(j.is_done(7).unwrap() && j.is_done(9).unwrap() && !j.is_done(8).unwrap());
        assert_eq!(std::fs::read(&out).unwrap(), b"{\"a\":1}\n{\"a\":2}\n");
    }

    #[test]
    fn a_second_writer_of_the_same_output_is_refused_until_the_first_is_gone() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("o.jsonl");
        let (mut j, _) = Journal::open(&out).unwrap();
        j.commit(b"{}\n", &[(1, 1, 3)]).unwrap();
        let Err(e) = Journal::open(&out) else {
            panic!("a second writer was let in")
        };
        assert!(matches!(e, JournalError::Busy { .. }), "{e}");
        assert!(e.to_string().contains("another llmem qa is writing"), "{e}");
        // The refused open changed nothing.
        assert_eq!(std::fs::read(&out).unwrap(), b"{}\n");
        drop(j);
        let (j, rec) = Journal::open(&out).unwrap();
        assert_eq!(rec.done, 1);
        assert!(j.is_done(1).unwrap());
    }

    #[test]
    fn a_changed_checksum_ends_the_journal() {
        let e = Entry {
            chunk: id_hex(5),
            records: 2,
            end: 10,
        };
        let l = line(&e);
        assert_eq!(parse(l.as_bytes()), Some(e));
        let bad = l.replace("\"records\":2", "\"records\":3");
        assert_eq!(parse(bad.as_bytes()), None);
    }

    #[test]
    fn output_shorter_than_the_journal_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("o.jsonl");
        let (mut j, _) = Journal::open(&out).unwrap();
        j.commit(b"{}\n", &[(1, 1, 3)]).unwrap();
        drop(j);
        std::fs::write(&out, b"").unwrap();
        assert!(matches!(
            Journal::open(&out),
            Err(JournalError::OutputShort { .. })
        ));
    }
}
