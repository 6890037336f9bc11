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

use crate::rows::Table;

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
    /// Rows dropped: the spool was full or could not be written, or a spooled batch was
    /// unreadable.
    pub rows_dropped: Counter,
    /// Rows a table refused for good, set aside in the spool's dead-letter directory, by
    /// table.
    pub rows_dead_lettered: Family<Labels, Counter>,
    /// Half-written `.tmp` files an interrupted run left in the spool, removed at start.
    pub spool_leftovers_removed: Counter,
    /// Spooled batches that could not be read back, dropped (their rows count as dropped).
    pub spool_unreadable_batches: Counter,
    /// Passes of the sampling loop: a 1 s read of the busy processes' CPU, or a sample.
    pub peak_reads: Counter,
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
            rows_dead_lettered: Family::default(),
            spool_leftovers_removed: Counter::default(),
            spool_unreadable_batches: Counter::default(),
            peak_reads: Counter::default(),
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
            "Rows dropped: the spool was full or unwritable, or a spooled batch unreadable",
            metrics.rows_dropped.clone(),
        );
        registry.register(
            "rows_dead_lettered",
            "Rows a table refused for good, set aside in the spool's dead-letter directory, by table",
            metrics.rows_dead_lettered.clone(),
        );
        registry.register(
            "spool_leftovers_removed",
            "Half-written spool files of an interrupted run, removed at start",
            metrics.spool_leftovers_removed.clone(),
        );
        registry.register(
            "spool_unreadable_batches",
            "Spooled batches that could not be read back and were dropped",
            metrics.spool_unreadable_batches.clone(),
        );
        registry.register(
            "peak_reads",
            "Passes of the sampling loop (a 1 s peak read or a sample)",
            metrics.peak_reads.clone(),
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
        self.rows_written
            .get_or_create(&table_labels(table))
            .inc_by(rows.max(0) as u64);
    }
}

impl Metrics {
    /// Counts rows of `table` set aside as a dead letter.
    pub fn dead_lettered(&self, table: Table, rows: u64) {
        self.rows_dead_lettered
            .get_or_create(&table_labels(table.name()))
            .inc_by(rows);
    }

    /// Rows set aside as dead letters, all tables together.
    pub fn rows_dead_lettered_total(&self) -> u64 {
        Table::ALL
            .iter()
            .map(|table| {
                self.rows_dead_lettered
                    .get_or_create(&table_labels(table.name()))
                    .get()
            })
            .sum()
    }
}

fn table_labels(table: &str) -> Labels {
    vec![("table".to_owned(), table.to_owned())]
}

impl RenderMetrics for Metrics {
    fn render(&self) -> String {
        self.registry.render()
    }
}
