//! The error type of the reference model half of the crate.

use std::path::PathBuf;

/// What went wrong while loading or running the reference model.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("cannot read {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("gguf metadata key {key} is missing")]
    MissingMetadata { key: String },

    #[error("gguf metadata key {key} is not {expected}")]
    BadMetadata { key: String, expected: &'static str },

    #[error("gguf tensor {name} is missing")]
    MissingTensor { name: String },

    #[error("gguf tensor {name} has shape {got:?}, expected {expected:?}")]
    TensorShape {
        name: String,
        expected: Vec<usize>,
        got: Vec<usize>,
    },

    #[error("unsupported {what}: {value}")]
    Unsupported { what: &'static str, value: String },

    #[error("tokenizer: {0}")]
    Tokenizer(String),

    #[error("chat template")]
    Template(#[from] minijinja::Error),

    #[error("context overflow: {requested} tokens, the model's limit is {limit}")]
    ContextOverflow { requested: usize, limit: usize },

    #[error("kv cache shape {got} does not match the model's {expected}")]
    CacheShape { expected: String, got: String },

    #[error("kv block of {got} bytes, expected {expected} for {n_tokens} tokens")]
    BlockSize {
        n_tokens: usize,
        expected: usize,
        got: usize,
    },

    #[error("kv block range {start}..{end} is outside the cache length {len}")]
    BlockRange {
        start: usize,
        end: usize,
        len: usize,
    },

    #[error("token id {id} is outside the vocabulary of {vocab_size}")]
    TokenOutOfVocab { id: u32, vocab_size: usize },

    #[error("empty token sequence")]
    NoTokens,

    #[error("kv cache compression")]
    KvCodec(#[source] kvtier_format::FormatError),

    #[error("compute worker stopped: {0}")]
    Worker(String),

    #[error("tensor operation")]
    Candle(#[from] candle_core::Error),
}

impl EngineError {
    pub(crate) fn tokenizer(err: impl std::fmt::Display) -> Self {
        Self::Tokenizer(err.to_string())
    }
}

/// Result with [`EngineError`].
pub type Result<T, E = EngineError> = std::result::Result<T, E>;
