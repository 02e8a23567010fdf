//! What a client hands the scheduler and reads back: requests, their hooks, outcomes and
//! usage, and the scheduler's configuration and counters.

use std::sync::Arc;

use kvcache::BlockStore;

use crate::sampler::SamplerConfig;

/// A request's id, unique for its scheduler.
pub type ReqId = u64;

/// What the client hooks into each sampling step of its request.
pub trait TokenHook: Send {
    /// Adjusts the logits before a token is sampled (set a token's logit to
    /// `f32::NEG_INFINITY` to forbid it).
    fn mask(&mut self, logits: &mut [f32]);
    /// Sees the token chosen; returns `true` to end the request after it
    /// ([`FinishReason::Hook`]).
    fn accept(&mut self, token: u32) -> bool;
}

/// One generation request.
pub struct Request {
    /// The prompt's token ids (at least one).
    pub prompt: Vec<u32>,
    /// Most tokens to generate.
    pub max_tokens: usize,
    pub sampler: SamplerConfig,
    /// Higher runs first (and is preempted last).
    pub priority: i32,
    /// Tokens that end generation (the model's end-of-generation tokens); the ending
    /// token is reported and counted, not followed.
    pub stop_tokens: Vec<u32>,
    /// Report each generated token's log-probability ([`Event::Token`]): a pass over
    /// the whole vocabulary in f64 per token, on the scheduler's thread, so only when
    /// asked.
    pub logprobs: bool,
    /// Log-probabilities of this many most likely tokens with each generated token.
    pub top_logprobs: usize,
    /// Report the log-probability of every prompt token after the first given the
    /// tokens before it ([`Event::PromptLogprob`]); the prompt is then computed whole
    /// (no shared prefix).
    pub prompt_logprobs: bool,
    pub hook: Option<Box<dyn TokenHook>>,
}

impl Request {
    /// Greedy generation of up to `max_tokens` after `prompt`.
    pub fn greedy(prompt: Vec<u32>, max_tokens: usize) -> Self {
        Request {
            prompt,
            max_tokens,
            sampler: SamplerConfig::default(),
            priority: 0,
            stop_tokens: Vec::new(),
            logprobs: false,
            top_logprobs: 0,
            prompt_logprobs: false,
            hook: None,
        }
    }
}

/// Why a request ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FinishReason {
    /// A stop token was generated.
    Stop,
    /// `max_tokens` were generated, or the context is full.
    Length,
    /// Its [`TokenHook`] ended it.
    Hook,
    /// [`Scheduler::cancel`](super::Scheduler::cancel), or its sink went away.
    Cancelled,
    /// The forward pass failed (non-finite logits); the message says why.
    Failed(String),
}

/// Token counts of a request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    /// Prompt tokens whose KV came from a shared prefix instead of being computed.
    pub cached_tokens: usize,
}

/// What a request's sink receives.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// A generated token with its log-probability (when the request asked for it) and the
    /// `top_logprobs` most likely tokens (id, log-probability), most likely first.
    Token {
        token: u32,
        logprob: Option<f32>,
        top: Vec<(u32, f32)>,
    },
    /// The log-probability of prompt token `index` (≥ 1) given those before it.
    PromptLogprob {
        index: usize,
        token: u32,
        logprob: f32,
    },
    /// The last event of a request.
    Done { reason: FinishReason, usage: Usage },
}

/// Receives a request's events on the scheduler's thread; returns `false` when nobody
/// listens any more (the request is then cancelled).
pub type Sink = Box<dyn FnMut(Event) -> bool + Send>;

/// Why a request was not accepted. Nothing was queued.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("the prompt is empty")]
    EmptyPrompt,
    #[error(
        "the prompt ({prompt} tokens) and max_tokens ({max_tokens}) exceed the context of \
         {n_ctx} tokens"
    )]
    TooLong {
        prompt: usize,
        max_tokens: usize,
        n_ctx: usize,
    },
    #[error(
        "the request needs {needed} tokens of KV but this server's budget holds at most \
         {fits} for one sequence"
    )]
    NeverFits { needed: usize, fits: usize },
    #[error("{waiting} requests are waiting already (the queue's limit)")]
    QueueFull { waiting: usize },
    #[error("the scheduler is shutting down")]
    ShuttingDown,
    #[error("token id {id} is outside the vocabulary ({vocab} tokens)")]
    BadToken { id: u32, vocab: usize },
}

/// What the scheduler may do when the KV cache has no room.
#[derive(Clone, Default)]
pub struct Pressure {
    /// Demote paused sequences' blocks to lower precisions (their answers may change
    /// slightly) before writing them to disk.
    pub demote: bool,
    /// Write paused sequences' blocks to this store, read back exactly when they resume.
    pub store: Option<Arc<BlockStore>>,
}

/// A disk store that prefixes persist in: the restart-surviving prefix cache.
#[derive(Clone)]
pub struct PrefixStore {
    /// Opened under [`BatchConfig::kv_store_identity`](crate::batch::BatchConfig::kv_store_identity)
    /// (blocks of another model, cache type or build are never found there).
    pub store: Arc<BlockStore>,
    /// The store's root is held to this many bytes of block files, least valuable first.
    pub max_bytes: u64,
}

/// Settings of a [`Scheduler`](super::Scheduler).
#[derive(Clone)]
pub struct SchedConfig {
    /// Most tokens in one step (decodes plus prompt chunks).
    pub step_tokens: usize,
    /// Most prompt tokens of one sequence in one step.
    pub prefill_chunk: usize,
    /// Most sequences running at once.
    pub max_running: usize,
    /// Most requests waiting (not yet started); more are refused.
    pub queue_cap: usize,
    pub pressure: Pressure,
    /// Where finished sequences' blocks are written and new prompts look for their
    /// prefix beyond the live sequences' (none: sharing stays in RAM).
    pub prefix_store: Option<PrefixStore>,
    /// Time each step's forward pass by phase ([`SchedStats::phase_us_by_tokens`]). Off,
    /// a phase mark is one thread-local read.
    pub time_phases: bool,
}

impl Default for SchedConfig {
    fn default() -> Self {
        SchedConfig {
            step_tokens: 512,
            prefill_chunk: 256,
            max_running: 64,
            queue_cap: 1024,
            pressure: Pressure::default(),
            prefix_store: None,
            time_phases: false,
        }
    }
}

/// The classes of [`SchedStats::steps_by_tokens`]: steps of under 16 tokens, 16 to 63,
/// 64 to 255, and 256 or more (the lower bound of each).
pub const STEP_CLASSES: [usize; 4] = [1, 16, 64, 256];

/// The class of a step of `tokens` in [`STEP_CLASSES`].
pub fn step_class(tokens: usize) -> usize {
    STEP_CLASSES
        .iter()
        .rposition(|&lo| tokens >= lo)
        .unwrap_or(0)
}

/// Counters of what the scheduler did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SchedStats {
    pub steps: u64,
    pub submitted: u64,
    pub finished: u64,
    pub cancelled: u64,
    pub refused: u64,
    /// Requests waiting now (never started, or preempted).
    pub waiting: usize,
    /// Sequences running now.
    pub running: usize,
    /// Most sequences running in one step.
    pub peak_running: usize,
    /// Steps by the tokens they computed, in the classes of [`STEP_CLASSES`].
    pub steps_by_tokens: [u64; STEP_CLASSES.len()],
    /// The time those steps took, in microseconds, by the same classes: where a batched
    /// workload spends its time (a step of few tokens costs nearly as much as one of
    /// many).
    pub step_us_by_tokens: [u64; STEP_CLASSES.len()],
    /// After those steps, sampling and reporting their tokens, in microseconds, by the
    /// same classes.
    pub after_us_by_tokens: [u64; STEP_CLASSES.len()],
    /// With [`SchedConfig::time_phases`]: the steps' time by phase
    /// ([`crate::phases::Phase::ALL`] order), in microseconds, by the same classes.
    pub phase_us_by_tokens: [[u64; crate::phases::Phase::ALL.len()]; STEP_CLASSES.len()],
    pub prompt_tokens: u64,
    pub generated_tokens: u64,
    /// Prompt tokens run through the model (shared-prefix tokens are not; a preempted
    /// prompt computed again counts again).
    pub computed_tokens: u64,
    /// Prompt tokens taken from a shared prefix.
    pub cached_tokens: u64,
    /// Blocks demoted under pressure.
    pub demotions: u64,
    /// Blocks written to disk under pressure.
    pub disk_writes: u64,
    /// Prefix blocks written to the prefix store.
    pub prefix_writes: u64,
    /// Writes to the prefix store that failed (a full disk); it is only read after one.
    pub prefix_write_failures: u64,
    /// Sequences preempted.
    pub preemptions: u64,
    /// Preempted sequences whose KV was dropped and computed again.
    pub recomputes: u64,
    /// Steps that found no room and walked the ladder.
    pub pressure_steps: u64,
    /// Requests from the pressure ladder to give back memory ([`Scheduler::ease`](super::Scheduler::ease)).
    pub pressure_reclaims: u64,
    /// Finished requests' sequences kept now ([`Scheduler::keep`](super::Scheduler::keep)).
    pub kept: usize,
    /// Kept sequences dropped under pressure before their client released them.
    pub kept_dropped: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn step_classes_split_at_16_64_and_256_tokens() {
        let classes: Vec<usize> = [0, 1, 15, 16, 63, 64, 255, 256, 4096]
            .iter()
            .map(|&n| step_class(n))
            .collect();
        assert_eq!(classes, [0, 0, 0, 1, 1, 2, 2, 3, 3]);
    }
}
