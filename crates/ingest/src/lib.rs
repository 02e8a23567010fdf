//! This crate turns a corpus of documents into question/answer pairs, in bounded memory, resumable, each record written exactly once.
//!
//! The chain ([`pipeline::run`]): inputs ([`source`]: files, folders, JSONL on stdin;
//! text, Markdown, HTML, JSONL, PDF) are read in slices into paragraphs, cut into chunks sized
//! in the model's tokens ([`chunk`]), whose buffers are reserved in the ledger's
//! `documents` pool (a full pool pauses reading). Chunks go to the engine's scheduler,
//! many at once, each chunk the shared prefix of its prompts: questions and answers come
//! out as JSON constrained by a grammar hook ([`grammar`]), each answer judged by the
//! model, weak ones and near-duplicate questions ([`dedup`]) dropped. Records ([`record`])
//! carry their provenance and are appended, synced, and only then marked done in a
//! checksummed journal ([`journal`]), so an interrupted run resumes with nothing lost and
//! nothing written twice.

pub mod chunk;
pub mod dedup;
pub mod grammar;
pub mod ground;
pub mod idset;
pub mod journal;
pub mod pdf;
pub mod pipeline;
pub mod prompts;
mod reader;
pub mod record;
pub mod source;
pub mod turns;

pub use pipeline::{DocPool, Generator, Options, Report, RunError, needed_ctx, run};
