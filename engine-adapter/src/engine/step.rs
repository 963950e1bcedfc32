//! One forward pass over the work of several requests: decode steps of running answers
//! and chunks of new prompts, in any mix (see `Model::forward_batch`).
//!
//! The caller hands each piece of work over and gets it back, in the same order, with
//! what the pass computed. A prompt whose layer-wise load fails during the pass comes back
//! reset to compute the whole prompt (its report says it fell back); the other work of the
//! pass is unaffected. An error of the whole pass (a refused token, a tensor error) drops
//! the work: every request in it has failed.

use std::time::{Duration, Instant};

use super::{Engine, Prefill, Sequence};
use crate::connector::KvConnector;
use crate::model::{LayerFill, Model, Segment};
use crate::{EngineError, KvCache, Result};

/// What one request brings to a pass.
pub enum Work {
    /// Feed the sampled `token` of a running answer.
    Decode { sequence: Sequence, token: u32 },
    /// Compute the next `tokens` tokens of a prompt (at least one).
    Prefill {
        prefill: Box<Prefill>,
        tokens: usize,
    },
}

/// What a pass gives back for one piece of work.
pub enum Stepped {
    /// The token was fed; `logits` are the next position's.
    Decoded {
        sequence: Sequence,
        logits: Vec<f32>,
    },
    /// The chunk was computed (or the prefill fell back and starts over); `logits` of the
    /// last prompt token once the whole prompt is in.
    Prefilled {
        prefill: Box<Prefill>,
        logits: Option<Vec<f32>>,
    },
}

impl<C: KvConnector> Engine<C> {
    /// Runs one forward pass over `work`; returns each piece with its result, in order.
    pub async fn step(&self, mut work: Vec<Work>) -> Result<Vec<Stepped>> {
        if work.is_empty() {
            return Ok(Vec::new());
        }
        let model = self.model.clone();
        let b = self.block_tokens();
        let started = Instant::now();
        let (work, results) = tokio::task::spawn_blocking(move || {
            let results = pass(&model.model, b, &mut work);
            (work, results)
        })
        .await
        .map_err(|e| EngineError::Worker(e.to_string()))?;
        let results = results?;
        let took = started.elapsed();
        work.into_iter()
            .zip(results)
            .map(|(work, result)| self.settle(work, result, took))
            .collect()
    }

    fn settle(&self, work: Work, result: Result<Vec<f32>>, took: Duration) -> Result<Stepped> {
        match work {
            Work::Decode {
                mut sequence,
                token,
            } => {
                let logits = result?;
                sequence.tokens.push(token);
                self.hash_new_blocks(&mut sequence);
                Ok(Stepped::Decoded { sequence, logits })
            }
            Work::Prefill {
                mut prefill,
                tokens,
            } => {
                prefill.report.compute += took;
                let logits = match result {
                    Ok(logits) => {
                        prefill.advance(tokens);
                        (prefill.remaining() == 0).then_some(logits)
                    }
                    Err(error) => {
                        tracing::warn!(%error, "layer-wise load failed; recomputing the prompt");
                        prefill.fall_back();
                        None
                    }
                };
                Ok(Stepped::Prefilled { prefill, logits })
            }
        }
    }
}

/// The forward pass itself, on the compute thread.
fn pass(model: &Model, block_tokens: usize, work: &mut [Work]) -> Result<Vec<Result<Vec<f32>>>> {
    type Part<'a> = (
        &'a [u32],
        usize,
        &'a mut KvCache,
        Option<Box<LayerFill<'a>>>,
    );
    let mut parts: Vec<Part<'_>> = Vec::with_capacity(work.len());
    for work in work.iter_mut() {
        match work {
            Work::Decode { sequence, token } => {
                let start = sequence.cache.len();
                let token = std::slice::from_ref(token);
                parts.push((token, start, &mut sequence.cache, None));
            }
            Work::Prefill { prefill, tokens } => {
                let Prefill {
                    sequence,
                    prompt,
                    computed,
                    feed,
                    due,
                    ..
                } = &mut **prefill;
                let due = *due;
                let fill = feed.as_mut().map(|feed| {
                    Box::new(move |layer: usize, cache: &mut KvCache| {
                        feed.fill(layer, cache, block_tokens, due).map_err(|e| {
                            EngineError::Unsupported {
                                what: "layer-wise load",
                                value: e.to_string(),
                            }
                        })
                    }) as Box<LayerFill<'_>>
                });
                let chunk = &prompt[*computed..*computed + *tokens];
                parts.push((chunk, *computed, &mut sequence.cache, fill));
            }
        }
    }
    let mut segments: Vec<Segment<'_>> = parts
        .iter_mut()
        .map(|(tokens, start, cache, fill)| Segment {
            tokens,
            start: *start,
            cache,
            fill: fill.as_mut().map(|f| &mut **f as &mut LayerFill<'_>),
        })
        .collect();
    model.forward_batch(&mut segments)
}
