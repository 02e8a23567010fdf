//! Hand-made hostile files: each must be refused with an error naming the field and its
//! byte offset, without allocating for the absurd value.

use gguf::{GgufError, GgufFile, Limits, ValueType};
use testkit::corrupt::{patch_u32, patch_u64};
use testkit::{GgufWriter, MetaArray, MetaValue, ggml};

/// Caps lifted as far as they go: only the bytes themselves bound a parse.
const NO_CAPS: Limits = Limits {
    max_string_bytes: u64::MAX,
    max_array_len: u64::MAX,
    max_metadata_count: u64::MAX,
    max_tensor_count: u64::MAX,
    max_dims: u32::MAX,
    max_nesting_depth: u32::MAX,
    max_alignment: u64::MAX,
};

fn refused(bytes: &[u8]) -> GgufError {
    match GgufFile::parse(bytes) {
        Ok(_) => panic!("a hostile file parsed"),
        Err(e) => e,
    }
}

fn refused_with(bytes: &[u8], limits: &Limits) -> GgufError {
    match GgufFile::parse_with_limits(bytes, limits) {
        Ok(_) => panic!("a hostile file parsed"),
        Err(e) => e,
    }
}

fn small() -> GgufWriter {
    GgufWriter::new()
        .metadata("general.architecture", MetaValue::string("llama"))
        .metadata("toks", MetaValue::strings(["a", "bb", "ccc"]))
        .metadata("ids", MetaValue::Array(MetaArray::U32(vec![1, 2, 3])))
        .tensor("a", ggml::F32, &[8], vec![0; 32])
        .tensor("b", ggml::Q8_0, &[32, 2], vec![0; 68])
}

#[test]
fn small_file_is_valid_to_begin_with() {
    let bytes = small().to_bytes();
    let file = GgufFile::parse(&bytes).expect("valid");
    file.check_invariants();
    assert_eq!(file.tensors().len(), 2);
}

#[test]
fn string_length_u64_max() {
    let (mut b, l) = small().to_bytes_with_layout();
    patch_u64(&mut b, l.metadata[0].key_len_at, u64::MAX);
    let err = refused(&b);
    let want = GgufError::LimitExceeded {
        field: "metadata[0].key length".into(),
        offset: l.metadata[0].key_len_at as u64,
        value: u64::MAX,
        limit: gguf::MAX_STRING_BYTES,
        limit_name: "max_string_bytes",
    };
    assert_eq!(err, want);
    assert_eq!(
        err.to_string(),
        "metadata[0].key length at byte 24: 18446744073709551615 exceeds \
         Limits::max_string_bytes = 1048576"
    );
    // Without the cap, the length is still checked against the bytes left.
    let err = refused_with(&b, &NO_CAPS);
    assert!(
        matches!(
            err,
            GgufError::Truncated {
                needed: u64::MAX,
                ..
            }
        ),
        "{err}"
    );

    let (mut b, l) = small().to_bytes_with_layout();
    patch_u64(&mut b, l.metadata[0].value_at, u64::MAX);
    let err = refused(&b);
    assert!(
        err.to_string()
            .starts_with("metadata key 'general.architecture' value length")
    );
}

#[test]
fn string_array_element_length_is_checked() {
    let (mut b, l) = small().to_bytes_with_layout();
    // toks: elem type (4) | len (8) | "a" (8 + 1) | "bb" length here
    let second = l.metadata[1].value_at + 12 + 9;
    patch_u64(&mut b, second, 1 << 30);
    let err = refused(&b);
    assert_eq!(err.offset(), Some(second as u64));
    assert!(
        err.to_string()
            .starts_with("metadata key 'toks' value[1] length"),
        "{err}"
    );
}

#[test]
fn array_length_2_pow_60() {
    let (mut b, l) = small().to_bytes_with_layout();
    let len_at = l.metadata[2].value_at + 4;
    patch_u64(&mut b, len_at, 1 << 60);
    let err = refused(&b);
    assert!(
        matches!(&err, GgufError::LimitExceeded { limit_name: "max_array_len", offset, .. }
            if *offset == len_at as u64),
        "{err}"
    );
    assert!(
        err.to_string()
            .starts_with("metadata key 'ids' value length")
    );
    let err = refused_with(&b, &NO_CAPS);
    assert!(matches!(err, GgufError::Truncated { .. }), "{err}");
    // A string array of 2^60 elements: each needs 8 bytes, refused before any loop.
    let (mut b, l) = small().to_bytes_with_layout();
    patch_u64(&mut b, l.metadata[1].value_at + 4, 1 << 60);
    let err = refused_with(&b, &NO_CAPS);
    assert!(
        matches!(
            err,
            GgufError::Truncated {
                needed: 0x8000_0000_0000_0000,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn tensor_and_metadata_counts_2_pow_40() {
    let (mut b, l) = small().to_bytes_with_layout();
    patch_u64(&mut b, l.tensor_count_at, 1 << 40);
    let err = refused(&b);
    assert_eq!(
        err.to_string(),
        "header.tensor_count at byte 8: 1099511627776 exceeds Limits::max_tensor_count = 65536"
    );
    let err = refused_with(&b, &NO_CAPS);
    assert!(
        err.to_string()
            .starts_with("tensor index (1099511627776 tensors)"),
        "{err}"
    );

    let (mut b, l) = small().to_bytes_with_layout();
    patch_u64(&mut b, l.metadata_count_at, 1 << 40);
    assert!(matches!(
        refused(&b),
        GgufError::LimitExceeded { offset: 16, .. }
    ));
    assert!(matches!(
        refused_with(&b, &NO_CAPS),
        GgufError::Truncated { offset: 24, .. }
    ));
    // Under the cap, but more pairs than the bytes can hold.
    patch_u64(&mut b, l.metadata_count_at, 60_000);
    assert!(matches!(
        refused(&b),
        GgufError::Truncated { offset: 24, .. }
    ));
}

#[test]
fn n_dims_5() {
    let (mut b, l) = small().to_bytes_with_layout();
    patch_u32(&mut b, l.tensors[1].n_dims_at, 5);
    let err = refused(&b);
    assert_eq!(
        err.to_string(),
        format!(
            "tensor[1].n_dims ('b') at byte {}: 5 exceeds Limits::max_dims = 4",
            l.tensors[1].n_dims_at
        )
    );
    // max_dims above 4 acts as 4: a Shape holds four dimensions.
    assert!(matches!(
        refused_with(&b, &NO_CAPS),
        GgufError::LimitExceeded { limit: 4, .. }
    ));
}

#[test]
fn dims_product_overflow_and_zero_dim() {
    let w = GgufWriter::new().tensor("big", ggml::F32, &[1 << 32, 1 << 32], vec![]);
    let (b, l) = w.to_bytes_with_layout();
    let err = refused(&b);
    assert_eq!(
        err,
        GgufError::ShapeOverflow {
            field: "tensor[0].dims[1] ('big')".into(),
            offset: l.tensors[0].dims_at as u64 + 8,
        }
    );
    // Elements fit in u64 but bytes do not: 2^64 − 32 Q8_0 elements take (2^59 − 1) · 34.
    let b = GgufWriter::new()
        .tensor("q", ggml::Q8_0, &[u64::MAX - 31], vec![])
        .to_bytes();
    let err = refused(&b);
    let is_type = |f: &str| f == "tensor[0].type ('q')";
    assert!(
        matches!(&err, GgufError::ShapeOverflow { field, .. } if is_type(field)),
        "{err}"
    );
    // Fits in u64 but not in the file.
    let b = GgufWriter::new()
        .tensor("f", ggml::F32, &[1 << 40, 1 << 20], vec![])
        .to_bytes();
    assert!(matches!(refused(&b), GgufError::TensorOutOfBounds { .. }));

    let (mut b, l) = small().to_bytes_with_layout();
    patch_u64(&mut b, l.tensors[1].dims_at + 8, 0);
    let err = refused(&b);
    assert!(
        err.to_string()
            .starts_with("tensor[1].dims[1] ('b') at byte"),
        "{err}"
    );
    assert!(matches!(err, GgufError::InvalidDim { value: 0, .. }));
}

#[test]
fn first_dim_must_be_whole_blocks() {
    let b = GgufWriter::new()
        .tensor("q", ggml::Q4_0, &[16, 2], vec![0; 18])
        .to_bytes();
    let err = refused(&b);
    assert!(
        matches!(
            err,
            GgufError::NotBlockMultiple {
                ne0: 16,
                block_size: 32,
                ..
            }
        ),
        "{err}"
    );
    assert!(
        err.to_string()
            .contains("first dimension 16 is not a multiple of the q4_0 block size 32")
    );
}

#[test]
fn offset_past_end_and_overflowing() {
    for bad in [1 << 20, u64::MAX - 31] {
        let (mut b, l) = small().to_bytes_with_layout();
        patch_u64(&mut b, l.tensors[1].offset_at, bad);
        let err = refused(&b);
        assert!(
            matches!(&err, GgufError::TensorOutOfBounds { tensor_offset, offset, .. }
                if *tensor_offset == bad && *offset == l.tensors[1].offset_at as u64),
            "{err}"
        );
        assert!(
            err.to_string().starts_with("tensor[1].offset ('b')"),
            "{err}"
        );
    }
    // One byte short: the last tensor's data is cut.
    let b = small().to_bytes();
    let (_, l) = small().to_bytes_with_layout();
    let end = l.tensors[1].data_at + 68;
    assert!(GgufFile::parse(&b[..end]).is_ok());
    assert!(matches!(
        refused(&b[..end - 1]),
        GgufError::TensorOutOfBounds { .. }
    ));
}

#[test]
fn misaligned_offset() {
    let (mut b, l) = small().to_bytes_with_layout();
    patch_u64(&mut b, l.tensors[1].offset_at, 33);
    let err = refused(&b);
    assert_eq!(
        err,
        GgufError::TensorMisaligned {
            field: "tensor[1].offset ('b')".into(),
            offset: l.tensors[1].offset_at as u64,
            tensor_offset: 33,
            alignment: 32,
        }
    );
}

#[test]
fn overlapping_tensors() {
    let (mut b, l) = small().to_bytes_with_layout();
    patch_u64(&mut b, l.tensors[1].offset_at, 0);
    let err = refused(&b);
    assert!(
        matches!(&err, GgufError::TensorOverlap { other, .. } if other == "a"),
        "{err}"
    );
}

#[test]
fn alignment_0_3_2_pow_40_and_wrong_types() {
    let with = |v: MetaValue| small().metadata("general.alignment", v).to_bytes();
    let err = refused(&with(MetaValue::U32(0)));
    assert!(
        matches!(err, GgufError::InvalidAlignment { value: 0, .. }),
        "{err}"
    );
    let err = refused(&with(MetaValue::U32(3)));
    assert!(
        matches!(err, GgufError::InvalidAlignment { value: 3, .. }),
        "{err}"
    );
    assert!(
        err.to_string()
            .starts_with("metadata key 'general.alignment' at byte")
    );
    assert!(
        err.to_string()
            .ends_with("alignment 3 is not a power of two"),
        "{err}"
    );
    let err = refused(&with(MetaValue::U64(1 << 40)));
    assert!(
        matches!(
            err,
            GgufError::LimitExceeded {
                limit_name: "max_alignment",
                ..
            }
        ),
        "{err}"
    );
    let err = refused(&with(MetaValue::I32(-32)));
    assert!(
        matches!(err, GgufError::OutOfRange { value: -32, .. }),
        "{err}"
    );
    let err = refused(&with(MetaValue::string("32")));
    assert!(
        matches!(
            err,
            GgufError::WrongType {
                found: "string",
                ..
            }
        ),
        "{err}"
    );
    // A valid override is honoured by the writer and the reader alike.
    let file_bytes = small().alignment(256).to_bytes();
    let file = GgufFile::parse(&file_bytes).expect("valid");
    assert_eq!((file.alignment(), file.data_offset() % 256), (256, 0));
}

/// `depth` nested array headers (each of one element) around an empty u8 array.
fn nested_array_file(depth: usize) -> Vec<u8> {
    let mut b = GgufWriter::new().to_bytes();
    b.truncate(24);
    patch_u64(&mut b, 16, 1);
    b.extend(1u64.to_le_bytes());
    b.push(b'n');
    b.extend(ValueType::Array.id().to_le_bytes());
    for _ in 1..depth {
        b.extend(ValueType::Array.id().to_le_bytes());
        b.extend(1u64.to_le_bytes());
    }
    b.extend(ValueType::U8.id().to_le_bytes());
    b.extend(0u64.to_le_bytes());
    b
}

#[test]
fn nested_array_depth_100() {
    let b = nested_array_file(100);
    let err = refused(&b);
    assert!(
        matches!(
            err,
            GgufError::LimitExceeded {
                value: 4,
                limit: 3,
                limit_name: "max_nesting_depth",
                ..
            }
        ),
        "{err}"
    );
    assert!(
        err.to_string()
            .starts_with("metadata key 'n' value[0][0][0] array nesting depth")
    );
    // Depth within the defaults parses.
    let file_bytes = nested_array_file(3);
    let file = GgufFile::parse(&file_bytes).expect("depth 3");
    let mut v = *file.get("n").expect("n");
    for _ in 0..2 {
        v = v.as_array().and_then(|a| a.get(0)).expect("one element");
    }
    assert_eq!(
        v.as_array().map(|a| (a.elem_type(), a.len())),
        Some((ValueType::U8, 0))
    );
    // The walker is iterative: an absurd depth costs heap, not stack.
    let deep = nested_array_file(200_000);
    let file = GgufFile::parse_with_limits(&deep, &NO_CAPS).expect("deep but well-formed");
    assert_eq!(file.get_array("n").map(|a| a.len()), Ok(1));
    // Display stops descending after 8 levels.
    assert_eq!(file.get("n").expect("n").to_string(), "[[[[[[[[[…]]]]]]]]]");
}

#[test]
fn duplicate_names() {
    let b = small().metadata("toks", MetaValue::U8(1)).to_bytes();
    let err = refused(&b);
    assert!(
        matches!(&err, GgufError::DuplicateKey { key, first_offset, .. }
        if key == "toks" && *first_offset > 24),
        "{err}"
    );
    let b = small().tensor("a", ggml::F32, &[8], vec![0; 32]).to_bytes();
    let err = refused(&b);
    assert!(matches!(&err, GgufError::DuplicateTensor { name, first_index: 0, .. } if name == "a"));
    assert!(err.to_string().starts_with("tensor[2].name ('a')"), "{err}");
}

#[test]
fn header_refusals() {
    let good = small().to_bytes();
    let mut b = good.clone();
    b[..4].copy_from_slice(b"GGML");
    assert_eq!(refused(&b), GgufError::BadMagic { found: *b"GGML" });
    for (version, want) in [
        (1, GgufError::UnsupportedVersion { version: 1 }),
        (4, GgufError::UnsupportedVersion { version: 4 }),
        (0, GgufError::UnsupportedVersion { version: 0 }),
        (3u32.swap_bytes(), GgufError::BigEndian { version: 3 }),
        (2u32.swap_bytes(), GgufError::BigEndian { version: 2 }),
    ] {
        let mut b = good.clone();
        patch_u32(&mut b, 4, version);
        assert_eq!(refused(&b), want);
    }
    assert!(
        refused(&b"GGUF\x01\0\0\0"[..])
            .to_string()
            .contains("version 1 is not supported")
    );
    assert!(
        refused(&b"GGUF\0\0\0\x03"[..])
            .to_string()
            .contains("big-endian")
    );
    assert!(matches!(
        refused(b"GG"),
        GgufError::Truncated {
            needed: 4,
            available: 2,
            ..
        }
    ));
}

#[test]
fn bad_type_ids_bools_and_utf8() {
    let (mut b, l) = small().to_bytes_with_layout();
    patch_u32(&mut b, l.metadata[2].type_at, 13);
    assert!(matches!(
        refused(&b),
        GgufError::UnknownValueType { raw: 13, .. }
    ));
    let (mut b, l) = small().to_bytes_with_layout();
    patch_u32(&mut b, l.metadata[2].value_at, 99);
    let err = refused(&b);
    assert!(
        err.to_string()
            .starts_with("metadata key 'ids' value element type"),
        "{err}"
    );
    let (mut b, l) = small().to_bytes_with_layout();
    patch_u32(&mut b, l.tensors[0].type_at, 4); // retired Q4_2
    let err = refused(&b);
    assert!(
        matches!(err, GgufError::UnknownGgmlType { raw: 4, .. }),
        "{err}"
    );

    let (mut b, l) = GgufWriter::new()
        .metadata(
            "flags",
            MetaValue::Array(MetaArray::Bool(vec![true, false, true])),
        )
        .to_bytes_with_layout();
    b[l.metadata[0].value_at + 12 + 2] = 2;
    let err = refused(&b);
    assert_eq!(
        err,
        GgufError::InvalidBool {
            field: "metadata key 'flags' value[2]".into(),
            offset: (l.metadata[0].value_at + 14) as u64,
            raw: 2,
        }
    );

    let (mut b, l) = small().to_bytes_with_layout();
    b[l.tensors[0].name_len_at + 8] = 0xff;
    let err = refused(&b);
    assert!(matches!(&err, GgufError::InvalidUtf8 { field, .. } if field == "tensor[0].name"));
}
