//! Everything loaded from one GGUF file, and the facts about it that name a kvtier
//! namespace (model name, weights digest, KV shape).

use std::path::Path;

use super::Model;
use crate::chat_template::ChatTemplate;
use crate::error::Result;
use crate::gguf::{sha256_file, GgufFile};
use crate::tokenizer::Tokenizer;

/// What a namespace fingerprint needs to know about the loaded model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelInfo {
    /// `general.name`, or the file stem when the file has none.
    pub name: String,
    /// Hex sha256 of the whole GGUF file.
    pub weights_digest: String,
    pub n_layers: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub context_length: usize,
    pub vocab_size: usize,
    /// Dtype of the KV cache and of exported blocks: always `"f32"` here.
    pub dtype: &'static str,
    /// Whether cached keys have RoPE applied: always true here.
    pub keys_after_rope: bool,
}

/// A model ready to serve: weights, tokenizer, chat template and their description.
pub struct LoadedModel {
    pub info: ModelInfo,
    pub model: Model,
    pub tokenizer: Tokenizer,
    pub chat_template: ChatTemplate,
}

impl LoadedModel {
    /// Loads everything from the GGUF file at `path` (weights dequantized to f32).
    pub fn load(path: &Path) -> Result<Self> {
        let weights_digest = sha256_file(path)?;
        let mut gguf = GgufFile::open(path)?;
        let model = Model::from_gguf(&mut gguf)?;
        let tokenizer = Tokenizer::from_gguf(&gguf)?;
        let chat_template = ChatTemplate::from_gguf(&gguf, &tokenizer)?;

        let stem = || {
            let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned());
            stem.unwrap_or_default()
        };
        let name = match gguf.str_opt("general.name")? {
            Some(name) if !name.is_empty() => name.to_owned(),
            _ => stem(),
        };
        let cfg = model.config();
        let info = ModelInfo {
            name,
            weights_digest,
            n_layers: cfg.n_layers,
            n_kv_heads: cfg.n_kv_heads,
            head_dim: cfg.head_dim,
            context_length: cfg.context_length,
            vocab_size: cfg.vocab_size,
            dtype: "f32",
            keys_after_rope: true,
        };
        tracing::info!(
            name = %info.name,
            layers = info.n_layers,
            kv_heads = info.n_kv_heads,
            head_dim = info.head_dim,
            "model loaded"
        );
        Ok(Self {
            info,
            model,
            tokenizer,
            chat_template,
        })
    }
}
