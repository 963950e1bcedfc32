//! kvtier's engine adapter: a reference Llama/GQA model on candle whose KV cache lives
//! outside the model, so that kvtier can fill it from the store and save it back.
//!
//! Loading: [`LoadedModel::load`] reads a GGUF file into a [`Model`] (f32 weights), a
//! [`Tokenizer`] and a [`ChatTemplate`] built from the file's own metadata, plus the
//! [`ModelInfo`] a namespace fingerprint needs. Serving a turn: render the conversation
//! with the template, encode it, run [`Model::forward`] on the tokens not already in the
//! [`KvCache`], then sample ([`Sampler`]) and feed tokens one at a time.

// The model's weight products call the system OpenBLAS (Debian libopenblas-dev) through
// cblas-sys's declarations; this links it.
#[link(name = "openblas")]
extern "C" {}

pub mod chat_template;
pub mod connector;
pub mod engine;
pub mod error;
pub mod fetch;
pub mod gguf;
pub mod kv_cache;
pub mod layer_feed;
pub mod model;
pub mod node;
pub mod sampling;
pub mod tokenizer;

pub use chat_template::{ChatMessage, ChatTemplate};
pub use error::{EngineError, Result};
pub use kv_cache::{KvCache, KvShape};
pub use model::{
    fix_compute_threads, LayerFill, LoadedModel, Model, ModelConfig, ModelInfo, Segment,
};
pub use sampling::{Sampler, Sampling};
pub use tokenizer::{TextStream, Tokenizer};
