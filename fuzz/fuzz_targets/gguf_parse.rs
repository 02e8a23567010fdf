//! Parses arbitrary bytes as GGUF; on success walks every metadata value, array element
//! and tensor's bytes, and checks the file's invariants.
//!
//! Seed the corpus with `cargo run -p testkit --example fuzz_corpus -- fuzz/corpus/gguf_parse`
//! from the workspace root.

#![no_main]

use gguf::{GgufFile, Limits, Value, ValueType};
use libfuzzer_sys::fuzz_target;

/// Tight caps, so the limit paths are exercised on small inputs too.
const TIGHT: Limits = Limits {
    max_string_bytes: 64,
    max_array_len: 16,
    max_metadata_count: 8,
    max_tensor_count: 4,
    max_dims: 3,
    max_nesting_depth: 2,
    max_alignment: 256,
};

fuzz_target!(|data: &[u8]| {
    if let Ok(file) = GgufFile::parse(data) {
        walk(&file);
    }
    if let Ok(file) = GgufFile::parse_with_limits(data, &TIGHT) {
        walk(&file);
    }
});

fn walk(file: &GgufFile<'_>) {
    file.check_invariants();
    let mut sink = 0u64;
    for kv in file.metadata() {
        // Compared by address: a NaN value is not equal to itself.
        assert!(
            file.get(kv.key())
                .is_some_and(|v| std::ptr::eq(v, kv.value()))
        );
        sink += walk_value(kv.value());
        sink += kv.to_string().len() as u64;
    }
    for t in file.tensors() {
        assert_eq!(file.tensor(t.name()).map(|x| x.name()), Some(t.name()));
        let data = file.tensor_data(t);
        assert_eq!(data.len() as u64, t.size_bytes());
        sink += data.iter().map(|&b| u64::from(b)).sum::<u64>();
        sink += t.to_string().len() as u64;
    }
    std::hint::black_box(sink);
}

/// Depth is bounded by the parse limits (at most 3 by default), so recursion is shallow.
fn walk_value(v: &Value<'_>) -> u64 {
    let Value::Array(a) = v else {
        return u64::from(v.as_i128().is_some() || v.as_f64().is_some() || v.as_bytes().is_some());
    };
    let mut n = 0;
    let mut count = 0;
    for e in a.iter() {
        assert_eq!(e.value_type(), a.elem_type());
        n += walk_value(&e);
        count += 1;
    }
    assert_eq!(count, a.len());
    // The typed views must agree with the generic one.
    let typed = match a.elem_type() {
        ValueType::U8 => a.iter_as::<u8>().map(Iterator::count),
        ValueType::I8 => a.iter_as::<i8>().map(Iterator::count),
        ValueType::U16 => a.iter_as::<u16>().map(Iterator::count),
        ValueType::I16 => a.iter_as::<i16>().map(Iterator::count),
        ValueType::U32 => a.iter_u32().map(Iterator::count),
        ValueType::I32 => a.iter_i32().map(Iterator::count),
        ValueType::U64 => a.iter_as::<u64>().map(Iterator::count),
        ValueType::I64 => a.iter_as::<i64>().map(Iterator::count),
        ValueType::F32 => a.iter_f32().map(Iterator::count),
        ValueType::F64 => a.iter_as::<f64>().map(Iterator::count),
        ValueType::Bool => a.iter_as::<bool>().map(Iterator::count),
        ValueType::String => a.iter_str().map(Iterator::count),
        _ => Ok(a.len()),
    };
    assert_eq!(typed.ok(), Some(a.len()));
    if let Some(last) = a.len().checked_sub(1) {
        assert_eq!(a.get(last).map(|e| e.value_type()), Some(a.elem_type()));
    }
    assert!(a.get(a.len()).is_none());
    n
}
