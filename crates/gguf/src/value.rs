//! Metadata values: scalars decoded at parse time, strings and arrays as views into the
//! file's bytes.
//!
//! ```text
//! value      := u8 | i8 | u16 | i16 | u32 | i32 | f32 | bool | string | array | u64 | i64 | f64
//! string     := len: u64 LE | len bytes (no terminator)
//! array      := elem_type: u32 LE | len: u64 LE | len × element
//!               (an element is a bare value of elem_type; for elem_type = array, each
//!                element carries its own elem_type and len)
//! ```

use std::fmt;
use std::marker::PhantomData;

use crate::reader::{Reader, le_array, skip_value};
use crate::{GgufError, Limits};

/// The type id of a metadata value, as written in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
#[non_exhaustive]
pub enum ValueType {
    U8 = 0,
    I8 = 1,
    U16 = 2,
    I16 = 3,
    U32 = 4,
    I32 = 5,
    F32 = 6,
    Bool = 7,
    String = 8,
    Array = 9,
    U64 = 10,
    I64 = 11,
    F64 = 12,
}

impl ValueType {
    /// The type with GGUF id `id`, or `None` for an unknown id.
    pub fn from_u32(id: u32) -> Option<Self> {
        use ValueType::*;
        Some(match id {
            0 => U8,
            1 => I8,
            2 => U16,
            3 => I16,
            4 => U32,
            5 => I32,
            6 => F32,
            7 => Bool,
            8 => String,
            9 => Array,
            10 => U64,
            11 => I64,
            12 => F64,
            _ => return None,
        })
    }

    /// The id written in the file.
    pub const fn id(self) -> u32 {
        self as u32
    }

    /// A short lowercase name (`"u32"`, `"string"`, `"array"`).
    pub const fn name(self) -> &'static str {
        use ValueType::*;
        match self {
            U8 => "u8",
            I8 => "i8",
            U16 => "u16",
            I16 => "i16",
            U32 => "u32",
            I32 => "i32",
            F32 => "f32",
            Bool => "bool",
            String => "string",
            Array => "array",
            U64 => "u64",
            I64 => "i64",
            F64 => "f64",
        }
    }

    /// The encoded size of a fixed-size type; `None` for strings and arrays.
    pub const fn fixed_size(self) -> Option<u64> {
        use ValueType::*;
        match self {
            U8 | I8 | Bool => Some(1),
            U16 | I16 => Some(2),
            U32 | I32 | F32 => Some(4),
            U64 | I64 | F64 => Some(8),
            String | Array => None,
        }
    }

    /// The fewest bytes one value of this type can take: an empty string is its 8-byte
    /// length, an empty array its 12-byte header.
    pub(crate) const fn min_encoded_bytes(self) -> u64 {
        match self {
            ValueType::String => 8,
            ValueType::Array => 12,
            _ => match self.fixed_size() {
                Some(n) => n,
                None => 1,
            },
        }
    }
}

impl fmt::Display for ValueType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One metadata value. Strings are raw bytes as stored (GGUF says UTF-8 but vocabularies
/// in the wild are not always); [`Value::as_str`] checks.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Value<'a> {
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
    String(&'a [u8]),
    Array(ArrayView<'a>),
}

impl<'a> Value<'a> {
    /// The value's type.
    pub fn value_type(&self) -> ValueType {
        match self {
            Value::U8(_) => ValueType::U8,
            Value::I8(_) => ValueType::I8,
            Value::U16(_) => ValueType::U16,
            Value::I16(_) => ValueType::I16,
            Value::U32(_) => ValueType::U32,
            Value::I32(_) => ValueType::I32,
            Value::U64(_) => ValueType::U64,
            Value::I64(_) => ValueType::I64,
            Value::F32(_) => ValueType::F32,
            Value::F64(_) => ValueType::F64,
            Value::Bool(_) => ValueType::Bool,
            Value::String(_) => ValueType::String,
            Value::Array(_) => ValueType::Array,
        }
    }

    /// Any integer value, widened; `None` for other types.
    pub fn as_i128(&self) -> Option<i128> {
        Some(match *self {
            Value::U8(v) => v.into(),
            Value::I8(v) => v.into(),
            Value::U16(v) => v.into(),
            Value::I16(v) => v.into(),
            Value::U32(v) => v.into(),
            Value::I32(v) => v.into(),
            Value::U64(v) => v.into(),
            Value::I64(v) => v.into(),
            _ => return None,
        })
    }

    /// Any integer value that fits in `u64`.
    pub fn as_u64(&self) -> Option<u64> {
        self.as_i128().and_then(|v| u64::try_from(v).ok())
    }

    /// An `f32` or `f64` value, as `f64`.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v.into()),
            Value::F64(v) => Some(v),
            _ => None,
        }
    }

    /// A bool value.
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Value::Bool(v) => Some(v),
            _ => None,
        }
    }

    /// A string's raw bytes.
    pub fn as_bytes(&self) -> Option<&'a [u8]> {
        match *self {
            Value::String(b) => Some(b),
            _ => None,
        }
    }

    /// A string that is valid UTF-8.
    pub fn as_str(&self) -> Option<&'a str> {
        self.as_bytes().and_then(|b| std::str::from_utf8(b).ok())
    }

    /// An array.
    pub fn as_array(&self) -> Option<ArrayView<'a>> {
        match *self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }

    /// Decodes a value that [`skip_value`] has validated; `bytes` is exactly its
    /// encoding and `offset` its absolute position. `None` only if that contract is
    /// broken.
    pub(crate) fn decode(
        ty: ValueType,
        bytes: &'a [u8],
        key: &'a str,
        offset: u64,
    ) -> Option<Self> {
        let n = |len: usize| bytes.get(..len);
        Some(match ty {
            ValueType::U8 => Value::U8(*bytes.first()?),
            ValueType::I8 => Value::I8(i8::from_le_bytes(le_array(n(1)?))),
            ValueType::U16 => Value::U16(u16::from_le_bytes(le_array(n(2)?))),
            ValueType::I16 => Value::I16(i16::from_le_bytes(le_array(n(2)?))),
            ValueType::U32 => Value::U32(u32::from_le_bytes(le_array(n(4)?))),
            ValueType::I32 => Value::I32(i32::from_le_bytes(le_array(n(4)?))),
            ValueType::U64 => Value::U64(u64::from_le_bytes(le_array(n(8)?))),
            ValueType::I64 => Value::I64(i64::from_le_bytes(le_array(n(8)?))),
            ValueType::F32 => Value::F32(f32::from_le_bytes(le_array(n(4)?))),
            ValueType::F64 => Value::F64(f64::from_le_bytes(le_array(n(8)?))),
            ValueType::Bool => Value::Bool(*bytes.first()? != 0),
            ValueType::String => Value::String(bytes.get(8..)?),
            ValueType::Array => {
                let elem_type = ValueType::from_u32(u32::from_le_bytes(le_array(n(4)?)))?;
                let len = usize::try_from(u64::from_le_bytes(le_array(bytes.get(4..12)?))).ok()?;
                Value::Array(ArrayView {
                    key,
                    elem_type,
                    len,
                    bytes: bytes.get(12..)?,
                    offset: offset + 12,
                })
            }
        })
    }
}

/// A validated array inside the file: element type, count and the elements' bytes. Nothing
/// is materialized; typed iterators decode little-endian values on the fly and need no
/// alignment.
///
/// # Invariants
/// The parse walked `bytes` with [`skip_value`]: it holds exactly `len` well-formed
/// elements of `elem_type`, every string and sub-array length within the caps. The
/// iterators rely on this only for completeness: on a broken invariant they stop early,
/// they never panic.
#[derive(Clone, Copy, PartialEq)]
pub struct ArrayView<'a> {
    key: &'a str,
    elem_type: ValueType,
    len: usize,
    bytes: &'a [u8],
    offset: u64,
}

impl<'a> ArrayView<'a> {
    /// The metadata key this array belongs to (for error messages).
    pub fn key(&self) -> &'a str {
        self.key
    }

    /// The type of every element.
    pub fn elem_type(&self) -> ValueType {
        self.elem_type
    }

    /// The number of elements.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the array has no elements.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The elements' encoding, as stored (after the 12-byte array header).
    pub fn raw_bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// The absolute file offset of the first element.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Every element as a [`Value`]; nested arrays come out as [`Value::Array`].
    pub fn iter(&self) -> Values<'a> {
        Values {
            view: *self,
            pos: 0,
            index: 0,
        }
    }

    /// Element `index`: O(1) for fixed-size elements, a walk for strings and arrays.
    pub fn get(&self, index: usize) -> Option<Value<'a>> {
        match self.elem_type.fixed_size() {
            Some(size) if index < self.len => {
                let start = index.checked_mul(size as usize)?;
                let bytes = self.bytes.get(start..)?;
                Value::decode(self.elem_type, bytes, self.key, self.offset + start as u64)
            }
            Some(_) => None,
            None => self.iter().nth(index),
        }
    }

    fn field(&self, index: Option<usize>) -> String {
        match index {
            Some(i) => format!("metadata key '{}' value[{i}]", self.key),
            None => format!("metadata key '{}' value", self.key),
        }
    }

    fn expect(&self, want: ValueType) -> Result<(), GgufError> {
        if self.elem_type == want {
            return Ok(());
        }
        Err(GgufError::WrongType {
            field: self.field(None),
            offset: self.offset,
            expected: want.name(),
            found: self.elem_type.name(),
        })
    }

    /// The elements as `T`, decoded little-endian from unaligned bytes. Errors if the
    /// element type is not `T`'s.
    pub fn iter_as<T: ArrayElement>(&self) -> Result<Scalars<'a, T>, GgufError> {
        self.expect(T::TYPE)?;
        let size = T::TYPE.min_encoded_bytes() as usize;
        Ok(Scalars {
            chunks: self.bytes.chunks_exact(size),
            _type: PhantomData,
        })
    }

    /// Element `index` as `T`. Errors on a wrong element type or an index past the end.
    pub fn get_as<T: ArrayElement>(&self, index: usize) -> Result<T, GgufError> {
        self.iter_as::<T>()?
            .nth(index)
            .ok_or_else(|| GgufError::IndexOutOfBounds {
                field: self.field(None),
                offset: self.offset,
                index: index as u64,
                len: self.len as u64,
            })
    }

    /// The `u32` elements.
    pub fn iter_u32(&self) -> Result<Scalars<'a, u32>, GgufError> {
        self.iter_as()
    }

    /// The `i32` elements (token types are stored so).
    pub fn iter_i32(&self) -> Result<Scalars<'a, i32>, GgufError> {
        self.iter_as()
    }

    /// The `f32` elements (token scores are stored so).
    pub fn iter_f32(&self) -> Result<Scalars<'a, f32>, GgufError> {
        self.iter_as()
    }

    /// Element `index` of a `u32` array.
    pub fn get_u32(&self, index: usize) -> Result<u32, GgufError> {
        self.get_as(index)
    }

    /// Element `index` of an `i32` array.
    pub fn get_i32(&self, index: usize) -> Result<i32, GgufError> {
        self.get_as(index)
    }

    /// Element `index` of an `f32` array.
    pub fn get_f32(&self, index: usize) -> Result<f32, GgufError> {
        self.get_as(index)
    }

    /// The elements of a string array as raw bytes.
    pub fn iter_bytes(&self) -> Result<StringBytes<'a>, GgufError> {
        self.expect(ValueType::String)?;
        Ok(StringBytes {
            bytes: self.bytes,
            pos: 0,
            left: self.len,
        })
    }

    /// The elements of a string array as `&str`; an element that is not UTF-8 yields an
    /// error naming its index and offset.
    pub fn iter_str(&self) -> Result<Strs<'a>, GgufError> {
        Ok(Strs {
            inner: self.iter_bytes()?,
            view: *self,
            index: 0,
        })
    }

    /// Element `index` of a string array, as `&str` (a walk: O(index)).
    pub fn get_str(&self, index: usize) -> Result<&'a str, GgufError> {
        self.iter_str()?.nth(index).unwrap_or_else(|| {
            Err(GgufError::IndexOutOfBounds {
                field: self.field(None),
                offset: self.offset,
                index: index as u64,
                len: self.len as u64,
            })
        })
    }
}

impl fmt::Debug for ArrayView<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ArrayView")
            .field("key", &self.key)
            .field("elem_type", &self.elem_type)
            .field("len", &self.len)
            .field("byte_len", &self.bytes.len())
            .field("offset", &self.offset)
            .finish()
    }
}

impl<'a> IntoIterator for &ArrayView<'a> {
    type Item = Value<'a>;
    type IntoIter = Values<'a>;
    fn into_iter(self) -> Values<'a> {
        self.iter()
    }
}

/// Iterator over an array's elements as [`Value`]s.
#[derive(Debug, Clone)]
pub struct Values<'a> {
    view: ArrayView<'a>,
    pos: usize,
    index: usize,
}

impl<'a> Iterator for Values<'a> {
    type Item = Value<'a>;

    fn next(&mut self) -> Option<Value<'a>> {
        if self.index >= self.view.len {
            return None;
        }
        let mut r = Reader::new(self.view.bytes, self.pos);
        // Already validated: re-walking with no caps only finds the element's end.
        if skip_value(&mut r, self.view.elem_type, self.view.key, &Limits::NONE).is_err() {
            self.index = self.view.len;
            return None;
        }
        let bytes = self.view.bytes.get(self.pos..r.pos())?;
        let offset = self.view.offset + self.pos as u64;
        let value = Value::decode(self.view.elem_type, bytes, self.view.key, offset)?;
        self.pos = r.pos();
        self.index += 1;
        Some(value)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = self.view.len - self.index.min(self.view.len);
        (left, Some(left))
    }
}

mod sealed {
    pub trait Sealed {}
}

/// A fixed-size element type that an array can be read as: the integers, `f32`, `f64`
/// and `bool`. Sealed.
pub trait ArrayElement: Copy + sealed::Sealed {
    /// The GGUF element type this Rust type reads.
    const TYPE: ValueType;
    #[doc(hidden)]
    fn decode_le(bytes: &[u8]) -> Self;
}

macro_rules! array_element {
    ($($t:ty => $variant:ident),* $(,)?) => {$(
        impl sealed::Sealed for $t {}
        impl ArrayElement for $t {
            const TYPE: ValueType = ValueType::$variant;
            fn decode_le(bytes: &[u8]) -> Self {
                <$t>::from_le_bytes(le_array(bytes))
            }
        }
    )*};
}

array_element!(
    u8 => U8, i8 => I8, u16 => U16, i16 => I16, u32 => U32, i32 => I32,
    u64 => U64, i64 => I64, f32 => F32, f64 => F64,
);

impl sealed::Sealed for bool {}
impl ArrayElement for bool {
    const TYPE: ValueType = ValueType::Bool;
    fn decode_le(bytes: &[u8]) -> Self {
        bytes.first().is_some_and(|&b| b != 0)
    }
}

/// Iterator over a fixed-size array's elements, decoded little-endian without assuming
/// alignment.
#[derive(Debug, Clone)]
pub struct Scalars<'a, T> {
    chunks: std::slice::ChunksExact<'a, u8>,
    _type: PhantomData<T>,
}

impl<T: ArrayElement> Iterator for Scalars<'_, T> {
    type Item = T;
    fn next(&mut self) -> Option<T> {
        self.chunks.next().map(T::decode_le)
    }
    fn size_hint(&self) -> (usize, Option<usize>) {
        self.chunks.size_hint()
    }
    fn nth(&mut self, n: usize) -> Option<T> {
        self.chunks.nth(n).map(T::decode_le)
    }
}

impl<T: ArrayElement> DoubleEndedIterator for Scalars<'_, T> {
    fn next_back(&mut self) -> Option<T> {
        self.chunks.next_back().map(T::decode_le)
    }
}

impl<T: ArrayElement> ExactSizeIterator for Scalars<'_, T> {}

/// Iterator over a string array's elements as raw bytes.
#[derive(Debug, Clone)]
pub struct StringBytes<'a> {
    bytes: &'a [u8],
    pos: usize,
    left: usize,
}

impl<'a> Iterator for StringBytes<'a> {
    type Item = &'a [u8];
    fn next(&mut self) -> Option<&'a [u8]> {
        if self.left == 0 {
            return None;
        }
        let mut r = Reader::new(self.bytes, self.pos);
        match r.string(&Limits::NONE, String::new) {
            Ok(s) => {
                self.pos = r.pos();
                self.left -= 1;
                Some(s)
            }
            Err(_) => {
                self.left = 0;
                None
            }
        }
    }
    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.left, Some(self.left))
    }
}

impl ExactSizeIterator for StringBytes<'_> {}

/// Iterator over a string array's elements as `&str`.
#[derive(Debug, Clone)]
pub struct Strs<'a> {
    inner: StringBytes<'a>,
    view: ArrayView<'a>,
    index: usize,
}

impl<'a> Iterator for Strs<'a> {
    type Item = Result<&'a str, GgufError>;
    fn next(&mut self) -> Option<Self::Item> {
        let bytes = self.inner.next()?;
        let index = self.index;
        self.index += 1;
        Some(
            std::str::from_utf8(bytes).map_err(|e| GgufError::InvalidUtf8 {
                field: self.view.field(Some(index)),
                offset: self.view.offset + (self.inner.pos - bytes.len()) as u64,
                valid_up_to: e.valid_up_to() as u64,
            }),
        )
    }
    fn size_hint(&self) -> (usize, Option<usize>) {
        self.inner.size_hint()
    }
}

impl ExactSizeIterator for Strs<'_> {}

/// Elements an array shows before eliding the rest, unless formatted with `{:#}`.
const DISPLAY_ITEMS: usize = 8;

/// Array nesting levels Display descends into before printing `[…]`: display recursion
/// must stay shallow whatever depth the parse allowed.
const DISPLAY_DEPTH: usize = 8;

impl fmt::Display for Value<'_> {
    /// Scalars plainly, strings quoted and escaped, arrays as `[a, b, … (N items)]`
    /// showing the first 8 elements (`{:#}` shows them all) and 8 nesting levels.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt_value(self, f, 0)
    }
}

fn fmt_value(value: &Value<'_>, f: &mut fmt::Formatter<'_>, depth: usize) -> fmt::Result {
    match value {
        Value::U8(v) => write!(f, "{v}"),
        Value::I8(v) => write!(f, "{v}"),
        Value::U16(v) => write!(f, "{v}"),
        Value::I16(v) => write!(f, "{v}"),
        Value::U32(v) => write!(f, "{v}"),
        Value::I32(v) => write!(f, "{v}"),
        Value::U64(v) => write!(f, "{v}"),
        Value::I64(v) => write!(f, "{v}"),
        Value::F32(v) => write!(f, "{v:?}"),
        Value::F64(v) => write!(f, "{v:?}"),
        Value::Bool(v) => write!(f, "{v}"),
        Value::String(b) => write_quoted(f, b),
        Value::Array(a) if depth >= DISPLAY_DEPTH && !a.is_empty() => f.write_str("[…]"),
        Value::Array(a) => {
            let shown = if f.alternate() {
                a.len()
            } else {
                a.len().min(DISPLAY_ITEMS)
            };
            f.write_str("[")?;
            for (i, v) in a.iter().take(shown).enumerate() {
                if i > 0 {
                    f.write_str(", ")?;
                }
                fmt_value(&v, f, depth + 1)?;
            }
            if shown < a.len() {
                write!(f, ", … ({} items)", a.len())?;
            }
            f.write_str("]")
        }
    }
}

fn write_quoted(f: &mut fmt::Formatter<'_>, bytes: &[u8]) -> fmt::Result {
    f.write_str("\"")?;
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '"' => f.write_str("\\\"")?,
                '\\' => f.write_str("\\\\")?,
                '\n' => f.write_str("\\n")?,
                '\r' => f.write_str("\\r")?,
                '\t' => f.write_str("\\t")?,
                c if c.is_control() => write!(f, "\\u{{{:x}}}", u32::from(c))?,
                c => write!(f, "{c}")?,
            }
        }
        for b in chunk.invalid() {
            write!(f, "\\x{b:02x}")?;
        }
    }
    f.write_str("\"")
}
