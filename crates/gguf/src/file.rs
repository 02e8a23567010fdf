//! [`GgufFile`]: parsing the header, metadata and tensor index, and looking values up.

use std::collections::HashMap;
use std::fmt;

use crate::reader::{Reader, le_array, skip_value};
use crate::tensor::{Shape, TensorInfo};
use crate::value::{ArrayView, Value, ValueType};
use crate::{GgmlType, GgufError, Limits};

/// Alignment of tensor data when `general.alignment` is absent (ggml's
/// `GGUF_DEFAULT_ALIGNMENT`).
pub const DEFAULT_ALIGNMENT: u64 = 32;

/// The metadata key that overrides [`DEFAULT_ALIGNMENT`].
pub const ALIGNMENT_KEY: &str = "general.alignment";

/// Fewest bytes of one key-value pair: empty key (8), type (4), a one-byte value.
const MIN_KV_BYTES: u64 = 8 + 4 + 1;
/// Fewest bytes of one tensor-info record: empty name (8), n_dims (4), type (4), offset (8).
const MIN_TENSOR_INFO_BYTES: u64 = 8 + 4 + 4 + 8;

/// One metadata key-value pair.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MetadataKv<'a> {
    key: &'a str,
    value: Value<'a>,
    offset: u64,
    value_offset: u64,
    raw: &'a [u8],
}

impl<'a> MetadataKv<'a> {
    /// The key (`llama.block_count`).
    pub fn key(&self) -> &'a str {
        self.key
    }

    /// The value.
    pub fn value(&self) -> &Value<'a> {
        &self.value
    }

    /// The absolute file offset where the pair starts.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The absolute file offset of the value's encoding.
    pub fn value_offset(&self) -> u64 {
        self.value_offset
    }

    /// The value's encoding as it stands in the file (after the type id), for copying the
    /// pair into another file unchanged.
    pub fn raw_value(&self) -> &'a [u8] {
        self.raw
    }
}

impl fmt::Display for MetadataKv<'_> {
    /// `key: type = value`; arrays show their element type and first elements.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.value {
            Value::Array(a) => write!(f, "{}: array<{}> = ", self.key, a.elem_type())?,
            v => write!(f, "{}: {} = ", self.key, v.value_type())?,
        }
        if f.alternate() {
            write!(f, "{:#}", self.value)
        } else {
            write!(f, "{}", self.value)
        }
    }
}

/// A parsed GGUF file borrowing the caller's bytes (usually a mapped file).
///
/// ```text
/// offset 0   "GGUF" | version: u32 | tensor_count: u64 | metadata_kv_count: u64
///            metadata_kv_count × (key: string | type: u32 | value)
///            tensor_count × tensor_info
///            padding to `alignment`
/// data_offset ┌──────────────────────────────────────────────────────────────┐
///             │ tensor bytes, each at data_offset + its offset (aligned)    │
///             └──────────────────────────────────────────────────────────────┘
/// ```
///
/// # Invariants
/// Everything reachable from a `GgufFile` was validated once by the parse: keys and tensor
/// names are unique UTF-8, every value is well-formed within the [`Limits`] it was parsed
/// with, and every tensor's bytes lie inside `bytes`, aligned and non-overlapping.
/// [`GgufFile::check_invariants`] re-checks the tensor part.
#[derive(Clone)]
pub struct GgufFile<'a> {
    bytes: &'a [u8],
    version: u32,
    alignment: u64,
    data_offset: u64,
    metadata: Vec<MetadataKv<'a>>,
    tensors: Vec<TensorInfo<'a>>,
    key_index: HashMap<&'a str, usize>,
    tensor_index: HashMap<&'a str, usize>,
}

impl<'a> GgufFile<'a> {
    /// Parses `bytes` with the default [`Limits`].
    pub fn parse(bytes: &'a [u8]) -> Result<Self, GgufError> {
        Self::parse_with_limits(bytes, &Limits::DEFAULT)
    }

    /// Parses `bytes`, refusing anything above `limits`.
    ///
    /// Memory use is bounded by the file's size: every count is checked against its cap
    /// and against the bytes left before anything is reserved for it.
    pub fn parse_with_limits(bytes: &'a [u8], limits: &Limits) -> Result<Self, GgufError> {
        let mut r = Reader::new(bytes, 0);
        let version = parse_preamble(&mut r)?;
        let tensor_count = read_count(
            &mut r,
            "header.tensor_count",
            limits.max_tensor_count,
            "max_tensor_count",
        )?;
        let kv_count = read_count(
            &mut r,
            "header.metadata_kv_count",
            limits.max_metadata_count,
            "max_metadata_count",
        )?;
        let (metadata, key_index) = parse_metadata(&mut r, kv_count, limits)?;
        let alignment = alignment(&metadata, &key_index, limits)?;
        let pending = parse_tensor_infos(&mut r, tensor_count, alignment, limits)?;
        let data_offset = r
            .offset()
            .checked_next_multiple_of(alignment)
            .ok_or_else(|| GgufError::Truncated {
                field: "data section".into(),
                offset: r.offset(),
                needed: u64::MAX,
                available: r.remaining(),
            })?;
        let (tensors, tensor_index) = place_tensors(bytes, pending, data_offset)?;
        Ok(GgufFile {
            bytes,
            version,
            alignment,
            data_offset,
            metadata,
            tensors,
            key_index,
            tensor_index,
        })
    }

    /// The format version: 2 or 3.
    pub fn version(&self) -> u32 {
        self.version
    }

    /// The alignment of tensor data, from `general.alignment` or [`DEFAULT_ALIGNMENT`].
    pub fn alignment(&self) -> u64 {
        self.alignment
    }

    /// The absolute offset of the data section. For a file without tensors it may lie
    /// past the end of the file (writers need not pad a file with no data).
    pub fn data_offset(&self) -> u64 {
        self.data_offset
    }

    /// The whole file.
    pub fn bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// Every metadata pair, in file order.
    pub fn metadata(&self) -> &[MetadataKv<'a>] {
        &self.metadata
    }

    /// The value of `key`, if present.
    pub fn get(&self, key: &str) -> Option<&Value<'a>> {
        self.key_index
            .get(key)
            .and_then(|&i| self.metadata.get(i))
            .map(|kv| &kv.value)
    }

    /// Every tensor, in file order.
    pub fn tensors(&self) -> &[TensorInfo<'a>] {
        &self.tensors
    }

    /// The tensor named `name`, if present.
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo<'a>> {
        self.tensor_index
            .get(name)
            .and_then(|&i| self.tensors.get(i))
    }

    /// A tensor's bytes, in place. Validated at parse time; the same as
    /// [`TensorInfo::data`].
    pub fn tensor_data(&self, t: &TensorInfo<'a>) -> &'a [u8] {
        t.data
    }

    fn kv(&self, key: &str) -> Result<&MetadataKv<'a>, GgufError> {
        self.key_index
            .get(key)
            .and_then(|&i| self.metadata.get(i))
            .ok_or_else(|| GgufError::MissingKey {
                key: key.to_owned(),
            })
    }

    fn wrong_type(kv: &MetadataKv<'_>, expected: &'static str) -> GgufError {
        GgufError::WrongType {
            field: format!("metadata key '{}'", kv.key),
            offset: kv.value_offset,
            expected,
            found: kv.value.value_type().name(),
        }
    }

    fn integer<T: TryFrom<i128>>(&self, key: &str, target: &'static str) -> Result<T, GgufError> {
        let kv = self.kv(key)?;
        let v = kv
            .value
            .as_i128()
            .ok_or_else(|| Self::wrong_type(kv, "an integer"))?;
        T::try_from(v).map_err(|_| GgufError::OutOfRange {
            field: format!("metadata key '{key}'"),
            offset: kv.value_offset,
            value: v,
            target,
        })
    }

    /// `key` as `u32`: any integer type whose value fits.
    pub fn get_u32(&self, key: &str) -> Result<u32, GgufError> {
        self.integer(key, "u32")
    }

    /// `key` as `u64`: any integer type whose value fits.
    pub fn get_u64(&self, key: &str) -> Result<u64, GgufError> {
        self.integer(key, "u64")
    }

    /// `key` as `i64`: any integer type whose value fits.
    pub fn get_i64(&self, key: &str) -> Result<i64, GgufError> {
        self.integer(key, "i64")
    }

    /// `key` as `f32`: an `f32` value, or an `f64` one rounded to the nearest `f32`.
    pub fn get_f32(&self, key: &str) -> Result<f32, GgufError> {
        let kv = self.kv(key)?;
        match kv.value {
            Value::F32(v) => Ok(v),
            Value::F64(v) => Ok(v as f32),
            _ => Err(Self::wrong_type(kv, "f32")),
        }
    }

    /// `key` as `bool`.
    pub fn get_bool(&self, key: &str) -> Result<bool, GgufError> {
        let kv = self.kv(key)?;
        kv.value
            .as_bool()
            .ok_or_else(|| Self::wrong_type(kv, "bool"))
    }

    /// `key` as a UTF-8 string.
    pub fn get_str(&self, key: &str) -> Result<&'a str, GgufError> {
        let kv = self.kv(key)?;
        let bytes = kv
            .value
            .as_bytes()
            .ok_or_else(|| Self::wrong_type(kv, "string"))?;
        std::str::from_utf8(bytes).map_err(|e| GgufError::InvalidUtf8 {
            field: format!("metadata key '{key}'"),
            offset: kv.value_offset + 8,
            valid_up_to: e.valid_up_to() as u64,
        })
    }

    /// `key` as an array.
    pub fn get_array(&self, key: &str) -> Result<ArrayView<'a>, GgufError> {
        let kv = self.kv(key)?;
        kv.value
            .as_array()
            .ok_or_else(|| Self::wrong_type(kv, "array"))
    }

    /// Re-checks the tensor invariants: each tensor's bytes are the file's bytes at
    /// `data_offset + offset`, sized by its type and shape, aligned, and the indexes agree.
    ///
    /// # Panics
    /// If an invariant is broken, which is a bug in this crate. Fuzzers and property
    /// tests call it after every successful parse.
    pub fn check_invariants(&self) {
        assert!(self.alignment.is_power_of_two());
        assert_eq!(self.key_index.len(), self.metadata.len());
        assert_eq!(self.tensor_index.len(), self.tensors.len());
        for (i, kv) in self.metadata.iter().enumerate() {
            assert_eq!(self.key_index.get(kv.key), Some(&i));
        }
        let mut ranges = Vec::with_capacity(self.tensors.len());
        for (i, t) in self.tensors.iter().enumerate() {
            assert_eq!(self.tensor_index.get(t.name), Some(&i));
            assert_eq!(t.offset % self.alignment, 0, "{}", t.name);
            assert_eq!(
                t.ggml_type.bytes_for(t.shape.n_elements()),
                Some(t.size_bytes)
            );
            let start = (self.data_offset + t.offset) as usize;
            let expected = &self.bytes[start..start + t.size_bytes as usize];
            assert!(std::ptr::eq(expected, t.data), "{} data slice", t.name);
            ranges.push((start, start + t.data.len()));
        }
        ranges.sort_unstable();
        for pair in ranges.windows(2) {
            assert!(pair[0].1 <= pair[1].0, "overlap {pair:?}");
        }
    }
}

impl fmt::Debug for GgufFile<'_> {
    /// The header figures only: the bytes may be gigabytes.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GgufFile")
            .field("version", &self.version)
            .field("alignment", &self.alignment)
            .field("data_offset", &self.data_offset)
            .field("metadata", &self.metadata.len())
            .field("tensors", &self.tensors.len())
            .field("byte_len", &self.bytes.len())
            .finish()
    }
}

impl fmt::Display for GgufFile<'_> {
    /// A summary for humans: header, every metadata pair (arrays abbreviated), and the
    /// tensor index, one line each.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "GGUF v{}: {} metadata pairs, {} tensors, alignment {}, data at byte {}",
            self.version,
            self.metadata.len(),
            self.tensors.len(),
            self.alignment,
            self.data_offset
        )?;
        for kv in &self.metadata {
            writeln!(f, "  {kv}")?;
        }
        for t in &self.tensors {
            writeln!(f, "  {t}")?;
        }
        Ok(())
    }
}

/// Magic and version.
fn parse_preamble(r: &mut Reader<'_>) -> Result<u32, GgufError> {
    let magic: [u8; 4] = le_array(r.take(4, || "header.magic".into())?);
    if &magic != b"GGUF" {
        return Err(GgufError::BadMagic { found: magic });
    }
    let version = r.u32(|| "header.version".into())?;
    match version {
        2 | 3 => Ok(version),
        // The magic reads the same either way; only the version tells the byte order.
        v if matches!(v.swap_bytes(), 2 | 3) => Err(GgufError::BigEndian {
            version: v.swap_bytes(),
        }),
        v => Err(GgufError::UnsupportedVersion { version: v }),
    }
}

fn read_count(
    r: &mut Reader<'_>,
    field: &'static str,
    limit: u64,
    limit_name: &'static str,
) -> Result<u64, GgufError> {
    let at = r.offset();
    let count = r.u64(|| field.into())?;
    if count > limit {
        return Err(GgufError::LimitExceeded {
            field: field.into(),
            offset: at,
            value: count,
            limit,
            limit_name,
        });
    }
    Ok(count)
}

fn utf8(bytes: &[u8], field: impl FnOnce() -> String, offset: u64) -> Result<&str, GgufError> {
    std::str::from_utf8(bytes).map_err(|e| GgufError::InvalidUtf8 {
        field: field(),
        offset,
        valid_up_to: e.valid_up_to() as u64,
    })
}

type Metadata<'a> = (Vec<MetadataKv<'a>>, HashMap<&'a str, usize>);

fn parse_metadata<'a>(
    r: &mut Reader<'a>,
    count: u64,
    limits: &Limits,
) -> Result<Metadata<'a>, GgufError> {
    r.ensure_fits(count, MIN_KV_BYTES, || {
        format!("metadata ({count} key-value pairs)")
    })?;
    // Bounded twice now: by the cap and by the bytes left.
    let mut metadata = Vec::with_capacity(count as usize);
    let mut index = HashMap::with_capacity(count as usize);
    for i in 0..count {
        let at = r.offset();
        let key_bytes = r.string(limits, || format!("metadata[{i}].key"))?;
        let key = utf8(key_bytes, || format!("metadata[{i}].key"), at + 8)?;
        if let Some(&first) = index.get(key) {
            let first: &MetadataKv<'_> = &metadata[first];
            return Err(GgufError::DuplicateKey {
                key: key.to_owned(),
                offset: at,
                first_offset: first.offset,
            });
        }
        let type_at = r.offset();
        let raw = r.u32(|| format!("metadata key '{key}' type"))?;
        let ty = ValueType::from_u32(raw).ok_or_else(|| GgufError::UnknownValueType {
            field: format!("metadata key '{key}' type"),
            offset: type_at,
            raw,
        })?;
        let value_at = r.pos();
        skip_value(r, ty, key, limits)?;
        let raw = r.bytes().get(value_at..r.pos()).unwrap_or_default();
        let value =
            Value::decode(ty, raw, key, value_at as u64).ok_or_else(|| GgufError::Truncated {
                field: format!("metadata key '{key}' value"),
                offset: value_at as u64,
                needed: (r.pos() - value_at) as u64,
                available: r.remaining(),
            })?;
        index.insert(key, metadata.len());
        metadata.push(MetadataKv {
            key,
            value,
            offset: at,
            value_offset: value_at as u64,
            raw,
        });
    }
    Ok((metadata, index))
}

fn alignment(
    metadata: &[MetadataKv<'_>],
    index: &HashMap<&str, usize>,
    limits: &Limits,
) -> Result<u64, GgufError> {
    let Some(kv) = index.get(ALIGNMENT_KEY).and_then(|&i| metadata.get(i)) else {
        return Ok(DEFAULT_ALIGNMENT);
    };
    let field = || format!("metadata key '{ALIGNMENT_KEY}'");
    let raw = kv.value.as_i128().ok_or_else(|| GgufError::WrongType {
        field: field(),
        offset: kv.value_offset,
        expected: "an unsigned integer",
        found: kv.value.value_type().name(),
    })?;
    let invalid = |value: u64, reason| GgufError::InvalidAlignment {
        field: field(),
        offset: kv.value_offset,
        value,
        reason,
    };
    let Ok(value) = u64::try_from(raw) else {
        return Err(GgufError::OutOfRange {
            field: field(),
            offset: kv.value_offset,
            value: raw,
            target: "u64",
        });
    };
    if value == 0 {
        return Err(invalid(value, "must not be zero"));
    }
    if value > limits.max_alignment {
        return Err(GgufError::LimitExceeded {
            field: field(),
            offset: kv.value_offset,
            value,
            limit: limits.max_alignment,
            limit_name: "max_alignment",
        });
    }
    if !value.is_power_of_two() {
        return Err(invalid(value, "is not a power of two"));
    }
    Ok(value)
}

/// A tensor-info record before its bytes are located.
struct Pending<'a> {
    name: &'a str,
    shape: Shape,
    ggml_type: GgmlType,
    offset: u64,
    size_bytes: u64,
    info_offset: u64,
    offset_field_at: u64,
}

fn tensor_field(i: u64, name: &str, what: &str) -> String {
    format!("tensor[{i}].{what} ('{name}')")
}

fn parse_tensor_infos<'a>(
    r: &mut Reader<'a>,
    count: u64,
    alignment: u64,
    limits: &Limits,
) -> Result<Vec<Pending<'a>>, GgufError> {
    r.ensure_fits(count, MIN_TENSOR_INFO_BYTES, || {
        format!("tensor index ({count} tensors)")
    })?;
    let mut out = Vec::with_capacity(count as usize);
    let max_dims = limits.max_dims.min(crate::MAX_DIMS);
    for i in 0..count {
        let info_offset = r.offset();
        let name_bytes = r.string(limits, || format!("tensor[{i}].name"))?;
        let name = utf8(name_bytes, || format!("tensor[{i}].name"), info_offset + 8)?;
        let field = |what: &str| tensor_field(i, name, what);

        let n_dims_at = r.offset();
        let n_dims = r.u32(|| field("n_dims"))?;
        if n_dims > max_dims {
            return Err(GgufError::LimitExceeded {
                field: field("n_dims"),
                offset: n_dims_at,
                value: n_dims.into(),
                limit: max_dims.into(),
                limit_name: "max_dims",
            });
        }
        let mut dims = [1u64; 4];
        let mut n_elements: u64 = 1;
        for (d, slot) in dims.iter_mut().enumerate().take(n_dims as usize) {
            let at = r.offset();
            let what = || format!("dims[{d}]");
            let value = r.u64(|| field(&what()))?;
            if value == 0 {
                return Err(GgufError::InvalidDim {
                    field: field(&what()),
                    offset: at,
                    value,
                });
            }
            n_elements = n_elements
                .checked_mul(value)
                .ok_or_else(|| GgufError::ShapeOverflow {
                    field: field(&what()),
                    offset: at,
                })?;
            *slot = value;
        }
        let shape =
            Shape::new(&dims[..n_dims as usize]).ok_or_else(|| GgufError::ShapeOverflow {
                field: field("dims"),
                offset: n_dims_at,
            })?;

        let type_at = r.offset();
        let raw = r.u32(|| field("type"))?;
        let ggml_type = GgmlType::from_u32(raw).ok_or_else(|| GgufError::UnknownGgmlType {
            field: field("type"),
            offset: type_at,
            raw,
        })?;
        let ne0 = shape.ne()[0];
        if ne0 % ggml_type.block_size() != 0 {
            return Err(GgufError::NotBlockMultiple {
                field: field("dims[0]"),
                offset: n_dims_at + 4,
                ne0,
                ggml_type,
                block_size: ggml_type.block_size(),
            });
        }
        let size_bytes =
            ggml_type
                .bytes_for(shape.n_elements())
                .ok_or_else(|| GgufError::ShapeOverflow {
                    field: field("type"),
                    offset: type_at,
                })?;

        let offset_field_at = r.offset();
        let offset = r.u64(|| field("offset"))?;
        if offset % alignment != 0 {
            return Err(GgufError::TensorMisaligned {
                field: field("offset"),
                offset: offset_field_at,
                tensor_offset: offset,
                alignment,
            });
        }
        out.push(Pending {
            name,
            shape,
            ggml_type,
            offset,
            size_bytes,
            info_offset,
            offset_field_at,
        });
    }
    Ok(out)
}

type Tensors<'a> = (Vec<TensorInfo<'a>>, HashMap<&'a str, usize>);

/// Locates every tensor's bytes in the data section; refuses duplicates, ranges past the
/// end and overlaps.
fn place_tensors<'a>(
    bytes: &'a [u8],
    pending: Vec<Pending<'a>>,
    data_offset: u64,
) -> Result<Tensors<'a>, GgufError> {
    let mut tensors = Vec::with_capacity(pending.len());
    let mut index: HashMap<&str, usize> = HashMap::with_capacity(pending.len());
    for (i, p) in pending.into_iter().enumerate() {
        if let Some(&first) = index.get(p.name) {
            return Err(GgufError::DuplicateTensor {
                field: tensor_field(i as u64, p.name, "name"),
                offset: p.info_offset,
                name: p.name.to_owned(),
                first_index: first as u64,
            });
        }
        let range = data_offset
            .checked_add(p.offset)
            .and_then(|start| Some((start, start.checked_add(p.size_bytes)?)))
            .and_then(|(s, e)| Some(usize::try_from(s).ok()?..usize::try_from(e).ok()?));
        let data =
            range
                .and_then(|r| bytes.get(r))
                .ok_or_else(|| GgufError::TensorOutOfBounds {
                    field: tensor_field(i as u64, p.name, "offset"),
                    offset: p.offset_field_at,
                    tensor_offset: p.offset,
                    size_bytes: p.size_bytes,
                    data_offset,
                    file_len: bytes.len() as u64,
                })?;
        index.insert(p.name, tensors.len());
        tensors.push(TensorInfo {
            name: p.name,
            shape: p.shape,
            ggml_type: p.ggml_type,
            offset: p.offset,
            size_bytes: p.size_bytes,
            data,
            info_offset: p.info_offset,
        });
    }
    check_overlaps(&tensors)?;
    Ok((tensors, index))
}

fn check_overlaps(tensors: &[TensorInfo<'_>]) -> Result<(), GgufError> {
    let mut order: Vec<usize> = (0..tensors.len()).collect();
    order.sort_unstable_by_key(|&i| (tensors[i].offset, i));
    for pair in order.windows(2) {
        let (a, b) = (&tensors[pair[0]], &tensors[pair[1]]);
        // Sizes are at least one block, so `a.offset + a.size_bytes` fits: it was in range.
        if b.offset < a.offset + a.size_bytes {
            let i = pair[1];
            return Err(GgufError::TensorOverlap {
                field: tensor_field(i as u64, b.name, "offset"),
                offset: b.info_offset,
                other: a.name.to_owned(),
            });
        }
    }
    Ok(())
}
