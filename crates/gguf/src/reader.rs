//! Bounds-checked little-endian reads and the one walker that validates a metadata value.
//!
//! Every read goes through [`Reader::take`], which uses checked slicing: a length from the
//! file can make a read fail, never make it go out of bounds or panic.

use std::fmt::Write as _;

use crate::value::ValueType;
use crate::{GgufError, Limits};

/// A cursor over the file's bytes.
pub(crate) struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(bytes: &'a [u8], pos: usize) -> Self {
        Self { bytes, pos }
    }

    pub(crate) fn bytes(&self) -> &'a [u8] {
        self.bytes
    }

    pub(crate) fn pos(&self) -> usize {
        self.pos
    }

    pub(crate) fn offset(&self) -> u64 {
        self.pos as u64
    }

    pub(crate) fn remaining(&self) -> u64 {
        self.bytes.len().saturating_sub(self.pos) as u64
    }

    /// The next `n` bytes; `field` names what is being read if they are not there.
    pub(crate) fn take(
        &mut self,
        n: u64,
        field: impl FnOnce() -> String,
    ) -> Result<&'a [u8], GgufError> {
        let end = usize::try_from(n)
            .ok()
            .and_then(|n| self.pos.checked_add(n));
        match end.and_then(|end| Some((end, self.bytes.get(self.pos..end)?))) {
            Some((end, slice)) => {
                self.pos = end;
                Ok(slice)
            }
            None => Err(GgufError::Truncated {
                field: field(),
                offset: self.offset(),
                needed: n,
                available: self.remaining(),
            }),
        }
    }

    fn array<const N: usize>(
        &mut self,
        field: impl FnOnce() -> String,
    ) -> Result<[u8; N], GgufError> {
        let slice = self.take(N as u64, field)?;
        Ok(le_array(slice))
    }

    pub(crate) fn u32(&mut self, field: impl FnOnce() -> String) -> Result<u32, GgufError> {
        self.array(field).map(u32::from_le_bytes)
    }

    pub(crate) fn u64(&mut self, field: impl FnOnce() -> String) -> Result<u64, GgufError> {
        self.array(field).map(u64::from_le_bytes)
    }

    /// Checks that `count` items of at least `min_bytes` each can fit in what is left,
    /// before anything is allocated or looped over for them.
    pub(crate) fn ensure_fits(
        &self,
        count: u64,
        min_bytes: u64,
        field: impl FnOnce() -> String,
    ) -> Result<(), GgufError> {
        let needed = u128::from(count) * u128::from(min_bytes);
        if needed <= u128::from(self.remaining()) {
            return Ok(());
        }
        Err(GgufError::Truncated {
            field: field(),
            offset: self.offset(),
            needed: u64::try_from(needed).unwrap_or(u64::MAX),
            available: self.remaining(),
        })
    }

    /// A length-prefixed string, its length checked against the cap first.
    pub(crate) fn string(
        &mut self,
        limits: &Limits,
        field: impl Fn() -> String,
    ) -> Result<&'a [u8], GgufError> {
        let at = self.offset();
        let len = self.u64(|| format!("{} length", field()))?;
        if len > limits.max_string_bytes {
            return Err(GgufError::LimitExceeded {
                field: format!("{} length", field()),
                offset: at,
                value: len,
                limit: limits.max_string_bytes,
                limit_name: "max_string_bytes",
            });
        }
        self.take(len, field)
    }
}

/// Copies the first `N` bytes of `slice` (zero-padded if shorter) without panicking.
pub(crate) fn le_array<const N: usize>(slice: &[u8]) -> [u8; N] {
    let mut out = [0u8; N];
    for (dst, src) in out.iter_mut().zip(slice) {
        *dst = *src;
    }
    out
}

/// One array-of-arrays being walked.
struct Frame {
    /// Elements started so far; the one in progress has index `next - 1`.
    next: u64,
    /// Elements in the array.
    len: u64,
}

/// `metadata key 'k' value[1][2]`, plus a leaf index and a suffix.
fn value_field(key: &str, stack: &[Frame], leaf: Option<u64>, suffix: &str) -> String {
    let mut s = format!("metadata key '{key}' value");
    for frame in stack {
        let _ = write!(s, "[{}]", frame.next.saturating_sub(1));
    }
    if let Some(i) = leaf {
        let _ = write!(s, "[{i}]");
    }
    s.push_str(suffix);
    s
}

/// Walks one value of type `ty` at the reader's position, checking every type id,
/// length, count, bool byte and nesting level, and leaves the reader just past it.
///
/// Iterative on purpose: a nest of arrays as deep as the caller's limit allows costs a
/// `Vec` entry per level, never a stack frame. Each element costs at least one byte of
/// input (strings 8, arrays 12), checked before its loop, so the work is linear in the
/// file's size.
pub(crate) fn skip_value(
    r: &mut Reader<'_>,
    ty: ValueType,
    key: &str,
    limits: &Limits,
) -> Result<(), GgufError> {
    let mut stack: Vec<Frame> = Vec::new();
    let mut ty = ty;
    loop {
        match ty {
            ValueType::String => {
                r.string(limits, || value_field(key, &stack, None, ""))?;
            }
            ValueType::Array => skip_array_header_and_leaves(r, key, limits, &mut stack)?,
            fixed => {
                let at = r.offset();
                let b = r.take(fixed.min_encoded_bytes(), || {
                    value_field(key, &stack, None, "")
                })?;
                check_bools(fixed, b, at, |_| value_field(key, &stack, None, ""))?;
            }
        }
        // Move to the next element of the innermost unfinished array of arrays.
        loop {
            let Some(top) = stack.last_mut() else {
                return Ok(());
            };
            if top.next < top.len {
                top.next += 1;
                ty = ValueType::Array;
                break;
            }
            stack.pop();
        }
    }
}

/// Reads an array header; walks its elements if they are scalars or strings, or pushes a
/// frame for them if they are arrays themselves.
fn skip_array_header_and_leaves(
    r: &mut Reader<'_>,
    key: &str,
    limits: &Limits,
    stack: &mut Vec<Frame>,
) -> Result<(), GgufError> {
    let at = r.offset();
    let depth = stack.len() as u64 + 1;
    if depth > u64::from(limits.max_nesting_depth) {
        return Err(GgufError::LimitExceeded {
            field: value_field(key, stack, None, " array nesting depth"),
            offset: at,
            value: depth,
            limit: u64::from(limits.max_nesting_depth),
            limit_name: "max_nesting_depth",
        });
    }
    let raw = r.u32(|| value_field(key, stack, None, " element type"))?;
    let elem = ValueType::from_u32(raw).ok_or_else(|| GgufError::UnknownValueType {
        field: value_field(key, stack, None, " element type"),
        offset: at,
        raw,
    })?;
    let len_at = r.offset();
    let len = r.u64(|| value_field(key, stack, None, " length"))?;
    if len > limits.max_array_len {
        return Err(GgufError::LimitExceeded {
            field: value_field(key, stack, None, " length"),
            offset: len_at,
            value: len,
            limit: limits.max_array_len,
            limit_name: "max_array_len",
        });
    }
    r.ensure_fits(len, elem.min_encoded_bytes(), || {
        value_field(
            key,
            stack,
            None,
            &format!(" ({len} {} elements)", elem.name()),
        )
    })?;
    match elem {
        ValueType::Array => {
            if len > 0 {
                stack.push(Frame { next: 0, len });
            }
        }
        ValueType::String => {
            for i in 0..len {
                r.string(limits, || value_field(key, stack, Some(i), ""))?;
            }
        }
        fixed => {
            let at = r.offset();
            let size = fixed.min_encoded_bytes();
            let b = r.take(len * size, || value_field(key, stack, None, " elements"))?;
            check_bools(fixed, b, at, |i| value_field(key, stack, Some(i), ""))?;
        }
    }
    Ok(())
}

fn check_bools(
    ty: ValueType,
    bytes: &[u8],
    at: u64,
    field: impl FnOnce(u64) -> String,
) -> Result<(), GgufError> {
    if ty != ValueType::Bool {
        return Ok(());
    }
    match bytes.iter().position(|&b| b > 1) {
        None => Ok(()),
        Some(i) => Err(GgufError::InvalidBool {
            field: field(i as u64),
            offset: at + i as u64,
            raw: bytes[i],
        }),
    }
}
