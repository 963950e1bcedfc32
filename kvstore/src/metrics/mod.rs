//! Prometheus metrics for kvtierd: the store's `Stats` as `kvtier_*` families on an HTTP
//! endpoint (any path answers, `/metrics` by convention).
//!
//! Protocol: call [`Exporter::start`] from inside a tokio runtime. It binds the address
//! at once (an address in use is an error then, not later), publishes a first snapshot
//! and then refreshes every family from [`Store::stats`] every [`REFRESH`], so a scrape
//! sees values at most that old; [`Exporter::refresh`] publishes at once. Dropping the
//! exporter stops the endpoint and the refresh.
//!
//! The exporter keeps its own recorder instead of installing a global one, so several
//! stores (tests, embedded servers) can each export without sharing a registry.

mod families;
mod listen;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle, PrometheusRecorder};
use tokio::task::JoinHandle;

pub use self::listen::MetricsListen;
use crate::Store;

/// How often the families are refreshed from the store's counters.
pub const REFRESH: Duration = Duration::from_secs(1);

/// The endpoint could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot serve metrics on {addr}: {reason}")]
pub struct MetricsError {
    pub addr: SocketAddr,
    pub reason: String,
}

/// A running metrics endpoint over one store.
pub struct Exporter {
    addr: SocketAddr,
    recorder: Arc<PrometheusRecorder>,
    store: Arc<Store>,
    tasks: [JoinHandle<()>; 2],
}

impl std::fmt::Debug for Exporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Exporter")
            .field("addr", &self.addr)
            .finish()
    }
}

impl Exporter {
    /// Serves `store`'s metrics on `addr`; see the module docs.
    pub fn start(addr: SocketAddr, store: Arc<Store>) -> Result<Exporter, MetricsError> {
        let (recorder, endpoint) = PrometheusBuilder::new()
            .with_http_listener(addr)
            .build()
            .map_err(|error| MetricsError {
                addr,
                reason: error.to_string(),
            })?;
        let recorder = Arc::new(recorder);
        ::metrics::with_local_recorder(recorder.as_ref(), families::describe);
        publish(&recorder, &store);

        let serving = tokio::spawn(async move {
            if let Err(error) = endpoint.await {
                tracing::warn!(?error, "metrics endpoint stopped");
            }
        });
        let refreshing = tokio::spawn(refresh_loop(recorder.clone(), store.clone()));
        tracing::info!(%addr, "serving metrics");
        Ok(Exporter {
            addr,
            recorder,
            store,
            tasks: [serving, refreshing],
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Publishes the store's current stats now.
    pub fn refresh(&self) {
        publish(&self.recorder, &self.store);
    }

    /// The text a scrape would return now.
    pub fn render(&self) -> String {
        self.handle().render()
    }

    fn handle(&self) -> PrometheusHandle {
        self.recorder.handle()
    }
}

impl Drop for Exporter {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

fn publish(recorder: &PrometheusRecorder, store: &Store) {
    let stats = store.stats();
    ::metrics::with_local_recorder(recorder, || families::publish(&stats));
}

async fn refresh_loop(recorder: Arc<PrometheusRecorder>, store: Arc<Store>) {
    let mut ticks = tokio::time::interval(REFRESH);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        publish(&recorder, &store);
    }
}
