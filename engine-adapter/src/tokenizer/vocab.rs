//! The `tokenizer.ggml.*` metadata of a GGUF file, read once into plain vectors.

use tokenizers::models::bpe::Vocab;
use tokenizers::AddedToken;

use crate::error::Result;
use crate::gguf::GgufFile;

/// llama.cpp's token types (`tokenizer.ggml.token_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TokenType {
    Normal,
    Unknown,
    Control,
    UserDefined,
    Unused,
    Byte,
}

impl TokenType {
    fn from_code(code: i64) -> Self {
        match code {
            2 => Self::Unknown,
            3 => Self::Control,
            4 => Self::UserDefined,
            5 => Self::Unused,
            6 => Self::Byte,
            _ => Self::Normal,
        }
    }
}

pub(crate) struct GgufVocab {
    pub tokens: Vec<String>,
    /// One per token; `Normal` for every token when the file has no types.
    pub types: Vec<TokenType>,
    /// One per token, when the file has scores (SentencePiece models).
    pub scores: Option<Vec<f32>>,
    /// `"left right"` pairs in rank order, when the file has merges (BPE models).
    pub merges: Option<Vec<String>>,
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    pub unk: Option<u32>,
}

impl GgufVocab {
    pub fn read(gguf: &GgufFile) -> Result<Self> {
        let tokens: Vec<String> = gguf
            .strings("tokenizer.ggml.tokens")?
            .into_iter()
            .map(str::to_owned)
            .collect();
        let types = match gguf.get("tokenizer.ggml.token_type") {
            Some(_) => gguf
                .ints("tokenizer.ggml.token_type")?
                .into_iter()
                .map(TokenType::from_code)
                .collect(),
            None => vec![TokenType::Normal; tokens.len()],
        };
        let scores = match gguf.get("tokenizer.ggml.scores") {
            Some(_) => Some(gguf.floats("tokenizer.ggml.scores")?),
            None => None,
        };
        let merges = match gguf.get("tokenizer.ggml.merges") {
            Some(_) => Some(
                gguf.strings("tokenizer.ggml.merges")?
                    .into_iter()
                    .map(str::to_owned)
                    .collect(),
            ),
            None => None,
        };
        let id = |key: &str| -> Result<Option<u32>> {
            let id = gguf.u64_opt(key)?;
            // Writers mark "no such token" with u32::MAX (or any id past the vocabulary).
            Ok(id
                .filter(|&i| (i as usize) < tokens.len())
                .map(|i| i as u32))
        };
        Ok(Self {
            bos: id("tokenizer.ggml.bos_token_id")?,
            eos: id("tokenizer.ggml.eos_token_id")?,
            unk: id("tokenizer.ggml.unknown_token_id")?,
            tokens,
            types,
            scores,
            merges,
        })
    }

    /// Token string to id; a string that repeats maps to its last id.
    pub fn vocab(&self) -> Vocab {
        self.tokens
            .iter()
            .enumerate()
            .map(|(id, t)| (t.clone(), id as u32))
            .collect()
    }

    /// Tokens matched in raw text before the model sees it: control and unknown tokens
    /// as special tokens, user-defined ones as plain added tokens.
    pub fn added_tokens(&self) -> (Vec<AddedToken>, Vec<AddedToken>) {
        let mut special = Vec::new();
        let mut plain = Vec::new();
        for (token, ty) in self.tokens.iter().zip(&self.types) {
            match ty {
                TokenType::Control | TokenType::Unknown => {
                    special.push(AddedToken::from(token.clone(), true))
                }
                TokenType::UserDefined => plain.push(AddedToken::from(token.clone(), false)),
                _ => {}
            }
        }
        (special, plain)
    }

    pub fn unk_token(&self) -> Option<&str> {
        let by_type = || self.types.iter().position(|t| *t == TokenType::Unknown);
        let id = self.unk.map(|i| i as usize).or_else(by_type)?;
        self.tokens.get(id).map(String::as_str)
    }
}
