//! The node's Prometheus metrics, prefixed `kvtier_node_`. Each node records into its own
//! recorder (not the process-global one), so several nodes in one process (tests) keep
//! separate counts; `GET /metrics` renders it.

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusRecorder};

/// Histogram buckets for TTFT, time per output token and pass time, in seconds.
const SECONDS_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];
/// Buckets for the tokens one forward pass computes: from a single decode step up to a
/// full prompt chunk plus a token of every answer.
const PASS_TOKEN_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 520.0];

pub struct NodeMetrics {
    recorder: PrometheusRecorder,
    queue_depth: AtomicI64,
}

impl Default for NodeMetrics {
    fn default() -> Self {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)
            .expect("the bucket list is not empty")
            .set_buckets_for_metric(
                Matcher::Full("kvtier_node_pass_tokens".into()),
                PASS_TOKEN_BUCKETS,
            )
            .expect("the bucket list is not empty")
            .build_recorder();
        metrics::with_local_recorder(&recorder, describe);
        NodeMetrics {
            recorder,
            queue_depth: AtomicI64::new(0),
        }
    }
}

/// The help text of every family, as `# HELP` lines of the exposition, by kind.
const COUNTERS: &[(&str, &str)] = &[
    (
        "kvtier_node_requests_total",
        "Requests by how they ended (outcome: ok, failed, cancelled, rejected).",
    ),
    (
        "kvtier_node_prompt_tokens_total",
        "Prompt tokens of every computed prompt.",
    ),
    (
        "kvtier_node_cached_prompt_tokens_total",
        "Prompt tokens loaded from kvtier instead of computed.",
    ),
    (
        "kvtier_node_cache_fallbacks_total",
        "Prompts recomputed because kvtier missed the fetch deadline or failed.",
    ),
    (
        "kvtier_node_prefetch_total",
        "Prefetch hints sent to kvtierd for queued requests (outcome: sent, failed).",
    ),
    (
        "kvtier_node_prefetch_promoted_blocks_total",
        "Blocks that prefetch hints moved toward the pinned tier.",
    ),
    (
        "kvtier_node_generated_tokens_total",
        "Answer tokens generated.",
    ),
];

const GAUGES: &[(&str, &str)] = &[
    (
        "kvtier_node_queue_depth",
        "Requests waiting in the queue for the worker.",
    ),
    (
        "kvtier_node_cached_token_ratio",
        "Cached over all prompt tokens of the latest prompt.",
    ),
    (
        "kvtier_node_tokens_per_second",
        "Generated tokens per second of the latest finished answer.",
    ),
];

const HISTOGRAMS: &[(&str, &str)] = &[
    (
        "kvtier_node_ttft_seconds",
        "Time from accepting a request to its first token, queueing included.",
    ),
    (
        "kvtier_node_pass_seconds",
        "Time of one forward pass of the worker.",
    ),
    (
        "kvtier_node_pass_tokens",
        "Tokens one forward pass computed, over all its requests.",
    ),
    (
        "kvtier_node_time_per_output_token_seconds",
        "Mean time per generated token of each finished answer.",
    ),
];

/// Registers the help texts with the current recorder.
fn describe() {
    for &(name, help) in COUNTERS {
        metrics::describe_counter!(name, help);
    }
    for &(name, help) in GAUGES {
        metrics::describe_gauge!(name, help);
    }
    for &(name, help) in HISTOGRAMS {
        metrics::describe_histogram!(name, help);
    }
}

impl NodeMetrics {
    fn record(&self, f: impl FnOnce()) {
        metrics::with_local_recorder(&self.recorder, f);
    }

    /// The exposition text.
    pub fn render(&self) -> String {
        self.recorder.handle().render()
    }

    pub fn queued(&self, delta: i64) {
        let depth = self.queue_depth.fetch_add(delta, Ordering::AcqRel) + delta;
        self.record(|| metrics::gauge!("kvtier_node_queue_depth").set(depth as f64));
    }

    pub fn rejected(&self) {
        self.request("rejected");
    }

    pub fn request(&self, outcome: &'static str) {
        self.record(|| {
            metrics::counter!("kvtier_node_requests_total", "outcome" => outcome).increment(1)
        });
    }

    pub fn prefill(&self, ttft: Duration, prompt: usize, cached: usize, fell_back: bool) {
        self.record(|| {
            metrics::histogram!("kvtier_node_ttft_seconds").record(ttft.as_secs_f64());
            metrics::counter!("kvtier_node_prompt_tokens_total").increment(prompt as u64);
            metrics::counter!("kvtier_node_cached_prompt_tokens_total").increment(cached as u64);
            if prompt > 0 {
                metrics::gauge!("kvtier_node_cached_token_ratio")
                    .set(cached as f64 / prompt as f64);
            }
            if fell_back {
                metrics::counter!("kvtier_node_cache_fallbacks_total").increment(1);
            }
        });
    }

    /// A prefetch hint sent to kvtierd when a request was queued: `outcome` is "sent" or
    /// "failed"; `promoted` blocks moved toward the pinned tier.
    pub fn prefetched(&self, outcome: &'static str, promoted: u32) {
        self.record(|| {
            metrics::counter!("kvtier_node_prefetch_total", "outcome" => outcome).increment(1);
            metrics::counter!("kvtier_node_prefetch_promoted_blocks_total")
                .increment(u64::from(promoted));
        });
    }

    /// One forward pass of the worker over `rows` tokens of its requests.
    pub fn pass(&self, rows: usize, took: Duration) {
        self.record(|| {
            metrics::histogram!("kvtier_node_pass_seconds").record(took.as_secs_f64());
            metrics::histogram!("kvtier_node_pass_tokens").record(rows as f64);
        });
    }

    pub fn decoded(&self, tokens: usize, took: Duration) {
        if tokens == 0 {
            return;
        }
        let per_token = took.as_secs_f64() / tokens as f64;
        self.record(|| {
            metrics::counter!("kvtier_node_generated_tokens_total").increment(tokens as u64);
            metrics::histogram!("kvtier_node_time_per_output_token_seconds").record(per_token);
            if per_token > 0.0 {
                metrics::gauge!("kvtier_node_tokens_per_second").set(1.0 / per_token);
            }
        });
    }
}
