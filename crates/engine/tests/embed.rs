//! [`Engine::embed`] on the real model: a text's embedding is the same alone or in a
//! batch, unit length, and different texts give different embeddings.

mod common_model;

use common_model::model_path;

use engine::batch::{BatchConfig, Engine};

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

#[test]
#[cfg_attr(not(llmem_model), ignore = "needs the model: scripts/fetch-model.sh")]
fn embeddings_are_unit_length_equal_alone_or_batched_and_tell_texts_apart() {
    let Some(path) = model_path() else { return };
    let file = weights::MappedFile::open(&path).unwrap();
    let gguf = gguf::GgufFile::parse(file.bytes()).unwrap();
    let tm = engine::text::TextModel::from_gguf(&gguf).unwrap();
    let mut e = Engine::unbudgeted(&tm.model, BatchConfig::new(256, 4, 2)).unwrap();
    let a = tm.encode("The cat sat on the mat.");
    let b = tm.encode("Quarterly revenue grew by twelve percent.");
    let alone = e.embed(&[&a]).unwrap().remove(0);
    assert_eq!(alone.len(), tm.model.cfg.d_model);
    assert!((dot(&alone, &alone) - 1.0).abs() < 1e-5, "not unit length");
    let both = e.embed(&[&b, &a]).unwrap();
    // Row-wise kernels sum in the same order whatever else is in the batch.
    assert_eq!(both[1], alone, "a text's embedding changed inside a batch");
    let again = e.embed(&[&a]).unwrap().remove(0);
    assert_eq!(again, alone, "the same text twice gave two embeddings");
    let cos = dot(&both[0], &alone);
    assert!(cos < 0.99, "two different texts have cosine {cos}");
    // Nothing stays behind: no live sequence.
    assert_eq!(e.seq_ids().count(), 0);
    // An empty prompt or a token outside the vocabulary is an error, leaving nothing.
    assert!(e.embed(&[&a, &[]]).is_err());
    assert!(e.embed(&[&[u32::MAX]]).is_err());
    assert_eq!(e.seq_ids().count(), 0);
    e.check_invariants();
}
