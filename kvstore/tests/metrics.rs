//! The Prometheus endpoint over a live store: a scrape after a few puts and gets shows every
//! family with the store's values.

mod tiered_support;

use std::net::SocketAddr;
use std::sync::Arc;

use bytesize::ByteSize;
use kvtier_store::metrics::Exporter;
use kvtier_store::{Config, Durability, PutOptions, Store};
use tiered_support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A loopback port nothing listens on right now.
fn free_port() -> SocketAddr {
    let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    probe.local_addr().unwrap()
}

async fn scrape(addr: SocketAddr) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = "GET /metrics HTTP/1.1\r\nHost: kvtier\r\nConnection: close\r\n\r\n";
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    response
}

/// The value of the series whose line starts with `series` (name and labels).
fn value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no series {series} in\n{text}"))
        .parse()
        .unwrap()
}

fn store_with_every_tier(dir: &std::path::Path) -> Arc<Store> {
    let config = Config {
        pinned_capacity: ByteSize::kib(256),
        ..config(dir, ByteSize::mib(1), ByteSize::mib(64), Durability::Sync)
    };
    Arc::new(Store::open(&config).unwrap())
}

#[tokio::test]
async fn a_scrape_shows_every_family_with_the_stores_values() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_with_every_tier(dir.path());
    let ns = namespace(64);
    let hot = PutOptions {
        hot: true,
        ..PutOptions::default()
    };
    let block = block(&ns, 1, 0);
    store.put(&ns, key(1, 0), None, 0, block, &hot).unwrap();
    put_chain(&store, &ns, 2, 3);
    store.read(&ns, &key(1, 0)).unwrap();
    store.read(&ns, &key(2, 0)).unwrap();
    assert!(store.read(&ns, &key(9, 0)).is_none());

    let exporter = Exporter::start(free_port(), store.clone()).unwrap();
    exporter.refresh();
    let text = scrape(exporter.addr()).await;

    assert_eq!(value(&text, "kvtier_tier_blocks{tier=\"pinned\"}"), 1.0);
    assert_eq!(value(&text, "kvtier_tier_blocks{tier=\"dram\"}"), 3.0);
    assert_eq!(value(&text, "kvtier_tier_blocks{tier=\"ssd\"}"), 4.0);
    assert_eq!(value(&text, "kvtier_tier_hits_total{tier=\"pinned\"}"), 1.0);
    assert_eq!(value(&text, "kvtier_tier_hits_total{tier=\"dram\"}"), 1.0);
    assert_eq!(value(&text, "kvtier_store_puts_total"), 4.0);
    assert_eq!(value(&text, "kvtier_store_misses_total"), 1.0);
    assert_eq!(value(&text, "kvtier_store_blocks"), 4.0);
    for tier in ["pinned", "dram", "ssd"] {
        let used = value(&text, &format!("kvtier_tier_used_bytes{{tier=\"{tier}\"}}"));
        let capacity = value(
            &text,
            &format!("kvtier_tier_capacity_bytes{{tier=\"{tier}\"}}"),
        );
        assert!(
            used > 0.0 && used <= capacity,
            "{tier}: {used} of {capacity}"
        );
        for family in ["misses", "promotions", "demotions", "evictions"] {
            value(
                &text,
                &format!("kvtier_tier_{family}_total{{tier=\"{tier}\"}}"),
            );
        }
    }
    value(&text, "kvtier_ssd_compaction_bytes_total");
    let engine = ["uring", "psync"].into_iter().find(|engine| {
        text.contains(&format!(
            "kvtier_ssd_io_engine_info{{engine=\"{engine}\"}} 1"
        ))
    });
    assert!(engine.is_some(), "{text}");
    let locked = ["cuda", "mlocked", "unlocked"]
        .into_iter()
        .find_map(|mode| {
            let series = format!("kvtier_pinned_memory_locked{{mode=\"{mode}\"}}");
            text.contains(&series)
                .then(|| (mode, value(&text, &series)))
        })
        .expect("the pinned memory mode is exported");
    assert_eq!(locked.1, if locked.0 == "unlocked" { 0.0 } else { 1.0 });
}

#[tokio::test]
async fn a_later_scrape_sees_new_traffic() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_with_every_tier(dir.path());
    let ns = namespace(64);
    let exporter = Exporter::start(free_port(), store.clone()).unwrap();
    let before = value(&scrape(exporter.addr()).await, "kvtier_store_puts_total");

    put_chain(&store, &ns, 3, 5);
    exporter.refresh();
    let after = scrape(exporter.addr()).await;
    assert_eq!(before, 0.0);
    assert_eq!(value(&after, "kvtier_store_puts_total"), 5.0);
    assert!(exporter.render().contains("kvtier_store_puts_total 5"));
}

#[tokio::test]
async fn an_address_in_use_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_with_every_tier(dir.path());
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let err = Exporter::start(taken.local_addr().unwrap(), store).unwrap_err();
    assert_eq!(err.addr, taken.local_addr().unwrap());
}
