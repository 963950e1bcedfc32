//! Choosing the next token from a logits vector: greedy by default, or temperature plus
//! nucleus (top-p) sampling from a seeded generator, so a run can be repeated exactly.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// How the next token is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum Sampling {
    /// The highest logit (the lowest id among equals).
    #[default]
    Greedy,
    /// Softmax of `logits / temperature`, restricted to the smallest set of most likely
    /// tokens whose probability reaches `top_p` (0 < top_p <= 1), drawn with a generator
    /// seeded by `seed`. A temperature of 0 or less is greedy.
    TopP {
        temperature: f32,
        top_p: f32,
        seed: u64,
    },
}

/// A [`Sampling`] rule with its random state.
pub struct Sampler {
    mode: Sampling,
    rng: StdRng,
}

impl Sampler {
    pub fn new(mode: Sampling) -> Self {
        let seed = match mode {
            Sampling::TopP { seed, .. } => seed,
            Sampling::Greedy => 0,
        };
        Self {
            mode,
            rng: StdRng::seed_from_u64(seed),
        }
    }

    pub fn greedy() -> Self {
        Self::new(Sampling::Greedy)
    }

    pub fn mode(&self) -> Sampling {
        self.mode
    }

    /// The next token id; 0 for an empty `logits`.
    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        match self.mode {
            Sampling::TopP {
                temperature, top_p, ..
            } if temperature > 0.0 => self.sample_top_p(logits, temperature, top_p),
            _ => argmax(logits),
        }
    }

    fn sample_top_p(&mut self, logits: &[f32], temperature: f32, top_p: f32) -> u32 {
        let candidates = nucleus(logits, temperature, top_p);
        let total: f32 = candidates.iter().map(|&(_, p)| p).sum();
        if candidates.is_empty() || total.is_nan() || total <= 0.0 {
            return argmax(logits);
        }
        let mut u = self.rng.random::<f32>() * total;
        for &(id, p) in &candidates {
            if u < p {
                return id;
            }
            u -= p;
        }
        candidates[candidates.len() - 1].0
    }
}

/// Index of the largest logit, the first one among equals; NaNs never win.
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    let mut best_value = f32::NEG_INFINITY;
    for (i, &x) in logits.iter().enumerate() {
        if x > best_value {
            best = i;
            best_value = x;
        }
    }
    best as u32
}

/// The most likely tokens (id, unnormalized probability), most likely first, whose
/// normalized probabilities sum to at least `top_p`; never empty for non-empty input.
fn nucleus(logits: &[f32], temperature: f32, top_p: f32) -> Vec<(u32, f32)> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut probs: Vec<(u32, f32)> = logits
        .iter()
        .enumerate()
        .map(|(i, &x)| (i as u32, ((x - max) / temperature).exp()))
        .filter(|&(_, p)| p > 0.0)
        .collect();
    probs.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    let total: f32 = probs.iter().map(|&(_, p)| p).sum();
    let limit = top_p.clamp(0.0, 1.0) * total;
    let mut cumulative = 0.0;
    let mut keep = 0;
    for &(_, p) in &probs {
        keep += 1;
        cumulative += p;
        if cumulative >= limit {
            break;
        }
    }
    probs.truncate(keep);
    probs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_picks_the_first_largest_logit() {
        assert_eq!(argmax(&[0.5, 2.0, -1.0, 2.0]), 1);
        assert_eq!(argmax(&[f32::NAN, 1.0]), 1);
    }

    #[test]
    fn zero_temperature_is_greedy() {
        let mode = Sampling::TopP {
            temperature: 0.0,
            top_p: 0.9,
            seed: 7,
        };
        assert_eq!(Sampler::new(mode).sample(&[0.1, 0.3, 0.2]), 1);
    }

    #[test]
    fn top_p_never_picks_outside_the_nucleus() {
        // Token 2 alone holds more than half of the probability.
        let logits = [0.0, 0.0, 5.0, 0.0];
        let mode = Sampling::TopP {
            temperature: 1.0,
            top_p: 0.5,
            seed: 1,
        };
        let mut sampler = Sampler::new(mode);
        assert!((0..100).all(|_| sampler.sample(&logits) == 2));
    }

    #[test]
    fn same_seed_gives_the_same_tokens() {
        let logits: Vec<f32> = (0..50).map(|i| (i as f32 * 0.37).sin()).collect();
        let mode = Sampling::TopP {
            temperature: 1.0,
            top_p: 0.95,
            seed: 42,
        };
        let run = || {
            let mut s = Sampler::new(mode);
            (0..20).map(|_| s.sample(&logits)).collect::<Vec<_>>()
        };
        let first = run();
        assert_eq!(first, run());
        assert!(first.iter().any(|&t| t != first[0]), "sampling should vary");
    }
}
