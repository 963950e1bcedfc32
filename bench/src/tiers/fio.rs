//! The fio baseline: the same block size, O_DIRECT and io_uring, one request in flight
//! (as kvtier's tier calls are), on a file in the same directory as the segments.

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context};

/// What fio is asked to do.
#[derive(Debug, Clone, Copy)]
pub enum Job {
    Write,
    Read,
    RandRead,
}

impl Job {
    fn rw(self) -> &'static str {
        match self {
            Job::Write => "write",
            Job::Read => "read",
            Job::RandRead => "randread",
        }
    }
}

pub fn check_installed() -> anyhow::Result<()> {
    match Command::new("fio").arg("--version").output() {
        Ok(out) if out.status.success() => Ok(()),
        _ => bail!("fio is not installed: run scripts/setup.sh (Debian package `fio`)"),
    }
}

/// Runs one fio job over `bytes` bytes of `file` in `block` sized requests; returns MB/s
/// (10^6 bytes per second). Writes end with an fsync, as kvtier's do.
pub fn run(job: Job, file: &Path, bytes: u64, block: usize) -> anyhow::Result<f64> {
    let out = Command::new("fio")
        .arg("--name=kvtier-baseline")
        .arg(format!("--filename={}", file.display()))
        .arg(format!("--rw={}", job.rw()))
        .arg(format!("--bs={block}"))
        .arg(format!("--size={bytes}"))
        .args([
            "--ioengine=io_uring",
            "--direct=1",
            "--iodepth=1",
            "--numjobs=1",
        ])
        .args(["--end_fsync=1", "--randrepeat=0", "--output-format=json"])
        .output()
        .context("cannot run fio")?;
    if !out.status.success() {
        bail!(
            "fio failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let report: serde_json::Value =
        serde_json::from_slice(&out.stdout).context("fio printed no JSON report")?;
    let side = match job {
        Job::Write => "write",
        Job::Read | Job::RandRead => "read",
    };
    let bw_bytes = report["jobs"][0][side]["bw_bytes"]
        .as_f64()
        .context("fio report lacks jobs[0].bw_bytes")?;
    Ok(bw_bytes / 1e6)
}
