//! The reading stage of `llmem qa`: the ledger's `documents` pool, held to its limit, and
//! the reader thread that turns inputs into chunks, each reserved in that pool before it
//! is built (backpressure: reading waits for room).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use budget::{Budget, Bytes, PoolId, Reservation};
use tokenizer::Tokenizer;

use crate::chunk::{Chunk, Chunker};
use crate::pipeline::{Item, Msg, Options, count_tokens};
use crate::source::{Input, walk};

/// The ledger's `documents` pool, held to its limit: a chunk waits for room instead of
/// borrowing beyond it.
pub struct DocPool {
    budget: Budget,
    pool: PoolId,
    limit: u64,
    lock: Mutex<()>,
    freed: Condvar,
}

/// Bytes held in the documents pool; gives them back (and wakes waiters) when dropped.
pub struct Held {
    res: Option<Reservation>,
    pool: Arc<DocPool>,
}

impl Drop for Held {
    fn drop(&mut self) {
        let _g = self.pool.lock.lock().unwrap_or_else(|e| e.into_inner());
        drop(self.res.take());
        self.pool.freed.notify_all();
    }
}

impl DocPool {
    pub fn new(budget: Budget, pool: PoolId, limit: Bytes) -> Arc<DocPool> {
        Arc::new(DocPool {
            budget,
            pool,
            limit: limit.0,
            lock: Mutex::new(()),
            freed: Condvar::new(),
        })
    }

    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// Reserves `n` bytes (at most the limit), waiting while the pool is full; `None`
    /// when `stop` is set while waiting. Returns also whether it had to wait.
    pub(crate) fn acquire(self: &Arc<Self>, n: u64, stop: &AtomicBool) -> Option<(Held, bool)> {
        let n = n.min(self.limit);
        let mut waited = false;
        let mut g = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if self.budget.used(self.pool).0 + n <= self.limit
                && let Ok(res) = self.budget.try_reserve(self.pool, Bytes(n))
            {
                return Some((
                    Held {
                        res: Some(res),
                        pool: self.clone(),
                    },
                    waited,
                ));
            }
            if stop.load(Ordering::Relaxed) {
                return None;
            }
            waited = true;
            g = self
                .freed
                .wait_timeout(g, Duration::from_millis(50))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

/// The reader thread: inputs → paragraphs → chunks, each reserved before it is built.
pub(crate) fn read_all(
    opts: &Options,
    tok: &Tokenizer,
    docs: &Arc<DocPool>,
    stop: &AtomicBool,
    generate: bool,
    tx: &Sender<Msg>,
) {
    let count = |s: &str| count_tokens(tok, s);
    let mut chunker = Chunker::new(opts.chunk, &count);
    let mut seq = 0u64;
    let mut files = 0u64;
    let mut waits = 0u64;
    // Generating, a chunk also holds its prompts' token ids and replies.
    let questions = if generate {
        opts.questions_per_chunk as u64
    } else {
        0
    };
    let per_chunk_extra = 512 + 4096 * questions;
    let text_factor = 1 + 2 * questions;
    let full = |seq: u64| opts.max_chunks.is_some_and(|m| seq >= m);
    let send = |c: Chunk, seq: &mut u64, waits: &mut u64| -> bool {
        if full(*seq) || stop.load(Ordering::Relaxed) {
            return false;
        }
        let bytes = c.text.len() as u64 * text_factor + c.source.len() as u64 + per_chunk_extra;
        let Some((held, waited)) = docs.acquire(bytes, stop) else {
            return false;
        };
        *waits += u64::from(waited);
        let item = Item {
            seq: *seq,
            chunk: c,
            _held: held,
        };
        *seq += 1;
        tx.send(Msg::Chunk(Box::new(item))).is_ok()
    };
    walk(
        &opts.inputs,
        &opts.filter,
        |input| {
            if full(seq) || stop.load(Ordering::Relaxed) {
                return false;
            }
            let name = match input {
                Input::Stdin => "-".to_string(),
                Input::Path(p) => p.display().to_string(),
            };
            // A PDF is parsed whole: its bytes are held in the pool while it is read.
            let _pdf = match pdf_room(input, docs, stop) {
                Ok(h) => h,
                Err(why) => {
                    let _ = tx.send(Msg::Problem(name, why));
                    return true;
                }
            };
            let paras = match crate::source::open(input) {
                Ok(p) => p,
                Err(e) => {
                    let _ = tx.send(Msg::Problem(name, e.to_string()));
                    return true;
                }
            };
            files += 1;
            let mut go_on = true;
            for p in paras {
                match p {
                    Ok(p) => {
                        let mut out = Vec::new();
                        chunker.push(p, &mut |c| out.push(c));
                        for c in out {
                            go_on &= send(c, &mut seq, &mut waits);
                        }
                    }
                    Err(e) => {
                        let _ = tx.send(Msg::Problem(name.clone(), e.to_string()));
                        break;
                    }
                }
                if !go_on {
                    return false;
                }
            }
            let mut out = Vec::new();
            chunker.finish(&mut |c| out.push(c));
            for c in out {
                go_on &= send(c, &mut seq, &mut waits);
            }
            go_on
        },
        |path, e| {
            let _ = tx.send(Msg::Problem(path.display().to_string(), e.to_string()));
        },
    );
    let _ = tx.send(Msg::ReaderDone { files, waits });
}

/// Room in the documents pool for a PDF input while it is read (`None` for other
/// inputs); an error names why the PDF is skipped.
fn pdf_room(input: &Input, docs: &Arc<DocPool>, stop: &AtomicBool) -> Result<Option<Held>, String> {
    let Input::Path(p) = input else {
        return Ok(None);
    };
    if crate::source::Kind::of(p) != crate::source::Kind::Pdf {
        return Ok(None);
    }
    let len = std::fs::metadata(p).map_err(|e| e.to_string())?.len();
    let need = crate::pdf::parsed_bytes(len);
    if need > docs.limit() / 2 {
        return Err(format!(
            "PDF of {} would need {} to parse, over half the documents pool ({}): raise --documents",
            Bytes(len),
            Bytes(need),
            Bytes(docs.limit())
        ));
    }
    docs.acquire(need, stop)
        .map(|(h, _)| Some(h))
        .ok_or_else(|| "stopped".to_string())
}
