//! Where a forward pass's time goes, by phase, when asked (`llmem bench batch --phases`).
//!
//! The thread that runs a forward pass marks the end of each phase; the time since its
//! previous mark is added to that phase's total. Timing, its switch and its totals belong
//! to one thread: the one that drives the engine (the pool's workers only compute inside
//! phases). Off (the default) a mark is one thread-local read.

use std::cell::Cell;
use std::time::{Duration, Instant};

/// A part of a forward pass (and of the batch bookkeeping around it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Checking a batch, planning and growing its KV.
    Plan,
    /// Token embeddings and RoPE angles.
    Embed,
    /// RMS norms, activation quantization, residual adds and the FFN's activation.
    Norm,
    /// The Q, K and V projections.
    Qkv,
    /// Their biases, Q/K norms per head and RoPE.
    Rope,
    /// Writing K and V into the cache, and gathering each sequence's block views.
    Kv,
    /// Attention itself.
    Attention,
    /// The attention output projection.
    Wo,
    /// The FFN's gate and up projections.
    FfnUp,
    /// The FFN's down projection.
    FfnDown,
    /// The final norm and the output head.
    Head,
    /// After the pass: tokens recorded, blocks published, tiers applied.
    Finish,
}

impl Phase {
    pub const ALL: [Phase; 12] = [
        Phase::Plan,
        Phase::Embed,
        Phase::Norm,
        Phase::Qkv,
        Phase::Rope,
        Phase::Kv,
        Phase::Attention,
        Phase::Wo,
        Phase::FfnUp,
        Phase::FfnDown,
        Phase::Head,
        Phase::Finish,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Phase::Plan => "plan",
            Phase::Embed => "embed",
            Phase::Norm => "norm",
            Phase::Qkv => "qkv",
            Phase::Rope => "rope",
            Phase::Kv => "kv",
            Phase::Attention => "attention",
            Phase::Wo => "wo",
            Phase::FfnUp => "ffn_up",
            Phase::FfnDown => "ffn_down",
            Phase::Head => "head",
            Phase::Finish => "finish",
        }
    }
}

const N: usize = Phase::ALL.len();

thread_local! {
    static ON: Cell<bool> = const { Cell::new(false) };
    static LAST: Cell<Option<Instant>> = const { Cell::new(None) };
    static NANOS: Cell<[u64; N]> = const { Cell::new([0; N]) };
}

/// Turns timing on or off for the passes this thread runs.
pub fn enable(on: bool) {
    ON.set(on);
    LAST.set(None);
}

/// Starts a timed stretch: the next mark counts from now.
pub(crate) fn begin() {
    if ON.get() {
        LAST.set(Some(Instant::now()));
    }
}

/// Adds the time since this thread's previous mark (or `begin`) to `p`.
pub(crate) fn mark(p: Phase) {
    if !ON.get() {
        return;
    }
    let now = Instant::now();
    if let Some(t) = LAST.replace(Some(now)) {
        let mut n = NANOS.get();
        n[p as usize] += now.duration_since(t).as_nanos() as u64;
        NANOS.set(n);
    }
}

/// This thread's total per phase since the last `take`, which starts them over.
pub fn take() -> Vec<(Phase, Duration)> {
    let n = NANOS.replace([0; N]);
    Phase::ALL
        .iter()
        .map(|&p| (p, Duration::from_nanos(n[p as usize])))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_add_the_time_since_the_previous_mark_to_their_phase() {
        enable(true);
        take();
        begin();
        std::thread::sleep(Duration::from_millis(5));
        mark(Phase::Attention);
        mark(Phase::Head);
        let t = take();
        enable(false);
        let get = |p| t.iter().find(|(q, _)| *q == p).unwrap().1;
        assert!(get(Phase::Attention) >= Duration::from_millis(5));
        assert!(get(Phase::Head) < Duration::from_millis(5));
        assert_eq!(get(Phase::Qkv), Duration::ZERO);
        // Off, marks add nothing.
        begin();
        mark(Phase::Qkv);
        assert!(take().iter().all(|(_, d)| d.is_zero()));
    }
}
