//! The chain read → chunk → generate → judge → write, in bounded memory.
//!
//! A reader thread walks the inputs and chunks them; every chunk's buffers are reserved in
//! the ledger's `documents` pool before the chunk exists, and when the pool is full the
//! reader waits until written chunks give their bytes back (backpressure). The main thread
//! takes chunks in corpus order, keeps `max_in_flight` chunks' worth of requests generating
//! on the scheduler (a chunk near its end weighs only its requests left, so the next one
//! starts while it finishes), and writes finished chunks in corpus order: the output, and
//! so the near-duplicate filter's decisions, are the same however a run was interrupted.

mod generate;
use generate::Main;

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::io::{self, BufRead};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant};

use engine::sampler::SamplerConfig;
use engine::sched::service::Service;
use engine::sched::{Event, FinishReason, ReqId, Request, Sink, Usage};
use engine::shared::SharedModel;
use serde::Deserialize;
use tokenizer::{BosEos, Render, Special, TokenId, Tokenizer};

use crate::chunk::{Chunk, ChunkConfig};
use crate::dedup::Dedup;
use crate::grammar::{JsonHook, Machine, Shape, Vocab};
use crate::journal::{Journal, JournalError, Recovery, id_hex};
use crate::prompts::{Prompts, fill};
use crate::reader::read_all;
pub use crate::reader::{DocPool, Held};
use crate::record::{ChunkRecord, Format, Meta, qa_line, validate};
use crate::source::{Filter, Input};
use crate::turns::Turns;

/// Longest question and answer, in bytes (the grammar's caps).
pub const MAX_QUESTION_BYTES: usize = 200;
pub const MAX_ANSWER_BYTES: usize = 400;
/// Longest quote the judge may give as evidence.
pub const MAX_EVIDENCE_BYTES: usize = 300;
/// Bytes a reader thread holds beside its chunks (line, paragraph and window buffers),
/// reserved for the whole run.
const READER_BYTES: u64 = 512 * 1024;
/// Output bytes gathered before one commit (reserved for the whole run).
const COMMIT_BYTES: usize = 256 * 1024;
/// Questions the near-duplicate filter remembers.
const DEDUP_CAPACITY: usize = 20_000;

/// Generation settings (absent: chunk, hash and journal only).
pub struct Generator {
    pub service: Arc<Service>,
    pub model: Arc<SharedModel>,
    /// Chunks generating at once, counted by the requests they have left (see
    /// `generate::Main::admits`).
    pub max_in_flight: usize,
    /// Sampling temperature of questions (judging is greedy).
    pub temperature: f32,
}

/// What a run is asked to do.
pub struct Options {
    pub inputs: Vec<Input>,
    pub filter: Filter,
    pub out: PathBuf,
    pub chunk: ChunkConfig,
    pub questions_per_chunk: usize,
    pub format: Format,
    pub judge_threshold: u32,
    /// Pairs whose answer's grounding in its chunk ([`crate::ground`]) is below this
    /// (0..=1) are dropped; 0 keeps them all.
    pub min_grounding: f32,
    pub prompts: Prompts,
    pub seed: u64,
    /// Take only the corpus's first chunks (done ones included).
    pub max_chunks: Option<u64>,
    /// The model's digest (provenance and ids).
    pub model_digest: u64,
    /// Where dropped pairs go (JSONL: the pair, its provenance, its score and why it was
    /// dropped), for tuning a threshold; appended, and not part of the exactly-once output.
    pub rejects: Option<PathBuf>,
}

/// What a run did.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Report {
    pub files: u64,
    /// Inputs skipped, with why.
    pub problems: Vec<(String, String)>,
    pub chunks: u64,
    /// Chunks found done by an earlier run (or repeated in this one).
    pub chunks_skipped: u64,
    pub chunks_written: u64,
    pub records: u64,
    pub pairs_generated: u64,
    /// Generated output that did not parse (the grammar should make this 0).
    pub pairs_invalid: u64,
    pub dropped_judge: u64,
    /// Passed the judge, but the answer is not in the chunk's words (`min_grounding`).
    pub dropped_ungrounded: u64,
    /// The answer only restates the question ([`crate::ground::novelty`]).
    pub dropped_trivial: u64,
    pub dropped_duplicate: u64,
    /// Judge scores of every valid pair.
    pub score_sum: u64,
    pub prompt_tokens: u64,
    pub cached_tokens: u64,
    pub completion_tokens: u64,
    /// The reader waited for room in the documents pool this many times.
    pub backpressure_waits: u64,
    pub interrupted: bool,
    pub recovered_output_bytes: u64,
    pub recovered_journal_bytes: u64,
    pub chunks_done_before: u64,
    pub elapsed_s: f64,
}

/// Why a run failed (unreadable inputs are not failures: they are reported and skipped).
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error("writing the output: {0}")]
    Io(#[from] io::Error),
    #[error("the ledger has no room for the pipeline's own buffers: {0}")]
    Budget(#[from] budget::OutOfBudget),
}

pub(crate) struct Item {
    pub(crate) seq: u64,
    pub(crate) chunk: Chunk,
    pub(crate) _held: Held,
}

#[derive(Clone, Copy, Debug)]
pub(crate) enum Stage {
    Gen(u32),
    Judge(u32),
}

pub(crate) enum Msg {
    Chunk(Box<Item>),
    Problem(String, String),
    ReaderDone {
        files: u64,
        waits: u64,
    },
    PrefixReady(u64),
    Gen {
        seq: u64,
        stage: Stage,
        tokens: Vec<u32>,
        usage: Usage,
        reason: FinishReason,
    },
}

#[derive(Default, Clone)]
struct Pair {
    question: String,
    answer: String,
    score: Option<u32>,
    /// The judge's quoted support (kept for the rejects file).
    evidence: String,
    valid: bool,
    /// The question's prompt ids (a follow-up judge continues them).
    prompt: Vec<u32>,
    /// The question's request, its sequence kept for the judge until released.
    kept: Option<ReqId>,
}

struct Job {
    item: Item,
    id: u128,
    pairs: Vec<Pair>,
    /// Requests submitted and not finished.
    open: usize,
    /// Requests not finished, submitted or still to come: a question and its judge for
    /// each pair (a pair that did not parse has no judge). What the chunk still weighs in
    /// the admission of new chunks ([`generate::Main::admits`]).
    left: usize,
    rest_submitted: bool,
}

/// A finished chunk waiting for its turn to be written.
enum Finished {
    /// Nothing to write (done already, or a repeat of a chunk in flight).
    Skip,
    Chunk(Box<Job>),
}

/// The chunk's id in the journal: its hash under this run's configuration.
fn chunk_id(chunk_hash: u128, config: u64) -> u128 {
    let mut b = chunk_hash.to_le_bytes().to_vec();
    b.extend_from_slice(&config.to_le_bytes());
    xxhash_rust::xxh3::xxh3_128(&b)
}

/// A record's id: hash of chunk hash, question index, model digest and prompt version.
pub fn record_id(chunk_hash: u128, index: u32, model_digest: u64, prompt_version: &str) -> u128 {
    let mut b = chunk_hash.to_le_bytes().to_vec();
    b.extend_from_slice(&index.to_le_bytes());
    b.extend_from_slice(&model_digest.to_le_bytes());
    b.extend_from_slice(prompt_version.as_bytes());
    xxhash_rust::xxh3::xxh3_128(&b)
}

/// Tokens of text (no BOS/EOS; control-token texts read as text).
pub fn count_tokens(tok: &Tokenizer, s: &str) -> usize {
    let mut v = Vec::new();
    tok.encode_into(s, BosEos::Omit, Special::AsText, &mut v);
    v.len()
}

/// The context one request of a run with `chunk_tokens`-token chunks may need: the chunk,
/// the prompt's own text, a question and answer quoted to the judge, and the longest
/// reply the grammar allows.
pub fn needed_ctx(chunk_tokens: usize) -> usize {
    let reply = Shape::qa(MAX_QUESTION_BYTES, MAX_ANSWER_BYTES).max_bytes();
    (chunk_tokens + 384 + MAX_QUESTION_BYTES + MAX_ANSWER_BYTES + reply).next_multiple_of(256)
}

/// Runs the pipeline: see the module docs. `stop` (set by Ctrl+C) ends reading; the chunks
/// in flight are finished and written before it returns. `log` gets progress lines.
pub fn run(
    opts: &Options,
    tok: &Tokenizer,
    docs: &Arc<DocPool>,
    generator: Option<&Generator>,
    stop: &AtomicBool,
    log: &mut dyn FnMut(&str),
) -> Result<Report, RunError> {
    let t0 = Instant::now();
    let (mut journal, rec) = Journal::open(&opts.out)?;
    let mut report = Report {
        recovered_output_bytes: rec.output_cut,
        recovered_journal_bytes: rec.journal_cut,
        chunks_done_before: rec.done,
        ..Report::default()
    };
    note_recovery(&rec, log);
    let config = config_key(opts, generator.is_some());
    // The pipeline's own buffers: the reader's, the commit buffer.
    let never = AtomicBool::new(false);
    let _own = docs
        .acquire(READER_BYTES + COMMIT_BYTES as u64, &never)
        .map(|h| h.0);
    let rejects = match &opts.rejects {
        Some(p) => Some(io::BufWriter::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)?,
        )),
        None => None,
    };
    let mut dedup = Dedup::new(DEDUP_CAPACITY);
    let mut answer_dedup = Dedup::new(DEDUP_CAPACITY);
    if generator.is_some() && journal.out_len() > 0 {
        // Rebuild the filters from what earlier runs wrote, in the order they wrote it.
        for line in journal.output_reader()?.lines() {
            if let Ok((q, a, _)) = validate(opts.format, &line?) {
                dedup.add(&q);
                if dedups_answer(&a) {
                    answer_dedup.add(&a);
                }
            }
        }
    }
    let (tx, rx) = mpsc::channel::<Msg>();
    std::thread::scope(|s| {
        let reader_tx = tx.clone();
        let generate = generator.is_some();
        s.spawn(move || read_all(opts, tok, docs, stop, generate, &reader_tx));
        let mut main = Main {
            opts,
            tok,
            generator,
            journal: &mut journal,
            config,
            report: &mut report,
            dedup,
            answer_dedup,
            tx,
            queue: VecDeque::new(),
            jobs: HashMap::new(),
            finished: BTreeMap::new(),
            next_write: 0,
            in_flight_ids: HashSet::new(),
            buf: Vec::new(),
            entries: Vec::new(),
            last_commit: Instant::now(),
            gen_shape: Arc::new(Machine::new(&Shape::qa(
                MAX_QUESTION_BYTES,
                MAX_ANSWER_BYTES,
            ))),
            judge_shape: Arc::new(Machine::new(&Shape::judgement(MAX_EVIDENCE_BYTES))),
            vocab: generator.map(|_| Arc::new(Vocab::of(tok))),
            turns: generator.map_or_else(Turns::plain, |g| Turns::of(g.model.text())),
            stop_tokens: (0..tok.vocab_size() as u32)
                .filter(|&t| tok.is_end_of_generation(TokenId(t)))
                .collect(),
            pending_jobs: Vec::new(),
            stop,
            rejects,
        };
        main.run(&rx, log)
    })?;
    report.elapsed_s = t0.elapsed().as_secs_f64();
    Ok(report)
}

fn note_recovery(rec: &Recovery, log: &mut dyn FnMut(&str)) {
    if rec.done > 0 || rec.output_cut > 0 || rec.journal_cut > 0 {
        log(&format!(
            "resuming: {} chunks done before; cut {} bytes of output the journal did not \
             cover and {} bytes of torn journal",
            rec.done, rec.output_cut, rec.journal_cut
        ));
    }
}

/// Whether an answer is long enough for the near-duplicate filter: two different
/// questions may well share a short answer ("30 days"), not a sentence.
pub(crate) fn dedups_answer(a: &str) -> bool {
    a.split_whitespace().count() >= 6
}

/// Everything that changes what a chunk's records are.
fn config_key(opts: &Options, generate: bool) -> u64 {
    let s = if generate {
        format!(
            "qa|{:016x}|{}|{}|{}|{}|{:.3}|{}|{}|{}",
            opts.model_digest,
            opts.prompts.version,
            opts.questions_per_chunk,
            opts.seed,
            opts.judge_threshold,
            opts.min_grounding,
            opts.format.name(),
            opts.chunk.chunk_tokens,
            opts.chunk.overlap
        )
    } else {
        format!(
            "chunks|{:016x}|{}|{}",
            opts.model_digest, opts.chunk.chunk_tokens, opts.chunk.overlap
        )
    };
    xxhash_rust::xxh3::xxh3_64(s.as_bytes())
}
