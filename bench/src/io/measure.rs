//! One measurement: `ops` puts (or gets) of one block size spread over `concurrency`
//! connections, each connection one request at a time, timed per operation and as a
//! whole.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::Serialize;

use super::target::{Conn, Endpoint};
use crate::stats::{median, percentile};

/// Which operation a phase times.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Op {
    Put,
    Get,
}

impl Op {
    pub fn name(self) -> &'static str {
        match self {
            Op::Put => "put",
            Op::Get => "get",
        }
    }
}

/// What one phase measured.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Figures {
    pub ops_per_s: f64,
    /// Megabytes (10^6 bytes) of values per second.
    pub mb_per_s: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

impl Figures {
    fn of(ops: u64, bytes: u64, wall: Duration, latencies_ms: &[f64]) -> Self {
        let seconds = wall.as_secs_f64().max(1e-9);
        Figures {
            ops_per_s: ops as f64 / seconds,
            mb_per_s: bytes as f64 / seconds / 1e6,
            p50_ms: percentile(latencies_ms, 50.0).unwrap_or(0.0),
            p99_ms: percentile(latencies_ms, 99.0).unwrap_or(0.0),
        }
    }

    /// The median of each figure over repetitions.
    pub fn median_of(reps: &[Figures]) -> Self {
        let of = |f: fn(&Figures) -> f64| median(&reps.iter().map(f).collect::<Vec<_>>());
        Figures {
            ops_per_s: of(|f| f.ops_per_s),
            mb_per_s: of(|f| f.mb_per_s),
            p50_ms: of(|f| f.p50_ms),
            p99_ms: of(|f| f.p99_ms),
        }
    }
}

/// The values of one block size: operation `id` uses `values[id % len]`.
pub struct Workload {
    pub run: u64,
    pub ops: u64,
    pub values: Arc<Vec<Bytes>>,
}

/// Puts then gets every operation of `workload` over `conns` (one task each), and
/// returns the put and get figures. Every get is checked against the value put.
pub async fn put_then_get(
    conns: Vec<Conn>,
    workload: &Workload,
) -> anyhow::Result<(Figures, Figures, Vec<Conn>)> {
    let (put, conns) = phase(conns, workload, Op::Put).await?;
    let (get, conns) = phase(conns, workload, Op::Get).await?;
    Ok((put, get, conns))
}

/// Opens `concurrency` connections to `endpoint`.
pub async fn connect(endpoint: &Endpoint, concurrency: usize) -> anyhow::Result<Vec<Conn>> {
    let mut conns = Vec::with_capacity(concurrency);
    for _ in 0..concurrency {
        conns.push(Conn::open(endpoint).await?);
    }
    Ok(conns)
}

async fn phase(
    conns: Vec<Conn>,
    workload: &Workload,
    op: Op,
) -> anyhow::Result<(Figures, Vec<Conn>)> {
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let tasks: Vec<_> = conns
        .into_iter()
        .map(|conn| {
            let next = next.clone();
            let values = workload.values.clone();
            let (run, ops) = (workload.run, workload.ops);
            tokio::spawn(worker(conn, next, values, run, ops, op))
        })
        .collect();
    let mut latencies = Vec::with_capacity(workload.ops as usize);
    let mut conns = Vec::with_capacity(tasks.len());
    for task in tasks {
        let (conn, mut times) = task.await??;
        latencies.append(&mut times);
        conns.push(conn);
    }
    let wall = started.elapsed();
    let bytes: u64 = (0..workload.ops)
        .map(|id| workload.values[id as usize % workload.values.len()].len() as u64)
        .sum();
    Ok((Figures::of(workload.ops, bytes, wall, &latencies), conns))
}

async fn worker(
    mut conn: Conn,
    next: Arc<AtomicU64>,
    values: Arc<Vec<Bytes>>,
    run: u64,
    ops: u64,
    op: Op,
) -> anyhow::Result<(Conn, Vec<f64>)> {
    let mut latencies = Vec::new();
    loop {
        let id = next.fetch_add(1, Ordering::Relaxed);
        if id >= ops {
            return Ok((conn, latencies));
        }
        let value = &values[id as usize % values.len()];
        let started = Instant::now();
        match op {
            Op::Put => conn.put(run, id, value).await?,
            Op::Get => conn.get_verified(run, id, value).await?,
        }
        latencies.push(started.elapsed().as_secs_f64() * 1e3);
    }
}
