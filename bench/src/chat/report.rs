//! Per-turn records of the chat benchmark, its JSON file, its plot and its summary table.

use std::path::Path;

use anyhow::Context;
use comfy_table::{presets::UTF8_FULL_CONDENSED, Table};
use serde::Serialize;

use crate::plot::{self, Panel, Series};
use crate::stats::median;

/// One measured turn, as written to the JSON file.
#[derive(Debug, Clone, Serialize)]
pub struct TurnRecord {
    pub conversation: String,
    pub turn: usize,
    pub history_tokens: usize,
    pub prompt_tokens: usize,
    pub cached_tokens: usize,
    pub fetched_bytes: u64,
    pub lookup_ms: f64,
    pub fetch_ms: f64,
    pub compute_ms: f64,
    pub ttft_cached_ms: f64,
    /// TTFT through kvtier with the prefix loaded layer by layer under the computation.
    pub ttft_layer_wise_ms: f64,
    pub ttft_recompute_ms: f64,
    pub first_token_match: bool,
    /// The layer-wise prefill gave bit-identical logits to loading whole blocks first.
    pub layer_wise_logits_match: bool,
}

/// Turns with at least this much history are the ones the cache is for.
pub const LONG_HISTORY: usize = 1000;

const BUCKETS: [(usize, usize); 4] = [(0, 500), (500, 1000), (1000, 2000), (2000, usize::MAX)];

/// Medians over a set of turns.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub turns: usize,
    pub median_ttft_cached_ms: f64,
    pub median_ttft_layer_wise_ms: f64,
    pub median_ttft_recompute_ms: f64,
    pub speedup: f64,
    pub first_token_agreement: f64,
}

impl Summary {
    pub fn of<'a>(turns: impl IntoIterator<Item = &'a TurnRecord>) -> Option<Self> {
        let turns: Vec<&TurnRecord> = turns.into_iter().collect();
        if turns.is_empty() {
            return None;
        }
        let cached = median(&turns.iter().map(|t| t.ttft_cached_ms).collect::<Vec<_>>());
        let layer_wise = median(
            &turns
                .iter()
                .map(|t| t.ttft_layer_wise_ms)
                .collect::<Vec<_>>(),
        );
        let recompute = median(
            &turns
                .iter()
                .map(|t| t.ttft_recompute_ms)
                .collect::<Vec<_>>(),
        );
        let matches = turns.iter().filter(|t| t.first_token_match).count();
        Some(Summary {
            turns: turns.len(),
            median_ttft_cached_ms: cached,
            median_ttft_layer_wise_ms: layer_wise,
            median_ttft_recompute_ms: recompute,
            speedup: recompute / cached,
            first_token_agreement: matches as f64 / turns.len() as f64,
        })
    }
}

/// Turns whose history is at least [`LONG_HISTORY`] tokens.
pub fn long_history(turns: &[TurnRecord]) -> Option<Summary> {
    Summary::of(turns.iter().filter(|t| t.history_tokens >= LONG_HISTORY))
}

/// The summary table: medians by history length.
pub fn table(turns: &[TurnRecord]) -> Table {
    let mut table = Table::new();
    table.load_preset(UTF8_FULL_CONDENSED).set_header([
        "history tokens",
        "turns",
        "TTFT cached (ms)",
        "TTFT cached, layer-wise (ms)",
        "TTFT recompute (ms)",
        "speedup",
        "first token agrees",
    ]);
    let mut add_row = |label: String, summary: Option<Summary>| {
        if let Some(s) = summary {
            table.add_row([
                label,
                s.turns.to_string(),
                format!("{:.1}", s.median_ttft_cached_ms),
                format!("{:.1}", s.median_ttft_layer_wise_ms),
                format!("{:.1}", s.median_ttft_recompute_ms),
                format!("{:.1}x", s.speedup),
                format!("{:.0}%", 100.0 * s.first_token_agreement),
            ]);
        }
    };
    for (low, high) in BUCKETS {
        let label = if high == usize::MAX {
            format!("{low}+")
        } else {
            format!("{low}-{}", high - 1)
        };
        let bucket = turns
            .iter()
            .filter(|t| (low..high).contains(&t.history_tokens));
        add_row(label, Summary::of(bucket));
    }
    add_row(format!("all >= {LONG_HISTORY}"), long_history(turns));
    add_row("all".to_string(), Summary::of(turns));
    table
}

#[derive(Serialize)]
struct JsonReport<'a> {
    model: &'a str,
    block_tokens: usize,
    turns: &'a [TurnRecord],
    summary_long_history: Option<Summary>,
}

/// Writes `{"turns": [...], ...}` to `path`, and the plot of TTFT against history length
/// beside it.
pub fn write_json(
    path: &Path,
    model: &str,
    block_tokens: usize,
    turns: &[TurnRecord],
) -> anyhow::Result<()> {
    let report = JsonReport {
        model,
        block_tokens,
        turns,
        summary_long_history: long_history(turns),
    };
    let text = serde_json::to_string_pretty(&report)?;
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))?;
    plot_ttft(&plot::png_beside(path), model, turns)
}

/// One point per turn: TTFT (log scale) against history length, cached and recomputed.
fn plot_ttft(path: &Path, model: &str, turns: &[TurnRecord]) -> anyhow::Result<()> {
    let points = |ttft: fn(&TurnRecord) -> f64| -> Vec<(f64, f64)> {
        turns
            .iter()
            .map(|t| (t.history_tokens as f64, ttft(t)))
            .collect()
    };
    let panel = Panel {
        title: format!("{model}: time to first token"),
        x_label: "history (tokens before the user message)".into(),
        y_label: "TTFT (ms)".into(),
        log_x: false,
        log_y: true,
        series: vec![
            Series::points("cached in kvtier", points(|t| t.ttft_cached_ms)),
            Series::points("cached, layer-wise", points(|t| t.ttft_layer_wise_ms)),
            Series::points("recomputed", points(|t| t.ttft_recompute_ms)),
        ],
    };
    plot::write_png(path, "kvtier-bench chat", &[panel], 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn turn(history: usize, cached: f64, recompute: f64, agrees: bool) -> TurnRecord {
        TurnRecord {
            conversation: "c".into(),
            turn: 0,
            history_tokens: history,
            prompt_tokens: history + 10,
            cached_tokens: history,
            fetched_bytes: 0,
            lookup_ms: 0.0,
            fetch_ms: 0.0,
            compute_ms: 0.0,
            ttft_cached_ms: cached,
            ttft_layer_wise_ms: cached,
            ttft_recompute_ms: recompute,
            first_token_match: agrees,
            layer_wise_logits_match: true,
        }
    }

    #[test]
    fn long_history_summary_uses_medians_of_long_turns_only() {
        let turns = [
            turn(10, 1.0, 1.0, false),
            turn(1000, 10.0, 100.0, true),
            turn(1500, 20.0, 400.0, true),
            turn(3000, 30.0, 900.0, false),
        ];
        let s = long_history(&turns).unwrap();
        assert_eq!(s.turns, 3);
        assert_eq!(s.median_ttft_cached_ms, 20.0);
        assert_eq!(s.median_ttft_recompute_ms, 400.0);
        assert_eq!(s.speedup, 20.0);
        assert!((s.first_token_agreement - 2.0 / 3.0).abs() < 1e-9);
    }

    #[test]
    fn no_turns_means_no_summary() {
        assert!(Summary::of(&[]).is_none());
    }
}
