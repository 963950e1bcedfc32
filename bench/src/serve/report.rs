//! Per-turn records of the serve benchmark, the summary of each mode, its table, JSON
//! file and plot.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use comfy_table::{presets::UTF8_FULL_CONDENSED, Table};
use serde::Serialize;

use super::ServeArgs;
use crate::plot::{self, Panel, Series};
use crate::stats::percentile;

/// One completed turn of one user.
#[derive(Debug, Clone, Serialize)]
pub struct TurnRecord {
    pub mode: &'static str,
    pub user: usize,
    pub turn: usize,
    pub prompt_tokens: u64,
    pub cached_tokens: u64,
    pub completion_tokens: u64,
    /// From sending the request to the first streamed text, queueing included.
    pub ttft_ms: f64,
    pub total_ms: f64,
    /// Times the node answered 429 before accepting the turn.
    pub retries: u32,
    /// When the turn ended, in seconds since the user started.
    pub finished_s: f64,
}

/// What one mode (with or without kvtier) measured.
#[derive(Debug, Clone, Serialize)]
pub struct ModeReport {
    pub mode: &'static str,
    pub turns: usize,
    pub wall_s: f64,
    pub ttft_p50_ms: f64,
    pub ttft_p99_ms: f64,
    pub turns_per_minute: f64,
    /// Cached prompt tokens over all prompt tokens.
    pub cached_token_ratio: f64,
    pub records: Vec<TurnRecord>,
}

impl ModeReport {
    pub fn of(mode: &'static str, records: Vec<TurnRecord>, wall: Duration) -> Self {
        let ttft: Vec<f64> = records.iter().map(|r| r.ttft_ms).collect();
        let prompt: u64 = records.iter().map(|r| r.prompt_tokens).sum();
        let cached: u64 = records.iter().map(|r| r.cached_tokens).sum();
        let wall_s = wall.as_secs_f64();
        ModeReport {
            mode,
            turns: records.len(),
            wall_s,
            ttft_p50_ms: percentile(&ttft, 50.0).unwrap_or(0.0),
            ttft_p99_ms: percentile(&ttft, 99.0).unwrap_or(0.0),
            turns_per_minute: if wall_s > 0.0 {
                records.len() as f64 * 60.0 / wall_s
            } else {
                0.0
            },
            cached_token_ratio: if prompt > 0 {
                cached as f64 / prompt as f64
            } else {
                0.0
            },
            records,
        }
    }
}

pub fn table(modes: &[ModeReport]) -> Table {
    let mut table = Table::new();
    table.load_preset(UTF8_FULL_CONDENSED).set_header([
        "mode",
        "turns",
        "TTFT p50 (ms)",
        "TTFT p99 (ms)",
        "turns / min",
        "cached-token ratio",
        "wall (s)",
    ]);
    for m in modes {
        table.add_row([
            m.mode.to_string(),
            m.turns.to_string(),
            format!("{:.0}", m.ttft_p50_ms),
            format!("{:.0}", m.ttft_p99_ms),
            format!("{:.1}", m.turns_per_minute),
            format!("{:.1}%", 100.0 * m.cached_token_ratio),
            format!("{:.1}", m.wall_s),
        ]);
    }
    table
}

#[derive(Serialize)]
struct JsonReport<'a> {
    model: &'a str,
    users: usize,
    turns_per_user: usize,
    think_s: f64,
    max_tokens: usize,
    answers: super::Answers,
    max_context: usize,
    layer_wise: bool,
    block_tokens: u32,
    modes: &'a [ModeReport],
}

/// Writes the report to `path` and a plot of TTFT against prompt length beside it.
pub fn write_json(
    path: &Path,
    model: &str,
    args: &ServeArgs,
    modes: &[ModeReport],
) -> anyhow::Result<()> {
    let report = JsonReport {
        model,
        users: args.users,
        turns_per_user: args.turns,
        think_s: args.think.as_secs_f64(),
        max_tokens: args.max_tokens,
        answers: args.answers,
        max_context: args.max_context,
        layer_wise: args.layer_wise,
        block_tokens: args.block_tokens,
        modes,
    };
    let text = serde_json::to_string_pretty(&report)?;
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))?;
    let series = modes
        .iter()
        .map(|m| {
            let points = m
                .records
                .iter()
                .map(|r| (r.prompt_tokens as f64, r.ttft_ms))
                .collect();
            Series::points(m.mode, points)
        })
        .collect();
    let panel = Panel {
        title: format!("{model}: TTFT with {} concurrent users", args.users),
        x_label: "prompt tokens".into(),
        y_label: "TTFT, queueing included (ms)".into(),
        log_x: false,
        log_y: true,
        series,
    };
    plot::write_png(&plot::png_beside(path), "kvtier-bench serve", &[panel], 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn turn(ttft_ms: f64, prompt: u64, cached: u64) -> TurnRecord {
        TurnRecord {
            mode: "kvtier",
            user: 0,
            turn: 0,
            prompt_tokens: prompt,
            cached_tokens: cached,
            completion_tokens: 1,
            ttft_ms,
            total_ms: ttft_ms,
            retries: 0,
            finished_s: 0.0,
        }
    }

    #[test]
    fn a_mode_summary_counts_turns_per_minute_and_the_cached_ratio() {
        let records = vec![
            turn(10.0, 100, 0),
            turn(30.0, 100, 50),
            turn(20.0, 200, 150),
        ];
        let m = ModeReport::of("kvtier", records, Duration::from_secs(30));
        assert_eq!(m.turns, 3);
        assert_eq!(m.ttft_p50_ms, 20.0);
        assert_eq!(m.turns_per_minute, 6.0);
        assert!((m.cached_token_ratio - 0.5).abs() < 1e-9);
    }
}
