//! The tokenizer, built from the GGUF file's own vocabulary (no tokenizer.json needed).
//!
//! The model, normalizer, pre-tokenizer and decoder are assembled with the `tokenizers`
//! crate from `tokenizer.ggml.*` metadata ([`llama`] and [`gpt2`] say how). Special
//! tokens written in the text (`<|im_start|>`, `<s>`) are recognised as such, which is what
//! a rendered chat template needs. Nothing is added implicitly: a caller that wants BOS
//! (the llama convention, for example stories260K) prepends [`Tokenizer::bos_id`].

mod gpt2;
mod llama;
mod vocab;

use tokenizers::{
    DecoderWrapper, ModelWrapper, NormalizerWrapper, PostProcessorWrapper, PreTokenizerWrapper,
};

use self::vocab::GgufVocab;
use crate::error::{EngineError, Result};
use crate::gguf::GgufFile;

/// Text to token ids and back, for one model.
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    bos: Option<u32>,
    eos: Option<u32>,
}

impl Tokenizer {
    /// Builds the tokenizer described by the file's `tokenizer.ggml.*` metadata.
    pub fn from_gguf(gguf: &GgufFile) -> Result<Self> {
        let vocab = GgufVocab::read(gguf)?;
        let mut inner = match gguf.str("tokenizer.ggml.model")? {
            "llama" => {
                let add_space_prefix = gguf
                    .bool_opt("tokenizer.ggml.add_space_prefix")?
                    .unwrap_or(true);
                llama::build(&vocab, add_space_prefix)?
            }
            "gpt2" => gpt2::build(&vocab, gguf.str_opt("tokenizer.ggml.pre")?)?,
            other => {
                return Err(EngineError::Unsupported {
                    what: "tokenizer.ggml.model",
                    value: other.into(),
                })
            }
        };
        let (special, plain) = vocab.added_tokens();
        inner
            .add_special_tokens(special)
            .map_err(EngineError::tokenizer)?;
        inner.add_tokens(plain).map_err(EngineError::tokenizer)?;
        Ok(Self {
            inner,
            bos: vocab.bos,
            eos: vocab.eos,
        })
    }

    /// Token ids of `text`; special tokens in the text map to their ids, no BOS is added.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let encoding = self
            .inner
            .encode_fast(text, false)
            .map_err(EngineError::tokenizer)?;
        Ok(encoding.get_ids().to_vec())
    }

    /// Text of `ids`, special tokens included (so rendered chat text round-trips).
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner
            .decode(ids, false)
            .map_err(EngineError::tokenizer)
    }

    /// Decoder for a stream of generated tokens; see [`TextStream`].
    pub fn stream(&self) -> TextStream<'_> {
        TextStream {
            inner: self.inner.decode_stream(false),
        }
    }

    pub fn bos_id(&self) -> Option<u32> {
        self.bos
    }

    pub fn eos_id(&self) -> Option<u32> {
        self.eos
    }

    /// Vocabulary size, added tokens included.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The vocabulary string of `id`.
    pub fn token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// The underlying Hugging Face tokenizer.
    pub fn hf(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }
}

type HfDecodeStream<'a> = tokenizers::DecodeStream<
    'a,
    ModelWrapper,
    NormalizerWrapper,
    PreTokenizerWrapper,
    PostProcessorWrapper,
    DecoderWrapper,
>;

/// Turns generated tokens into text as they come. A token that ends in the middle of a
/// character (byte fallback, byte-level BPE) yields nothing until the character is
/// complete, so the concatenated pieces equal [`Tokenizer::decode`] of all the tokens.
pub struct TextStream<'a> {
    inner: HfDecodeStream<'a>,
}

impl TextStream<'_> {
    /// Feeds one token; returns the text it completes, if any.
    pub fn step(&mut self, id: u32) -> Result<Option<String>> {
        self.inner.step(id).map_err(EngineError::tokenizer)
    }
}
