//! The storage state a MetricsStack asks for, in the units the database compares in
//! (seconds), with the SQL each metric table and aggregate needs.

use metricsstack_query_service::filters::MAX_WINDOW;

use crate::crd::MetricTable;

/// What the spec asks of the database's storage.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DesiredStorage {
    /// Managed metric tables.
    pub tables: Vec<DesiredTable>,
    /// Managed continuous aggregates.
    pub aggregates: Vec<DesiredAggregate>,
}

/// One managed metric table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DesiredTable {
    /// Which table.
    pub table: MetricTable,
    /// Chunk time range, in seconds.
    pub chunk_interval: i64,
    /// Compression, if wanted.
    pub compression: Option<DesiredCompression>,
    /// Drop data older than this many seconds, if wanted.
    pub retention: Option<i64>,
}

/// Compression of a table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DesiredCompression {
    /// Compress chunks older than this many seconds.
    pub after: i64,
    /// Segment-by columns.
    pub segment_by: Vec<String>,
    /// Order-by entries: a column, optionally followed by ` ASC` or ` DESC`.
    pub order_by: Vec<String>,
}

/// One managed continuous aggregate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DesiredAggregate {
    /// The view's name.
    pub name: String,
    /// The table it rolls up.
    pub source: MetricTable,
    /// Bucket width in seconds.
    pub bucket: i64,
    /// Its refresh policy.
    pub refresh: DesiredRefresh,
    /// Drop buckets older than this many seconds, if wanted.
    pub retention: Option<i64>,
}

/// A refresh policy, in seconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DesiredRefresh {
    /// Refresh from this far back.
    pub start_offset: i64,
    /// Up to this long ago; `None`: up to now.
    pub end_offset: Option<i64>,
    /// How often.
    pub schedule: i64,
}

/// The columns of each metric table (as in `migrations/`), for checking segment-by and
/// order-by settings before they reach the database.
pub fn table_columns(table: MetricTable) -> &'static [&'static str] {
    const PROCESS: &[&str] = &[
        "timestamp",
        "host",
        "pid",
        "start_time",
        "parent_pid",
        "process_name",
        "command_line",
        "username",
        "state",
        "cpu_usage_percent",
        "cpu_peak_percent",
        "memory_usage_mb",
        "virtual_memory_mb",
        "disk_read_bytes",
        "disk_write_bytes",
        "threads",
    ];
    const OVERALL: &[&str] = &[
        "timestamp",
        "host",
        "cpu_usage_percent",
        "cpu_per_core_percent",
        "load_1",
        "load_5",
        "load_15",
        "memory_total_bytes",
        "memory_used_bytes",
        "memory_usage_mb",
        "swap_total_bytes",
        "swap_used_bytes",
        "disk_total_bytes",
        "disk_used_bytes",
        "disk_read_bytes",
        "disk_write_bytes",
        "network_rx_bytes",
        "network_tx_bytes",
        "uptime_seconds",
        "process_count",
    ];
    const VM: &[&str] = &[
        "timestamp",
        "host",
        "pid",
        "start_time",
        "process_name",
        "command_line",
        "pod_namespace",
        "pod_name",
        "pod_uid",
        "container_id",
        "container_name",
        "cpu_usage_percent",
        "cpu_peak_percent",
        "cpu_limit_percent",
        "memory_usage_mb",
        "disk_read_bytes",
        "disk_write_bytes",
        "cpu_request_percent",
        "memory_limit_percent",
        "memory_request_percent",
    ];
    match table {
        MetricTable::HostProcessMetrics => PROCESS,
        MetricTable::HostOverallMetrics => OVERALL,
        MetricTable::VmProcessMetrics => VM,
    }
}

/// The rollup an aggregate of `source` computes per bucket (grouping columns first, then the
/// aggregates), as the `SELECT` list and `GROUP BY` list after the bucket column.
pub fn rollup(source: MetricTable) -> (&'static str, &'static str) {
    match source {
        MetricTable::HostProcessMetrics => (
            "host, process_name, avg(cpu_usage_percent) AS avg_cpu, \
             max(cpu_peak_percent) AS max_cpu, avg(memory_usage_mb) AS avg_memory_mb, \
             max(memory_usage_mb) AS max_memory_mb, count(*) AS samples",
            "host, process_name",
        ),
        MetricTable::HostOverallMetrics => (
            "host, avg(cpu_usage_percent) AS avg_cpu, max(cpu_usage_percent) AS max_cpu, \
             avg(memory_usage_mb) AS avg_memory_mb, max(memory_usage_mb) AS max_memory_mb, \
             avg(load_1) AS avg_load_1, count(*) AS samples",
            "host",
        ),
        // Per process of a pod, so that a pod's processes (by container) and the pods'
        // latest hour both read it; `limit_samples` and the other `*_samples` weigh the
        // request and limit shares, which samples without a request or limit lack.
        MetricTable::VmProcessMetrics => (
            "host, pod_namespace, pod_name, container_id, container_name, pid, start_time, \
             process_name, command_line, avg(cpu_usage_percent) AS avg_cpu, \
             max(cpu_peak_percent) AS max_cpu, avg(cpu_limit_percent) AS avg_cpu_limit_percent, \
             count(cpu_limit_percent) AS limit_samples, \
             avg(cpu_request_percent) AS avg_cpu_request_percent, \
             count(cpu_request_percent) AS cpu_request_samples, \
             avg(memory_limit_percent) AS avg_memory_limit_percent, \
             count(memory_limit_percent) AS memory_limit_samples, \
             avg(memory_request_percent) AS avg_memory_request_percent, \
             count(memory_request_percent) AS memory_request_samples, \
             avg(memory_usage_mb) AS avg_memory_mb, \
             max(memory_usage_mb) AS max_memory_mb, max(\"timestamp\") AS last_seen, \
             count(*) AS samples",
            "host, pod_namespace, pod_name, container_id, container_name, pid, start_time, \
             process_name, command_line",
        ),
    }
}

/// How long `host_process_latest` keeps a process after its latest sample, in seconds: the
/// query service's longest window, or the retention of `host_process_metrics` when that is
/// shorter and in force (on TimescaleDB), so that the table lists no process whose samples
/// retention has dropped and never grows past the processes of one window.
pub fn latest_horizon(desired: &DesiredStorage, timescaledb: bool) -> i64 {
    let longest_window = i64::try_from(MAX_WINDOW.as_secs()).expect("30 days fit");
    let retention = desired
        .tables
        .iter()
        .filter(|table| timescaledb && table.table == MetricTable::HostProcessMetrics)
        .find_map(|table| table.retention);
    retention.map_or(longest_window, |after| after.min(longest_window))
}

/// How often a retention policy runs, in seconds: TimescaleDB's default, made explicit so
/// that a schedule changed behind the operator's back is seen and restored.
pub const RETENTION_SCHEDULE: i64 = 86_400;

/// How often the compression policy of a table with chunks of `chunk_interval` seconds
/// runs: every half chunk, at most every 12 hours (TimescaleDB's default, made explicit so
/// that a changed schedule is seen and restored).
pub fn compression_schedule(chunk_interval: i64) -> i64 {
    (chunk_interval / 2).clamp(1, 43_200)
}

/// The columns of an aggregate of `source`, in order: `bucket`, then each entry of the
/// [`rollup`]'s select list by its alias (or its name when it has none).
pub fn rollup_columns(source: MetricTable) -> Vec<String> {
    let (select, _) = rollup(source);
    let mut entries = Vec::new();
    let mut depth = 0usize;
    let mut start = 0;
    for (at, character) in select.char_indices() {
        match character {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                entries.push(&select[start..at]);
                start = at + 1;
            }
            _ => {}
        }
    }
    entries.push(&select[start..]);
    std::iter::once("bucket".to_owned())
        .chain(entries.into_iter().map(|entry| {
            let entry = entry.trim();
            let name = match entry.rsplit_once(" AS ") {
                Some((_, alias)) => alias,
                None => entry,
            };
            name.trim().to_owned()
        }))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_aggregates_columns_are_the_bucket_then_the_rollups_names() {
        assert_eq!(
            rollup_columns(MetricTable::HostOverallMetrics),
            [
                "bucket",
                "host",
                "avg_cpu",
                "max_cpu",
                "avg_memory_mb",
                "max_memory_mb",
                "avg_load_1",
                "samples"
            ]
        );
    }

    #[test]
    fn the_latest_samples_are_kept_for_the_longest_window_or_a_shorter_retention_in_force() {
        let with_retention = |retention| DesiredStorage {
            tables: vec![DesiredTable {
                table: MetricTable::HostProcessMetrics,
                chunk_interval: 86_400,
                compression: None,
                retention,
            }],
            aggregates: Vec::new(),
        };
        let month = 30 * 86_400;
        assert_eq!(latest_horizon(&DesiredStorage::default(), true), month);
        assert_eq!(latest_horizon(&with_retention(None), true), month);
        assert_eq!(
            latest_horizon(&with_retention(Some(7 * 86_400)), true),
            7 * 86_400
        );
        assert_eq!(
            latest_horizon(&with_retention(Some(90 * 86_400)), true),
            month
        );
        // Without TimescaleDB no retention runs: the samples stay.
        assert_eq!(
            latest_horizon(&with_retention(Some(7 * 86_400)), false),
            month
        );
    }

    #[test]
    fn compression_runs_every_half_chunk_at_most_every_twelve_hours() {
        assert_eq!(compression_schedule(86_400), 43_200);
        assert_eq!(compression_schedule(7 * 86_400), 43_200);
        assert_eq!(compression_schedule(3_600), 1_800);
    }
}
