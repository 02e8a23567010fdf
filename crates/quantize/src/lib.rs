//! `quantize` converts a GGUF model's weights to another type, tensor by tensor, choosing
//! each tensor's type as llama.cpp's `llama-quantize` does, and writes a GGUF file that
//! llama.cpp and llmem load.
//!
//! [`plan`] decides every tensor's type ([`Target`] names the mix; see [`mix`] for the
//! rules) and refuses what cannot be done before a byte is written; [`write`] streams the
//! new file: the header, then each tensor dequantized to f32 and encoded
//! ([`kernels::quant::encode`]) a chunk of rows at a time, so memory stays at
//! [`Plan::scratch_bytes`] however large the model is.
//!
//! ```
//! # let bytes = testkit::GgufWriter::new()
//! #     .metadata("general.architecture", testkit::MetaValue::string("llama"))
//! #     .tensor("blk.0.ffn_up.weight", 0, &[32, 2], vec![0; 256])
//! #     .to_bytes();
//! let file = gguf::GgufFile::parse(&bytes)?;
//! let plan = quantize::plan(&file, quantize::Target::Q8_0, quantize::Requantize::Refuse)?;
//! let out = quantize::write(&file, &plan, Vec::new(), 1, |_, _| {})?;
//! let q = gguf::GgufFile::parse(&out)?;
//! assert_eq!(q.tensor("blk.0.ffn_up.weight").unwrap().ggml_type(), gguf::GgmlType::Q8_0);
//! assert_eq!(q.get_u32("general.file_type")?, 7);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::borrow::Cow;
use std::io::Write;

use gguf::{GgmlType, GgufFile, GgufWriter, KvEntry, TensorEntry};
use kernels::quant::WType;
use kernels::quant::encode::{self, NoEncoder};

pub mod mix;

pub use mix::{Target, UnknownTarget};

/// ggml's quantization format version, which llama.cpp writes into every file it
/// quantizes (`general.quantization_version`).
pub const QUANTIZATION_VERSION: u32 = 2;

/// Output bytes encoded between two writes.
const CHUNK_BYTES: u64 = 4 << 20;

/// Whether a tensor that is already quantized may be dequantized and quantized again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Requantize {
    Refuse,
    Allow,
}

/// Why a model cannot be quantized.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum QuantizeError {
    /// The tensor is quantized and requantizing was not allowed.
    #[error(
        "tensor '{tensor}' is already quantized ({from}); quantizing it again loses quality \
         twice: pass --allow-requantize to do it anyway, or start from an F32/F16/BF16 file"
    )]
    RequantizeRefused { tensor: String, from: GgmlType },
    /// The tensor's type has no decoder here.
    #[error("tensor '{tensor}' is {from}, which cannot be read for conversion")]
    UnsupportedSource { tensor: String, from: GgmlType },
    /// The chosen type has no encoder (a bug in the mix).
    #[error("tensor '{tensor}': {source}")]
    NoEncoder {
        tensor: String,
        #[source]
        source: NoEncoder,
    },
    /// One file of a split model: the others are not read.
    #[error("the model is split into {0} files; merge them first (llama-gguf-split --merge)")]
    Split(u64),
    /// A weight that is NaN or infinite.
    #[error("tensor '{tensor}' row {row} holds a value that is not finite; the file is corrupt")]
    NonFinite { tensor: String, row: u64 },
    /// A buffer could not be allocated.
    #[error("cannot allocate {bytes} bytes of scratch")]
    OutOfMemory { bytes: u64 },
    /// Writing failed (a full disk is reported as such by the I/O error).
    #[error(transparent)]
    Write(#[from] gguf::WriteError),
}

/// One tensor of the plan.
#[derive(Debug, Clone)]
pub struct Step {
    pub name: String,
    pub dims: Vec<u64>,
    pub from: GgmlType,
    pub to: GgmlType,
    /// Bytes in the new file.
    pub bytes: u64,
}

impl Step {
    /// Whether the tensor is converted (otherwise it is copied).
    pub fn converts(&self) -> bool {
        self.from != self.to
    }
}

/// Every tensor's new type, decided before anything is written.
#[derive(Debug, Clone)]
pub struct Plan {
    pub target: Target,
    pub steps: Vec<Step>,
}

impl Plan {
    /// Bytes of tensor data in the new file (without the header and padding).
    pub fn tensor_bytes(&self) -> u64 {
        self.steps.iter().map(|s| s.bytes).sum()
    }

    /// Converted tensors that were quantized already (each loses quality twice).
    pub fn requantized(&self) -> usize {
        self.steps
            .iter()
            .filter(|s| s.converts() && s.from.is_quantized())
            .count()
    }

    /// The most bytes [`write`] holds with `threads` threads: one chunk of output and
    /// one f32 row per thread.
    pub fn scratch_bytes(&self, threads: usize) -> u64 {
        let converted = self.steps.iter().filter(|s| s.converts());
        let (mut row_out, mut cols) = (0u64, 0u64);
        for s in converted {
            let c = s.dims[0];
            cols = cols.max(c);
            row_out = row_out.max(s.to.bytes_for(c).unwrap_or(u64::MAX));
        }
        let chunk = if cols == 0 {
            0
        } else {
            CHUNK_BYTES.max(row_out)
        };
        chunk.saturating_add((threads.max(1) as u64).saturating_mul(cols.saturating_mul(4)))
    }
}

/// The kernels' name for a ggml type, for the types they decode or encode.
fn wtype(t: GgmlType) -> Option<WType> {
    Some(match t {
        GgmlType::F32 => WType::F32,
        GgmlType::F16 => WType::F16,
        GgmlType::BF16 => WType::BF16,
        GgmlType::Q4_0 => WType::Q4_0,
        GgmlType::Q4_1 => WType::Q4_1,
        GgmlType::Q5_0 => WType::Q5_0,
        GgmlType::Q5_1 => WType::Q5_1,
        GgmlType::Q8_0 => WType::Q8_0,
        GgmlType::Q2_K => WType::Q2_K,
        GgmlType::Q3_K => WType::Q3_K,
        GgmlType::Q4_K => WType::Q4_K,
        GgmlType::Q5_K => WType::Q5_K,
        GgmlType::Q6_K => WType::Q6_K,
        _ => return None,
    })
}

/// Decides every tensor's type for `target`; refuses a split model, a tensor that would be
/// requantized without [`Requantize::Allow`], and types that cannot be read.
pub fn plan(
    file: &GgufFile<'_>,
    target: Target,
    requantize: Requantize,
) -> Result<Plan, QuantizeError> {
    if let Some(n) = file.get("split.count").and_then(|v| v.as_u64())
        && n > 1
    {
        return Err(QuantizeError::Split(n));
    }
    let mut mixer = mix::Mixer::new(file, target);
    let mut steps = Vec::with_capacity(file.tensors().len());
    for t in file.tensors() {
        let (from, to) = (t.ggml_type(), mixer.choose(t));
        let tensor = || t.name().to_string();
        if from != to {
            if from.is_quantized() && requantize == Requantize::Refuse {
                return Err(QuantizeError::RequantizeRefused {
                    tensor: tensor(),
                    from,
                });
            }
            if wtype(from).is_none() {
                return Err(QuantizeError::UnsupportedSource {
                    tensor: tensor(),
                    from,
                });
            }
            match wtype(to) {
                Some(w) if encode::can_encode(w) => {}
                w => {
                    return Err(QuantizeError::NoEncoder {
                        tensor: tensor(),
                        source: NoEncoder(w.unwrap_or(WType::Q2_K)),
                    });
                }
            }
        }
        steps.push(Step {
            name: tensor(),
            dims: t.dims().to_vec(),
            from,
            to,
            bytes: to.bytes_for(t.n_elements()).unwrap_or(u64::MAX),
        });
    }
    Ok(Plan { target, steps })
}

/// The metadata of the new file: the old pairs in their order, with `general.file_type`
/// and `general.quantization_version` set (added at the end when absent).
fn metadata<'a>(file: &GgufFile<'a>, target: Target) -> Vec<KvEntry<'a>> {
    let set = [
        ("general.file_type", target.file_type()),
        ("general.quantization_version", QUANTIZATION_VERSION),
    ];
    let mut out: Vec<KvEntry<'a>> = file
        .metadata()
        .iter()
        .map(|kv| match set.iter().find(|(k, _)| *k == kv.key()) {
            Some(&(k, v)) => KvEntry::u32(k, v),
            None => KvEntry {
                key: Cow::Borrowed(kv.key()),
                value_type: kv.value().value_type(),
                value: Cow::Borrowed(kv.raw_value()),
            },
        })
        .collect();
    for (k, v) in set {
        if file.get(k).is_none() {
            out.push(KvEntry::u32(k, v));
        }
    }
    out
}

fn alloc<T: Clone + Default>(n: usize) -> Result<Vec<T>, QuantizeError> {
    let mut v = Vec::new();
    v.try_reserve_exact(n)
        .map_err(|_| QuantizeError::OutOfMemory {
            bytes: (n * std::mem::size_of::<T>()) as u64,
        })?;
    v.resize(n, T::default());
    Ok(v)
}

/// Writes the quantized file to `out` following `plan` (made from the same `file`), with
/// `threads` threads; `progress(done, total)` is called after each tensor.
pub fn write<W: Write>(
    file: &GgufFile<'_>,
    plan: &Plan,
    out: W,
    threads: usize,
    mut progress: impl FnMut(usize, usize),
) -> Result<W, QuantizeError> {
    let threads = threads.max(1);
    let kvs = metadata(file, plan.target);
    let entries: Vec<TensorEntry<'_>> = plan
        .steps
        .iter()
        .map(|s| TensorEntry {
            name: Cow::Borrowed(&s.name),
            dims: s.dims.clone(),
            ggml_type: s.to,
        })
        .collect();
    let mut w = GgufWriter::new(out, &kvs, &entries, file.alignment())?;
    let max_cols = plan
        .steps
        .iter()
        .filter(|s| s.converts())
        .map(|s| s.dims[0] as usize)
        .max()
        .unwrap_or(0);
    let mut rows_f32: Vec<Vec<f32>> = (0..threads)
        .map(|_| alloc(max_cols))
        .collect::<Result<_, _>>()?;
    let chunk_cap = (plan.scratch_bytes(threads) - (threads * max_cols * 4) as u64) as usize;
    let mut chunk: Vec<u8> = alloc(chunk_cap)?;
    for (i, (s, t)) in plan.steps.iter().zip(file.tensors()).enumerate() {
        let data = file.tensor_data(t);
        if !s.converts() {
            w.write_tensor(data)?;
        } else {
            convert(s, data, &mut chunk, &mut rows_f32, &mut w)?;
        }
        progress(i + 1, plan.steps.len());
    }
    Ok(w.finish()?)
}

/// Converts one tensor a chunk of rows at a time, the rows of a chunk split over threads.
fn convert<W: Write>(
    s: &Step,
    data: &[u8],
    chunk: &mut [u8],
    rows_f32: &mut [Vec<f32>],
    w: &mut GgufWriter<W>,
) -> Result<(), QuantizeError> {
    let (from, to) = (
        wtype(s.from).expect("planned"),
        wtype(s.to).expect("planned"),
    );
    let cols = s.dims[0] as usize;
    let in_row = from.row_bytes(cols).expect("planned");
    let out_row = to.row_bytes(cols).expect("planned");
    let n_rows = data.len() / in_row;
    let per_chunk = (chunk.len() / out_row).max(1);
    let mut first = 0;
    while first < n_rows {
        let rows = per_chunk.min(n_rows - first);
        let out = &mut chunk[..rows * out_row];
        let per_thread = rows.div_ceil(rows_f32.len());
        let input = &data[first * in_row..(first + rows) * in_row];
        let results: Vec<Result<(), QuantizeError>> = std::thread::scope(|scope| {
            let handles: Vec<_> = out
                .chunks_mut(per_thread * out_row)
                .zip(input.chunks(per_thread * in_row))
                .zip(rows_f32.iter_mut())
                .enumerate()
                .map(|(k, ((o, inp), buf))| {
                    let row0 = first + k * per_thread;
                    scope.spawn(move || {
                        let buf = &mut buf[..cols];
                        for (r, (o, inp)) in o
                            .chunks_exact_mut(out_row)
                            .zip(inp.chunks_exact(in_row))
                            .enumerate()
                        {
                            kernels::quant::dequantize_row(from, inp, buf);
                            if buf.iter().any(|v| !v.is_finite()) {
                                return Err(QuantizeError::NonFinite {
                                    tensor: s.name.clone(),
                                    row: (row0 + r) as u64,
                                });
                            }
                            encode::encode_row(to, buf, o).map_err(|e| {
                                QuantizeError::NoEncoder {
                                    tensor: s.name.clone(),
                                    source: e,
                                }
                            })?;
                        }
                        Ok(())
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("a conversion thread panicked"))
                .collect()
        });
        results.into_iter().collect::<Result<(), _>>()?;
        w.write_tensor_part(out)?;
        first += rows;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
