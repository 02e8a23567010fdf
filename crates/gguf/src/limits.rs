//! Hard caps on every length, count, dimension and depth a GGUF file may declare.

/// Default cap on one string's length: 1 MiB. Chat templates, the longest strings in
/// real files, are tens of KiB.
pub const MAX_STRING_BYTES: u64 = 1 << 20;
/// Default cap on one array's element count: 16 Mi. Vocabularies are ~150k entries and
/// merge lists a few hundred thousand.
pub const MAX_ARRAY_LEN: u64 = 1 << 24;
/// Default cap on the number of metadata key-value pairs (real files carry ~50).
pub const MAX_METADATA_COUNT: u64 = 1 << 16;
/// Default cap on the number of tensors (a 400B-parameter model has a few thousand).
pub const MAX_TENSOR_COUNT: u64 = 65_536;
/// Default and largest number of dimensions of a tensor (ggml's `GGML_MAX_DIMS`).
pub const MAX_DIMS: u32 = 4;
/// Default cap on array nesting: 1 is an array of scalars or strings, 2 an array of
/// arrays. No known writer goes past 2; a deep nest is an attack on the parser.
pub const MAX_NESTING_DEPTH: u32 = 3;
/// Default cap on `general.alignment`: 1 MiB, above every page size in use.
pub const MAX_ALIGNMENT: u64 = 1 << 20;

/// The caps a parse enforces. Values come from the file, so each cap bounds both the
/// work and the memory a hostile file can cost.
///
/// Override single caps with struct update syntax:
///
/// ```
/// let limits = gguf::Limits { max_tensor_count: 10, ..gguf::Limits::DEFAULT };
/// assert_eq!(limits.max_string_bytes, gguf::MAX_STRING_BYTES);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Longest string (key, value, tensor name or array element), in bytes.
    pub max_string_bytes: u64,
    /// Most elements in one array, at any nesting level.
    pub max_array_len: u64,
    /// Most metadata key-value pairs.
    pub max_metadata_count: u64,
    /// Most tensors.
    pub max_tensor_count: u64,
    /// Most dimensions of one tensor; values above [`MAX_DIMS`] act as [`MAX_DIMS`],
    /// since a [`Shape`](crate::Shape) holds at most four.
    pub max_dims: u32,
    /// Deepest array nesting (1 = a flat array).
    pub max_nesting_depth: u32,
    /// Largest `general.alignment`.
    pub max_alignment: u64,
}

impl Limits {
    /// The defaults: the `MAX_*` constants of this crate.
    pub const DEFAULT: Limits = Limits {
        max_string_bytes: MAX_STRING_BYTES,
        max_array_len: MAX_ARRAY_LEN,
        max_metadata_count: MAX_METADATA_COUNT,
        max_tensor_count: MAX_TENSOR_COUNT,
        max_dims: MAX_DIMS,
        max_nesting_depth: MAX_NESTING_DEPTH,
        max_alignment: MAX_ALIGNMENT,
    };

    /// No caps beyond what the bytes themselves bound. Used to re-walk values that a
    /// parse already validated; every count is still checked against the bytes left.
    pub(crate) const NONE: Limits = Limits {
        max_string_bytes: u64::MAX,
        max_array_len: u64::MAX,
        max_metadata_count: u64::MAX,
        max_tensor_count: u64::MAX,
        max_dims: MAX_DIMS,
        max_nesting_depth: u32::MAX,
        max_alignment: u64::MAX,
    };
}

impl Default for Limits {
    fn default() -> Self {
        Self::DEFAULT
    }
}
