//! Measured requests of the filechat benchmark, their summary per concurrency level, the
//! table, the JSON file and the plot.

use std::collections::HashMap;
use std::path::Path;

use anyhow::Context;
use comfy_table::{presets::UTF8_FULL_CONDENSED, Table};
use serde::Serialize;

use crate::plot::{self, Panel, Series};
use crate::stats::{median, percentile};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// The document's blocks come from kvtierd.
    Cached,
    /// The whole prompt is computed, the cache off.
    Recompute,
}

/// One request: a question's time to first token.
#[derive(Debug, Clone, Serialize)]
pub struct Request {
    pub question: usize,
    pub prompt_tokens: usize,
    pub cached_tokens: usize,
    pub ttft_ms: f64,
    pub first_token: u32,
}

/// The requests of one mode at one concurrency level.
#[derive(Debug, Clone, Serialize)]
pub struct Phase {
    pub mode: Mode,
    pub concurrency: usize,
    pub wall_s: f64,
    pub requests: Vec<Request>,
}

impl Phase {
    fn ttfts(&self) -> Vec<f64> {
        self.requests.iter().map(|r| r.ttft_ms).collect()
    }

    fn first_tokens_per_s(&self) -> f64 {
        self.requests.len() as f64 / self.wall_s
    }
}

/// One mode at one level.
#[derive(Debug, Clone, Serialize)]
pub struct ModeFigures {
    pub requests: usize,
    pub ttft_p50_ms: f64,
    pub ttft_p99_ms: f64,
    pub first_tokens_per_s: f64,
    pub median_cached_tokens: f64,
}

/// Cached against recomputed at one concurrency level.
#[derive(Debug, Clone, Serialize)]
pub struct Level {
    pub concurrency: usize,
    pub cached: ModeFigures,
    pub recompute: ModeFigures,
    /// Cached first tokens per second over recomputed ones.
    pub throughput_ratio: f64,
    /// Recomputed TTFT p50 over cached TTFT p50.
    pub ttft_p50_speedup: f64,
    /// Of the questions measured both ways at this level, the fraction whose first token
    /// is the same.
    pub first_token_agreement: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub document_prompt_tokens: usize,
    pub block_tokens: u32,
    pub levels: Vec<Level>,
}

impl Summary {
    pub fn of(phases: &[Phase], document_prompt_tokens: usize, block_tokens: u32) -> Summary {
        let mut levels: Vec<usize> = phases.iter().map(|p| p.concurrency).collect();
        levels.dedup();
        let find =
            |c: usize, mode: Mode| phases.iter().find(|p| p.concurrency == c && p.mode == mode);
        let levels = levels
            .into_iter()
            .filter_map(|c| Some(Level::of(find(c, Mode::Cached)?, find(c, Mode::Recompute)?)))
            .collect();
        Summary {
            document_prompt_tokens,
            block_tokens,
            levels,
        }
    }
}

impl ModeFigures {
    fn of(phase: &Phase) -> ModeFigures {
        let ttfts = phase.ttfts();
        let cached: Vec<f64> = phase
            .requests
            .iter()
            .map(|r| r.cached_tokens as f64)
            .collect();
        ModeFigures {
            requests: phase.requests.len(),
            ttft_p50_ms: median(&ttfts),
            ttft_p99_ms: percentile(&ttfts, 99.0).unwrap_or(0.0),
            first_tokens_per_s: phase.first_tokens_per_s(),
            median_cached_tokens: median(&cached),
        }
    }
}

impl Level {
    fn of(cached: &Phase, recompute: &Phase) -> Level {
        let c = ModeFigures::of(cached);
        let r = ModeFigures::of(recompute);
        Level {
            concurrency: cached.concurrency,
            throughput_ratio: c.first_tokens_per_s / r.first_tokens_per_s,
            ttft_p50_speedup: r.ttft_p50_ms / c.ttft_p50_ms,
            first_token_agreement: agreement(cached, recompute),
            cached: c,
            recompute: r,
        }
    }
}

/// Fraction of the recomputed questions whose first token equals the cached one.
fn agreement(cached: &Phase, recompute: &Phase) -> f64 {
    let by_question: HashMap<usize, u32> = cached
        .requests
        .iter()
        .map(|r| (r.question, r.first_token))
        .collect();
    let compared: Vec<bool> = recompute
        .requests
        .iter()
        .filter_map(|r| Some(by_question.get(&r.question)? == &r.first_token))
        .collect();
    if compared.is_empty() {
        return 0.0;
    }
    compared.iter().filter(|&&same| same).count() as f64 / compared.len() as f64
}

pub fn phase_line(phase: &Phase) -> String {
    let ttfts = phase.ttfts();
    format!(
        "concurrency {} {:?}: {} requests, TTFT p50 {:.0} ms, p99 {:.0} ms, {:.2} first tokens/s",
        phase.concurrency,
        phase.mode,
        phase.requests.len(),
        median(&ttfts),
        percentile(&ttfts, 99.0).unwrap_or(0.0),
        phase.first_tokens_per_s()
    )
}

pub fn print(summary: &Summary) {
    let mut table = Table::new();
    table.load_preset(UTF8_FULL_CONDENSED).set_header([
        "concurrency",
        "TTFT p50 cached / recompute (ms)",
        "TTFT p99 cached / recompute (ms)",
        "first tokens/s cached / recompute",
        "throughput ratio",
        "first token agrees",
    ]);
    for l in &summary.levels {
        table.add_row([
            l.concurrency.to_string(),
            format!(
                "{:.0} / {:.0}",
                l.cached.ttft_p50_ms, l.recompute.ttft_p50_ms
            ),
            format!(
                "{:.0} / {:.0}",
                l.cached.ttft_p99_ms, l.recompute.ttft_p99_ms
            ),
            format!(
                "{:.2} / {:.3}",
                l.cached.first_tokens_per_s, l.recompute.first_tokens_per_s
            ),
            format!("{:.1}x", l.throughput_ratio),
            format!("{:.0}%", 100.0 * l.first_token_agreement),
        ]);
    }
    println!(
        "document prompt of {} tokens, blocks of {} tokens",
        summary.document_prompt_tokens, summary.block_tokens
    );
    println!("{table}");
}

#[derive(Serialize)]
struct JsonReport<'a> {
    summary: &'a Summary,
    phases: &'a [Phase],
}

pub fn write(path: &Path, summary: &Summary, phases: &[Phase]) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(&JsonReport { summary, phases })?;
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))?;
    plot_levels(&plot::png_beside(path), summary)
}

fn plot_levels(path: &Path, summary: &Summary) -> anyhow::Result<()> {
    let series = |name: &str, value: fn(&Level) -> f64| {
        let points = summary
            .levels
            .iter()
            .map(|l| (l.concurrency as f64, value(l)))
            .collect();
        Series::line(name, points)
    };
    let ttft = Panel {
        title: "TTFT p50".into(),
        x_label: "concurrent requests".into(),
        y_label: "ms".into(),
        log_x: false,
        log_y: true,
        series: vec![
            series("cached in kvtier", |l| l.cached.ttft_p50_ms),
            series("recomputed", |l| l.recompute.ttft_p50_ms),
        ],
    };
    let throughput = Panel {
        title: "first tokens per second".into(),
        x_label: "concurrent requests".into(),
        y_label: "first tokens / s".into(),
        log_x: false,
        log_y: true,
        series: vec![
            series("cached in kvtier", |l| l.cached.first_tokens_per_s),
            series("recomputed", |l| l.recompute.first_tokens_per_s),
        ],
    };
    plot::write_png(path, "kvtier-bench filechat", &[ttft, throughput], 2)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn phase(mode: Mode, concurrency: usize, wall_s: f64, ttfts: &[(usize, f64, u32)]) -> Phase {
        let requests = ttfts
            .iter()
            .map(|&(question, ttft_ms, first_token)| Request {
                question,
                prompt_tokens: 100,
                cached_tokens: if mode == Mode::Cached { 96 } else { 0 },
                ttft_ms,
                first_token,
            })
            .collect();
        Phase {
            mode,
            concurrency,
            wall_s,
            requests,
        }
    }

    #[test]
    fn a_level_compares_throughput_ttft_and_first_tokens_of_shared_questions() {
        let cached = phase(
            Mode::Cached,
            2,
            1.0,
            &[(1, 100.0, 7), (2, 200.0, 8), (3, 300.0, 9)],
        );
        let recompute = phase(Mode::Recompute, 2, 10.0, &[(1, 4000.0, 7), (2, 6000.0, 5)]);
        let summary = Summary::of(&[cached, recompute], 1000, 32);
        let level = &summary.levels[0];
        assert_eq!(level.concurrency, 2);
        assert_eq!(level.cached.first_tokens_per_s, 3.0);
        assert_eq!(level.recompute.first_tokens_per_s, 0.2);
        assert!((level.throughput_ratio - 15.0).abs() < 1e-9);
        assert_eq!(level.ttft_p50_speedup, 5000.0 / 200.0);
        assert_eq!(level.first_token_agreement, 0.5);
        assert_eq!(level.cached.median_cached_tokens, 96.0);
    }

    #[test]
    fn a_level_without_its_recompute_phase_is_left_out() {
        let cached = phase(Mode::Cached, 4, 1.0, &[(1, 100.0, 7)]);
        assert!(Summary::of(&[cached], 1000, 32).levels.is_empty());
    }
}
