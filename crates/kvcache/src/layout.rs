//! Where each layer's keys and values sit inside a block.
//!
//! ```text
//! block = [ layer 0 | layer 1 | … | layer L-1 ]
//! layer = [ K head 0 | … | K head H-1 | V head 0 | … | V head H-1 ]
//! head  = [ token 0: head_dim f16 | token 1 | … | token block_tokens-1 ]
//! ```
//! One head's keys for a block are contiguous, which is what attention reads.

/// Shape of the cache: fixed for a model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KvLayout {
    n_layers: usize,
    n_kv_heads: usize,
    head_dim: usize,
    block_tokens: usize,
}

/// A layout that cannot be built.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum LayoutError {
    #[error("KV layout field {field} must be between 1 and {max}, got {value}")]
    OutOfRange {
        field: &'static str,
        value: usize,
        max: usize,
    },
}

impl KvLayout {
    /// Validates each dimension (all ≥ 1; the block's size must fit in memory math).
    pub fn new(
        n_layers: usize,
        n_kv_heads: usize,
        head_dim: usize,
        block_tokens: usize,
    ) -> Result<Self, LayoutError> {
        for (field, value, max) in [
            ("n_layers", n_layers, 1024),
            ("n_kv_heads", n_kv_heads, 1024),
            ("head_dim", head_dim, 1024),
            ("block_tokens", block_tokens, 1024),
        ] {
            if value == 0 || value > max {
                return Err(LayoutError::OutOfRange { field, value, max });
            }
        }
        Ok(KvLayout {
            n_layers,
            n_kv_heads,
            head_dim,
            block_tokens,
        })
    }

    pub fn n_layers(&self) -> usize {
        self.n_layers
    }
    pub fn n_kv_heads(&self) -> usize {
        self.n_kv_heads
    }
    pub fn head_dim(&self) -> usize {
        self.head_dim
    }
    pub fn block_tokens(&self) -> usize {
        self.block_tokens
    }

    /// f16 elements of one head's keys (or values) in one block.
    pub fn head_stride(&self) -> usize {
        self.block_tokens * self.head_dim
    }

    /// Offset of layer `layer`'s keys (head 0) inside a block.
    pub fn k_base(&self, layer: usize) -> usize {
        layer * 2 * self.n_kv_heads * self.head_stride()
    }

    /// Offset of layer `layer`'s values (head 0) inside a block.
    pub fn v_base(&self, layer: usize) -> usize {
        self.k_base(layer) + self.n_kv_heads * self.head_stride()
    }

    /// f16 elements in one block.
    pub fn block_elems(&self) -> usize {
        self.n_layers * 2 * self.n_kv_heads * self.head_stride()
    }

    /// Bytes of one hot (f16) block.
    pub fn block_bytes(&self) -> u64 {
        self.block_elems() as u64 * 2
    }

    /// The same shape as the kernels see it.
    pub fn geom(&self) -> kernels::kvquant::BlockGeom {
        kernels::kvquant::BlockGeom {
            n_layers: self.n_layers,
            n_kv_heads: self.n_kv_heads,
            head_dim: self.head_dim,
            block_tokens: self.block_tokens,
        }
    }

    /// Bytes of one block in `format`.
    pub fn block_bytes_in(&self, format: kernels::kvquant::KvFormat) -> u64 {
        self.geom().block_bytes(format) as u64
    }

    /// Bytes one token costs in the hot tier: layers × 2 × KV heads × head dim × 2.
    pub fn bytes_per_token(&self) -> u64 {
        (self.n_layers * 2 * self.n_kv_heads * self.head_dim * 2) as u64
    }
}
