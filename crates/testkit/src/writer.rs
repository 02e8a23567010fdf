//! [`GgufWriter`]: builds valid GGUF v2/v3 files, and reports where every field landed so
//! tests can corrupt exactly one of them.
//!
//! ```text
//! 0    "GGUF"                      magic
//! 4    version: u32                2 or 3
//! 8    tensor_count: u64
//! 16   metadata_kv_count: u64
//! 24   metadata_kv_count × ( key: u64 len | bytes, type: u32, value )
//!      tensor_count × ( name: u64 len | bytes, n_dims: u32, n_dims × u64, type: u32,
//!                       offset: u64 from data section start )
//!      zero padding to `alignment`
//! data tensor 0 bytes | zero padding | tensor 1 bytes | …  (each offset aligned)
//! ```
//! All integers little-endian.

use std::io;
use std::path::Path;

/// A metadata value to write, of any GGUF type.
#[derive(Debug, Clone, PartialEq)]
pub enum MetaValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    /// Raw bytes: GGUF strings are not required to be UTF-8 by the writer.
    String(Vec<u8>),
    Array(MetaArray),
}

impl MetaValue {
    /// A string value.
    pub fn string(s: impl AsRef<[u8]>) -> Self {
        MetaValue::String(s.as_ref().to_vec())
    }

    /// An array of strings.
    pub fn strings<I>(items: I) -> Self
    where
        I: IntoIterator,
        I::Item: AsRef<[u8]>,
    {
        MetaValue::Array(MetaArray::String(
            items.into_iter().map(|s| s.as_ref().to_vec()).collect(),
        ))
    }

    /// The GGUF type id.
    pub fn type_id(&self) -> u32 {
        match self {
            MetaValue::U8(_) => 0,
            MetaValue::I8(_) => 1,
            MetaValue::U16(_) => 2,
            MetaValue::I16(_) => 3,
            MetaValue::U32(_) => 4,
            MetaValue::I32(_) => 5,
            MetaValue::F32(_) => 6,
            MetaValue::Bool(_) => 7,
            MetaValue::String(_) => 8,
            MetaValue::Array(_) => 9,
            MetaValue::U64(_) => 10,
            MetaValue::I64(_) => 11,
            MetaValue::F64(_) => 12,
        }
    }

    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            MetaValue::U8(v) => out.push(*v),
            MetaValue::I8(v) => out.extend(v.to_le_bytes()),
            MetaValue::U16(v) => out.extend(v.to_le_bytes()),
            MetaValue::I16(v) => out.extend(v.to_le_bytes()),
            MetaValue::U32(v) => out.extend(v.to_le_bytes()),
            MetaValue::I32(v) => out.extend(v.to_le_bytes()),
            MetaValue::U64(v) => out.extend(v.to_le_bytes()),
            MetaValue::I64(v) => out.extend(v.to_le_bytes()),
            MetaValue::F32(v) => out.extend(v.to_le_bytes()),
            MetaValue::F64(v) => out.extend(v.to_le_bytes()),
            MetaValue::Bool(v) => out.push(u8::from(*v)),
            MetaValue::String(s) => put_string(out, s),
            MetaValue::Array(a) => a.encode(out),
        }
    }
}

/// An array value: every element of one type; arrays of arrays may mix inner types.
#[derive(Debug, Clone, PartialEq)]
pub enum MetaArray {
    U8(Vec<u8>),
    I8(Vec<i8>),
    U16(Vec<u16>),
    I16(Vec<i16>),
    U32(Vec<u32>),
    I32(Vec<i32>),
    U64(Vec<u64>),
    I64(Vec<i64>),
    F32(Vec<f32>),
    F64(Vec<f64>),
    Bool(Vec<bool>),
    String(Vec<Vec<u8>>),
    Array(Vec<MetaArray>),
}

impl MetaArray {
    /// The GGUF type id of the elements.
    pub fn elem_type_id(&self) -> u32 {
        match self {
            MetaArray::U8(_) => 0,
            MetaArray::I8(_) => 1,
            MetaArray::U16(_) => 2,
            MetaArray::I16(_) => 3,
            MetaArray::U32(_) => 4,
            MetaArray::I32(_) => 5,
            MetaArray::F32(_) => 6,
            MetaArray::Bool(_) => 7,
            MetaArray::String(_) => 8,
            MetaArray::Array(_) => 9,
            MetaArray::U64(_) => 10,
            MetaArray::I64(_) => 11,
            MetaArray::F64(_) => 12,
        }
    }

    /// The number of elements.
    pub fn len(&self) -> usize {
        match self {
            MetaArray::U8(v) => v.len(),
            MetaArray::I8(v) => v.len(),
            MetaArray::U16(v) => v.len(),
            MetaArray::I16(v) => v.len(),
            MetaArray::U32(v) => v.len(),
            MetaArray::I32(v) => v.len(),
            MetaArray::U64(v) => v.len(),
            MetaArray::I64(v) => v.len(),
            MetaArray::F32(v) => v.len(),
            MetaArray::F64(v) => v.len(),
            MetaArray::Bool(v) => v.len(),
            MetaArray::String(v) => v.len(),
            MetaArray::Array(v) => v.len(),
        }
    }

    /// Whether the array has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn encode(&self, out: &mut Vec<u8>) {
        out.extend(self.elem_type_id().to_le_bytes());
        out.extend((self.len() as u64).to_le_bytes());
        fn all<T, const N: usize>(out: &mut Vec<u8>, v: &[T], f: impl Fn(&T) -> [u8; N]) {
            v.iter().for_each(|x| out.extend(f(x)));
        }
        match self {
            MetaArray::U8(v) => out.extend(v),
            MetaArray::I8(v) => all(out, v, |x| x.to_le_bytes()),
            MetaArray::U16(v) => all(out, v, |x| x.to_le_bytes()),
            MetaArray::I16(v) => all(out, v, |x| x.to_le_bytes()),
            MetaArray::U32(v) => all(out, v, |x| x.to_le_bytes()),
            MetaArray::I32(v) => all(out, v, |x| x.to_le_bytes()),
            MetaArray::U64(v) => all(out, v, |x| x.to_le_bytes()),
            MetaArray::I64(v) => all(out, v, |x| x.to_le_bytes()),
            MetaArray::F32(v) => all(out, v, |x| x.to_le_bytes()),
            MetaArray::F64(v) => all(out, v, |x| x.to_le_bytes()),
            MetaArray::Bool(v) => all(out, v, |x| [u8::from(*x)]),
            MetaArray::String(v) => v.iter().for_each(|s| put_string(out, s)),
            MetaArray::Array(v) => v.iter().for_each(|a| a.encode(out)),
        }
    }
}

fn put_string(out: &mut Vec<u8>, s: &[u8]) {
    out.extend((s.len() as u64).to_le_bytes());
    out.extend(s);
}

/// One tensor to write: its bytes are written as given, not checked against the type.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorSpec {
    pub name: Vec<u8>,
    /// ggml type id (see [`crate::ggml`]).
    pub ggml_type: u32,
    /// ggml order: ne0 first.
    pub dims: Vec<u64>,
    pub data: Vec<u8>,
}

/// Where each field of a written file is, so a test can patch one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Layout {
    pub version_at: usize,
    pub tensor_count_at: usize,
    pub metadata_count_at: usize,
    pub metadata: Vec<KvLayout>,
    pub tensors: Vec<TensorLayout>,
    /// Start of the data section.
    pub data_offset: usize,
}

/// Field positions of one metadata pair.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KvLayout {
    /// The key's u64 length prefix.
    pub key_len_at: usize,
    pub type_at: usize,
    /// The value: for a string its u64 length, for an array its u32 element type (the
    /// u64 length follows at `value_at + 4`).
    pub value_at: usize,
    /// One past the value's last byte.
    pub end: usize,
}

/// Field positions of one tensor-info record and its data.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TensorLayout {
    pub name_len_at: usize,
    pub n_dims_at: usize,
    /// The first dimension; the others follow at 8-byte steps.
    pub dims_at: usize,
    pub type_at: usize,
    pub offset_at: usize,
    /// Absolute position of the tensor's bytes.
    pub data_at: usize,
}

/// Builds a GGUF file in memory.
///
/// `alignment` pads the data section and every tensor. [`GgufWriter::alignment`] also
/// records it under `general.alignment`; writing that key by hand with
/// [`GgufWriter::metadata`] instead records any value, however wrong, while padding
/// stays at the writer's alignment: that is how tests make hostile alignments.
#[derive(Debug, Clone, PartialEq)]
pub struct GgufWriter {
    version: u32,
    alignment: u64,
    metadata: Vec<(Vec<u8>, MetaValue)>,
    tensors: Vec<TensorSpec>,
}

impl Default for GgufWriter {
    fn default() -> Self {
        Self::new()
    }
}

impl GgufWriter {
    /// An empty version-3 file with the default alignment of 32.
    pub fn new() -> Self {
        Self {
            version: 3,
            alignment: 32,
            metadata: Vec::new(),
            tensors: Vec::new(),
        }
    }

    /// Writes `version` in the header (the layout of versions 2 and 3 is the same).
    pub fn version(mut self, version: u32) -> Self {
        self.version = version;
        self
    }

    /// Aligns tensor data to `alignment` (0 counts as 1) and records it as a u32
    /// `general.alignment` pair (u64 if it does not fit).
    pub fn alignment(mut self, alignment: u64) -> Self {
        self.alignment = alignment.max(1);
        let value = match u32::try_from(alignment) {
            Ok(v) => MetaValue::U32(v),
            Err(_) => MetaValue::U64(alignment),
        };
        self.metadata(b"general.alignment", value)
    }

    /// Appends a metadata pair; keys are not deduplicated.
    pub fn metadata(mut self, key: impl AsRef<[u8]>, value: MetaValue) -> Self {
        self.metadata.push((key.as_ref().to_vec(), value));
        self
    }

    /// Appends a tensor.
    pub fn tensor(
        mut self,
        name: impl AsRef<[u8]>,
        ggml_type: u32,
        dims: &[u64],
        data: Vec<u8>,
    ) -> Self {
        self.tensors.push(TensorSpec {
            name: name.as_ref().to_vec(),
            ggml_type,
            dims: dims.to_vec(),
            data,
        });
        self
    }

    /// The file's bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.to_bytes_with_layout().0
    }

    /// The file's bytes and where every field is.
    pub fn to_bytes_with_layout(&self) -> (Vec<u8>, Layout) {
        let mut out = Vec::new();
        let mut layout = Layout {
            version_at: 4,
            tensor_count_at: 8,
            metadata_count_at: 16,
            ..Layout::default()
        };
        out.extend(b"GGUF");
        out.extend(self.version.to_le_bytes());
        out.extend((self.tensors.len() as u64).to_le_bytes());
        out.extend((self.metadata.len() as u64).to_le_bytes());
        for (key, value) in &self.metadata {
            let key_len_at = out.len();
            put_string(&mut out, key);
            let type_at = out.len();
            out.extend(value.type_id().to_le_bytes());
            let value_at = out.len();
            value.encode(&mut out);
            layout.metadata.push(KvLayout {
                key_len_at,
                type_at,
                value_at,
                end: out.len(),
            });
        }
        let align = self.alignment.max(1) as usize;
        let mut offset = 0usize;
        let mut relative = Vec::with_capacity(self.tensors.len());
        for t in &self.tensors {
            let name_len_at = out.len();
            put_string(&mut out, &t.name);
            let n_dims_at = out.len();
            out.extend((t.dims.len() as u32).to_le_bytes());
            let dims_at = out.len();
            t.dims.iter().for_each(|d| out.extend(d.to_le_bytes()));
            let type_at = out.len();
            out.extend(t.ggml_type.to_le_bytes());
            let offset_at = out.len();
            out.extend((offset as u64).to_le_bytes());
            relative.push(offset);
            layout.tensors.push(TensorLayout {
                name_len_at,
                n_dims_at,
                dims_at,
                type_at,
                offset_at,
                data_at: 0,
            });
            offset = (offset + t.data.len()).next_multiple_of(align);
        }
        out.resize(out.len().next_multiple_of(align), 0);
        layout.data_offset = out.len();
        for ((t, rel), tl) in self.tensors.iter().zip(relative).zip(&mut layout.tensors) {
            tl.data_at = layout.data_offset + rel;
            out.resize(tl.data_at, 0);
            out.extend(&t.data);
        }
        if !self.tensors.is_empty() {
            out.resize(out.len().next_multiple_of(align), 0);
        }
        (out, layout)
    }

    /// Writes the file to `path`.
    pub fn write_to(&self, path: &Path) -> io::Result<()> {
        std::fs::write(path, self.to_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_points_at_fields() {
        let w = GgufWriter::new()
            .metadata("k", MetaValue::U32(7))
            .metadata("s", MetaValue::strings(["ab", "c"]))
            .tensor("t0", 0, &[3], vec![1; 12])
            .tensor("t1", 0, &[2, 2], vec![2; 16]);
        let (b, l) = w.to_bytes_with_layout();
        assert_eq!(&b[..4], b"GGUF");
        assert_eq!(b[l.tensor_count_at], 2);
        assert_eq!(b[l.metadata_count_at], 2);
        assert_eq!(b[l.metadata[0].value_at], 7);
        assert_eq!(b[l.metadata[1].value_at], 8);
        assert_eq!(b[l.metadata[1].value_at + 4], 2);
        assert_eq!(l.data_offset % 32, 0);
        assert_eq!(b[l.tensors[1].n_dims_at], 2);
        assert_eq!(b[l.tensors[1].offset_at], 32);
        assert_eq!(&b[l.tensors[0].data_at..][..12], &[1; 12]);
        assert_eq!(&b[l.tensors[1].data_at..][..16], &[2; 16]);
        assert_eq!(b.len(), l.tensors[1].data_at + 32);
    }
}
