//! # vecfusion
//!
//! The Rust core of vecfusion: reading, writing and memory-mapping finalfusion
//! embedding files, subword vocabularies, dense and product-quantized storage.
//!
//! A finalfusion file is a header followed by chunks:
//!
//! ```text
//! "FiFu" | u32 version = 0 | u32 n_chunks | u32 chunk_id x n_chunks
//! [Metadata] Vocab Storage [NdNorms]
//! ```
//!
//! ```no_run
//! use vecfusion::{Embeddings, OpenMode};
//! let emb = Embeddings::open("vectors.fifu", OpenMode::Mmap)?;
//! let v = emb.embedding("berlin");
//! # Ok::<(), vecfusion::Error>(())
//! ```
#![deny(unsafe_op_in_unsafe_fn)]

pub mod cancel;
pub mod compat;
pub mod embeddings;
pub mod error;
pub(crate) mod fastscan;
pub mod format;
pub mod query;
pub mod reader;
pub mod quant;
pub mod storage;
pub mod vocab;

#[cfg(feature = "python")]
pub mod py;

pub use embeddings::{l2_normalize, Embeddings, OpenMode};
pub use error::{Error, Result};
pub use query::Neighbor;
pub use storage::{ArrayStorage, QuantizedStorage, Storage};
pub use vocab::{Vocab, VocabFormat, WordIndex, WordList};
