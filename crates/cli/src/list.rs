//! `llmem list`: the catalog's models and every GGUF file in the models folder, with each
//! one's size, architecture, tensor types, whether it is here, and whether it fits this
//! machine at the default context (the same plan `llmem plan` makes).

use std::io::Write;
use std::path::{Path, PathBuf};

use budget::Bytes;
use clap::Args;
use serde::Serialize;

use crate::catalog::{self, CATALOG};
use crate::exit::CliError;
use crate::plan::KvType;

/// The context `llmem run` uses unless `--ctx` says otherwise.
const DEFAULT_CTX: usize = 4096;

#[derive(Args, Debug)]
pub struct ListArgs {
    /// One JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Serialize)]
struct TensorTypes {
    #[serde(rename = "type")]
    ggml_type: String,
    tensors: usize,
    bytes: u64,
}

#[derive(Serialize)]
struct Row {
    name: String,
    aliases: Vec<&'static str>,
    /// In the catalog (`llmem pull NAME` fetches it), or only found in the folder.
    catalog: bool,
    path: PathBuf,
    /// The file's size: on disk when present, else the catalog's.
    bytes: u64,
    present: bool,
    architecture: Option<String>,
    /// The file type and its tensor types, by share of the bytes where the file is read.
    quantization: String,
    tensor_types: Vec<TensorTypes>,
    /// What `llmem plan` counts for one sequence at the default context (f16 KV).
    plan_total_bytes: Option<u64>,
    /// Whether that fits the machine's memory (None: not here, or unreadable).
    fits: Option<bool>,
    /// Whether this build loads it (None: not here); a file whose shape is read but whose
    /// tensor types or architecture are not supported yet is planned from its header.
    runs: Option<bool>,
    /// Why this build does not load it, if it does not.
    why_not: Option<String>,
    /// Why the file could not be read at all, if it could not.
    error: Option<String>,
    licence: Option<&'static str>,
}

#[derive(Serialize)]
struct ListReport {
    models_dir: PathBuf,
    ctx: usize,
    memory_bytes: u64,
    memory_source: &'static str,
    models: Vec<Row>,
}

/// llama.cpp's file type numbers (`general.file_type`) for the common quantizations.
fn file_type_name(id: u64) -> Option<&'static str> {
    Some(match id {
        0 => "F32",
        1 => "F16",
        2 => "Q4_0",
        3 => "Q4_1",
        7 => "Q8_0",
        8 => "Q5_0",
        9 => "Q5_1",
        10 => "Q2_K",
        11 => "Q3_K_S",
        12 => "Q3_K_M",
        13 => "Q3_K_L",
        14 => "Q4_K_S",
        15 => "Q4_K_M",
        16 => "Q5_K_S",
        17 => "Q5_K_M",
        18 => "Q6_K",
        32 => "BF16",
        _ => return None,
    })
}

/// What the file's header says: architecture, file type and tensor type mix.
fn describe(path: &Path, row: &mut Row) -> anyhow::Result<()> {
    let file = weights::MappedFile::open(path)?;
    let g = gguf::GgufFile::parse(file.bytes())?;
    row.architecture = g
        .get("general.architecture")
        .and_then(|v| v.as_str())
        .map(str::to_string);
    let mut mix: Vec<TensorTypes> = Vec::new();
    for t in g.tensors() {
        let name = t.ggml_type().name().to_ascii_uppercase();
        match mix.iter_mut().find(|m| m.ggml_type == name) {
            Some(m) => {
                m.tensors += 1;
                m.bytes += t.size_bytes();
            }
            None => mix.push(TensorTypes {
                ggml_type: name,
                tensors: 1,
                bytes: t.size_bytes(),
            }),
        }
    }
    mix.sort_by_key(|m| std::cmp::Reverse(m.bytes));
    let total: u64 = mix.iter().map(|m| m.bytes).sum::<u64>().max(1);
    let shares: Vec<String> = mix
        .iter()
        .map(|m| {
            format!(
                "{} {:.0}%",
                m.ggml_type,
                m.bytes as f64 * 100.0 / total as f64
            )
        })
        .collect();
    let kind = g
        .get("general.file_type")
        .and_then(|v| v.as_u64())
        .and_then(file_type_name);
    row.quantization = match kind {
        Some(k) => format!("{k} ({})", shares.join(", ")),
        None => shares.join(", "),
    };
    row.tensor_types = mix;
    Ok(())
}

/// The plan's inputs from the header alone (shape and tokenizer, no weights), for a file
/// this build does not load yet.
fn header_facts(path: &Path) -> anyhow::Result<crate::plan::ModelFacts> {
    let file = weights::MappedFile::open(path)?;
    let g = gguf::GgufFile::parse(file.bytes())?;
    let cfg = engine::config::ModelConfig::from_gguf(&g)?;
    let tok = tokenizer::Tokenizer::from_spec(&engine::text::vocab_spec(&g)?)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(crate::plan::ModelFacts::new(
        cfg,
        file.bytes().len() as u64,
        tok.table_bytes(),
    ))
}

/// The row of a file that is here: its header, and the plan at the default context.
fn fill_present(path: &Path, row: &mut Row, memory: u64, threads: usize) {
    if let Err(e) = describe(path, row) {
        row.error = Some(format!("{e:#}"));
        return;
    }
    let facts = match crate::plan::facts(path) {
        Ok(f) => {
            row.runs = Some(true);
            Ok(f)
        }
        Err(CliError::Input(e) | CliError::Runtime(e)) => {
            row.runs = Some(false);
            row.why_not = Some(format!("{e:#}"));
            header_facts(path)
        }
    };
    match facts {
        Ok(f) => {
            let total =
                engine::memory::plan(&f.input(DEFAULT_CTX, 1, KvType::F16, threads)).total_bytes;
            row.plan_total_bytes = Some(total);
            row.fits = Some(total <= memory);
        }
        // A shape this build does not know (an architecture it does not run): no plan,
        // and why_not says why.
        Err(_) if row.runs == Some(false) => {}
        Err(e) => row.error = Some(format!("{e:#}")),
    }
}

pub fn run(a: &ListArgs) -> Result<(), CliError> {
    let dir = catalog::models_dir()?;
    let (memory, source) = crate::fit::machine_memory()?;
    let threads = crate::threads::ThreadsArgs::default().resolve();
    let mut rows = Vec::new();
    for e in CATALOG {
        let path = dir.join(e.file);
        let on_disk = std::fs::metadata(&path).ok().filter(|m| m.is_file());
        let mut row = Row {
            name: e.name.to_string(),
            aliases: e.aliases.to_vec(),
            catalog: true,
            bytes: on_disk.as_ref().map_or(e.bytes, |m| m.len()),
            present: on_disk.is_some_and(|m| m.len() == e.bytes),
            path,
            architecture: Some(e.architecture.to_string()),
            quantization: e.quantization.to_string(),
            tensor_types: Vec::new(),
            plan_total_bytes: None,
            fits: None,
            runs: None,
            why_not: None,
            error: None,
            licence: Some(e.licence),
        };
        if row.present {
            fill_present(&row.path.clone(), &mut row, memory, threads);
        }
        rows.push(row);
    }
    // Other GGUF files in the folder (partial downloads end in .part and are left out).
    let mut others: Vec<PathBuf> = std::fs::read_dir(&dir)
        .into_iter()
        .flatten()
        .filter_map(|d| d.ok().map(|d| d.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "gguf") && p.is_file())
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            !CATALOG.iter().any(|e| e.file == name)
        })
        .collect();
    others.sort();
    for path in others {
        let mut row = Row {
            name: path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            aliases: Vec::new(),
            catalog: false,
            bytes: std::fs::metadata(&path).map_or(0, |m| m.len()),
            present: true,
            path: path.clone(),
            architecture: None,
            quantization: String::new(),
            tensor_types: Vec::new(),
            plan_total_bytes: None,
            fits: None,
            runs: None,
            why_not: None,
            error: None,
            licence: None,
        };
        fill_present(&path, &mut row, memory, threads);
        rows.push(row);
    }
    let report = ListReport {
        models_dir: dir,
        ctx: DEFAULT_CTX,
        memory_bytes: memory,
        memory_source: source,
        models: rows,
    };
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    if a.json {
        writeln!(out, "{}", serde_json::to_string_pretty(&report)?)?;
    } else {
        write_table(&mut out, &report)?;
    }
    out.flush()?;
    Ok(())
}

fn write_table(out: &mut impl Write, r: &ListReport) -> std::io::Result<()> {
    writeln!(
        out,
        "models in {}  (fits: ctx {}, one sequence, f16 KV, in {} of {})",
        r.models_dir.display(),
        r.ctx,
        Bytes(r.memory_bytes),
        r.memory_source
    )?;
    writeln!(
        out,
        "  {:<50} {:>10}  {:<8} {:<8} {:<4}  quantization",
        "name (alias)", "size", "arch", "present", "fits"
    )?;
    for m in &r.models {
        let name = match m.aliases.first() {
            Some(a) => format!("{} ({a})", m.name),
            None => m.name.clone(),
        };
        let present = if m.present {
            "yes"
        } else if m.catalog {
            "pull"
        } else {
            "no"
        };
        let fits = match (m.fits, &m.error) {
            (_, Some(_)) => "bad",
            (Some(true), _) => "yes",
            (Some(false), _) => "no",
            (None, _) => "-",
        };
        writeln!(
            out,
            "  {:<50} {:>10}  {:<8} {:<8} {:<4}  {}",
            name,
            Bytes(m.bytes).to_string(),
            m.architecture.as_deref().unwrap_or("?"),
            present,
            fits,
            m.quantization
        )?;
        if let Some(e) = &m.error {
            writeln!(out, "    cannot read it: {e}")?;
        } else if let Some(w) = &m.why_not {
            writeln!(out, "    this build cannot run it yet: {w}")?;
        }
    }
    if r.models.iter().any(|m| m.catalog && !m.present) {
        writeln!(out, "\n`llmem pull NAME` fetches a catalog model.")?;
    }
    Ok(())
}
