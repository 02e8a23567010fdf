//! Truncation at every byte offset and thousands of seeded random corruptions: every
//! parse returns `Ok` or `Err`, never panics, and allocates at most a small multiple of
//! the input's size.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use gguf::{GgufError, GgufFile, Value};
use testkit::{
    GgufWriter, MetaArray, MetaValue, TinyLlamaConfig, WeightType, corrupt, ggml, tiny_llama,
};

/// Counts the bytes this thread asks the allocator for, so each parse can be bounded.
struct CountingAlloc;

thread_local! {
    static REQUESTED: Cell<usize> = const { Cell::new(0) };
}

fn note(size: usize) {
    // `try_with` fails only during thread teardown, when nothing is being measured.
    let _ = REQUESTED.try_with(|r| r.set(r.get().saturating_add(size)));
}

// SAFETY: every method forwards to `System` with the caller's arguments unchanged, so
// `System`'s guarantees carry over; the counting touches only a const-initialized
// thread-local `Cell`, which never allocates.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: same layout contract as our caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System` via `alloc`/`realloc` above with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: same layout contract as our caller's.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        // SAFETY: `ptr`/`layout` come from this allocator, `new_size` from our caller.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

/// Bytes requested while parsing `bytes` (errors included: their messages allocate).
fn parse_counting(bytes: &[u8]) -> (Result<GgufFile<'_>, GgufError>, usize) {
    let before = REQUESTED.with(Cell::get);
    let result = GgufFile::parse(bytes);
    (result, REQUESTED.with(Cell::get) - before)
}

/// Allowed allocation for a parse of `len` bytes: the index structures cost a few times
/// the bytes they index, and error messages a few hundred bytes.
fn alloc_bound(len: usize) -> usize {
    32 * len + (64 << 10)
}

/// Touches everything a successful parse exposes.
fn walk(file: &GgufFile<'_>) -> u64 {
    fn value(v: &Value<'_>) -> u64 {
        match v {
            Value::Array(a) => a.iter().map(|e| value(&e)).sum::<u64>() + 1,
            Value::String(s) => s.len() as u64,
            other => u64::from(other.as_i128().is_some()) + 1,
        }
    }
    file.check_invariants();
    let mut n = file
        .metadata()
        .iter()
        .map(|kv| value(kv.value()))
        .sum::<u64>();
    for kv in file.metadata() {
        let _ = kv.to_string();
        if let Value::Array(a) = kv.value() {
            n += a
                .iter_str()
                .map(|it| it.filter(Result::is_ok).count() as u64)
                .unwrap_or(0);
        }
    }
    for t in file.tensors() {
        n += file
            .tensor_data(t)
            .iter()
            .map(|&b| u64::from(b))
            .sum::<u64>();
    }
    n
}

fn all_types_file() -> Vec<u8> {
    GgufWriter::new()
        .alignment(64)
        .metadata("u8", MetaValue::U8(1))
        .metadata("i16", MetaValue::I16(-2))
        .metadata("u64", MetaValue::U64(3))
        .metadata("f64", MetaValue::F64(0.5))
        .metadata("b", MetaValue::Bool(true))
        .metadata("s", MetaValue::string("str"))
        .metadata("toks", MetaValue::strings(["<s>", "Ġa", "b"]))
        .metadata("f", MetaValue::Array(MetaArray::F32(vec![1.0, 2.0])))
        .metadata("bs", MetaValue::Array(MetaArray::Bool(vec![false, true])))
        .metadata(
            "nest",
            MetaValue::Array(MetaArray::Array(vec![
                MetaArray::I64(vec![-1]),
                MetaArray::String(vec![b"x".to_vec()]),
            ])),
        )
        .tensor("f32", ggml::F32, &[4, 2], vec![1; 32])
        .tensor("q8", ggml::Q8_0, &[32], vec![2; 34])
        .tensor("q4", ggml::Q4_1, &[64, 1, 2], vec![3; 80])
        .to_bytes()
}

fn bases() -> Vec<(&'static str, Vec<u8>)> {
    let tiny = |weight_type, gguf_version| {
        tiny_llama(&TinyLlamaConfig {
            weight_type,
            gguf_version,
            ..TinyLlamaConfig::default()
        })
        .bytes
    };
    vec![
        ("all types", all_types_file()),
        ("tiny llama q4_0 v2", tiny(WeightType::Q4_0, 2)),
        ("tiny llama q4_1 v3", tiny(WeightType::Q4_1, 3)),
    ]
}

#[test]
fn truncated_at_every_offset() {
    for (what, bytes) in bases() {
        let full = GgufFile::parse(&bytes).expect("the base parses");
        let data_end = full
            .tensors()
            .iter()
            .map(|t| t.data().len() as u64 + t.offset())
            .max();
        let needed = (full.data_offset() + data_end.expect("has tensors")) as usize;
        let mut errors = 0;
        for prefix in corrupt::truncations(&bytes) {
            let (result, allocated) = parse_counting(prefix);
            assert!(
                allocated <= alloc_bound(prefix.len()),
                "{what}: {allocated} bytes"
            );
            match result {
                Ok(file) => {
                    assert!(
                        prefix.len() >= needed,
                        "{what}: cut at {} parsed",
                        prefix.len()
                    );
                    walk(&file);
                }
                Err(e) => {
                    assert!(
                        prefix.len() < needed,
                        "{what}: cut at {}: {e}",
                        prefix.len()
                    );
                    assert!(e.offset().is_some_and(|o| o <= prefix.len() as u64), "{e}");
                    errors += 1;
                }
            }
        }
        assert_eq!(errors, needed, "{what}");
    }
}

#[test]
fn seeded_random_corruptions() {
    const PER_BASE: usize = 4000;
    for (seed, (what, bytes)) in bases().into_iter().enumerate() {
        let (mut ok, mut err) = (0, 0);
        for (i, mutated) in corrupt::corruptions(&bytes, seed as u64, PER_BASE).enumerate() {
            let (result, allocated) = parse_counting(&mutated);
            assert!(
                allocated <= alloc_bound(mutated.len()),
                "{what} #{i}: {allocated} bytes"
            );
            match result {
                Ok(file) => {
                    walk(&file);
                    ok += 1;
                }
                Err(e) => {
                    assert!(e.offset().is_none_or(|o| o <= mutated.len() as u64), "{e}");
                    assert!(!e.to_string().is_empty());
                    err += 1;
                }
            }
        }
        eprintln!("{what}: {ok} corruptions parsed, {err} refused");
        assert!(
            err > PER_BASE / 4,
            "{what}: corruptions should mostly be caught"
        );
    }
}

#[test]
fn seeded_random_corruptions_of_the_header() {
    const PER_BASE: usize = 3000;
    for (seed, (what, bytes)) in bases().into_iter().enumerate() {
        let header_end = GgufFile::parse(&bytes).expect("valid").data_offset() as usize;
        let (mut ok, mut err) = (0, 0);
        let seed = 100 + seed as u64;
        for mutated in corrupt::corruptions_within(&bytes, 0..header_end, seed, PER_BASE) {
            let (result, allocated) = parse_counting(&mutated);
            assert!(
                allocated <= alloc_bound(mutated.len()),
                "{what}: {allocated} bytes"
            );
            match result {
                Ok(file) => {
                    walk(&file);
                    ok += 1;
                }
                Err(_) => err += 1,
            }
        }
        eprintln!("{what} header: {ok} corruptions parsed, {err} refused");
        assert!(
            err > PER_BASE / 2,
            "{what}: header corruptions should mostly be caught"
        );
    }
}

#[test]
fn single_byte_flips_of_the_header() {
    let bytes = all_types_file();
    let header_end = GgufFile::parse(&bytes).expect("valid").data_offset() as usize;
    for at in 0..header_end {
        for mask in [0x01, 0x80, 0xff] {
            let mutated = corrupt::flip_byte(&bytes, at, mask);
            let (result, allocated) = parse_counting(&mutated);
            assert!(allocated <= alloc_bound(mutated.len()));
            if let Ok(file) = result {
                walk(&file);
            }
        }
    }
}
