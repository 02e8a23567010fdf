//! The generating stage: chunks on the scheduler, their questions, answers and judges as
//! requests, and finished chunks written in corpus order.

use super::*;
use crate::ground::Grounding;

#[derive(Deserialize)]
struct QaJson {
    question: String,
    answer: String,
}

#[derive(Deserialize)]
struct ScoreJson {
    score: u32,
    #[serde(default)]
    evidence: String,
}

pub(super) struct Main<'a> {
    pub(super) opts: &'a Options,
    pub(super) tok: &'a Tokenizer,
    pub(super) generator: Option<&'a Generator>,
    pub(super) journal: &'a mut Journal,
    pub(super) config: u64,
    pub(super) report: &'a mut Report,
    pub(super) dedup: Dedup,
    pub(super) answer_dedup: Dedup,
    pub(super) tx: Sender<Msg>,
    pub(super) queue: VecDeque<Item>,
    pub(super) jobs: HashMap<u64, Job>,
    pub(super) finished: BTreeMap<u64, Finished>,
    pub(super) next_write: u64,
    pub(super) in_flight_ids: HashSet<u128>,
    pub(super) buf: Vec<u8>,
    pub(super) entries: Vec<(u128, u64, usize)>,
    pub(super) last_commit: Instant,
    pub(super) gen_shape: Arc<Machine>,
    pub(super) judge_shape: Arc<Machine>,
    pub(super) vocab: Option<Arc<Vocab>>,
    pub(super) turns: Turns,
    pub(super) stop_tokens: Vec<u32>,
    /// Chunks written but not yet committed: their bytes stay reserved until then.
    pub(super) pending_jobs: Vec<Job>,
    pub(super) stop: &'a AtomicBool,
    pub(super) rejects: Option<io::BufWriter<std::fs::File>>,
}

impl Main<'_> {
    pub(super) fn run(
        &mut self,
        rx: &Receiver<Msg>,
        log: &mut dyn FnMut(&str),
    ) -> Result<(), RunError> {
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

    pub(super) fn handle(&mut self, m: Msg, reader_done: &mut bool, log: &mut dyn FnMut(&str)) {
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

    pub(super) fn max_in_flight(&self) -> usize {
        self.generator
            .map_or(usize::MAX, |g| g.max_in_flight.max(1))
    }

    /// Whether another chunk may start. Up to `max_in_flight` chunks always may. Beyond
    /// that, chunks are counted by the requests they have left (two per question: it and
    /// its judge): one more starts while those of the chunks in flight are no more than
    /// `max_in_flight - 1` whole chunks' worth, up to twice `max_in_flight` chunks. So a
    /// chunk down to its last judges makes room for the next before it ends, and the
    /// engine's batch does not thin out at the end of every wave of chunks started
    /// together (measured: steps of under 64 tokens took 41% of a 16-chunk run at 8 in
    /// flight); `max_in_flight` 1 stays strictly one chunk at a time.
    pub(super) fn admits(&self) -> bool {
        let max = self.max_in_flight();
        if self.jobs.len() < max {
            return true;
        }
        let whole = 2 * self.opts.questions_per_chunk.max(1);
        let left: usize = self.jobs.values().map(|j| j.left).sum();
        self.jobs.len() < max.saturating_mul(2)
            && left.saturating_add(whole) <= max.saturating_mul(whole)
    }

    pub(super) fn start_jobs(&mut self) -> Result<(), RunError> {
        while self.admits() {
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
            let pairs = vec![Pair::default(); if self.generator.is_some() { n } else { 0 }];
            let job = Job {
                item,
                id,
                open: 0,
                left: 2 * pairs.len(),
                pairs,
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

    pub(super) fn sink(&self, seq: u64, stage: Stage, announce: bool) -> Sink {
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
    pub(super) fn submit(&mut self, seq: u64, stage: Stage, prompt: Vec<u32>, announce: bool) {
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
            Stage::Judge(_) => Shape::judgement(super::MAX_EVIDENCE_BYTES).max_bytes(),
        };
        let keep = matches!(stage, Stage::Gen(_)) && self.opts.prompts.judge_follows();
        let stop_tokens = self.stop_tokens.clone();
        let req = Request {
            prompt,
            max_tokens,
            sampler,
            priority: 0,
            stop_tokens,
            logprobs: false,
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
                // Counted as an invalid pair; the chunk goes on. A question refused
                // takes its judge with it.
                self.report.pairs_invalid += 1;
                let _ = e;
                if let Some(j) = self.jobs.get_mut(&seq) {
                    let gone = if matches!(stage, Stage::Gen(_)) { 2 } else { 1 };
                    j.left = j.left.saturating_sub(gone);
                }
            }
        }
    }

    pub(super) fn submit_gen(&mut self, seq: u64, i: u32) {
        let Some(job) = self.jobs.get(&seq) else {
            return;
        };
        let n = self.opts.questions_per_chunk.to_string();
        let idx = (i + 1).to_string();
        let text = &job.item.chunk.text;
        let anchor = crate::prompts::anchor(text, i as usize, self.opts.questions_per_chunk);
        let user = fill(
            &self.opts.prompts.question,
            &[("index", &idx), ("count", &n), ("anchor", &anchor)],
            text,
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
    pub(super) fn release(&mut self, seq: u64, i: u32) {
        let Some(job) = self.jobs.get_mut(&seq) else {
            return;
        };
        if let (Some(id), Some(g)) = (job.pairs[i as usize].kept.take(), self.generator) {
            g.service.release(id);
        }
    }

    pub(super) fn submit_rest(&mut self, seq: u64) {
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

    pub(super) fn on_done(
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
            job.left = job.left.saturating_sub(1);
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
                        // No judge follows.
                        if let Some(job) = self.jobs.get_mut(&seq) {
                            job.left = job.left.saturating_sub(1);
                        }
                        self.release(seq, i);
                    }
                }
            }
            Stage::Judge(i) => {
                let judged = ok
                    .then(|| serde_json::from_str::<ScoreJson>(&text).ok())
                    .flatten();
                if let Some(job) = self.jobs.get_mut(&seq) {
                    let p = &mut job.pairs[i as usize];
                    p.score = judged.as_ref().map(|s| s.score);
                    p.evidence = judged.map(|s| s.evidence).unwrap_or_default();
                }
                self.release(seq, i);
            }
        }
        self.maybe_finish(seq);
    }

    pub(super) fn maybe_finish(&mut self, seq: u64) {
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
    pub(super) fn write_ready(&mut self) -> Result<(), RunError> {
        while let Some(f) = self.finished.remove(&self.next_write) {
            self.next_write += 1;
            let Finished::Chunk(job) = f else {
                continue;
            };
            let before = self.buf.len();
            let mut records = 0u64;
            let c = &job.item.chunk;
            // Built at the chunk's first valid pair (a `--no-generate` run has none).
            let mut ground: Option<Grounding> = None;
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
                let grounding = ground
                    .get_or_insert_with(|| Grounding::new(&c.text))
                    .coverage(&p.answer);
                let why = if score < self.opts.judge_threshold {
                    self.report.dropped_judge += 1;
                    "judge score below the threshold"
                } else if grounding < self.opts.min_grounding {
                    self.report.dropped_ungrounded += 1;
                    "answer not in the chunk's words"
                } else if crate::ground::novelty(&p.question, &p.answer) < MIN_NOVELTY {
                    self.report.dropped_trivial += 1;
                    "answer restates the question"
                } else if self.dedup.contains(&p.question) {
                    self.report.dropped_duplicate += 1;
                    "near-duplicate question"
                } else if dedups_answer(&p.answer) && self.answer_dedup.contains(&p.answer) {
                    // Another question already asked for this answer.
                    self.report.dropped_duplicate += 1;
                    "near-duplicate answer"
                } else {
                    self.dedup.add(&p.question);
                    if dedups_answer(&p.answer) {
                        self.answer_dedup.add(&p.answer);
                    }
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
                            "judge_evidence": p.evidence,
                            "grounding": round2(grounding),
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
                    grounding: round2(grounding),
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

    pub(super) fn commit(&mut self) -> Result<(), RunError> {
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

/// Pairs whose answer brings less than this share of content words the question does not
/// have are dropped: "What is the name of the GNU General Public License?" — "GNU General
/// Public License".
const MIN_NOVELTY: f32 = 0.2;

/// `x` to two decimals (a record's grounding).
fn round2(x: f32) -> f32 {
    (x * 100.0).round() / 100.0
}
