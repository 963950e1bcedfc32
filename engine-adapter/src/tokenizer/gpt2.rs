//! `tokenizer.ggml.model == "gpt2"`: byte-level BPE with the file's ranked merges.
//!
//! The pre-tokenizer follows `tokenizer.ggml.pre`: the GPT-2 split regex over bytes mapped
//! to printable characters, preceded for "smollm" by splitting every digit on its own.
//! Other pre-tokenizer names change the split regex; they are refused rather than
//! tokenized differently from the model's training.

use tokenizers::decoders::byte_level::ByteLevel;
use tokenizers::models::bpe::{Merges, BPE};
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::PreTokenizerWrapper;

use super::vocab::GgufVocab;
use crate::error::{EngineError, Result};

/// Builds the Hugging Face tokenizer for a "gpt2" vocabulary.
pub(crate) fn build(vocab: &GgufVocab, pre: Option<&str>) -> Result<tokenizers::Tokenizer> {
    let merges = match &vocab.merges {
        Some(pairs) => parse_merges(pairs)?,
        None => Vec::new(),
    };
    let model = BPE::builder()
        .vocab_and_merges(vocab.vocab(), merges)
        .build()
        .map_err(EngineError::tokenizer)?;

    let mut tokenizer = tokenizers::Tokenizer::new(model);
    tokenizer.with_pre_tokenizer(Some(pre_tokenizer(pre)?));
    tokenizer.with_decoder(Some(ByteLevel::default()));
    Ok(tokenizer)
}

fn pre_tokenizer(pre: Option<&str>) -> Result<PreTokenizerWrapper> {
    let byte_level = ByteLevel::new(false, true, true);
    match pre.unwrap_or("default") {
        "default" | "gpt-2" | "gpt2" => Ok(byte_level.into()),
        "smollm" => {
            let steps = vec![Digits::new(true).into(), byte_level.into()];
            Ok(Sequence::new(steps).into())
        }
        other => Err(EngineError::Unsupported {
            what: "tokenizer.ggml.pre",
            value: other.into(),
        }),
    }
}

/// `"left right"` strings to pairs. Byte-level pieces never contain a space, so the
/// first space separates the two.
pub(crate) fn parse_merges(pairs: &[String]) -> Result<Merges> {
    pairs
        .iter()
        .map(|m| {
            let (l, r) = m.split_once(' ').ok_or_else(|| EngineError::BadMetadata {
                key: "tokenizer.ggml.merges".into(),
                expected: "pairs separated by a space",
            })?;
            Ok((l.to_owned(), r.to_owned()))
        })
        .collect()
}
