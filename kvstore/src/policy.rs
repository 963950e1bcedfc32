//! The eviction policy as pure functions: which block is worth least.
//!
//! A block's worth combines recency (halves every `recency_half_life`), frequency (the
//! logarithm of its hits) and how active its conversation is (halves every
//! `conversation_half_life` since the conversation's last request): a block of a
//! conversation active now outlives an equally old block of one idle for an hour.
//!
//! The sum is then weighed by how likely the conversation is to come back
//! at all, `k / (k + turn_prior)` after `k` turns. On production chat traffic most
//! conversations never send a second request, and each turn makes another likelier
//! (Mooncake's trace: 25% after the first turn, 39% after the second, 49% after the
//! third, close to `k / (k + 3)`); a larger prior than that fits better still, since a
//! first-turn block also costs the room a longer conversation would use. Blocks without
//! a conversation count as first turns. The default weights are those that did best in
//! `kvtier-bench trace` on that trace (frequency and raw activity add little there, as
//! recency already tracks a chat's requests). Among equals the deeper block goes first, so
//! chains shrink from their tails.

/// Weights of the eviction score.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PolicyWeights {
    pub recency_half_life_ms: f64,
    pub frequency: f64,
    pub conversation: f64,
    pub conversation_half_life_ms: f64,
    /// `A` in the return likelihood `k / (k + A)` after `k` turns; 0 turns it off.
    pub turn_prior: f64,
}

impl Default for PolicyWeights {
    fn default() -> Self {
        PolicyWeights {
            recency_half_life_ms: 120_000.0,
            frequency: 0.05,
            conversation: 0.1,
            conversation_half_life_ms: 300_000.0,
            turn_prior: 8.0,
        }
    }
}

/// What the policy knows about one block.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BlockState {
    pub last_access_ms: u64,
    pub hits: u32,
    pub position: u32,
    /// Last request of the block's conversation, when it has one.
    pub conversation_active_ms: Option<u64>,
    /// Turns the block's conversation has made (0 without a conversation).
    pub conversation_turns: u32,
}

fn decay(age_ms: u64, half_life_ms: f64) -> f64 {
    (-(age_ms as f64) / half_life_ms * std::f64::consts::LN_2).exp()
}

/// The block's worth at `now_ms`: higher is kept longer.
pub fn score(block: &BlockState, now_ms: u64, w: &PolicyWeights) -> f64 {
    let recency = decay(
        now_ms.saturating_sub(block.last_access_ms),
        w.recency_half_life_ms,
    );
    let frequency = w.frequency * (1.0 + block.hits as f64).ln();
    let conversation = block.conversation_active_ms.map_or(0.0, |active| {
        w.conversation * decay(now_ms.saturating_sub(active), w.conversation_half_life_ms)
    });
    (recency + frequency + conversation) * return_likelihood(block.conversation_turns, w)
}

/// How likely a conversation is to come back after `turns` turns, relative terms.
fn return_likelihood(turns: u32, w: &PolicyWeights) -> f64 {
    if w.turn_prior <= 0.0 {
        return 1.0;
    }
    let k = f64::from(turns.max(1));
    k / (k + w.turn_prior)
}

/// The candidate worth least (deepest first among equal scores), if any.
pub fn least_valuable<K: Copy>(
    candidates: impl IntoIterator<Item = (K, BlockState)>,
    now_ms: u64,
    w: &PolicyWeights,
) -> Option<K> {
    candidates
        .into_iter()
        .map(|(key, state)| (key, score(&state, now_ms, w), state.position))
        .min_by(|a, b| a.1.total_cmp(&b.1).then(b.2.cmp(&a.2)))
        .map(|(key, _, _)| key)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(last_access_ms: u64, hits: u32, position: u32, active: Option<u64>) -> BlockState {
        BlockState {
            last_access_ms,
            hits,
            position,
            conversation_active_ms: active,
            conversation_turns: u32::from(active.is_some()),
        }
    }

    #[test]
    fn a_conversation_that_keeps_coming_back_outlives_a_first_turn() {
        let w = PolicyWeights::default();
        let now = HOUR;
        let returning = BlockState {
            conversation_turns: 5,
            ..state(now - 60_000, 0, 3, Some(now - 60_000))
        };
        let first_turn = state(now - 30_000, 0, 3, Some(now - 30_000));
        assert_eq!(
            least_valuable([(1, returning), (2, first_turn)], now, &w),
            Some(2)
        );
        let off = PolicyWeights {
            turn_prior: 0.0,
            ..w
        };
        assert_eq!(
            least_valuable([(1, returning), (2, first_turn)], now, &off),
            Some(1)
        );
    }

    const HOUR: u64 = 3_600_000;

    #[test]
    fn an_older_block_is_worth_less() {
        let w = PolicyWeights::default();
        let now = 10 * HOUR;
        assert!(
            score(&state(now - HOUR, 0, 0, None), now, &w)
                < score(&state(now, 0, 0, None), now, &w)
        );
    }

    #[test]
    fn an_active_conversation_outweighs_a_little_recency() {
        let w = PolicyWeights::default();
        let now = 10 * HOUR;
        let active = state(now - 40_000, 0, 3, Some(now - 5_000));
        let idle = state(now - 30_000, 0, 3, Some(now - HOUR));
        assert_eq!(least_valuable([(1, active), (2, idle)], now, &w), Some(2));
    }

    #[test]
    fn frequent_blocks_outlive_once_used_ones_of_the_same_age() {
        let w = PolicyWeights::default();
        let now = HOUR;
        assert_eq!(
            least_valuable(
                [(1, state(0, 50, 0, None)), (2, state(0, 0, 0, None))],
                now,
                &w
            ),
            Some(2)
        );
    }

    #[test]
    fn among_equals_the_deepest_block_goes_first() {
        let w = PolicyWeights::default();
        let candidates = [
            (1, state(5, 1, 2, None)),
            (2, state(5, 1, 7, None)),
            (3, state(5, 1, 4, None)),
        ];
        assert_eq!(least_valuable(candidates, 10, &w), Some(2));
    }

    #[test]
    fn no_candidates_no_victim() {
        assert_eq!(least_valuable::<u8>([], 0, &PolicyWeights::default()), None);
    }
}
