//! Every value type and every tensor type, written by testkit and read back, in GGUF v2
//! and v3.

use gguf::{GgmlType, GgufError, GgufFile, Value, ValueType};
use testkit::{GgufWriter, MetaArray, MetaValue, ggml};

fn scalars() -> Vec<(&'static str, MetaValue, Value<'static>)> {
    vec![
        ("t.u8", MetaValue::U8(0xfe), Value::U8(0xfe)),
        ("t.i8", MetaValue::I8(-7), Value::I8(-7)),
        ("t.u16", MetaValue::U16(0xbeef), Value::U16(0xbeef)),
        ("t.i16", MetaValue::I16(-30_000), Value::I16(-30_000)),
        (
            "t.u32",
            MetaValue::U32(0xdead_beef),
            Value::U32(0xdead_beef),
        ),
        ("t.i32", MetaValue::I32(i32::MIN), Value::I32(i32::MIN)),
        ("t.u64", MetaValue::U64(u64::MAX), Value::U64(u64::MAX)),
        ("t.i64", MetaValue::I64(-1 << 40), Value::I64(-1 << 40)),
        ("t.f32", MetaValue::F32(-1.5e-3), Value::F32(-1.5e-3)),
        (
            "t.f64",
            MetaValue::F64(std::f64::consts::PI),
            Value::F64(std::f64::consts::PI),
        ),
        ("t.bool", MetaValue::Bool(true), Value::Bool(true)),
        ("t.false", MetaValue::Bool(false), Value::Bool(false)),
        (
            "t.str",
            MetaValue::string("héllo"),
            Value::String("héllo".as_bytes()),
        ),
        ("t.empty", MetaValue::string(""), Value::String(b"")),
    ]
}

fn arrays() -> Vec<(&'static str, MetaArray)> {
    vec![
        ("a.u8", MetaArray::U8(vec![1, 2, 255])),
        ("a.i8", MetaArray::I8(vec![-128, 0, 127])),
        ("a.u16", MetaArray::U16(vec![1, 65535])),
        ("a.i16", MetaArray::I16(vec![-2, 2])),
        ("a.u32", MetaArray::U32(vec![7, 8, 9, u32::MAX])),
        ("a.i32", MetaArray::I32(vec![-1, 3, i32::MAX])),
        ("a.u64", MetaArray::U64(vec![u64::MAX, 0])),
        ("a.i64", MetaArray::I64(vec![i64::MIN])),
        ("a.f32", MetaArray::F32(vec![0.5, -0.25, f32::MAX])),
        ("a.f64", MetaArray::F64(vec![1e300, -0.0])),
        ("a.bool", MetaArray::Bool(vec![true, false, true])),
        (
            "a.str",
            MetaArray::String(vec![b"a".to_vec(), b"".to_vec(), "Ġthe".into()]),
        ),
        ("a.empty", MetaArray::U32(vec![])),
        (
            "a.nested",
            MetaArray::Array(vec![
                MetaArray::U32(vec![1, 2]),
                MetaArray::String(vec![b"x".to_vec()]),
                MetaArray::Array(vec![MetaArray::I8(vec![-1])]),
                MetaArray::F32(vec![]),
            ]),
        ),
    ]
}

fn writer(version: u32) -> GgufWriter {
    let mut w = GgufWriter::new().version(version);
    for (key, v, _) in scalars() {
        w = w.metadata(key, v);
    }
    for (key, a) in arrays() {
        w = w.metadata(key, MetaValue::Array(a));
    }
    w
}

#[test]
fn every_value_type_round_trips_in_v2_and_v3() -> Result<(), GgufError> {
    for version in [2, 3] {
        let bytes = writer(version).to_bytes();
        let file = GgufFile::parse(&bytes)?;
        file.check_invariants();
        assert_eq!(file.version(), version);
        assert_eq!(file.metadata().len(), scalars().len() + arrays().len());
        for (key, _, want) in scalars() {
            assert_eq!(file.get(key), Some(&want), "{key}");
        }
        let a = |k| file.get_array(k);
        assert_eq!(a("a.u8")?.iter_as::<u8>()?.collect::<Vec<_>>(), [1, 2, 255]);
        assert_eq!(
            a("a.i8")?.iter_as::<i8>()?.collect::<Vec<_>>(),
            [-128, 0, 127]
        );
        assert_eq!(
            a("a.u16")?.iter_as::<u16>()?.collect::<Vec<_>>(),
            [1, 65535]
        );
        assert_eq!(a("a.i16")?.iter_as::<i16>()?.collect::<Vec<_>>(), [-2, 2]);
        assert_eq!(
            a("a.u32")?.iter_u32()?.rev().collect::<Vec<_>>(),
            [u32::MAX, 9, 8, 7]
        );
        assert_eq!(a("a.u32")?.get_u32(2)?, 9);
        assert_eq!(
            a("a.i32")?.iter_i32()?.collect::<Vec<_>>(),
            [-1, 3, i32::MAX]
        );
        assert_eq!(a("a.i32")?.get_i32(0)?, -1);
        assert_eq!(
            a("a.u64")?.iter_as::<u64>()?.collect::<Vec<_>>(),
            [u64::MAX, 0]
        );
        assert_eq!(a("a.i64")?.get_as::<i64>(0)?, i64::MIN);
        assert_eq!(
            a("a.f32")?.iter_f32()?.collect::<Vec<_>>(),
            [0.5, -0.25, f32::MAX]
        );
        assert_eq!(a("a.f32")?.get_f32(1)?, -0.25);
        let f64s: Vec<f64> = a("a.f64")?.iter_as()?.collect();
        assert!(f64s[0] == 1e300 && f64s[1].is_sign_negative());
        assert_eq!(
            a("a.bool")?.iter_as::<bool>()?.collect::<Vec<_>>(),
            [true, false, true]
        );
        let strs: Vec<&str> = a("a.str")?.iter_str()?.collect::<Result<_, _>>()?;
        assert_eq!(strs, ["a", "", "Ġthe"]);
        assert_eq!(a("a.str")?.get_str(2)?, "Ġthe");
        assert_eq!(a("a.str")?.iter_bytes()?.len(), 3);
        assert_eq!(a("a.str")?.get(0), Some(Value::String(b"a")));
        assert!(a("a.empty")?.is_empty());
        assert_eq!(a("a.empty")?.elem_type(), ValueType::U32);

        let nested = a("a.nested")?;
        assert_eq!((nested.elem_type(), nested.len()), (ValueType::Array, 4));
        let inner: Vec<_> = nested
            .iter()
            .map(|v| v.as_array().expect("array"))
            .collect();
        assert_eq!(inner[0].iter_u32()?.collect::<Vec<_>>(), [1, 2]);
        assert_eq!(inner[1].get_str(0)?, "x");
        let deepest = inner[2].get(0).and_then(|v| v.as_array()).expect("nested");
        assert_eq!(deepest.get_as::<i8>(0)?, -1);
        assert!(inner[3].is_empty() && inner[3].elem_type() == ValueType::F32);
        assert_eq!(nested.get(1).and_then(|v| v.as_array()), Some(inner[1]));
        assert_eq!(nested.get(4), None);
    }
    Ok(())
}

#[test]
fn typed_getters_convert_and_name_the_key() -> Result<(), GgufError> {
    let bytes = writer(3).to_bytes();
    let file = GgufFile::parse(&bytes)?;
    assert_eq!(file.get_u32("t.u8")?, 0xfe);
    assert_eq!(file.get_u32("t.u16")?, 0xbeef);
    assert_eq!(file.get_u64("t.u64")?, u64::MAX);
    assert_eq!(file.get_i64("t.i64")?, -1 << 40);
    assert_eq!(file.get_f32("t.f32")?, -1.5e-3);
    assert_eq!(file.get_f32("t.f64")?, std::f64::consts::PI as f32);
    assert!(file.get_bool("t.bool")?);
    assert_eq!(file.get_str("t.str")?, "héllo");

    let err = file.get_u32("t.u64").unwrap_err();
    assert!(
        matches!(err, GgufError::OutOfRange { target: "u32", .. }),
        "{err}"
    );
    assert!(err.to_string().contains("metadata key 't.u64'"), "{err}");
    let err = file.get_u32("t.i8").unwrap_err();
    assert!(
        matches!(err, GgufError::OutOfRange { value: -7, .. }),
        "{err}"
    );
    let err = file.get_str("t.u32").unwrap_err();
    assert!(matches!(
        err,
        GgufError::WrongType {
            expected: "string",
            found: "u32",
            ..
        }
    ));
    let err = file.get_u32("no.such.key").unwrap_err();
    assert_eq!(
        err,
        GgufError::MissingKey {
            key: "no.such.key".into()
        }
    );
    assert_eq!(err.to_string(), "metadata key 'no.such.key' is missing");
    let err = file.get_array("a.u32")?.iter_f32().unwrap_err();
    assert!(err.to_string().contains("expected f32, found u32"), "{err}");
    let err = file.get_array("a.u32")?.get_u32(4).unwrap_err();
    assert!(
        matches!(
            err,
            GgufError::IndexOutOfBounds {
                index: 4,
                len: 4,
                ..
            }
        ),
        "{err}"
    );
    Ok(())
}

#[test]
fn invalid_utf8_is_reported_only_when_asked_for_str() -> Result<(), GgufError> {
    let bytes = GgufWriter::new()
        .metadata("s", MetaValue::String(vec![b'o', b'k', 0xff]))
        .metadata(
            "toks",
            MetaValue::Array(MetaArray::String(vec![b"a".to_vec(), vec![0xc3]])),
        )
        .to_bytes();
    let file = GgufFile::parse(&bytes)?;
    assert_eq!(
        file.get("s").and_then(Value::as_bytes),
        Some(&b"ok\xff"[..])
    );
    let err = file.get_str("s").unwrap_err();
    assert!(
        matches!(err, GgufError::InvalidUtf8 { valid_up_to: 2, .. }),
        "{err}"
    );
    let toks = file.get_array("toks")?;
    let results: Vec<_> = toks.iter_str()?.collect();
    assert_eq!(results[0], Ok("a"));
    let err = results[1].clone().unwrap_err();
    assert!(
        err.to_string()
            .starts_with("metadata key 'toks' value[1] at byte"),
        "{err}"
    );
    assert_eq!(bytes[err.offset().expect("offset") as usize], 0xc3);
    Ok(())
}

/// Bytes for a tensor of `n` elements of type `t`, with a recognizable pattern.
fn pattern(t: GgmlType, n: u64) -> Vec<u8> {
    let len = t.bytes_for(n).expect("whole blocks") as usize;
    (0..len).map(|i| (i * 31 + t.id() as usize) as u8).collect()
}

#[test]
fn every_tensor_type_round_trips_in_v2_and_v3() -> Result<(), GgufError> {
    for version in [2, 3] {
        for alignment in [None, Some(1), Some(64), Some(4096)] {
            let mut w = GgufWriter::new().version(version);
            if let Some(a) = alignment {
                w = w.alignment(a);
            }
            let mut expect = Vec::new();
            for (i, t) in GgmlType::ALL.into_iter().enumerate() {
                let dims = [t.block_size() * 2, 3, (i % 3 + 1) as u64];
                let n_dims = 1 + i % 3;
                let n: u64 = dims[..n_dims].iter().product();
                let data = pattern(t, n);
                let name = format!("t{i}.{}", t.name());
                w = w.tensor(&name, t.id(), &dims[..n_dims], data.clone());
                expect.push((name, t, dims[..n_dims].to_vec(), data));
            }
            let bytes = w.to_bytes();
            let file = GgufFile::parse(&bytes)?;
            file.check_invariants();
            let align = alignment.unwrap_or(32);
            assert_eq!(file.alignment(), align);
            assert_eq!(file.data_offset() % align, 0);
            assert_eq!(file.tensors().len(), GgmlType::ALL.len());
            for (info, (name, t, dims, data)) in file.tensors().iter().zip(&expect) {
                assert_eq!(info.name(), name);
                assert_eq!(file.tensor(name), Some(info));
                assert_eq!(info.ggml_type(), *t);
                assert_eq!(info.dims(), &dims[..]);
                assert_eq!(info.size_bytes(), data.len() as u64);
                assert_eq!(file.tensor_data(info), &data[..], "{name}");
                assert_eq!(info.offset() % align, 0);
            }
        }
    }
    Ok(())
}

#[test]
fn empty_file_without_tensors_parses() -> Result<(), GgufError> {
    // The writer pads the header to the alignment; a file cut right after the header,
    // with no tensors, has nothing to pad for and still parses.
    let bytes = GgufWriter::new().to_bytes();
    assert_eq!(bytes.len(), 32);
    let file = GgufFile::parse(&bytes[..24])?;
    assert!(file.metadata().is_empty() && file.tensors().is_empty());
    assert_eq!(file.data_offset(), 32);
    Ok(())
}

#[test]
fn display_summarizes_metadata_and_tensors() -> Result<(), GgufError> {
    let bytes = writer(3)
        .metadata("q", MetaValue::string("say \"hi\"\n"))
        .metadata("long", MetaValue::Array(MetaArray::U32((0..100).collect())))
        .tensor("w", ggml::Q8_0, &[32, 2], vec![0; 68])
        .to_bytes();
    let file = GgufFile::parse(&bytes)?;
    let text = file.to_string();
    assert!(
        text.starts_with("GGUF v3: 30 metadata pairs, 1 tensors, alignment 32"),
        "{text}"
    );
    assert!(text.contains("  t.u32: u32 = 3735928559\n"), "{text}");
    assert!(text.contains("  t.f32: f32 = -0.0015\n"), "{text}");
    assert!(
        text.contains("  q: string = \"say \\\"hi\\\"\\n\"\n"),
        "{text}"
    );
    assert!(text.contains("  long: array<u32> = [0, 1, 2, 3, 4, 5, 6, 7, … (100 items)]"));
    assert!(text.contains("  a.nested: array<array> = [[1, 2], [\"x\"], [[-1]], []]"));
    assert!(text.contains("  w q8_0 [32, 2] @0 68 bytes\n"), "{text}");
    let long = file
        .metadata()
        .iter()
        .find(|kv| kv.key() == "long")
        .expect("long");
    assert_eq!(format!("{long:#}").matches(", ").count(), 99);
    Ok(())
}
