//! Where a non-finite number came from, asked after the logits turned out NaN or
//! infinite ([`crate::sampler::NonFiniteLogits`]).
//!
//! The forward pass does not check its activations (a check per layer and token would
//! cost a pass over every buffer); once the logits are bad, the weights are scanned in
//! the order the forward pass reads them, and the first tensor holding NaN or an infinity
//! is named. A corrupt or badly converted file is the usual cause; if every weight is
//! finite, the activations overflowed on their own.

use gguf::GgufFile;
use kernels::quant::dequantize_row;

/// A weight that is NaN or infinite.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("tensor '{tensor}' holds {value} at element {element}")]
pub struct NonFiniteWeight {
    /// The tensor's name (`blk.3.attn_q.weight`).
    pub tensor: String,
    /// The element's index in the tensor, row-major in ggml order.
    pub element: u64,
    /// Its value after dequantization.
    pub value: f32,
}

/// Where the forward pass reads a tensor: the embedding first, then blocks by index, then
/// the output norm and head.
fn forward_order(name: &str) -> (u8, u64) {
    if name.starts_with("token_embd") {
        return (0, 0);
    }
    let block = name
        .strip_prefix("blk.")
        .and_then(|rest| rest.split('.').next())
        .and_then(|n| n.parse().ok());
    match block {
        Some(b) => (1, b),
        None if name.starts_with("output_norm") => (2, 0),
        None => (3, 0),
    }
}

/// The first weight, in forward order, that dequantizes to NaN or an infinity; `None` if
/// every tensor of a type the engine reads is finite. Reads every tensor once (about a
/// third of a second for a 135M-parameter model).
pub fn first_non_finite_weight(file: &GgufFile<'_>) -> Option<NonFiniteWeight> {
    let mut tensors: Vec<_> = file.tensors().iter().collect();
    tensors.sort_by_key(|t| forward_order(t.name()));
    let mut row = Vec::new();
    for t in tensors {
        let Ok(wtype) = crate::model::wtype_of(t.name(), t.ggml_type()) else {
            continue; // a type the engine does not read cannot be what broke it
        };
        let Some(&cols) = t.dims().first() else {
            continue;
        };
        let Some(row_bytes) = usize::try_from(cols)
            .ok()
            .and_then(|c| wtype.row_bytes(c))
            .filter(|&b| b > 0)
        else {
            continue;
        };
        row.resize(cols as usize, 0.0f32);
        for (r, bytes) in file.tensor_data(t).chunks_exact(row_bytes).enumerate() {
            dequantize_row(wtype, bytes, &mut row);
            if let Some(i) = row.iter().position(|v| !v.is_finite()) {
                return Some(NonFiniteWeight {
                    tensor: t.name().to_owned(),
                    element: r as u64 * cols + i as u64,
                    value: row[i],
                });
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tensors_are_scanned_in_the_order_the_forward_pass_reads_them() {
        let mut names = [
            "output.weight",
            "blk.10.ffn_up.weight",
            "output_norm.weight",
            "blk.2.attn_q.weight",
            "token_embd.weight",
        ];
        names.sort_by_key(|n| forward_order(n));
        assert_eq!(
            names,
            [
                "token_embd.weight",
                "blk.2.attn_q.weight",
                "blk.10.ffn_up.weight",
                "output_norm.weight",
                "output.weight"
            ]
        );
    }
}
