//! The one error type of GGUF parsing and metadata look-ups.

use crate::GgmlType;

/// Why a GGUF file was refused, or why a metadata look-up failed.
///
/// Every parse error names the field it stopped at, in a path such as
/// `tensor[12].dims[1] ('blk.0.attn_q.weight')` or
/// `metadata key 'tokenizer.ggml.tokens' value[3]`, and the absolute byte offset in the
/// file where that field starts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum GgufError {
    /// The file ends (or a declared count cannot fit in what is left) inside a field.
    #[error("{field} at byte {offset}: needs {needed} bytes but only {available} remain")]
    Truncated {
        field: String,
        offset: u64,
        needed: u64,
        available: u64,
    },
    /// The first four bytes are not `GGUF`.
    #[error("header.magic at byte 0: expected \"GGUF\", found {found:02x?}: not a GGUF file")]
    BadMagic { found: [u8; 4] },
    /// A version other than 2 or 3.
    #[error(
        "header.version at byte 4: GGUF version {version} is not supported; this reader \
         handles versions 2 and 3 (version 1 used 32-bit counts and predates August 2023: \
         re-convert the model with a current llama.cpp)"
    )]
    UnsupportedVersion { version: u32 },
    /// The version reads as 2 or 3 only when byte-swapped: a big-endian file.
    #[error(
        "header.version at byte 4: this is a big-endian GGUF file (version {version}); only \
         little-endian files are supported"
    )]
    BigEndian { version: u32 },
    /// A length, count, dimension or depth above its cap in [`Limits`](crate::Limits).
    #[error("{field} at byte {offset}: {value} exceeds Limits::{limit_name} = {limit}")]
    LimitExceeded {
        field: String,
        offset: u64,
        value: u64,
        limit: u64,
        limit_name: &'static str,
    },
    /// A key, tensor name or requested string is not UTF-8.
    #[error("{field} at byte {offset}: invalid UTF-8 after {valid_up_to} bytes")]
    InvalidUtf8 {
        field: String,
        offset: u64,
        valid_up_to: u64,
    },
    /// A metadata value type id outside 0..=12.
    #[error("{field} at byte {offset}: unknown metadata value type {raw}")]
    UnknownValueType {
        field: String,
        offset: u64,
        raw: u32,
    },
    /// A ggml type id that is retired or unknown.
    #[error("{field} at byte {offset}: unknown or retired ggml type id {raw}")]
    UnknownGgmlType {
        field: String,
        offset: u64,
        raw: u32,
    },
    /// A bool byte other than 0 or 1.
    #[error("{field} at byte {offset}: bool byte is {raw}, expected 0 or 1")]
    InvalidBool { field: String, offset: u64, raw: u8 },
    /// The same metadata key twice.
    #[error("metadata key '{key}' at byte {offset}: duplicate of the key at byte {first_offset}")]
    DuplicateKey {
        key: String,
        offset: u64,
        first_offset: u64,
    },
    /// The same tensor name twice.
    #[error(
        "{field} at byte {offset}: duplicate tensor name '{name}', first used by tensor[{first_index}]"
    )]
    DuplicateTensor {
        field: String,
        offset: u64,
        name: String,
        first_index: u64,
    },
    /// A tensor dimension of zero.
    #[error("{field} at byte {offset}: dimension is {value}, must be at least 1")]
    InvalidDim {
        field: String,
        offset: u64,
        value: u64,
    },
    /// The element count or byte size of a tensor overflows `u64`.
    #[error("{field} at byte {offset}: the product of the dimensions overflows u64")]
    ShapeOverflow { field: String, offset: u64 },
    /// The first dimension of a quantized tensor is not a whole number of blocks.
    #[error(
        "{field} at byte {offset}: first dimension {ne0} is not a multiple of the \
         {ggml_type} block size {block_size}"
    )]
    NotBlockMultiple {
        field: String,
        offset: u64,
        ne0: u64,
        ggml_type: GgmlType,
        block_size: u64,
    },
    /// `general.alignment` is zero or not a power of two.
    #[error("{field} at byte {offset}: alignment {value} {reason}")]
    InvalidAlignment {
        field: String,
        offset: u64,
        value: u64,
        reason: &'static str,
    },
    /// A tensor offset that is not a multiple of the alignment.
    #[error(
        "{field} at byte {offset}: tensor offset {tensor_offset} is not a multiple of the alignment {alignment}"
    )]
    TensorMisaligned {
        field: String,
        offset: u64,
        tensor_offset: u64,
        alignment: u64,
    },
    /// Tensor data that does not lie inside the file.
    #[error(
        "{field} at byte {offset}: tensor data at data section + {tensor_offset} spans \
         {size_bytes} bytes, past the end of the {file_len}-byte file (data section starts \
         at byte {data_offset})"
    )]
    TensorOutOfBounds {
        field: String,
        offset: u64,
        tensor_offset: u64,
        size_bytes: u64,
        data_offset: u64,
        file_len: u64,
    },
    /// Two tensors whose data ranges overlap.
    #[error("{field} at byte {offset}: tensor data overlaps that of '{other}'")]
    TensorOverlap {
        field: String,
        offset: u64,
        other: String,
    },
    /// A required metadata key is absent.
    #[error("metadata key '{key}' is missing")]
    MissingKey { key: String },
    /// A metadata value (or array element) of another type than asked for.
    #[error("{field} at byte {offset}: expected {expected}, found {found}")]
    WrongType {
        field: String,
        offset: u64,
        expected: &'static str,
        found: &'static str,
    },
    /// An integer value that does not fit the requested type.
    #[error("{field} at byte {offset}: value {value} does not fit in {target}")]
    OutOfRange {
        field: String,
        offset: u64,
        value: i128,
        target: &'static str,
    },
    /// An array index past the end.
    #[error("{field} at byte {offset}: index {index} is out of bounds for length {len}")]
    IndexOutOfBounds {
        field: String,
        offset: u64,
        index: u64,
        len: u64,
    },
}

impl GgufError {
    /// The absolute byte offset the error points at, where it has one.
    pub fn offset(&self) -> Option<u64> {
        match self {
            Self::BadMagic { .. } => Some(0),
            Self::UnsupportedVersion { .. } | Self::BigEndian { .. } => Some(4),
            Self::MissingKey { .. } => None,
            Self::Truncated { offset, .. }
            | Self::LimitExceeded { offset, .. }
            | Self::InvalidUtf8 { offset, .. }
            | Self::UnknownValueType { offset, .. }
            | Self::UnknownGgmlType { offset, .. }
            | Self::InvalidBool { offset, .. }
            | Self::DuplicateKey { offset, .. }
            | Self::DuplicateTensor { offset, .. }
            | Self::InvalidDim { offset, .. }
            | Self::ShapeOverflow { offset, .. }
            | Self::NotBlockMultiple { offset, .. }
            | Self::InvalidAlignment { offset, .. }
            | Self::TensorMisaligned { offset, .. }
            | Self::TensorOutOfBounds { offset, .. }
            | Self::TensorOverlap { offset, .. }
            | Self::WrongType { offset, .. }
            | Self::OutOfRange { offset, .. }
            | Self::IndexOutOfBounds { offset, .. } => Some(*offset),
        }
    }
}
