//! [`Engine::embed`]: a prompt's embedding, its final hidden states mean-pooled.
//!
//! Each token's hidden state is taken after the model's final norm (the vector the
//! output head reads), summed over the prompt as the forward pass produces it, divided
//! by the prompt's length and scaled to unit length (as OpenAI's embeddings are, so a
//! dot product is the cosine). The prompts run as sequences of their own, without
//! logits, and leave at once: their KV is held only while they run.

use kernels::ops;
use kvcache::SeqId;

use super::{Batch, BatchItem, Engine};
use crate::forward::EvalError;

impl Engine<'_, '_> {
    /// The embedding of each of `prompts` (unit length, `d_model` values each), all
    /// decoded in one batch. Nothing of them stays in the cache.
    ///
    /// # Errors
    /// An empty prompt or one past the context ([`EvalError::ContextFull`]), a token
    /// outside the vocabulary, or no room in the cache now ([`EvalError::NoRoom`]);
    /// on error no sequence of theirs is left.
    pub fn embed(&mut self, prompts: &[&[u32]]) -> Result<Vec<Vec<f32>>, EvalError> {
        let d = self.model.cfg.d_model;
        let mut batch = Batch::new();
        let mut seqs = Vec::with_capacity(prompts.len());
        if prompts.iter().any(|p| p.is_empty()) {
            return Err(EvalError::ContextFull {
                have: 0,
                adding: 0,
                n_ctx: self.cfg.n_ctx,
            });
        }
        for p in prompts {
            let seq = self.seq_new();
            self.pooled.insert(seq, vec![0.0; d]);
            seqs.push(seq);
            for (pos, &token) in p.iter().enumerate() {
                batch.push(BatchItem {
                    seq,
                    pos,
                    token,
                    wants_logits: false,
                });
            }
        }
        let ran = self.decode(&batch).map(|_| ());
        let sums: Vec<Vec<f32>> = seqs
            .iter()
            .map(|s| self.pooled.remove(s).unwrap_or_default())
            .collect();
        for &s in &seqs {
            self.seq_remove(s);
        }
        ran?;
        Ok(sums
            .into_iter()
            .zip(prompts)
            .map(|(mut v, p)| {
                let n = p.len() as f32;
                v.iter_mut().for_each(|x| *x /= n);
                let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
                if norm > 0.0 {
                    v.iter_mut().for_each(|x| *x /= norm);
                }
                v
            })
            .collect())
    }

    /// Adds the final-normed hidden state of each row `t` (scratch row `t`, of item
    /// `rows[t]`) whose sequence is being embedded to that sequence's sum.
    pub(super) fn pool_rows(&mut self, items: &[BatchItem], rows: &[usize]) {
        if self.pooled.is_empty() {
            return;
        }
        let c = &self.model.cfg;
        let d = c.d_model;
        let mut h = vec![0.0f32; d];
        for (t, &i) in rows.iter().enumerate() {
            let seq: SeqId = items[i].seq;
            let Some(sum) = self.pooled.get_mut(&seq) else {
                continue;
            };
            ops::rms_norm(
                &self.w.s.x[t * d..(t + 1) * d],
                &self.model.output_norm,
                c.rms_eps,
                &mut h,
            );
            sum.iter_mut().zip(&h).for_each(|(s, x)| *s += x);
        }
    }
}
