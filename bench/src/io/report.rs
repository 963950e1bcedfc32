//! The io benchmark's results: medians per cell, the tables, the JSON file and the plot.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context;
use bytesize::ByteSize;
use comfy_table::{presets::UTF8_FULL_CONDENSED, Table};
use serde::Serialize;

use super::measure::{Figures, Op};
use super::target::System;
use crate::plot::{self, Panel, Series};

/// Every (block size, concurrency) pair, sizes outermost.
pub fn cells(sizes: &[ByteSize], concurrency: &[usize]) -> Vec<(u64, usize)> {
    sizes
        .iter()
        .flat_map(|size| concurrency.iter().map(move |&c| (size.as_u64(), c)))
        .collect()
}

type CellKey = (u64, usize);

/// Repetitions of every system, cell and operation.
pub struct Results {
    systems: Vec<System>,
    reps: BTreeMap<(Op, CellKey, usize), Vec<Figures>>,
}

#[derive(Serialize)]
struct SystemJson {
    median: Figures,
    reps: Vec<Figures>,
}

#[derive(Serialize)]
struct CellJson {
    op: Op,
    block_bytes: u64,
    concurrency: usize,
    systems: BTreeMap<&'static str, SystemJson>,
    /// kvtier's median MB/s over Redis's.
    kvtier_over_redis: Option<f64>,
    /// kvtier's median MB/s over the loopback ceiling's.
    kvtier_over_tcp: Option<f64>,
}

#[derive(Serialize)]
struct ReportJson {
    benchmark: &'static str,
    repetitions: usize,
    units: &'static str,
    cells: Vec<CellJson>,
}

impl Results {
    pub fn new(systems: &[(System, String)]) -> Self {
        Results {
            systems: systems.iter().map(|(s, _)| *s).collect(),
            reps: BTreeMap::new(),
        }
    }

    pub fn add(
        &mut self,
        system: System,
        size: u64,
        concurrency: usize,
        put: Figures,
        get: Figures,
    ) {
        let index = self.index(system);
        for (op, figures) in [(Op::Put, put), (Op::Get, get)] {
            self.reps
                .entry((op, (size, concurrency), index))
                .or_default()
                .push(figures);
        }
    }

    fn index(&self, system: System) -> usize {
        self.systems.iter().position(|s| *s == system).unwrap_or(0)
    }

    fn median(&self, op: Op, cell: CellKey, system: System) -> Option<Figures> {
        let reps = self.reps.get(&(op, cell, self.index(system)))?;
        self.systems
            .contains(&system)
            .then(|| Figures::median_of(reps))
    }

    fn ratio(&self, op: Op, cell: CellKey, baseline: System) -> Option<f64> {
        let kvtier = self.median(op, cell, System::Kvtier)?;
        let base = self.median(op, cell, baseline)?;
        Some(kvtier.mb_per_s / base.mb_per_s)
    }

    /// Prints one table per operation.
    pub fn print(&self, sizes: &[ByteSize], concurrency: &[usize]) {
        for op in [Op::Get, Op::Put] {
            println!(
                "{} (medians; MB/s = 10^6 bytes of values per second)",
                op.name()
            );
            println!("{}", self.table(op, &cells(sizes, concurrency)));
        }
    }

    fn table(&self, op: Op, cells: &[CellKey]) -> Table {
        let mut table = Table::new();
        let mut header = vec!["block".to_string(), "conc".to_string()];
        for system in &self.systems {
            header.push(format!("{} MB/s", system.name()));
        }
        // Only the baselines that ran get a ratio column (`--no-redis` leaves Redis out).
        let baselines: Vec<System> = [System::Redis, System::Tcp]
            .into_iter()
            .filter(|b| self.systems.contains(b))
            .collect();
        header.extend(baselines.iter().map(|b| format!("vs {}", b.name())));
        for system in &self.systems {
            header.push(format!("{} p50/p99 ms", system.name()));
        }
        table.load_preset(UTF8_FULL_CONDENSED).set_header(header);
        for &cell in cells {
            let mut row = vec![ByteSize::b(cell.0).to_string(), cell.1.to_string()];
            let medians: Vec<Option<Figures>> = self
                .systems
                .iter()
                .map(|s| self.median(op, cell, *s))
                .collect();
            row.extend(
                medians
                    .iter()
                    .map(|m| m.map_or("-".into(), |f| format!("{:.0}", f.mb_per_s))),
            );
            for &baseline in &baselines {
                let ratio = self.ratio(op, cell, baseline);
                row.push(ratio.map_or("-".into(), |r| format!("{r:.2}x")));
            }
            row.extend(
                medians.iter().map(|m| {
                    m.map_or("-".into(), |f| format!("{:.2} / {:.2}", f.p50_ms, f.p99_ms))
                }),
            );
            table.add_row(row);
        }
        table
    }

    /// Writes the JSON report to `path` and the plot beside it.
    pub fn write(&self, path: &Path, repetitions: usize) -> anyhow::Result<()> {
        let cell_keys: Vec<CellKey> = {
            let mut keys: Vec<CellKey> = self.reps.keys().map(|(_, cell, _)| *cell).collect();
            keys.dedup();
            keys.sort();
            keys.dedup();
            keys
        };
        let mut cells = Vec::new();
        for op in [Op::Put, Op::Get] {
            for &cell in &cell_keys {
                cells.push(self.cell_json(op, cell));
            }
        }
        let report = ReportJson {
            benchmark: "io",
            repetitions,
            units: "ops_per_s: operations per second; mb_per_s: 10^6 bytes of values per \
                    second; p50_ms, p99_ms: latency of one operation in milliseconds",
            cells,
        };
        let text = serde_json::to_string_pretty(&report)?;
        std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))?;
        self.plot(&plot::png_beside(path), &cell_keys)
    }

    fn cell_json(&self, op: Op, cell: CellKey) -> CellJson {
        let mut systems = BTreeMap::new();
        for &system in &self.systems {
            if let Some(reps) = self.reps.get(&(op, cell, self.index(system))) {
                let median = Figures::median_of(reps);
                systems.insert(
                    system.name(),
                    SystemJson {
                        median,
                        reps: reps.clone(),
                    },
                );
            }
        }
        CellJson {
            op,
            block_bytes: cell.0,
            concurrency: cell.1,
            systems,
            kvtier_over_redis: self.ratio(op, cell, System::Redis),
            kvtier_over_tcp: self.ratio(op, cell, System::Tcp),
        }
    }

    /// Throughput against block size, one panel per operation and concurrency.
    fn plot(&self, path: &Path, cells: &[CellKey]) -> anyhow::Result<()> {
        let mut concurrency: Vec<usize> = cells.iter().map(|c| c.1).collect();
        concurrency.sort_unstable();
        concurrency.dedup();
        let mut panels = Vec::new();
        for op in [Op::Get, Op::Put] {
            for &c in &concurrency {
                let series = self
                    .systems
                    .iter()
                    .map(|&system| {
                        let points = cells
                            .iter()
                            .filter(|cell| cell.1 == c)
                            .filter_map(|&cell| {
                                let f = self.median(op, cell, system)?;
                                Some((cell.0 as f64 / 1024.0, f.mb_per_s))
                            })
                            .collect();
                        Series::line(system.name(), points)
                    })
                    .collect();
                panels.push(Panel {
                    title: format!("{}, concurrency {c}", op.name()),
                    x_label: "block size (KiB)".into(),
                    y_label: "MB/s".into(),
                    log_x: true,
                    log_y: false,
                    series,
                });
            }
        }
        let columns = concurrency.len();
        plot::write_png(path, "kvtier-bench io: median throughput", &panels, columns)
    }
}
