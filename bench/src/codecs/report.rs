//! The codecs benchmark's records, tables, JSON file and plot.

use std::path::Path;

use anyhow::Context;
use comfy_table::{presets::UTF8_FULL_CONDENSED, Table};
use kvtier_engine::kv_cache::DecodeCompression;
use serde::Serialize;

use super::accuracy::{Agreement, Compressed, STEP};
use super::kv::Measured;
use crate::plot::{self, Panel, Series};

#[derive(Debug, Clone, Serialize)]
pub struct CodecRecord {
    pub codec: String,
    pub lossless: bool,
    /// f16 bytes over encoded bytes, headers and scales included.
    pub ratio: f64,
    pub encode_mb_s: f64,
    pub decode_mb_s: f64,
    pub positions: usize,
    pub top1_agreement: f64,
    pub mean_kl: f64,
}

impl CodecRecord {
    pub fn new(name: &str, size: Measured, agreement: Agreement) -> Self {
        let lossless = name
            .parse::<kvtier_client::format::CodecSpec>()
            .is_ok_and(|c| c.is_lossless());
        CodecRecord {
            codec: name.to_string(),
            lossless,
            ratio: size.ratio,
            encode_mb_s: size.encode_mb_s,
            decode_mb_s: size.decode_mb_s,
            positions: agreement.positions,
            top1_agreement: agreement.top1,
            mean_kl: agreement.mean_kl,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct DecodeRecord {
    pub window: usize,
    pub group: usize,
    pub codec: String,
    pub tokens_per_step: usize,
    /// Exact f32 bytes over held bytes, right after the prefill.
    pub shrink_after_prefix: f64,
    /// The same at the end of the scored positions.
    pub shrink_at_end: f64,
    pub positions: usize,
    pub top1_agreement: f64,
    pub mean_kl: f64,
}

impl DecodeRecord {
    pub fn new(settings: DecodeCompression, run: &Compressed, agreement: Agreement) -> Self {
        DecodeRecord {
            window: settings.window,
            group: settings.group,
            codec: settings.codec.to_string(),
            tokens_per_step: STEP,
            shrink_after_prefix: run.exact_after_prefix as f64 / run.held_after_prefix as f64,
            shrink_at_end: run.exact_at_end as f64 / run.held_at_end as f64,
            positions: agreement.positions,
            top1_agreement: agreement.top1,
            mean_kl: agreement.mean_kl,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub model: String,
    pub context_tokens: usize,
    pub positions: usize,
    pub block_tokens: usize,
    pub kv_bytes_f16: usize,
    pub codecs: Vec<CodecRecord>,
    pub decode: Vec<DecodeRecord>,
    pub elapsed_s: f64,
}

pub fn codec_table(report: &Report) -> Table {
    let mut table = Table::new();
    table.load_preset(UTF8_FULL_CONDENSED).set_header([
        "codec",
        "ratio vs f16",
        "encode MB/s",
        "decode MB/s",
        "top-1 agree",
        "mean KL",
    ]);
    for r in &report.codecs {
        table.add_row([
            r.codec.clone(),
            format!("{:.2}x", r.ratio),
            format!("{:.0}", r.encode_mb_s),
            format!("{:.0}", r.decode_mb_s),
            format!("{:.2}%", 100.0 * r.top1_agreement),
            format!("{:.2e}", r.mean_kl),
        ]);
    }
    table
}

pub fn decode_table(report: &Report) -> Table {
    let mut table = Table::new();
    table.load_preset(UTF8_FULL_CONDENSED).set_header([
        "decode-time",
        "context",
        "shrink after prefill",
        "shrink at end",
        "top-1 agree",
        "mean KL",
    ]);
    for r in &report.decode {
        table.add_row([
            format!("{} W={} group {}", r.codec, r.window, r.group),
            format!("{}+{}", report.context_tokens, r.positions),
            format!("{:.2}x", r.shrink_after_prefix),
            format!("{:.2}x", r.shrink_at_end),
            format!("{:.2}%", 100.0 * r.top1_agreement),
            format!("{:.2e}", r.mean_kl),
        ]);
    }
    table
}

/// Writes the JSON report and a plot beside it: ratio against accuracy, and against speed.
pub fn write(path: &Path, report: &Report) -> anyhow::Result<()> {
    let json = serde_json::to_string_pretty(report)?;
    std::fs::write(path, json).with_context(|| format!("cannot write {}", path.display()))?;
    let lossy: Vec<&CodecRecord> = report.codecs.iter().filter(|r| !r.lossless).collect();
    let lossless: Vec<&CodecRecord> = report.codecs.iter().filter(|r| r.lossless).collect();
    let points = |set: &[&CodecRecord], y: fn(&CodecRecord) -> f64| {
        set.iter().map(|r| (r.ratio, y(r))).collect::<Vec<_>>()
    };
    let decode: Vec<(f64, f64)> = report
        .decode
        .iter()
        .map(|r| (r.shrink_at_end, 100.0 * (1.0 - r.top1_agreement)))
        .collect();
    let panels = [
        Panel {
            title: "accuracy: top-1 disagreement".into(),
            x_label: "compression ratio".into(),
            y_label: "% positions whose top-1 token differs".into(),
            log_x: false,
            log_y: false,
            series: vec![
                Series::points(
                    "block codecs",
                    points(&lossy, |r| 100.0 * (1.0 - r.top1_agreement)),
                ),
                Series::points("decode-time int8 (W=64, 256)", decode),
            ],
        },
        Panel {
            title: "speed".into(),
            x_label: "compression ratio vs f16".into(),
            y_label: "decode MB/s".into(),
            log_x: false,
            log_y: true,
            series: vec![
                Series::points("lossless", points(&lossless, |r| r.decode_mb_s)),
                Series::points("lossy", points(&lossy, |r| r.decode_mb_s)),
            ],
        },
    ];
    let title = format!(
        "{}: codecs on {} tokens of real KV, {} positions",
        report.model, report.context_tokens, report.positions
    );
    plot::write_png(&plot::png_beside(path), &title, &panels, 2)
}
