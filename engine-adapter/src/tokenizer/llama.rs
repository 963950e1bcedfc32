//! `tokenizer.ggml.model == "llama"`: SentencePiece-style BPE with byte fallback.
//!
//! Text is normalized by turning spaces into `▁` (and prepending one, unless the file sets
//! `tokenizer.ggml.add_space_prefix` false); characters outside the vocabulary fall back to
//! `<0xNN>` byte tokens. Such files carry scores but usually no merges, so merges are
//! derived from the scores as Hugging Face's SentencePiece converter does: every way to
//! split a vocabulary piece into two vocabulary pieces is a merge ranked by the piece's
//! score, highest first, ties kept in vocabulary order and then by split position.

use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::decoders::strip::Strip;
use tokenizers::models::bpe::{Merges, Vocab, BPE};
use tokenizers::normalizers::{Prepend, Replace, Sequence as NormalizerSequence};
use tokenizers::{DecoderWrapper, NormalizerWrapper};

use super::vocab::GgufVocab;
use crate::error::{EngineError, Result};

const SPACE: &str = "\u{2581}";

/// Builds the Hugging Face tokenizer for a "llama" vocabulary.
pub(crate) fn build(vocab: &GgufVocab, add_space_prefix: bool) -> Result<tokenizers::Tokenizer> {
    let ids = vocab.vocab();
    let merges = match &vocab.merges {
        Some(pairs) => super::gpt2::parse_merges(pairs)?,
        None => merges_from_scores(vocab, &ids),
    };
    let mut builder = BPE::builder()
        .vocab_and_merges(ids, merges)
        .fuse_unk(true)
        .byte_fallback(true);
    if let Some(unk) = vocab.unk_token() {
        builder = builder.unk_token(unk.to_owned());
    }
    let model = builder.build().map_err(EngineError::tokenizer)?;

    let mut tokenizer = tokenizers::Tokenizer::new(model);
    tokenizer
        .with_normalizer(Some(normalizer(add_space_prefix)?))
        .map_err(EngineError::tokenizer)?;
    tokenizer.with_decoder(Some(decoder(add_space_prefix)?));
    Ok(tokenizer)
}

fn merges_from_scores(vocab: &GgufVocab, ids: &Vocab) -> Merges {
    let Some(scores) = &vocab.scores else {
        return Vec::new();
    };
    let mut ranked: Vec<(String, String, f32)> = Vec::new();
    for (piece, &score) in vocab.tokens.iter().zip(scores) {
        for (at, _) in piece.char_indices().skip(1) {
            let (left, right) = piece.split_at(at);
            if ids.contains_key(left) && ids.contains_key(right) {
                ranked.push((left.to_owned(), right.to_owned(), score));
            }
        }
    }
    // Stable: equal scores keep vocabulary order, then split position.
    ranked.sort_by(|a, b| b.2.total_cmp(&a.2));
    ranked.into_iter().map(|(l, r, _)| (l, r)).collect()
}

fn normalizer(add_space_prefix: bool) -> Result<NormalizerWrapper> {
    let replace = Replace::new(" ", SPACE).map_err(EngineError::tokenizer)?;
    if !add_space_prefix {
        return Ok(replace.into());
    }
    let steps = vec![Prepend::new(SPACE.to_owned()).into(), replace.into()];
    Ok(NormalizerSequence::new(steps).into())
}

fn decoder(add_space_prefix: bool) -> Result<DecoderWrapper> {
    let replace = Replace::new(SPACE, " ").map_err(EngineError::tokenizer)?;
    let mut steps: Vec<DecoderWrapper> = vec![
        replace.into(),
        ByteFallback::new().into(),
        Fuse::new().into(),
    ];
    if add_space_prefix {
        steps.push(Strip::new(' ', 1, 0).into());
    }
    Ok(DecoderSequence::new(steps).into())
}
