//! [`GgufWriter`]: writing a GGUF file (version 3) header first, then tensor by tensor.
//!
//! The layout is fixed before any tensor byte is written: every tensor's type and shape
//! decide its size, and the offsets follow from the sizes and the alignment. So the
//! writer streams: the caller hands over one tensor's bytes at a time, in index order,
//! and nothing but the header is held.

use std::borrow::Cow;
use std::io::Write;

use crate::{GgmlType, Shape, ValueType};

/// One metadata pair to write: the key, the value's type and its encoding (what follows
/// the type id in the file; [`MetadataKv::raw_value`](crate::MetadataKv::raw_value)
/// gives it for a pair read from another file).
#[derive(Debug, Clone)]
pub struct KvEntry<'a> {
    pub key: Cow<'a, str>,
    pub value_type: ValueType,
    pub value: Cow<'a, [u8]>,
}

impl<'a> KvEntry<'a> {
    /// A `u32` value.
    pub fn u32(key: &'a str, v: u32) -> Self {
        KvEntry {
            key: Cow::Borrowed(key),
            value_type: ValueType::U32,
            value: Cow::Owned(v.to_le_bytes().to_vec()),
        }
    }
}

/// One tensor to write: its name, shape (ggml order) and type.
#[derive(Debug, Clone)]
pub struct TensorEntry<'a> {
    pub name: Cow<'a, str>,
    pub dims: Vec<u64>,
    pub ggml_type: GgmlType,
}

/// Why a file could not be written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WriteError {
    /// The destination refused bytes (a full disk is `StorageFull`).
    #[error("writing the GGUF file failed: {0}")]
    Io(#[from] std::io::Error),
    /// A tensor's shape is empty, too deep, has a zero dimension, or its first dimension
    /// is not a whole number of its type's blocks.
    #[error("tensor '{name}': shape {dims:?} cannot be stored as {ggml_type}")]
    BadShape {
        name: String,
        dims: Vec<u64>,
        ggml_type: GgmlType,
    },
    /// The alignment is zero or not a power of two.
    #[error("alignment {0} is not a power of two")]
    BadAlignment(u64),
    /// A tensor's bytes are not the size its type and shape give.
    #[error("tensor '{name}': got {got} bytes, its type and shape need {expected}")]
    WrongSize {
        name: String,
        expected: u64,
        got: u64,
    },
    /// More tensors written than the header lists, or fewer before `finish`.
    #[error("the header lists {listed} tensors but {written} were written")]
    Count { listed: usize, written: usize },
}

/// A GGUF file being written: the header is out, tensors follow in index order.
///
/// # Invariants
/// `written ≤ sizes.len()`; `pos` is the number of bytes written so far, and the next
/// tensor starts at the next multiple of `alignment` from the data section's start.
pub struct GgufWriter<W: Write> {
    out: W,
    alignment: u64,
    names: Vec<String>,
    sizes: Vec<u64>,
    written: usize,
    /// Bytes of tensor `written` handed over so far (by [`GgufWriter::write_tensor_part`]).
    part: u64,
    pos: u64,
}

fn string(buf: &mut Vec<u8>, s: &str) {
    buf.extend_from_slice(&(s.len() as u64).to_le_bytes());
    buf.extend_from_slice(s.as_bytes());
}

fn padding(pos: u64, alignment: u64) -> u64 {
    pos.next_multiple_of(alignment) - pos
}

impl<W: Write> GgufWriter<W> {
    /// Writes the header (metadata and tensor index) to `out`. Tensor data is aligned to
    /// `alignment` (pass the file's `general.alignment`, or
    /// [`DEFAULT_ALIGNMENT`](crate::DEFAULT_ALIGNMENT)).
    pub fn new(
        mut out: W,
        metadata: &[KvEntry<'_>],
        tensors: &[TensorEntry<'_>],
        alignment: u64,
    ) -> Result<Self, WriteError> {
        if alignment == 0 || !alignment.is_power_of_two() {
            return Err(WriteError::BadAlignment(alignment));
        }
        let mut head = Vec::new();
        head.extend_from_slice(b"GGUF");
        head.extend_from_slice(&3u32.to_le_bytes());
        head.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
        head.extend_from_slice(&(metadata.len() as u64).to_le_bytes());
        for kv in metadata {
            string(&mut head, &kv.key);
            head.extend_from_slice(&kv.value_type.id().to_le_bytes());
            head.extend_from_slice(&kv.value);
        }
        let mut sizes = Vec::with_capacity(tensors.len());
        let mut offset = 0u64;
        for t in tensors {
            let size = tensor_bytes(t)?;
            string(&mut head, &t.name);
            head.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
            for d in &t.dims {
                head.extend_from_slice(&d.to_le_bytes());
            }
            head.extend_from_slice(&t.ggml_type.id().to_le_bytes());
            head.extend_from_slice(&offset.to_le_bytes());
            offset += size;
            offset += padding(offset, alignment);
            sizes.push(size);
        }
        let pad = padding(head.len() as u64, alignment);
        head.resize(head.len() + pad as usize, 0);
        out.write_all(&head)?;
        Ok(GgufWriter {
            out,
            alignment,
            names: tensors.iter().map(|t| t.name.to_string()).collect(),
            sizes,
            written: 0,
            part: 0,
            pos: 0,
        })
    }

    /// The bytes tensor `i` of the index takes.
    pub fn tensor_size(&self, i: usize) -> Option<u64> {
        self.sizes.get(i).copied()
    }

    /// Writes the next tensor's bytes (and the padding after them).
    pub fn write_tensor(&mut self, data: &[u8]) -> Result<(), WriteError> {
        let expected = self.expected()?;
        if self.part != 0 || data.len() as u64 != expected {
            return Err(self.wrong_size(expected, self.part + data.len() as u64));
        }
        self.write_tensor_part(data)
    }

    /// Writes the next piece of the current tensor; the padding follows once the tensor's
    /// last byte is written. Lets a caller produce a large tensor a chunk at a time.
    pub fn write_tensor_part(&mut self, data: &[u8]) -> Result<(), WriteError> {
        let expected = self.expected()?;
        let now = self.part + data.len() as u64;
        if now > expected {
            return Err(self.wrong_size(expected, now));
        }
        self.out.write_all(data)?;
        self.part = now;
        self.pos += data.len() as u64;
        if now == expected {
            let pad = padding(self.pos, self.alignment);
            self.out.write_all(&vec![0u8; pad as usize])?;
            self.pos += pad;
            self.written += 1;
            self.part = 0;
        }
        Ok(())
    }

    fn expected(&self) -> Result<u64, WriteError> {
        self.sizes
            .get(self.written)
            .copied()
            .ok_or(WriteError::Count {
                listed: self.sizes.len(),
                written: self.written + 1,
            })
    }

    fn wrong_size(&self, expected: u64, got: u64) -> WriteError {
        WriteError::WrongSize {
            name: self.names[self.written].clone(),
            expected,
            got,
        }
    }

    /// Checks that every listed tensor was written, flushes, and returns the destination.
    pub fn finish(mut self) -> Result<W, WriteError> {
        if self.written != self.sizes.len() {
            return Err(WriteError::Count {
                listed: self.sizes.len(),
                written: self.written,
            });
        }
        self.out.flush()?;
        Ok(self.out)
    }
}

/// The bytes of `t`, refusing a shape its type cannot store.
fn tensor_bytes(t: &TensorEntry<'_>) -> Result<u64, WriteError> {
    let bad = || WriteError::BadShape {
        name: t.name.to_string(),
        dims: t.dims.clone(),
        ggml_type: t.ggml_type,
    };
    let shape = Shape::new(&t.dims).ok_or_else(bad)?;
    if t.dims.contains(&0) || !t.dims[0].is_multiple_of(t.ggml_type.block_size()) {
        return Err(bad());
    }
    t.ggml_type.bytes_for(shape.n_elements()).ok_or_else(bad)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::GgufFile;

    fn entry(name: &str, dims: &[u64], t: GgmlType) -> TensorEntry<'static> {
        TensorEntry {
            name: Cow::Owned(name.to_string()),
            dims: dims.to_vec(),
            ggml_type: t,
        }
    }

    #[test]
    fn written_file_parses_back_with_the_same_metadata_tensors_and_alignment() {
        let src = testkit::GgufWriter::new()
            .metadata("general.architecture", testkit::MetaValue::string("llama"))
            .metadata(
                "tokenizer.ggml.tokens",
                testkit::MetaValue::strings(["a", "bc"]),
            )
            .tensor("a", 0, &[3], vec![1; 12])
            .to_bytes();
        let src = GgufFile::parse(&src).unwrap();
        let mut kvs: Vec<KvEntry<'_>> = src
            .metadata()
            .iter()
            .map(|kv| KvEntry {
                key: Cow::Borrowed(kv.key()),
                value_type: kv.value().value_type(),
                value: Cow::Borrowed(kv.raw_value()),
            })
            .collect();
        kvs.push(KvEntry::u32("general.file_type", 7));
        let tensors = [
            entry("a", &[3], GgmlType::F32),
            entry("b", &[32, 2], GgmlType::Q8_0),
        ];
        let mut w = GgufWriter::new(Vec::new(), &kvs, &tensors, 64).unwrap();
        w.write_tensor(&[1; 12]).unwrap();
        w.write_tensor_part(&[2; 60]).unwrap();
        w.write_tensor_part(&[2; 8]).unwrap();
        let bytes = w.finish().unwrap();
        let f = GgufFile::parse(&bytes).unwrap();
        let tokens: Vec<&str> = f
            .get_array("tokenizer.ggml.tokens")
            .unwrap()
            .iter_str()
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(tokens, ["a", "bc"]);
        assert_eq!(f.get_u32("general.file_type").unwrap(), 7);
        let b = f.tensor("b").unwrap();
        assert_eq!((b.ggml_type(), b.dims()), (GgmlType::Q8_0, &[32, 2][..]));
        assert_eq!(f.tensor_data(b), &[2u8; 68][..]);
        assert_eq!(f.data_offset() % 64, 0);
        assert_eq!(b.offset() % 64, 0);
    }

    #[test]
    fn wrong_sizes_counts_and_shapes_are_refused() {
        let t = [entry("q", &[32], GgmlType::Q4_0)];
        let mut w = GgufWriter::new(Vec::new(), &[], &t, 32).unwrap();
        assert!(matches!(
            w.write_tensor(&[0; 17]),
            Err(WriteError::WrongSize { expected: 18, .. })
        ));
        let w = GgufWriter::new(Vec::new(), &[], &t, 32).unwrap();
        assert!(matches!(
            w.finish(),
            Err(WriteError::Count {
                listed: 1,
                written: 0
            })
        ));
        let bad = [entry("q", &[33], GgmlType::Q4_0)];
        assert!(matches!(
            GgufWriter::new(Vec::new(), &[], &bad, 32),
            Err(WriteError::BadShape { .. })
        ));
        assert!(matches!(
            GgufWriter::new(Vec::new(), &[], &t, 24),
            Err(WriteError::BadAlignment(24))
        ));
    }
}
