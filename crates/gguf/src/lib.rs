//! `gguf` reads GGUF model files (versions 2 and 3, little-endian) straight from a byte
//! slice, without copying and without trusting a single length in them, and writes them
//! ([`GgufWriter`], version 3, streamed tensor by tensor).
//!
//! The caller maps or reads the file; [`GgufFile::parse`] borrows the bytes and returns:
//!
//! - the metadata, as [`MetadataKv`] pairs whose [`Value`]s are decoded scalars or views:
//!   strings are `&[u8]` into the file and arrays are lazy [`ArrayView`]s with typed,
//!   alignment-free iterators ([`ArrayView::iter_str`], [`ArrayView::iter_f32`], …);
//! - the tensor index, as [`TensorInfo`] entries ([`Shape`], [`GgmlType`], offset, size)
//!   whose bytes [`TensorInfo::data`] returns in place.
//!
//! Everything is validated once, during the parse: every string and array length against
//! the [`Limits`] caps and the bytes left, every nested array, every tensor's shape, type,
//! alignment and range. A hostile file costs at most time and memory linear in its size,
//! and gets an error ([`GgufError`]) naming the field (`tensor[12].dims[1]`,
//! `metadata key 'tokenizer.ggml.tokens' value[3]`) and its byte offset. There is no
//! `unsafe` code: all reads are checked slicing.
//!
//! Mapping files is not this crate's job (the `weights` crate maps and pins them).
//!
//! ```
//! # fn main() -> Result<(), gguf::GgufError> {
//! # let bytes = testkit::GgufWriter::new()
//! #     .metadata("general.architecture", testkit::MetaValue::string("llama"))
//! #     .metadata("llama.block_count", testkit::MetaValue::U32(2))
//! #     .metadata("tokenizer.ggml.tokens", testkit::MetaValue::strings(["a", "b"]))
//! #     .tensor("output_norm.weight", 0, &[4], vec![0; 16])
//! #     .to_bytes();
//! let file = gguf::GgufFile::parse(&bytes)?;
//! assert_eq!(file.get_str("general.architecture")?, "llama");
//! assert_eq!(file.get_u32("llama.block_count")?, 2);
//! let tokens: Vec<&str> =
//!     file.get_array("tokenizer.ggml.tokens")?.iter_str()?.collect::<Result<_, _>>()?;
//! assert_eq!(tokens, ["a", "b"]);
//! let norm = file.tensor("output_norm.weight").expect("present");
//! assert_eq!((norm.ggml_type(), norm.dims()), (gguf::GgmlType::F32, &[4][..]));
//! assert_eq!(file.tensor_data(norm).len(), 16);
//! # Ok(())
//! # }
//! ```

#![forbid(unsafe_code)]

mod error;
mod file;
mod ggml_type;
mod limits;
mod reader;
mod tensor;
mod value;
mod writer;

pub use error::GgufError;
pub use file::{ALIGNMENT_KEY, DEFAULT_ALIGNMENT, GgufFile, MetadataKv};
pub use ggml_type::GgmlType;
pub use limits::{
    Limits, MAX_ALIGNMENT, MAX_ARRAY_LEN, MAX_DIMS, MAX_METADATA_COUNT, MAX_NESTING_DEPTH,
    MAX_STRING_BYTES, MAX_TENSOR_COUNT,
};
pub use tensor::{Shape, TensorInfo};
pub use value::{ArrayElement, ArrayView, Scalars, StringBytes, Strs, Value, ValueType, Values};
pub use writer::{GgufWriter, KvEntry, TensorEntry, WriteError};
