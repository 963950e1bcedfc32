//! The tiered store under faults: a full disk, and SIGKILL in the middle of durable puts.

mod tiered_support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bytesize::ByteSize;
use kvtier_store::tier::ssd::{io::open_engine, FailpointEngine, IoEngineKind};
use kvtier_store::{Durability, PutOptions, Store, StoreError};
use rand::Rng;
use tiered_support::*;

#[test]
fn a_full_disk_fails_durable_puts_with_a_clear_error_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let ns = namespace(64);
    let config = config(
        dir.path(),
        ByteSize::mib(8),
        ByteSize::mib(64),
        Durability::Sync,
    );
    let (engine, failpoints) = FailpointEngine::wrap(open_engine(IoEngineKind::Psync).unwrap());
    let store = Store::open_with_io(&config, Some(engine)).unwrap();
    put_chain(&store, &ns, 1, 3);

    failpoints.fail_writes(Some(libc::ENOSPC));
    let err = store
        .put(
            &ns,
            key(2, 0),
            None,
            0,
            block(&ns, 2, 0),
            &PutOptions::default(),
        )
        .unwrap_err();
    assert_eq!(err, StoreError::DiskFull);
    assert!(err.to_string().contains("out of space"), "{err}");
    assert_eq!(
        store.read(&ns, &key(1, 2)).unwrap(),
        block(&ns, 1, 2),
        "gets keep working"
    );
    assert_eq!(
        store.lookup(&[key(2, 0)]),
        0,
        "the failed put left nothing behind"
    );

    failpoints.clear();
    assert_eq!(
        put_chain(&store, &ns, 2, 2),
        2,
        "puts work once space returns"
    );
    store.check_invariants().unwrap();
}

const CHILD_DIR: &str = "KVTIER_CRASH_DIR";

/// Run by the crash test in a child process: durable puts until killed, printing each
/// acknowledged block.
#[test]
#[ignore = "helper: runs only inside a child process"]
fn crash_child_puts_durable_blocks() {
    let Some(dir) = std::env::var_os(CHILD_DIR) else {
        return;
    };
    let ns = namespace(64);
    let config = config(
        std::path::Path::new(&dir),
        ByteSize::mib(4),
        ByteSize::mib(512),
        Durability::Sync,
    );
    let store = Store::open(&config).unwrap();
    for chain in 0u32.. {
        for position in 0..4u32 {
            let parent = position.checked_sub(1).map(|p| key(chain, p));
            store
                .put(
                    &ns,
                    key(chain, position),
                    parent,
                    position,
                    block(&ns, chain, position),
                    &PutOptions::default(),
                )
                .unwrap();
            println!("ACK {chain} {position}");
        }
    }
}

#[test]
fn every_acknowledged_durable_block_survives_sigkill() {
    let mut checked = 0;
    for round in 0..2 {
        let dir = tempfile::tempdir().unwrap();
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--ignored",
                "--exact",
                "crash_child_puts_durable_blocks",
                "--nocapture",
            ])
            .env(CHILD_DIR, dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let kill_after = Duration::from_millis(rand::rng().random_range(300..1500));
        let reader = std::thread::spawn(move || {
            let mut acked = Vec::new();
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let mut parts = line.split_whitespace().skip_while(|w| *w != "ACK").skip(1);
                if let (Some(c), Some(p)) = (parts.next(), parts.next()) {
                    acked.push((c.parse::<u32>().unwrap(), p.parse::<u32>().unwrap()));
                }
            }
            acked
        });
        let started = Instant::now();
        while started.elapsed() < kill_after {
            std::thread::sleep(Duration::from_millis(10));
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let acked = reader.join().unwrap();
        assert!(
            !acked.is_empty(),
            "round {round}: the child acknowledged nothing"
        );

        let ns = namespace(64);
        let config = config(
            dir.path(),
            ByteSize::mib(4),
            ByteSize::mib(512),
            Durability::Sync,
        );
        let store = Store::open(&config).unwrap();
        for (chain, position) in &acked {
            let got = store.read(&ns, &key(*chain, *position));
            assert_eq!(
                got,
                Some(block(&ns, *chain, *position)),
                "acked block {chain}/{position} lost"
            );
        }
        store.check_invariants().unwrap();
        checked += acked.len();
    }
    println!("checked {checked} acknowledged durable blocks after SIGKILL");
}
