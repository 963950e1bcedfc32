//! The trace benchmark's results: the table, the JSON file and the plot.

use std::path::Path;

use anyhow::Context;
use comfy_table::{presets::UTF8_FULL_CONDENSED, Table};
use kvtier_store::policy::PolicyWeights;
use serde::Serialize;

use super::replay::Outcome;
use crate::plot::{self, Panel, Series};
use crate::stats::median;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// The store's policy, with conversation ids on puts.
    Kvtier,
    /// The store's policy when clients send no conversation ids.
    KvtierNoConversations,
    Lru,
    Belady,
}

impl Policy {
    const ALL: [Policy; 4] = [
        Policy::Kvtier,
        Policy::KvtierNoConversations,
        Policy::Lru,
        Policy::Belady,
    ];

    fn label(self) -> &'static str {
        match self {
            Policy::Kvtier => "kvtier",
            Policy::KvtierNoConversations => "kvtier, no conv. ids",
            Policy::Lru => "LRU",
            Policy::Belady => "Belady",
        }
    }
}

/// One policy at one capacity: medians over seeds where the policy samples.
#[derive(Debug, Clone, Serialize)]
pub struct PolicyResult {
    pub hit_ratio: f64,
    pub hit_ratio_reps: Vec<f64>,
    pub saved_tokens: f64,
    pub saved_fraction: f64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct CapacityResult {
    pub blocks: usize,
    pub kvtier: Option<PolicyResult>,
    pub kvtier_no_conversation_ids: Option<PolicyResult>,
    pub lru: Option<PolicyResult>,
    pub belady: Option<PolicyResult>,
}

impl CapacityResult {
    pub fn new(blocks: usize) -> Self {
        CapacityResult {
            blocks,
            ..Default::default()
        }
    }

    pub fn add(&mut self, policy: Policy, outcomes: &[Outcome]) {
        let ratios: Vec<f64> = outcomes.iter().map(Outcome::hit_ratio).collect();
        let saved: Vec<f64> = outcomes.iter().map(|o| o.saved_tokens as f64).collect();
        let fractions: Vec<f64> = outcomes.iter().map(Outcome::saved_fraction).collect();
        let result = PolicyResult {
            hit_ratio: median(&ratios),
            hit_ratio_reps: ratios,
            saved_tokens: median(&saved),
            saved_fraction: median(&fractions),
        };
        *self.slot(policy) = Some(result);
    }

    fn slot(&mut self, policy: Policy) -> &mut Option<PolicyResult> {
        match policy {
            Policy::Kvtier => &mut self.kvtier,
            Policy::KvtierNoConversations => &mut self.kvtier_no_conversation_ids,
            Policy::Lru => &mut self.lru,
            Policy::Belady => &mut self.belady,
        }
    }

    pub fn get(&self, policy: Policy) -> Option<&PolicyResult> {
        match policy {
            Policy::Kvtier => self.kvtier.as_ref(),
            Policy::KvtierNoConversations => self.kvtier_no_conversation_ids.as_ref(),
            Policy::Lru => self.lru.as_ref(),
            Policy::Belady => self.belady.as_ref(),
        }
    }

    fn ratio(&self, policy: Policy) -> f64 {
        self.get(policy).map_or(f64::NAN, |r| r.hit_ratio)
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct WeightsJson {
    pub recency_half_life_s: f64,
    pub frequency: f64,
    pub conversation: f64,
    pub conversation_half_life_s: f64,
    pub turn_prior: f64,
}

impl From<&PolicyWeights> for WeightsJson {
    fn from(w: &PolicyWeights) -> Self {
        WeightsJson {
            recency_half_life_s: w.recency_half_life_ms / 1e3,
            frequency: w.frequency,
            conversation: w.conversation,
            conversation_half_life_s: w.conversation_half_life_ms / 1e3,
            turn_prior: w.turn_prior,
        }
    }
}

/// Everything the run found, as written to JSON.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub source: String,
    pub requests: usize,
    pub references: u64,
    pub blocks: usize,
    pub conversations: usize,
    pub block_tokens: u64,
    pub kvtier_seeds: u64,
    pub weights: WeightsJson,
    /// Hit ratio of a cache that never evicts: the most any policy can reach.
    pub unlimited_hit_ratio: f64,
    pub capacities: Vec<CapacityResult>,
}

fn pct(ratio: f64) -> String {
    format!("{:.1}%", 100.0 * ratio)
}

pub fn print(summary: &Summary) {
    let mut table = Table::new();
    let mut header: Vec<String> = vec!["blocks".into()];
    header.extend(Policy::ALL.iter().map(|p| format!("{} hit", p.label())));
    header.extend(
        [
            "kvtier - LRU",
            "Belady - kvtier",
            "prefill saved kvtier / LRU / Belady",
        ]
        .map(String::from),
    );
    table.load_preset(UTF8_FULL_CONDENSED).set_header(header);
    for c in &summary.capacities {
        let mut row = vec![c.blocks.to_string()];
        row.extend(Policy::ALL.iter().map(|p| pct(c.ratio(*p))));
        let kvtier = c.ratio(Policy::Kvtier);
        row.push(format!(
            "{:+.1} pts",
            100.0 * (kvtier - c.ratio(Policy::Lru))
        ));
        row.push(format!(
            "{:.1} pts",
            100.0 * (c.ratio(Policy::Belady) - kvtier)
        ));
        let saved = [Policy::Kvtier, Policy::Lru, Policy::Belady]
            .map(|p| c.get(p).map_or("-".into(), |r| pct(r.saved_fraction)));
        row.push(saved.join(" / "));
        table.add_row(row);
    }
    println!(
        "block hit ratio (contiguous cached prefix) on {}; a cache that never evicts: {}",
        summary.source,
        pct(summary.unlimited_hit_ratio)
    );
    println!("{table}");
}

pub fn write(path: &Path, summary: &Summary) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(summary)?;
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))?;
    plot(&plot::png_beside(path), summary)
}

fn plot(path: &Path, summary: &Summary) -> anyhow::Result<()> {
    let series_of = |value: fn(&PolicyResult) -> f64| -> Vec<Series> {
        let mut series: Vec<Series> = Policy::ALL
            .iter()
            .map(|&p| {
                let points = summary
                    .capacities
                    .iter()
                    .filter_map(|c| Some((c.blocks as f64, 100.0 * value(c.get(p)?))))
                    .collect();
                Series::line(p.label(), points)
            })
            .collect();
        let ends = summary.capacities.iter().map(|c| c.blocks as f64);
        let unlimited = 100.0 * summary.unlimited_hit_ratio;
        if let (Some(low), Some(high)) = (ends.clone().reduce(f64::min), ends.reduce(f64::max)) {
            series.push(Series::line(
                "never evicts",
                vec![(low, unlimited), (high, unlimited)],
            ));
        }
        series
    };
    let hit = Panel {
        title: "block hit ratio".into(),
        x_label: "cache capacity (blocks)".into(),
        y_label: "hit ratio (%)".into(),
        log_x: true,
        log_y: false,
        series: series_of(|r| r.hit_ratio),
    };
    let saved = Panel {
        title: "prefill tokens saved".into(),
        x_label: "cache capacity (blocks)".into(),
        y_label: "of all prompt tokens (%)".into(),
        log_x: true,
        log_y: false,
        series: series_of(|r| r.saved_fraction)[..Policy::ALL.len()].to_vec(),
    };
    plot::write_png(path, "kvtier-bench trace", &[hit, saved], 2)
}
