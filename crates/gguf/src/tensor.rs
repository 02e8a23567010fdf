//! The tensor index: shapes, types and where each tensor's bytes are.

use std::fmt;

use crate::GgmlType;
use crate::limits::MAX_DIMS;

/// A tensor shape in ggml order: `dims()[0]` (ne0) is the innermost, contiguous
/// dimension, so a matrix `[n_in, n_out]` stores `n_out` rows of `n_in` elements.
///
/// # Invariants
/// At most 4 dimensions, each at least 1, and their product fits in `u64`. Unused
/// trailing entries of the backing array are 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Shape {
    dims: [u64; 4],
    n_dims: u8,
    n_elements: u64,
}

impl Shape {
    /// A shape from ggml-order dimensions; `None` if there are more than 4, one is zero,
    /// or their product overflows `u64`.
    pub fn new(dims: &[u64]) -> Option<Shape> {
        if dims.len() > MAX_DIMS as usize {
            return None;
        }
        let mut shape = Shape {
            dims: [1; 4],
            n_dims: dims.len() as u8,
            n_elements: 1,
        };
        for (slot, &d) in shape.dims.iter_mut().zip(dims) {
            if d == 0 {
                return None;
            }
            *slot = d;
            shape.n_elements = shape.n_elements.checked_mul(d)?;
        }
        Some(shape)
    }

    /// The dimensions, ggml order (ne0 first).
    pub fn dims(&self) -> &[u64] {
        &self.dims[..usize::from(self.n_dims)]
    }

    /// The number of dimensions (0 to 4; 0 is a scalar).
    pub fn n_dims(&self) -> usize {
        usize::from(self.n_dims)
    }

    /// The dimensions padded with 1 to four entries, as ggml's `ne` array.
    pub fn ne(&self) -> [u64; 4] {
        self.dims
    }

    /// The product of the dimensions.
    pub fn n_elements(&self) -> u64 {
        self.n_elements
    }
}

impl fmt::Display for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.dims())
    }
}

/// One entry of the tensor index, validated: its type is known, its first dimension is a
/// whole number of blocks, and its bytes lie inside the file, aligned, overlapping no
/// other tensor's.
///
/// ```text
/// tensor_info := name: string | n_dims: u32 | dims: n_dims × u64 | type: u32 | offset: u64
/// ```
///
/// # Invariants
/// `data.len() == size_bytes == ggml_type.bytes_for(shape.n_elements())`, and `data` is
/// the file's bytes at `data_offset + offset`. Fields are private so that no caller can
/// build an entry whose `data` disagrees with the rest.
#[derive(Clone, Copy, PartialEq)]
pub struct TensorInfo<'a> {
    pub(crate) name: &'a str,
    pub(crate) shape: Shape,
    pub(crate) ggml_type: GgmlType,
    pub(crate) offset: u64,
    pub(crate) size_bytes: u64,
    pub(crate) data: &'a [u8],
    pub(crate) info_offset: u64,
}

impl<'a> TensorInfo<'a> {
    /// The tensor's name (`blk.0.attn_q.weight`).
    pub fn name(&self) -> &'a str {
        self.name
    }

    /// The shape, ggml order.
    pub fn shape(&self) -> Shape {
        self.shape
    }

    /// The dimensions, ggml order (ne0 first).
    pub fn dims(&self) -> &[u64] {
        self.shape.dims()
    }

    /// The element type.
    pub fn ggml_type(&self) -> GgmlType {
        self.ggml_type
    }

    /// The offset of the tensor's bytes from the start of the data section.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The size of the tensor's bytes.
    pub fn size_bytes(&self) -> u64 {
        self.size_bytes
    }

    /// The number of elements.
    pub fn n_elements(&self) -> u64 {
        self.shape.n_elements()
    }

    /// The tensor's bytes, in place in the caller's buffer.
    pub fn data(&self) -> &'a [u8] {
        self.data
    }

    /// The absolute file offset of this entry in the tensor index (for diagnostics).
    pub fn info_offset(&self) -> u64 {
        self.info_offset
    }
}

impl fmt::Debug for TensorInfo<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TensorInfo")
            .field("name", &self.name)
            .field("dims", &self.dims())
            .field("ggml_type", &self.ggml_type)
            .field("offset", &self.offset)
            .field("size_bytes", &self.size_bytes)
            .finish()
    }
}

impl fmt::Display for TensorInfo<'_> {
    /// `name type [dims] @offset size_bytes`, one line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} {} @{} {} bytes",
            self.name, self.ggml_type, self.shape, self.offset, self.size_bytes
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shape_checks_dims() {
        let s = Shape::new(&[64, 3]).unwrap();
        assert_eq!(
            (s.dims(), s.n_elements(), s.ne()),
            (&[64, 3][..], 192, [64, 3, 1, 1])
        );
        assert_eq!(Shape::new(&[]).unwrap().n_elements(), 1);
        assert!(Shape::new(&[1, 0]).is_none());
        assert!(Shape::new(&[1, 1, 1, 1, 1]).is_none());
        assert!(Shape::new(&[1 << 32, 1 << 32]).is_none());
        assert_eq!(
            Shape::new(&[1 << 32, 1 << 31]).unwrap().n_elements(),
            1 << 63
        );
    }
}
