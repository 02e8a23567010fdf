//! Where each layer's keys and values sit inside a block.
//!
//! ```text
//! block = [ slot 0 | slot 1 | … | slot L-1 ]
//! slot  = [ K head 0 | … | K head H-1 | V head 0 | … | V head H-1 ]
//! head  = [ token 0: head_dim f16 | token 1 | … | token block_tokens-1 ]
//! ```
//! One head's keys for a block are contiguous, which is what attention reads.
//!
//! A layer's slot is its index, unless some layers attend over a sliding window
//! ([`KvLayout::with_window`]): then the global layers take the first slots (in model
//! order) and the windowed ones the last, so a block whose windowed layers are no longer
//! needed keeps a prefix of its bytes in every format — a *thin* block
//! ([`KvLayout::thin_geom`]). Everything that indexes a block by layer goes through
//! [`KvLayout::slot`] (attention is handed the slot as its layer).

/// Shape of the cache: fixed for a model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KvLayout {
    n_layers: usize,
    n_kv_heads: usize,
    head_dim: usize,
    block_tokens: usize,
    /// Tokens a windowed layer's query sees (itself included); 0 = no windowed layers.
    window: usize,
    /// Bit `l` set: layer `l` is windowed.
    windowed: [u64; MAX_LAYERS / 64],
    n_windowed: usize,
}

/// Most layers a layout describes.
const MAX_LAYERS: usize = 1024;

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
    #[error("KV layout: {got} windowed-layer flags for {n_layers} layers")]
    WindowedLayers { got: usize, n_layers: usize },
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
            ("n_layers", n_layers, MAX_LAYERS),
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
            window: 0,
            windowed: [0; MAX_LAYERS / 64],
            n_windowed: 0,
        })
    }

    /// The same shape where the layers flagged in `windowed` (one flag per layer) attend
    /// over the last `window` tokens only: their slots move after the global layers', so
    /// the cache can drop them from blocks no query will see again. No flag set: the
    /// layout is unchanged.
    pub fn with_window(mut self, window: usize, windowed: &[bool]) -> Result<Self, LayoutError> {
        if windowed.len() != self.n_layers {
            return Err(LayoutError::WindowedLayers {
                got: windowed.len(),
                n_layers: self.n_layers,
            });
        }
        if window == 0 {
            return Err(LayoutError::OutOfRange {
                field: "window",
                value: 0,
                max: usize::MAX,
            });
        }
        self.windowed = [0; MAX_LAYERS / 64];
        for (l, _) in windowed.iter().enumerate().filter(|(_, w)| **w) {
            self.windowed[l / 64] |= 1 << (l % 64);
        }
        self.n_windowed = windowed.iter().filter(|w| **w).count();
        self.window = if self.n_windowed > 0 { window } else { 0 };
        Ok(self)
    }

    /// The window of the windowed layers, if there are any.
    pub fn window(&self) -> Option<usize> {
        (self.window > 0).then_some(self.window)
    }

    /// Whether `layer` attends over a sliding window.
    pub fn is_windowed(&self, layer: usize) -> bool {
        layer < self.n_layers && self.windowed[layer / 64] >> (layer % 64) & 1 == 1
    }

    /// Layers that see every token (their slots come first).
    pub fn n_global(&self) -> usize {
        self.n_layers - self.n_windowed
    }

    /// Layers that see a window (their slots come last).
    pub fn n_windowed(&self) -> usize {
        self.n_windowed
    }

    /// Windowed layers before `layer`.
    fn windowed_before(&self, layer: usize) -> usize {
        let (word, bit) = (layer / 64, layer % 64);
        let below: u32 = self.windowed[..word].iter().map(|w| w.count_ones()).sum();
        let part = if bit == 0 {
            0
        } else {
            (self.windowed[word] & ((1u64 << bit) - 1)).count_ones()
        };
        (below + part) as usize
    }

    /// Where model layer `layer` sits in a block: global layers first, in order, then
    /// the windowed ones. The identity without windowed layers.
    pub fn slot(&self, layer: usize) -> usize {
        if self.n_windowed == 0 {
            return layer;
        }
        let w = self.windowed_before(layer);
        if self.is_windowed(layer) {
            self.n_global() + w
        } else {
            layer - w
        }
    }

    /// The shape of a thin block: the global layers' slots only.
    pub fn thin_geom(&self) -> kernels::kvquant::BlockGeom {
        kernels::kvquant::BlockGeom {
            n_layers: self.n_global(),
            ..self.geom()
        }
    }

    /// The shape of the windowed layers' slots of a block (bytes a block gives up when it
    /// thins).
    pub fn windowed_geom(&self) -> kernels::kvquant::BlockGeom {
        kernels::kvquant::BlockGeom {
            n_layers: self.n_windowed,
            ..self.geom()
        }
    }

    /// Whether block `b` of a sequence (tokens `b·block_tokens..`) can still be seen by a
    /// windowed layer's query at position `next` or later; always true without windows.
    pub fn window_sees(&self, b: usize, next: usize) -> bool {
        self.window == 0 || (b + 1) * self.block_tokens + self.window > next + 1
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

    /// Offset of layer `layer`'s keys (head 0) inside a block (at its [`KvLayout::slot`]).
    pub fn k_base(&self, layer: usize) -> usize {
        self.slot(layer) * 2 * self.n_kv_heads * self.head_stride()
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
