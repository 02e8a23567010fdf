//! The chain read → chunk → generate → judge → write, in bounded memory.
//!
//! A reader thread walks the inputs and chunks them; every chunk's buffers are reserved in
//! the ledger's `documents` pool before the chunk exists, and when the pool is full the
//! reader waits until written chunks give their bytes back (backpressure). The main thread
//! takes chunks in corpus order, keeps up to `max_in_flight` of them generating on the
//! scheduler at once, and writes finished chunks in corpus order: the output, and so the
//! near-duplicate filter's decisions, are the same however a run was interrupted.

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
    /// Chunks generating at once.
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
    if generator.is_some() && journal.out_len() > 0 {
        // Rebuild the filter from what earlier runs wrote, in the order they wrote it.
        for line in journal.output_reader()?.lines() {
            if let Ok((q, _)) = validate(opts.format, &line?) {
                dedup.add(&q);
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
            judge_shape: Arc::new(Machine::new(&Shape::score())),
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

/// Everything that changes what a chunk's records are.
fn config_key(opts: &Options, generate: bool) -> u64 {
    let s = if generate {
        format!(
            "qa|{:016x}|{}|{}|{}|{}|{}|{}|{}",
            opts.model_digest,
            opts.prompts.version,
            opts.questions_per_chunk,
            opts.seed,
            opts.judge_threshold,
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

#[derive(Deserialize)]
struct QaJson {
    question: String,
    answer: String,
}

#[derive(Deserialize)]
struct ScoreJson {
    score: u32,
}

struct Main<'a> {
    opts: &'a Options,
    tok: &'a Tokenizer,
    generator: Option<&'a Generator>,
    journal: &'a mut Journal,
    config: u64,
    report: &'a mut Report,
    dedup: Dedup,
    tx: Sender<Msg>,
    queue: VecDeque<Item>,
    jobs: HashMap<u64, Job>,
    finished: BTreeMap<u64, Finished>,
    next_write: u64,
    in_flight_ids: HashSet<u128>,
    buf: Vec<u8>,
    entries: Vec<(u128, u64, usize)>,
    last_commit: Instant,
    gen_shape: Arc<Machine>,
    judge_shape: Arc<Machine>,
    vocab: Option<Arc<Vocab>>,
    turns: Turns,
    stop_tokens: Vec<u32>,
    /// Chunks written but not yet committed: their bytes stay reserved until then.
    pending_jobs: Vec<Job>,
    stop: &'a AtomicBool,
    rejects: Option<io::BufWriter<std::fs::File>>,
}

impl Main<'_> {
    fn run(&mut self, rx: &Receiver<Msg>, log: &mut dyn FnMut(&str)) -> Result<(), RunError> {
        let mut reader_done = false;
        let mut last_log = Instant::now();
        loop {
            match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(m) => self.handle(m, &mut reader_done, log),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => reader_done = true,
            }
            if self.stop.load(Ordering::Relaxed) && !self.report.interrupted {
                self.report.interrupted = true;
                log("interrupted: finishing the chunks in flight");
            }
            if self.report.interrupted {
                // Chunks not started are dropped (and their bytes given back); they are
                // not journaled, so the next run does them.
                self.queue.clear();
            }
            self.start_jobs()?;
            self.write_ready()?;
            let idle = self.jobs.is_empty() && self.queue.is_empty();
            if idle && (reader_done || self.report.interrupted) {
                if self.report.interrupted && !reader_done {
                    // Let the reader see the flag and end; drain what it still sends.
                    while let Ok(m) = rx.recv_timeout(Duration::from_millis(200)) {
                        let done = matches!(m, Msg::ReaderDone { .. });
                        if let Msg::Chunk(_) = m {
                            continue;
                        }
                        self.handle(m, &mut reader_done, log);
                        if done {
                            break;
                        }
                    }
                }
                self.commit()?;
                return Ok(());
            }
            if last_log.elapsed() > Duration::from_secs(10) {
                last_log = Instant::now();
                log(&format!(
                    "{} chunks read, {} written, {} records, {} in flight",
                    self.report.chunks,
                    self.report.chunks_written,
                    self.report.records,
                    self.jobs.len()
                ));
            }
        }
    }

    fn handle(&mut self, m: Msg, reader_done: &mut bool, log: &mut dyn FnMut(&str)) {
        match m {
            Msg::Chunk(item) => {
                self.report.chunks += 1;
                self.queue.push_back(*item);
            }
            Msg::Problem(path, why) => {
                log(&format!("skipped {path}: {why}"));
                self.report.problems.push((path, why));
            }
            Msg::ReaderDone { files, waits } => {
                self.report.files = files;
                self.report.backpressure_waits = waits;
                *reader_done = true;
            }
            Msg::PrefixReady(seq) => self.submit_rest(seq),
            Msg::Gen {
                seq,
                stage,
                tokens,
                usage,
                reason,
            } => self.on_done(seq, stage, &tokens, usage, &reason),
        }
    }

    fn max_in_flight(&self) -> usize {
        self.generator
            .map_or(usize::MAX, |g| g.max_in_flight.max(1))
    }

    fn start_jobs(&mut self) -> Result<(), RunError> {
        while self.jobs.len() < self.max_in_flight() {
            let Some(item) = self.queue.pop_front() else {
                break;
            };
            let id = chunk_id(item.chunk.hash, self.config);
            if self.journal.is_done(id)? || !self.in_flight_ids.insert(id) {
                self.report.chunks_skipped += 1;
                self.finished.insert(item.seq, Finished::Skip);
                continue;
            }
            let seq = item.seq;
            let n = self.opts.questions_per_chunk;
            let job = Job {
                item,
                id,
                pairs: vec![Pair::default(); if self.generator.is_some() { n } else { 0 }],
                open: 0,
                rest_submitted: false,
            };
            self.jobs.insert(seq, job);
            if self.generator.is_some() && n > 0 {
                // The first question alone: once its prompt is computed, the others
                // (and later the judges) reuse the chunk's KV blocks.
                self.submit_gen(seq, 0);
            }
            self.maybe_finish(seq);
        }
        Ok(())
    }

    fn sink(&self, seq: u64, stage: Stage, announce: bool) -> Sink {
        let tx = self.tx.clone();
        let mut tokens = Vec::new();
        let mut announced = !announce;
        Box::new(move |ev| {
            match ev {
                Event::Token { token, .. } => {
                    tokens.push(token);
                    if !announced {
                        announced = true;
                        let _ = tx.send(Msg::PrefixReady(seq));
                    }
                }
                Event::Done { reason, usage } => {
                    let _ = tx.send(Msg::Gen {
                        seq,
                        stage,
                        tokens: std::mem::take(&mut tokens),
                        usage,
                        reason,
                    });
                }
                Event::PromptLogprob { .. } => {}
            }
            true
        })
    }

    /// Submits one request of chunk `seq`; a question's request keeps its sequence for a
    /// follow-up judge.
    fn submit(&mut self, seq: u64, stage: Stage, prompt: Vec<u32>, announce: bool) {
        let g = self.generator.expect("generating");
        let vocab = self.vocab.clone().expect("generating");
        let Some(job) = self.jobs.get(&seq) else {
            return;
        };
        let (machine, sampler) = match stage {
            Stage::Gen(i) => {
                let rid = record_id(
                    job.item.chunk.hash,
                    i,
                    self.opts.model_digest,
                    &self.opts.prompts.version,
                );
                let seed = xxhash_rust::xxh3::xxh3_64_with_seed(&rid.to_le_bytes(), self.opts.seed);
                (
                    self.gen_shape.clone(),
                    SamplerConfig {
                        temperature: g.temperature,
                        top_k: 40,
                        top_p: 0.95,
                        min_p: 0.05,
                        seed,
                    },
                )
            }
            Stage::Judge(_) => (self.judge_shape.clone(), SamplerConfig::default()),
        };
        let max_tokens = match stage {
            Stage::Gen(_) => Shape::qa(MAX_QUESTION_BYTES, MAX_ANSWER_BYTES).max_bytes(),
            Stage::Judge(_) => Shape::score().max_bytes(),
        };
        let keep = matches!(stage, Stage::Gen(_)) && self.opts.prompts.judge_follows();
        let stop_tokens = self.stop_tokens.clone();
        let req = Request {
            prompt,
            max_tokens,
            sampler,
            priority: 0,
            stop_tokens,
            top_logprobs: 0,
            prompt_logprobs: false,
            hook: Some(Box::new(JsonHook::new(machine, vocab))),
        };
        let sink = self.sink(seq, stage, announce);
        let r = if keep {
            g.service.submit_kept(req, sink)
        } else {
            g.service.submit(req, sink)
        };
        match r {
            Ok(id) => {
                if let Some(j) = self.jobs.get_mut(&seq) {
                    j.open += 1;
                    if let (true, Stage::Gen(i)) = (keep, stage) {
                        j.pairs[i as usize].kept = Some(id);
                    }
                }
            }
            Err(e) => {
                // Counted as an invalid pair; the chunk goes on.
                self.report.pairs_invalid += 1;
                let _ = e;
            }
        }
    }

    fn submit_gen(&mut self, seq: u64, i: u32) {
        let Some(job) = self.jobs.get(&seq) else {
            return;
        };
        let n = self.opts.questions_per_chunk.to_string();
        let idx = (i + 1).to_string();
        let user = fill(
            &self.opts.prompts.question,
            &[("index", &idx), ("count", &n)],
            &job.item.chunk.text,
        );
        let prompt = self.turns.first(self.tok, &user);
        if let Some(job) = self.jobs.get_mut(&seq)
            && self.opts.prompts.judge_follows()
        {
            job.pairs[i as usize].prompt = prompt.clone();
        }
        self.submit(seq, Stage::Gen(i), prompt, i == 0);
    }

    /// Gives back question `i`'s kept sequence (its judge has attached it, or will not
    /// run).
    fn release(&mut self, seq: u64, i: u32) {
        let Some(job) = self.jobs.get_mut(&seq) else {
            return;
        };
        if let (Some(id), Some(g)) = (job.pairs[i as usize].kept.take(), self.generator) {
            g.service.release(id);
        }
    }

    fn submit_rest(&mut self, seq: u64) {
        let Some(job) = self.jobs.get_mut(&seq) else {
            return;
        };
        if job.rest_submitted {
            return;
        }
        job.rest_submitted = true;
        for i in 1..self.opts.questions_per_chunk as u32 {
            self.submit_gen(seq, i);
        }
    }

    fn on_done(
        &mut self,
        seq: u64,
        stage: Stage,
        tokens: &[u32],
        usage: Usage,
        reason: &FinishReason,
    ) {
        self.report.prompt_tokens += usage.prompt_tokens as u64;
        self.report.cached_tokens += usage.cached_tokens as u64;
        self.report.completion_tokens += usage.completion_tokens as u64;
        let ids: Vec<TokenId> = tokens.iter().map(|&t| TokenId(t)).collect();
        let text = self.tok.decode(&ids, Render::Text).unwrap_or_default();
        let ok = matches!(reason, FinishReason::Hook | FinishReason::Stop);
        if std::env::var_os("LLMEM_QA_DEBUG").is_some() {
            eprintln!("[{seq} {stage:?}] {reason:?} {usage:?} {text:?}");
        }
        if let Some(job) = self.jobs.get_mut(&seq) {
            job.open = job.open.saturating_sub(1);
        }
        match stage {
            Stage::Gen(i) => {
                if i == 0 {
                    self.submit_rest(seq);
                }
                self.report.pairs_generated += 1;
                let parsed = ok
                    .then(|| serde_json::from_str::<QaJson>(&text).ok())
                    .flatten()
                    .filter(|p| !p.question.trim().is_empty() && !p.answer.trim().is_empty());
                match parsed {
                    Some(p) => {
                        let Some(job) = self.jobs.get_mut(&seq) else {
                            return;
                        };
                        let pair = &mut job.pairs[i as usize];
                        pair.question = p.question.trim().to_string();
                        pair.answer = p.answer.trim().to_string();
                        pair.valid = true;
                        let user = fill(
                            &self.opts.prompts.judge,
                            &[("question", &pair.question), ("answer", &pair.answer)],
                            &job.item.chunk.text,
                        );
                        let prompt = if self.opts.prompts.judge_follows() {
                            // The question's prompt and its reply as generated, up to
                            // the closing brace (no end-of-turn token).
                            let mut so_far = std::mem::take(&mut pair.prompt);
                            so_far.extend(tokens.iter().filter(|t| !self.stop_tokens.contains(t)));
                            self.turns.follow(self.tok, &so_far, &user)
                        } else {
                            self.turns.first(self.tok, &user)
                        };
                        self.submit(seq, Stage::Judge(i), prompt, false);
                    }
                    None => {
                        self.report.pairs_invalid += 1;
                        self.release(seq, i);
                    }
                }
            }
            Stage::Judge(i) => {
                let score = ok
                    .then(|| serde_json::from_str::<ScoreJson>(&text).ok())
                    .flatten()
                    .map(|s| s.score);
                if let Some(job) = self.jobs.get_mut(&seq) {
                    job.pairs[i as usize].score = score;
                }
                self.release(seq, i);
            }
        }
        self.maybe_finish(seq);
    }

    fn maybe_finish(&mut self, seq: u64) {
        let Some(job) = self.jobs.get(&seq) else {
            return;
        };
        let n = job.pairs.len();
        if job.open > 0 || (n > 1 && !job.rest_submitted) {
            return;
        }
        for i in 0..n as u32 {
            self.release(seq, i);
        }
        let job = self.jobs.remove(&seq).expect("present");
        self.finished.insert(seq, Finished::Chunk(Box::new(job)));
    }

    /// Writes finished chunks in corpus order, committing in groups.
    fn write_ready(&mut self) -> Result<(), RunError> {
        while let Some(f) = self.finished.remove(&self.next_write) {
            self.next_write += 1;
            let Finished::Chunk(job) = f else {
                continue;
            };
            let before = self.buf.len();
            let mut records = 0u64;
            let c = &job.item.chunk;
            if self.generator.is_none() {
                let r = ChunkRecord {
                    id: id_hex(job.id),
                    kind: "chunk".into(),
                    source: c.source.clone(),
                    bytes: [c.start, c.end],
                    chunk_hash: id_hex(c.hash),
                    tokens: c.tokens as u64,
                };
                serde_json::to_writer(&mut self.buf, &r).map_err(io::Error::from)?;
                self.buf.push(b'\n');
                records += 1;
            }
            for (i, p) in job.pairs.iter().enumerate() {
                if !p.valid {
                    continue;
                }
                let score = p.score.unwrap_or(0);
                self.report.score_sum += u64::from(score);
                let why = if score < self.opts.judge_threshold {
                    self.report.dropped_judge += 1;
                    "judge score below the threshold"
                } else if self.dedup.check_and_add(&p.question) {
                    self.report.dropped_duplicate += 1;
                    "near-duplicate question"
                } else {
                    ""
                };
                if !why.is_empty() {
                    if let Some(w) = self.rejects.as_mut() {
                        let v = serde_json::json!({
                            "source": c.source,
                            "bytes": [c.start, c.end],
                            "chunk_hash": id_hex(c.hash),
                            "question_index": i,
                            "question": p.question,
                            "answer": p.answer,
                            "judge_score": score,
                            "dropped": why,
                        });
                        serde_json::to_writer(&mut *w, &v).map_err(io::Error::from)?;
                        io::Write::write_all(w, b"\n")?;
                    }
                    continue;
                }
                let meta = Meta {
                    id: id_hex(record_id(
                        c.hash,
                        i as u32,
                        self.opts.model_digest,
                        &self.opts.prompts.version,
                    )),
                    source: c.source.clone(),
                    bytes: [c.start, c.end],
                    chunk_hash: id_hex(c.hash),
                    model_digest: format!("{:016x}", self.opts.model_digest),
                    prompt_version: self.opts.prompts.version.clone(),
                    question_index: i as u32,
                    judge_score: score,
                };
                self.buf.extend_from_slice(
                    qa_line(self.opts.format, &p.question, &p.answer, &meta).as_bytes(),
                );
                records += 1;
            }
            self.report.records += records;
            self.report.chunks_written += 1;
            self.entries
                .push((job.id, records, self.buf.len() - before));
            self.in_flight_ids.remove(&job.id);
            // The chunk's bytes stay reserved until its records are committed.
            self.pending_jobs.push(*job);
            if self.buf.len() >= COMMIT_BYTES
                || self.entries.len() >= 1024
                || self.last_commit.elapsed() > Duration::from_millis(200)
                || self.generator.is_some()
            {
                self.commit()?;
            }
        }
        if !self.entries.is_empty() && self.last_commit.elapsed() > Duration::from_millis(200) {
            self.commit()?;
        }
        Ok(())
    }

    fn commit(&mut self) -> Result<(), RunError> {
        if let Some(w) = self.rejects.as_mut() {
            io::Write::flush(w)?;
        }
        self.journal.commit(&self.buf, &self.entries)?;
        self.buf.clear();
        self.entries.clear();
        self.pending_jobs.clear();
        self.last_commit = Instant::now();
        Ok(())
    }
}
