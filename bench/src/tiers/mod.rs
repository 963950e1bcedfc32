//! `kvtier-bench tiers`: put and get throughput of 1 MiB blocks per tier, in process, each
//! beside its baseline measured in the same run: memcpy of the same bytes for the memory
//! tiers, fio (O_DIRECT, io_uring, same block size, same filesystem) for ssd.
//!
//! Every get copies the block into a buffer the caller owns and verifies the block
//! checksum, as an engine filling its KV cache does. ssd gets go to the device: segment
//! files are opened with O_DIRECT, and the memory tiers are not in the path. Repetitions
//! alternate kvtier and its baseline so that a noisy machine slows both alike; the report
//! gives the median of the repetitions.

mod fio;
mod workload;

use std::path::PathBuf;

use anyhow::Context;
use bytesize::ByteSize;
use comfy_table::Table;
use serde::Serialize;

use kvtier_store::tier::pinned::Pinned;
use kvtier_store::tier::Tier;

use self::workload::Workload;

#[derive(Debug, clap::Args)]
pub struct TiersArgs {
    /// Directory for the ssd tier's segments and fio's file (same filesystem for both).
    #[arg(long, default_value = ".")]
    dir: PathBuf,
    /// Blocks written and read per repetition (each about 1 MiB).
    #[arg(long, default_value_t = 256)]
    blocks: usize,
    /// Repetitions; the report gives their median.
    #[arg(long, default_value_t = 3)]
    repeats: usize,
    /// Capacity of the pinned tier under test (0 skips it). Page-locking needs
    /// RLIMIT_MEMLOCK to allow it; otherwise the tier runs unlocked and the table says so.
    #[arg(long, default_value = "512MiB")]
    pinned: ByteSize,
    /// Write the figures to this JSON file.
    #[arg(long)]
    json: Option<PathBuf>,
}

/// One tier and operation: kvtier's median MB/s beside its baseline's.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub tier: &'static str,
    pub operation: String,
    pub kvtier_mb_s: f64,
    pub baseline: &'static str,
    pub baseline_mb_s: f64,
    pub ratio: f64,
    pub runs: usize,
}

pub async fn run(args: TiersArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.blocks > 0, "--blocks must be at least 1");
    anyhow::ensure!(args.repeats > 0, "--repeats must be at least 1");
    fio::check_installed()?;
    let scratch = tempfile::Builder::new()
        .prefix("kvtier-bench-tiers-")
        .tempdir_in(&args.dir)
        .with_context(|| format!("cannot create a directory in {}", args.dir.display()))?;
    let workload = Workload::new(args.blocks)?;
    eprintln!(
        "kvtier-bench tiers: {} blocks of {} per tier, {} repetitions, files in {}",
        args.blocks,
        ByteSize::b(workload.block_len() as u64),
        args.repeats,
        scratch.path().display()
    );
    let mut memory: Vec<(&'static str, Box<dyn Tier>)> = Vec::new();
    let mut pinned_memory = None;
    if args.pinned.as_u64() > 0 {
        let capacity = args.pinned.as_u64().min(2 * workload.total_bytes());
        let pinned = Pinned::new(capacity);
        anyhow::ensure!(
            pinned.capacity() >= workload.total_bytes(),
            "the pinned tier got {} bytes, fewer than the {} the workload needs; \
             lower --blocks or raise --pinned",
            pinned.capacity(),
            workload.total_bytes()
        );
        pinned_memory = Some(pinned.locking().as_str());
        eprintln!("pinned tier: {} memory", pinned.locking().as_str());
        memory.push(("pinned", Box::new(pinned)));
    }
    let rows = tokio::task::spawn_blocking(move || {
        workload::measure_all(&workload, scratch.path(), memory, args.repeats)
    })
    .await??;

    println!("{}", table(&rows));
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&serde_json::json!({
            "block_bytes": Workload::BLOCK_BYTES,
            "blocks": args.blocks,
            "repeats": args.repeats,
            "pinned_memory": pinned_memory,
            "results": rows,
        }))?;
        std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))?;
        println!("wrote {}", path.display());
    }
    Ok(())
}

fn table(rows: &[Row]) -> Table {
    let mut table = Table::new();
    table.set_header([
        "tier",
        "operation",
        "kvtier MB/s",
        "baseline",
        "baseline MB/s",
        "kvtier / baseline",
    ]);
    for r in rows {
        table.add_row([
            r.tier.to_string(),
            r.operation.clone(),
            format!("{:.0}", r.kvtier_mb_s),
            r.baseline.to_string(),
            format!("{:.0}", r.baseline_mb_s),
            format!("{:.0}%", 100.0 * r.ratio),
        ]);
    }
    table
}
