//! The collector's own metrics, served at `/metrics`. Failures are logged and counted here,
//! in one place.

use std::sync::Mutex;
use std::sync::atomic::AtomicU64;

use metricsstack_common::admin::RenderMetrics;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

type Labels = Vec<(String, String)>;

/// Counters and gauges of the collector.
pub struct Metrics {
    registry: Mutex<Registry>,
    /// Samples taken.
    pub samples: Counter,
    /// Rows the database took, by table.
    pub rows_written: Family<Labels, Counter>,
    /// Time to write one batch.
    pub batch_latency: Histogram,
    /// Failed writes (retried later from the spool).
    pub write_failures: Counter,
    /// Rows put in the spool.
    pub rows_spooled: Counter,
    /// Rows dropped because the spool was full.
    pub rows_dropped: Counter,
    /// Bytes in the spool.
    pub spool_bytes: Gauge<u64, AtomicU64>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("metricsstack_collector");
        let metrics = Self {
            samples: Counter::default(),
            rows_written: Family::default(),
            batch_latency: Histogram::new(exponential_buckets(0.001, 2.0, 14)),
            write_failures: Counter::default(),
            rows_spooled: Counter::default(),
            rows_dropped: Counter::default(),
            spool_bytes: Gauge::default(),
            registry: Mutex::new(Registry::default()),
        };
        registry.register("samples", "Samples taken", metrics.samples.clone());
        registry.register(
            "rows_written",
            "Rows written, by table",
            metrics.rows_written.clone(),
        );
        registry.register(
            "batch_latency_seconds",
            "Time to write one batch",
            metrics.batch_latency.clone(),
        );
        registry.register(
            "write_failures",
            "Batch writes that failed and were retried",
            metrics.write_failures.clone(),
        );
        registry.register(
            "rows_spooled",
            "Rows put in the on-disk spool",
            metrics.rows_spooled.clone(),
        );
        registry.register(
            "rows_dropped",
            "Rows dropped because the spool was full",
            metrics.rows_dropped.clone(),
        );
        registry.register(
            "spool_bytes",
            "Bytes in the on-disk spool",
            metrics.spool_bytes.clone(),
        );
        *metrics.registry.lock().expect("not poisoned") = registry;
        metrics
    }
}

impl Metrics {
    /// Counts rows the database took into `table`.
    pub fn written(&self, table: &str, rows: i64) {
        let labels = vec![("table".to_owned(), table.to_owned())];
        self.rows_written
            .get_or_create(&labels)
            .inc_by(rows.max(0) as u64);
    }
}

impl RenderMetrics for Metrics {
    fn render(&self) -> String {
        self.registry.render()
    }
}
