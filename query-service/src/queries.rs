//! The SQL behind each dashboard part: static statements with bound parameters, plain
//! PostgreSQL so that they run on PostgreSQL and TimescaleDB alike. Table names are
//! unqualified: every connection's `search_path` is the configured schema.
//!
//! Windows longer than [`HOURLY_THRESHOLD`] read hourly buckets for host overall metrics,
//! the nodes' history (in buckets of whole hours, without network and disk, which the hourly
//! rollup does not keep), top processes, pods, a pod's processes and a process's history
//! (in buckets of whole hours): from the TimescaleDB continuous aggregates
//! when they exist, else computed from raw rows with the same bucketing (`date_bin` on whole
//! UTC hours). The window's start is then rounded down to the hour, so both sources cover the
//! same rows. The latest samples of host processes (and the search among them) stay raw
//! samples, whatever the window: each process's latest one, from `host_process_latest` (the
//! search matches its text in `host_process_texts`).

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::postgres::PgArguments;
use sqlx::{Arguments as _, PgExecutor, PgPool};

use crate::filters::{Part, PartKey, TopMetric};

/// Windows longer than this read hourly buckets.
pub const HOURLY_THRESHOLD: Duration = Duration::from_secs(6 * 3600);

/// The continuous aggregate of `host_process_metrics` the operator creates.
pub const HOST_PROCESS_AGGREGATE: &str = "host_process_metrics_hourly";
/// The continuous aggregate of `host_overall_metrics` the operator creates.
pub const HOST_OVERALL_AGGREGATE: &str = "host_overall_metrics_hourly";
/// The continuous aggregate of `vm_process_metrics` the operator creates.
pub const VM_PROCESS_AGGREGATE: &str = "vm_process_metrics_hourly";

/// Which hourly aggregates exist in the schema.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Aggregates {
    /// `host_process_metrics_hourly` exists.
    pub host_process: bool,
    /// `host_overall_metrics_hourly` exists.
    pub host_overall: bool,
    /// `vm_process_metrics_hourly` exists, per process (an older rollup per process name
    /// lacks `memory_request_samples` and is not read).
    pub vm_process: bool,
}

/// Looks the hourly aggregates up in the schema on the connection's `search_path`.
pub async fn detect_aggregates<'c>(
    executor: impl PgExecutor<'c>,
) -> Result<Aggregates, sqlx::Error> {
    let (host_process, host_overall, vm_process): (bool, bool, bool) = sqlx::query_as(
        "SELECT to_regclass($1) IS NOT NULL, to_regclass($2) IS NOT NULL, \
                EXISTS (SELECT 1 FROM pg_attribute \
                        WHERE attrelid = to_regclass($3) AND attname = 'memory_request_samples')",
    )
    .bind(HOST_PROCESS_AGGREGATE)
    .bind(HOST_OVERALL_AGGREGATE)
    .bind(VM_PROCESS_AGGREGATE)
    .fetch_one(executor)
    .await?;
    Ok(Aggregates {
        host_process,
        host_overall,
        vm_process,
    })
}

/// Where a part's rows came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// Raw samples (a host's processes and the search: each process's latest sample, from
    /// `host_process_latest`).
    Raw,
    /// Hourly buckets computed from raw samples.
    HourlyFromRaw,
    /// Hourly buckets of the TimescaleDB continuous aggregate.
    HourlyAggregate,
}

impl Source {
    /// The source's name in metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Raw => "raw",
            Source::HourlyFromRaw => "hourly_from_raw",
            Source::HourlyAggregate => "hourly_aggregate",
        }
    }
}

/// The latest sample of one process (host, pid, start time) in the window.
#[derive(Clone, Debug, PartialEq, Serialize, sqlx::FromRow)]
pub struct HostProcessRow {
    /// When the sample was taken.
    pub timestamp: DateTime<Utc>,
    /// The node.
    pub host: String,
    /// Process id.
    pub pid: i32,
    /// When the process started.
    pub start_time: DateTime<Utc>,
    /// Parent process id.
    pub parent_pid: Option<i32>,
    /// Process name.
    pub process_name: String,
    /// Command line (possibly shortened by the collector).
    pub command_line: Option<String>,
    /// Owner.
    pub username: Option<String>,
    /// Scheduler state.
    pub state: Option<String>,
    /// CPU usage, percent of one core.
    pub cpu_usage_percent: f64,
    /// Peak CPU usage in the sample interval.
    pub cpu_peak_percent: f64,
    /// Resident memory, MiB.
    pub memory_usage_mb: f64,
    /// Virtual memory, MiB.
    pub virtual_memory_mb: f64,
    /// Bytes read from disk.
    pub disk_read_bytes: i64,
    /// Bytes written to disk.
    pub disk_write_bytes: i64,
    /// Thread count.
    pub threads: Option<i32>,
}

/// One host's node metrics summarised over the window.
#[derive(Clone, Debug, PartialEq, Serialize, sqlx::FromRow)]
pub struct HostOverallRow {
    /// The node.
    pub host: String,
    /// Latest sample (raw) or latest bucket start (hourly).
    pub last_seen: DateTime<Utc>,
    /// Average CPU usage, percent.
    pub avg_cpu: f64,
    /// Highest CPU usage, percent.
    pub max_cpu: f64,
    /// Average memory in use, MiB.
    pub avg_memory_mb: f64,
    /// Highest memory in use, MiB.
    pub max_memory_mb: f64,
    /// Average one-minute load.
    pub avg_load_1: f64,
    /// Samples summarised.
    pub samples: i64,
    /// Bytes per second received by the node at its latest sample (of the last
    /// [`NOW_LOOKBACK`]): the bytes since the sample before, over the time between them.
    /// None without two such samples.
    pub network_rx_bytes_per_second: Option<f64>,
    /// Bytes per second sent by the node at its latest sample, as `network_rx_...`.
    pub network_tx_bytes_per_second: Option<f64>,
    /// Disk space in use at the node's latest sample (of the last [`NOW_LOOKBACK`]).
    pub disk_used_bytes: Option<i64>,
    /// Disk space at the node's latest sample (of the last [`NOW_LOOKBACK`]).
    pub disk_total_bytes: Option<i64>,
}

/// How far back host overall metrics look for a node's latest sample (its network and disk
/// now), whatever the window: a node silent for longer has no such values.
pub const NOW_LOOKBACK: Duration = Duration::from_secs(600);

/// One process name on one host, ranked over the window.
#[derive(Clone, Debug, PartialEq, Serialize, sqlx::FromRow)]
pub struct TopProcessRow {
    /// The node.
    pub host: String,
    /// Process name.
    pub process_name: String,
    /// Average CPU usage, percent of one core.
    pub avg_cpu: f64,
    /// Highest peak CPU usage.
    pub max_cpu: f64,
    /// Average resident memory, MiB.
    pub avg_memory_mb: f64,
    /// Highest resident memory, MiB.
    pub max_memory_mb: f64,
    /// Samples summarised.
    pub samples: i64,
}

/// One pod's processes at its latest sample in the window.
#[derive(Clone, Debug, PartialEq, Serialize, sqlx::FromRow)]
pub struct VmRow {
    /// Pod namespace.
    pub namespace: String,
    /// Pod name.
    pub pod: String,
    /// The node.
    pub host: String,
    /// The pod's latest sample.
    pub last_seen: DateTime<Utc>,
    /// Processes of the pod in that sample.
    pub processes: i64,
    /// Their CPU usage, summed, percent of one core.
    pub cpu_usage_percent: f64,
    /// Their resident memory, summed, MiB.
    pub memory_usage_mb: f64,
}

/// A process whose command line or name at its latest sample matched a search, with that
/// sample (in the window).
#[derive(Clone, Debug, PartialEq, Serialize, sqlx::FromRow)]
pub struct ProcessMatchRow {
    /// The process's latest sample.
    pub timestamp: DateTime<Utc>,
    /// The node.
    pub host: String,
    /// Process id.
    pub pid: i32,
    /// When the process started (with the pid, it names the process).
    pub start_time: DateTime<Utc>,
    /// Process name.
    pub process_name: String,
    /// Command line.
    pub command_line: Option<String>,
    /// Owner.
    pub username: Option<String>,
    /// CPU usage over the sample's interval, percent of one core.
    pub cpu_usage_percent: f64,
    /// Peak CPU usage within the sample's interval.
    pub cpu_peak_percent: f64,
    /// Resident memory, MiB.
    pub memory_usage_mb: f64,
}

/// One process of a pod over the window, with its container.
#[derive(Clone, Debug, PartialEq, Serialize, sqlx::FromRow)]
pub struct PodProcessRow {
    /// The container's id.
    pub container_id: String,
    /// The container's name, when the pod watch knew it.
    pub container_name: Option<String>,
    /// The node.
    pub host: String,
    /// Process id.
    pub pid: i32,
    /// When the process started.
    pub start_time: DateTime<Utc>,
    /// Process name.
    pub process_name: String,
    /// Command line.
    pub command_line: Option<String>,
    /// Average CPU usage, percent of one core.
    pub avg_cpu: f64,
    /// Highest CPU peak within a sample's interval.
    pub max_cpu: f64,
    /// Average CPU usage, percent of the container's CPU limit; None without a limit.
    pub avg_cpu_limit_percent: Option<f64>,
    /// Average CPU usage, percent of the container's CPU request; None without a request.
    pub avg_cpu_request_percent: Option<f64>,
    /// Average resident memory, percent of the container's memory limit; None without one.
    pub avg_memory_limit_percent: Option<f64>,
    /// Average resident memory, percent of the container's memory request; None without one.
    pub avg_memory_request_percent: Option<f64>,
    /// Average resident memory, MiB.
    pub avg_memory_mb: f64,
    /// Highest resident memory, MiB.
    pub max_memory_mb: f64,
    /// The process's latest sample.
    pub last_seen: DateTime<Utc>,
    /// Samples summarised.
    pub samples: i64,
}

/// Most processes a pod's answer holds.
pub const MAX_POD_PROCESSES: i64 = 1000;

/// One incarnation of a followed process (host, container id, pid, start time) over one
/// bucket of its history.
#[derive(Clone, Debug, PartialEq, Serialize, sqlx::FromRow)]
pub struct ProcessHistoryRow {
    /// The bucket's start.
    pub timestamp: DateTime<Utc>,
    /// The node.
    pub host: String,
    /// The container's id (a new one after the container restarts).
    pub container_id: String,
    /// Process id.
    pub pid: i32,
    /// When the process started (with the pid, it names the incarnation).
    pub start_time: DateTime<Utc>,
    /// Average CPU usage, percent of one core.
    pub avg_cpu: f64,
    /// Highest CPU peak within a sample's interval.
    pub max_cpu: f64,
    /// Average resident memory, MiB.
    pub avg_memory_mb: f64,
    /// Highest resident memory, MiB.
    pub max_memory_mb: f64,
    /// Average CPU usage, percent of the container's CPU limit; None without a limit.
    pub avg_cpu_limit_percent: Option<f64>,
    /// Average CPU usage, percent of the container's CPU request; None without a request.
    pub avg_cpu_request_percent: Option<f64>,
    /// Average resident memory, percent of the container's memory limit; None without one.
    pub avg_memory_limit_percent: Option<f64>,
    /// Average resident memory, percent of the container's memory request; None without one.
    pub avg_memory_request_percent: Option<f64>,
    /// Samples summarised.
    pub samples: i64,
}

/// Buckets a process's history is cut into, at most (one more when the window does not
/// start on a bucket boundary).
pub const HISTORY_BUCKETS: u32 = 360;

/// Most rows a process's history holds (buckets times incarnations).
pub const MAX_HISTORY_ROWS: i64 = 5000;

/// The length of one bucket of a process's history over `window_seconds`, in whole seconds.
pub fn history_bucket_seconds(window_seconds: u32) -> u32 {
    window_seconds.div_ceil(HISTORY_BUCKETS).max(1)
}

/// One node over one bucket of its history.
#[derive(Clone, Debug, PartialEq, Serialize, sqlx::FromRow)]
pub struct HostHistoryRow {
    /// The bucket's start.
    pub timestamp: DateTime<Utc>,
    /// The node.
    pub host: String,
    /// Average CPU usage, percent.
    pub avg_cpu: f64,
    /// Highest CPU usage, percent.
    pub max_cpu: f64,
    /// Average memory in use, MiB.
    pub avg_memory_mb: f64,
    /// Highest memory in use, MiB.
    pub max_memory_mb: f64,
    /// Average one-minute load.
    pub avg_load_1: f64,
    /// Bytes per second received over the bucket: the bytes of its samples over the time
    /// since each one's previous sample in the window. None from hourly buckets (the hourly
    /// rollup keeps no network) and without such a sample.
    pub network_rx_bytes_per_second: Option<f64>,
    /// Bytes per second sent over the bucket, as `network_rx_...`.
    pub network_tx_bytes_per_second: Option<f64>,
    /// Highest disk space in use in the bucket. None from hourly buckets (the hourly rollup
    /// keeps no disk space).
    pub disk_used_bytes: Option<i64>,
    /// Samples summarised.
    pub samples: i64,
}

/// Most rows the nodes' history holds (buckets times nodes): 110 nodes of 361 buckets; a
/// larger fleet is asked node by node.
pub const MAX_HOST_HISTORY_ROWS: i64 = 40_000;

/// The length of one bucket of a history (the nodes' or a process's) as served over
/// `window_seconds`, in whole seconds: [`history_bucket_seconds`], and a whole number of
/// hours for windows read from hourly buckets (over [`HOURLY_THRESHOLD`]), so that hourly
/// buckets nest in it.
pub fn served_bucket_seconds(window_seconds: u32) -> u32 {
    let seconds = history_bucket_seconds(window_seconds);
    if u64::from(window_seconds) > HOURLY_THRESHOLD.as_secs() {
        seconds.div_ceil(3600) * 3600
    } else {
        seconds
    }
}

/// The answer of a history (the nodes' or a process's): a [`PartAnswer`] with the buckets'
/// length.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct HistoryAnswer<R> {
    /// Where the rows came from.
    pub source: Source,
    /// The window, in seconds.
    pub window_seconds: u32,
    /// The length of one bucket, in seconds.
    pub bucket_seconds: u32,
    /// The rows, in the history's order.
    pub rows: Vec<R>,
}

/// The answer of one part: where its rows came from and the rows.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PartAnswer<R> {
    /// Where the rows came from.
    pub source: Source,
    /// The window, in seconds.
    pub window_seconds: u32,
    /// The rows.
    pub rows: Vec<R>,
}

/// A statement that was run, for metrics: the part and the source.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Statement {
    /// The part it answers.
    pub part: Part,
    /// Where it reads.
    pub source: Source,
}

// Each process's latest sample is its row of `host_process_latest` (kept by the collector's
// ingest, pruned by the operator): one row per process seen in the window, whatever the
// window's length. A long window reads the (cpu_usage_percent DESC, ...) index in the
// answer's order (hence the order by the stored `real`, not the `float8` it is answered as:
// the same order), a short one the ("timestamp") or (host, "timestamp") index.
const HOST_PROCESSES: &str = r#"
SELECT "timestamp", host, pid, start_time, parent_pid, process_name, command_line, username,
       state, cpu_usage_percent::float8 AS cpu_usage_percent,
       cpu_peak_percent::float8 AS cpu_peak_percent, memory_usage_mb, virtual_memory_mb,
       disk_read_bytes, disk_write_bytes, threads
FROM host_process_latest AS latest
WHERE "timestamp" >= now() - make_interval(secs => $1::float8)
  AND ($2::text IS NULL OR host = $2)
ORDER BY latest.cpu_usage_percent DESC, host, pid, start_time
LIMIT $3"#;

/// A host overall statement (`summary`, one row per host, parameters `$1` the window in
/// seconds and `$2` the host) with each node's network and disk now: its latest sample of
/// the last `$3` seconds ([`NOW_LOOKBACK`], or the window if shorter), whatever the source.
macro_rules! host_overall_with_now {
    ($summary:literal) => {
        concat!(
            "WITH summary AS (",
            $summary,
            r#"
), recent AS (
    SELECT host, "timestamp", network_rx_bytes, network_tx_bytes, disk_used_bytes,
           disk_total_bytes,
           lag("timestamp") OVER (PARTITION BY host ORDER BY "timestamp") AS previous
    FROM host_overall_metrics
    WHERE "timestamp" >= now() - make_interval(secs => least($1::float8, $3::float8))
      AND ($2::text IS NULL OR host = $2)
), latest AS (
    SELECT DISTINCT ON (host) host, disk_used_bytes, disk_total_bytes,
           (network_rx_bytes / NULLIF(extract(epoch FROM "timestamp" - previous), 0))::float8
               AS network_rx_bytes_per_second,
           (network_tx_bytes / NULLIF(extract(epoch FROM "timestamp" - previous), 0))::float8
               AS network_tx_bytes_per_second
    FROM recent
    ORDER BY host, "timestamp" DESC
)
SELECT s.*, l.network_rx_bytes_per_second, l.network_tx_bytes_per_second, l.disk_used_bytes,
       l.disk_total_bytes
FROM summary AS s
LEFT JOIN latest AS l USING (host)
ORDER BY host"#
        )
    };
}

const HOST_OVERALL_RAW: &str = host_overall_with_now!(
    r#"
SELECT host, max("timestamp") AS last_seen, avg(cpu_usage_percent)::float8 AS avg_cpu,
       max(cpu_usage_percent)::float8 AS max_cpu, avg(memory_usage_mb) AS avg_memory_mb,
       max(memory_usage_mb) AS max_memory_mb, avg(load_1) AS avg_load_1, count(*) AS samples
FROM host_overall_metrics
WHERE "timestamp" >= now() - make_interval(secs => $1::float8)
  AND ($2::text IS NULL OR host = $2)
GROUP BY host"#
);

const HOST_OVERALL_HOURLY_FROM_RAW: &str = host_overall_with_now!(
    r#"
SELECT host, max(date_bin('1 hour', "timestamp", TIMESTAMPTZ '2000-01-01 00:00:00+00'))
           AS last_seen,
       avg(cpu_usage_percent)::float8 AS avg_cpu, max(cpu_usage_percent)::float8 AS max_cpu,
       avg(memory_usage_mb) AS avg_memory_mb, max(memory_usage_mb) AS max_memory_mb,
       avg(load_1) AS avg_load_1, count(*) AS samples
FROM host_overall_metrics
WHERE "timestamp" >= date_bin('1 hour', now() - make_interval(secs => $1::float8),
                              TIMESTAMPTZ '2000-01-01 00:00:00+00')
  AND ($2::text IS NULL OR host = $2)
GROUP BY host"#
);

const HOST_OVERALL_FROM_AGGREGATE: &str = host_overall_with_now!(
    r#"
SELECT host, max(bucket) AS last_seen,
       (sum(avg_cpu * samples) / sum(samples))::float8 AS avg_cpu,
       max(max_cpu)::float8 AS max_cpu,
       (sum(avg_memory_mb * samples) / sum(samples))::float8 AS avg_memory_mb,
       max(max_memory_mb)::float8 AS max_memory_mb,
       (sum(avg_load_1 * samples) / sum(samples))::float8 AS avg_load_1,
       sum(samples)::int8 AS samples
FROM host_overall_metrics_hourly
WHERE bucket >= date_bin('1 hour', now() - make_interval(secs => $1::float8),
                         TIMESTAMPTZ '2000-01-01 00:00:00+00')
  AND ($2::text IS NULL OR host = $2)
GROUP BY host"#
);

const TOP_PROCESSES_RAW: &str = r#"
SELECT host, process_name, avg(cpu_usage_percent)::float8 AS avg_cpu,
       max(cpu_peak_percent)::float8 AS max_cpu, avg(memory_usage_mb) AS avg_memory_mb,
       max(memory_usage_mb) AS max_memory_mb, count(*) AS samples
FROM host_process_metrics
WHERE "timestamp" >= now() - make_interval(secs => $1::float8)
  AND ($2::text IS NULL OR host = $2)
GROUP BY host, process_name
ORDER BY CASE WHEN $3::text = 'memory' THEN avg(memory_usage_mb)
              ELSE avg(cpu_usage_percent) END DESC,
         host, process_name
LIMIT $4"#;

const TOP_PROCESSES_HOURLY_FROM_RAW: &str = r#"
SELECT host, process_name, avg(cpu_usage_percent)::float8 AS avg_cpu,
       max(cpu_peak_percent)::float8 AS max_cpu, avg(memory_usage_mb) AS avg_memory_mb,
       max(memory_usage_mb) AS max_memory_mb, count(*) AS samples
FROM host_process_metrics
WHERE "timestamp" >= date_bin('1 hour', now() - make_interval(secs => $1::float8),
                              TIMESTAMPTZ '2000-01-01 00:00:00+00')
  AND ($2::text IS NULL OR host = $2)
GROUP BY host, process_name
ORDER BY CASE WHEN $3::text = 'memory' THEN avg(memory_usage_mb)
              ELSE avg(cpu_usage_percent) END DESC,
         host, process_name
LIMIT $4"#;

const TOP_PROCESSES_FROM_AGGREGATE: &str = r#"
SELECT host, process_name,
       (sum(avg_cpu * samples) / sum(samples))::float8 AS avg_cpu,
       max(max_cpu)::float8 AS max_cpu,
       (sum(avg_memory_mb * samples) / sum(samples))::float8 AS avg_memory_mb,
       max(max_memory_mb)::float8 AS max_memory_mb, sum(samples)::int8 AS samples
FROM host_process_metrics_hourly
WHERE bucket >= date_bin('1 hour', now() - make_interval(secs => $1::float8),
                         TIMESTAMPTZ '2000-01-01 00:00:00+00')
  AND ($2::text IS NULL OR host = $2)
GROUP BY host, process_name
ORDER BY CASE WHEN $3::text = 'memory' THEN sum(avg_memory_mb * samples) / sum(samples)
              ELSE sum(avg_cpu * samples) / sum(samples) END DESC,
         host, process_name
LIMIT $4"#;

// Each pod's latest sample time is found by hashing (sorting the rows in the window by the
// text namespace and name, as DISTINCT ON would, costs twice as much in all); only the few
// rows at those times are sorted, to choose the first host should a pod's latest sample
// come from two.
const VM_METRICS: &str = r#"
WITH recent AS (
    SELECT "timestamp", host, pod_namespace, pod_name, cpu_usage_percent, memory_usage_mb
    FROM vm_process_metrics
    WHERE "timestamp" >= now() - make_interval(secs => $1::float8)
      AND pod_namespace IS NOT NULL AND pod_name IS NOT NULL
      AND ($2::text IS NULL OR host = $2)
      AND ($3::text IS NULL OR pod_namespace = $3)
), latest AS (
    SELECT pod_namespace, pod_name, max("timestamp") AS "timestamp"
    FROM recent
    GROUP BY pod_namespace, pod_name
), at_latest AS (
    SELECT r.pod_namespace, r.pod_name, r.host, r."timestamp", count(*) AS processes,
           sum(r.cpu_usage_percent)::float8 AS cpu_usage_percent,
           sum(r.memory_usage_mb) AS memory_usage_mb
    FROM recent AS r
    JOIN latest AS l USING (pod_namespace, pod_name, "timestamp")
    GROUP BY r.pod_namespace, r.pod_name, r.host, r."timestamp"
), pods AS (
    SELECT DISTINCT ON (pod_namespace, pod_name) *
    FROM at_latest
    ORDER BY pod_namespace, pod_name, host
)
SELECT pod_namespace AS namespace, pod_name AS pod, host, "timestamp" AS last_seen,
       processes, cpu_usage_percent, memory_usage_mb
FROM pods
ORDER BY cpu_usage_percent DESC, namespace, pod
LIMIT $4"#;

/// A pods statement over hourly buckets (`hourly`: the rows of the window's buckets, per
/// process of a pod, as `vm_process_metrics_hourly` holds them; parameters as [`VM_METRICS`]'s):
/// each pod at its latest bucket, its processes in that hour and their average CPU and
/// memory summed, `last_seen` its latest sample.
macro_rules! vm_metrics_hourly {
    ($hourly:literal) => {
        concat!(
            "WITH hourly AS (",
            $hourly,
            r#"
), latest AS (
    SELECT pod_namespace, pod_name, max(bucket) AS bucket
    FROM hourly
    GROUP BY pod_namespace, pod_name
), at_latest AS (
    SELECT h.pod_namespace, h.pod_name, h.host, max(h.last_seen) AS last_seen,
           count(*) AS processes, sum(h.avg_cpu)::float8 AS cpu_usage_percent,
           sum(h.avg_memory_mb)::float8 AS memory_usage_mb
    FROM hourly AS h
    JOIN latest AS l USING (pod_namespace, pod_name, bucket)
    GROUP BY h.pod_namespace, h.pod_name, h.host
), pods AS (
    SELECT DISTINCT ON (pod_namespace, pod_name) *
    FROM at_latest
    ORDER BY pod_namespace, pod_name, host
)
SELECT pod_namespace AS namespace, pod_name AS pod, host, last_seen, processes,
       cpu_usage_percent, memory_usage_mb
FROM pods
ORDER BY cpu_usage_percent DESC, namespace, pod
LIMIT $4"#
        )
    };
}

const VM_METRICS_FROM_AGGREGATE: &str = vm_metrics_hourly!(
    r#"
    SELECT bucket, host, pod_namespace, pod_name, avg_cpu, avg_memory_mb, last_seen
    FROM vm_process_metrics_hourly
    WHERE bucket >= date_bin('1 hour', now() - make_interval(secs => $1::float8),
                             TIMESTAMPTZ '2000-01-01 00:00:00+00')
      AND pod_namespace IS NOT NULL AND pod_name IS NOT NULL
      AND ($2::text IS NULL OR host = $2)
      AND ($3::text IS NULL OR pod_namespace = $3)"#
);

const VM_METRICS_HOURLY_FROM_RAW: &str = vm_metrics_hourly!(
    r#"
    SELECT date_bin('1 hour', "timestamp", TIMESTAMPTZ '2000-01-01 00:00:00+00') AS bucket,
           host, pod_namespace, pod_name, avg(cpu_usage_percent) AS avg_cpu,
           avg(memory_usage_mb) AS avg_memory_mb, max("timestamp") AS last_seen
    FROM vm_process_metrics
    WHERE "timestamp" >= date_bin('1 hour', now() - make_interval(secs => $1::float8),
                                  TIMESTAMPTZ '2000-01-01 00:00:00+00')
      AND pod_namespace IS NOT NULL AND pod_name IS NOT NULL
      AND ($2::text IS NULL OR host = $2)
      AND ($3::text IS NULL OR pod_namespace = $3)
    GROUP BY 1, host, pod_namespace, pod_name, container_id, container_name, pid, start_time,
             process_name, command_line"#
);

// The search matches the command line or name of each process's latest sample in the window
// (its row of `host_process_latest`), as `command_line ILIKE $3 OR process_name ILIKE $3`
// would: `host_process_texts` holds both lower-cased (`process_search_text`), and LIKE
// against it is several times faster than ILIKE (which lower-cases every row in a UTF-8
// database). The text's `\`, `%` and `_` are escaped by `like_pattern` so that they match
// themselves. Ordered as the host's processes are, so that a text many processes match
// reads the CPU index until the limit, and one that few match reads the texts' trigram
// index (where pg_trgm is installed, else the texts alone) and then those processes. Which
// of the two depends on the text, so the statement is planned for each search
// ([`planned_per_run`]), its parameters folded in. A text of one or two characters ($5,
// as given) has no trigram: the planner may read the index whole, slower than the texts
// (111 ms against 31 ms p95 at 144,400 processes under load). Compared in the "C"
// collation, which the index (in the column's) does not serve, it reads the texts or the
// CPU index as the column's statistics say; LIKE matches alike in either collation (the
// text is lower-cased in the column's).
const PROCESS_SEARCH: &str = r#"
SELECT "timestamp", latest.host, latest.pid, latest.start_time, process_name, command_line,
       username, cpu_usage_percent::float8 AS cpu_usage_percent,
       cpu_peak_percent::float8 AS cpu_peak_percent, memory_usage_mb
FROM host_process_latest AS latest
JOIN host_process_texts AS texts USING (host, pid, start_time)
WHERE "timestamp" >= now() - make_interval(secs => $1::float8)
  AND ($2::text IS NULL OR latest.host = $2)
  AND CASE WHEN char_length($5::text) >= 3 THEN texts.search_text LIKE lower($3) ESCAPE '\'
           ELSE texts.search_text COLLATE "C" LIKE lower($3) ESCAPE '\' END
ORDER BY latest.cpu_usage_percent DESC, latest.host, latest.pid, latest.start_time
LIMIT $4"#;

// One pod's rows in the window, found by the (pod_namespace, pod_name, "timestamp") index.
const POD_PROCESSES: &str = r#"
SELECT container_id, container_name, host, pid, start_time, process_name, command_line,
       avg(cpu_usage_percent)::float8 AS avg_cpu, max(cpu_peak_percent)::float8 AS max_cpu,
       avg(cpu_limit_percent)::float8 AS avg_cpu_limit_percent,
       avg(cpu_request_percent)::float8 AS avg_cpu_request_percent,
       avg(memory_limit_percent)::float8 AS avg_memory_limit_percent,
       avg(memory_request_percent)::float8 AS avg_memory_request_percent,
       avg(memory_usage_mb) AS avg_memory_mb, max(memory_usage_mb) AS max_memory_mb,
       max("timestamp") AS last_seen, count(*) AS samples
FROM vm_process_metrics
WHERE "timestamp" >= now() - make_interval(secs => $1::float8)
  AND pod_namespace = $2 AND pod_name = $3
GROUP BY container_id, container_name, host, pid, start_time, process_name, command_line
ORDER BY container_name, container_id, avg_cpu DESC, pid, start_time
LIMIT $4"#;

/// The averages of the shares of a container's requests and limits over hourly buckets of
/// the pod process rollup, each weighed by the samples that had that request or limit
/// (select-list lines ending in a comma).
macro_rules! weighted_shares {
    () => {
        r#"
       (sum(avg_cpu_limit_percent * limit_samples) / NULLIF(sum(limit_samples), 0))::float8
           AS avg_cpu_limit_percent,
       (sum(avg_cpu_request_percent * cpu_request_samples)
           / NULLIF(sum(cpu_request_samples), 0))::float8 AS avg_cpu_request_percent,
       (sum(avg_memory_limit_percent * memory_limit_samples)
           / NULLIF(sum(memory_limit_samples), 0))::float8 AS avg_memory_limit_percent,
       (sum(avg_memory_request_percent * memory_request_samples)
           / NULLIF(sum(memory_request_samples), 0))::float8 AS avg_memory_request_percent,"#
    };
}

/// A pod's processes over hourly buckets (`hourly`: the pod's rows of the window's buckets,
/// per process, as `vm_process_metrics_hourly` holds them; parameters as
/// [`POD_PROCESSES`]'s), the buckets' averages weighed by their samples.
macro_rules! pod_processes_hourly {
    ($hourly:literal) => {
        concat!(
            "WITH hourly AS (",
            $hourly,
            r#"
)
SELECT container_id, container_name, host, pid, start_time, process_name, command_line,
       (sum(avg_cpu * samples) / sum(samples))::float8 AS avg_cpu,
       max(max_cpu)::float8 AS max_cpu,
"#,
            weighted_shares!(),
            r#"
       (sum(avg_memory_mb * samples) / sum(samples))::float8 AS avg_memory_mb,
       max(max_memory_mb)::float8 AS max_memory_mb, max(last_seen) AS last_seen,
       sum(samples)::int8 AS samples
FROM hourly
GROUP BY container_id, container_name, host, pid, start_time, process_name, command_line
ORDER BY container_name, container_id, avg_cpu DESC, pid, start_time
LIMIT $4"#
        )
    };
}

const POD_PROCESSES_FROM_AGGREGATE: &str = pod_processes_hourly!(
    r#"
    SELECT container_id, container_name, host, pid, start_time, process_name, command_line,
           avg_cpu, max_cpu, avg_cpu_limit_percent, limit_samples, avg_cpu_request_percent,
           cpu_request_samples, avg_memory_limit_percent, memory_limit_samples,
           avg_memory_request_percent, memory_request_samples, avg_memory_mb,
           max_memory_mb, last_seen, samples
    FROM vm_process_metrics_hourly
    WHERE bucket >= date_bin('1 hour', now() - make_interval(secs => $1::float8),
                             TIMESTAMPTZ '2000-01-01 00:00:00+00')
      AND pod_namespace = $2 AND pod_name = $3"#
);

const POD_PROCESSES_HOURLY_FROM_RAW: &str = pod_processes_hourly!(
    r#"
    SELECT container_id, container_name, host, pid, start_time, process_name, command_line,
           avg(cpu_usage_percent) AS avg_cpu, max(cpu_peak_percent) AS max_cpu,
           avg(cpu_limit_percent) AS avg_cpu_limit_percent,
           count(cpu_limit_percent) AS limit_samples,
           avg(cpu_request_percent) AS avg_cpu_request_percent,
           count(cpu_request_percent) AS cpu_request_samples,
           avg(memory_limit_percent) AS avg_memory_limit_percent,
           count(memory_limit_percent) AS memory_limit_samples,
           avg(memory_request_percent) AS avg_memory_request_percent,
           count(memory_request_percent) AS memory_request_samples,
           avg(memory_usage_mb) AS avg_memory_mb,
           max(memory_usage_mb) AS max_memory_mb, max("timestamp") AS last_seen,
           count(*) AS samples
    FROM vm_process_metrics
    WHERE "timestamp" >= date_bin('1 hour', now() - make_interval(secs => $1::float8),
                                  TIMESTAMPTZ '2000-01-01 00:00:00+00')
      AND pod_namespace = $2 AND pod_name = $3
    GROUP BY date_bin('1 hour', "timestamp", TIMESTAMPTZ '2000-01-01 00:00:00+00'),
             container_id, container_name, host, pid, start_time, process_name, command_line"#
);

/// The end of a process's history statement: the followed process ($2 to $4 its pod and
/// container, $6 its command line as recorded, else its name), one row per bucket and
/// incarnation in the history's order, at most $7.
macro_rules! followed_process {
    () => {
        r#"
  AND pod_namespace = $2 AND pod_name = $3 AND container_name = $4
  AND coalesce(command_line, process_name) = $6
GROUP BY 1, host, container_id, pid, start_time
ORDER BY 1, start_time, pid, host, container_id
LIMIT $7"#
    };
}

// A process followed by its pod, container name and command (the command line as recorded,
// else the process name) rather than by pid, in buckets of $5 seconds (whole multiples from
// the epoch), one row per incarnation and bucket. Found by the
// (pod_namespace, pod_name, "timestamp") index.
macro_rules! process_history {
    ($since:literal) => {
        concat!(
            r#"
SELECT date_bin(make_interval(secs => $5::float8), "timestamp", TIMESTAMPTZ 'epoch')
           AS "timestamp",
       host, container_id, pid, start_time,
       avg(cpu_usage_percent)::float8 AS avg_cpu, max(cpu_peak_percent)::float8 AS max_cpu,
       avg(memory_usage_mb) AS avg_memory_mb, max(memory_usage_mb) AS max_memory_mb,
       avg(cpu_limit_percent)::float8 AS avg_cpu_limit_percent,
       avg(cpu_request_percent)::float8 AS avg_cpu_request_percent,
       avg(memory_limit_percent)::float8 AS avg_memory_limit_percent,
       avg(memory_request_percent)::float8 AS avg_memory_request_percent,
       count(*) AS samples
FROM vm_process_metrics
WHERE "timestamp" >= "#,
            $since,
            followed_process!()
        )
    };
}

const PROCESS_HISTORY: &str = process_history!("now() - make_interval(secs => $1::float8)");

// Over hourly buckets, from the bucket holding the window's start, so that every bucket is
// whole and the rollup covers the same rows.
const PROCESS_HISTORY_HOURLY_FROM_RAW: &str = process_history!(
    "date_bin(make_interval(secs => $5::float8), now() - make_interval(secs => $1::float8),
                        TIMESTAMPTZ 'epoch')"
);

// The rollup's hourly buckets of the process merged into buckets of $5 seconds (whole
// hours), their averages weighed by their samples (the limit and request shares by the
// samples that had one).
const PROCESS_HISTORY_FROM_AGGREGATE: &str = concat!(
    r#"
SELECT date_bin(make_interval(secs => $5::float8), bucket, TIMESTAMPTZ 'epoch') AS "timestamp",
       host, container_id, pid, start_time,
       (sum(avg_cpu * samples) / sum(samples))::float8 AS avg_cpu,
       max(max_cpu)::float8 AS max_cpu,
       (sum(avg_memory_mb * samples) / sum(samples))::float8 AS avg_memory_mb,
       max(max_memory_mb)::float8 AS max_memory_mb,
"#,
    weighted_shares!(),
    r#"
       sum(samples)::int8 AS samples
FROM vm_process_metrics_hourly
WHERE bucket >= date_bin(make_interval(secs => $5::float8),
                         now() - make_interval(secs => $1::float8), TIMESTAMPTZ 'epoch')"#,
    followed_process!()
);

// Each node's samples in buckets of $3 seconds (whole multiples from the epoch), from the
// bucket holding the window's start, so that every bucket is whole and the hourly sources
// cover the same rows. Parameters: $1 the window in seconds, $2 the host, $3 the bucket's
// length, $4 the most rows. Found by the ("timestamp") and (host, "timestamp") indexes.
const HOST_HISTORY_RAW: &str = r#"
WITH samples AS (
    SELECT "timestamp", host, cpu_usage_percent, memory_usage_mb, load_1, disk_used_bytes,
           network_rx_bytes, network_tx_bytes,
           extract(epoch FROM "timestamp"
                   - lag("timestamp") OVER (PARTITION BY host ORDER BY "timestamp"))
               AS seconds
    FROM host_overall_metrics
    WHERE "timestamp" >= date_bin(make_interval(secs => $3::float8),
                                  now() - make_interval(secs => $1::float8),
                                  TIMESTAMPTZ 'epoch')
      AND ($2::text IS NULL OR host = $2)
)
SELECT date_bin(make_interval(secs => $3::float8), "timestamp", TIMESTAMPTZ 'epoch')
           AS "timestamp",
       host, avg(cpu_usage_percent)::float8 AS avg_cpu, max(cpu_usage_percent)::float8 AS max_cpu,
       avg(memory_usage_mb) AS avg_memory_mb, max(memory_usage_mb) AS max_memory_mb,
       avg(load_1) AS avg_load_1,
       (sum(network_rx_bytes) FILTER (WHERE seconds > 0)
           / sum(seconds) FILTER (WHERE seconds > 0))::float8 AS network_rx_bytes_per_second,
       (sum(network_tx_bytes) FILTER (WHERE seconds > 0)
           / sum(seconds) FILTER (WHERE seconds > 0))::float8 AS network_tx_bytes_per_second,
       max(disk_used_bytes) AS disk_used_bytes, count(*) AS samples
FROM samples
GROUP BY 1, host
ORDER BY host, 1
LIMIT $4"#;

// As HOST_HISTORY_RAW, in buckets of whole hours; no network or disk, as from the aggregate.
const HOST_HISTORY_HOURLY_FROM_RAW: &str = r#"
SELECT date_bin(make_interval(secs => $3::float8), "timestamp", TIMESTAMPTZ 'epoch')
           AS "timestamp",
       host, avg(cpu_usage_percent)::float8 AS avg_cpu, max(cpu_usage_percent)::float8 AS max_cpu,
       avg(memory_usage_mb) AS avg_memory_mb, max(memory_usage_mb) AS max_memory_mb,
       avg(load_1) AS avg_load_1, NULL::float8 AS network_rx_bytes_per_second,
       NULL::float8 AS network_tx_bytes_per_second, NULL::int8 AS disk_used_bytes,
       count(*) AS samples
FROM host_overall_metrics
WHERE "timestamp" >= date_bin(make_interval(secs => $3::float8),
                              now() - make_interval(secs => $1::float8), TIMESTAMPTZ 'epoch')
  AND ($2::text IS NULL OR host = $2)
GROUP BY 1, host
ORDER BY host, 1
LIMIT $4"#;

// The aggregate's hourly buckets merged into buckets of whole hours, their averages weighed
// by their samples. The rollup keeps no network or disk.
const HOST_HISTORY_FROM_AGGREGATE: &str = r#"
SELECT date_bin(make_interval(secs => $3::float8), bucket, TIMESTAMPTZ 'epoch') AS "timestamp",
       host, (sum(avg_cpu * samples) / sum(samples))::float8 AS avg_cpu,
       max(max_cpu)::float8 AS max_cpu,
       (sum(avg_memory_mb * samples) / sum(samples))::float8 AS avg_memory_mb,
       max(max_memory_mb)::float8 AS max_memory_mb,
       (sum(avg_load_1 * samples) / sum(samples))::float8 AS avg_load_1,
       NULL::float8 AS network_rx_bytes_per_second, NULL::float8 AS network_tx_bytes_per_second,
       NULL::int8 AS disk_used_bytes, sum(samples)::int8 AS samples
FROM host_overall_metrics_hourly
WHERE bucket >= date_bin(make_interval(secs => $3::float8),
                         now() - make_interval(secs => $1::float8), TIMESTAMPTZ 'epoch')
  AND ($2::text IS NULL OR host = $2)
GROUP BY 1, host
ORDER BY host, 1
LIMIT $4"#;

/// The ILIKE pattern of a search: `text` anywhere, its `\`, `%` and `_` matching themselves.
pub fn like_pattern(text: &str) -> String {
    let mut pattern = String::with_capacity(text.len() + 2);
    pattern.push('%');
    for c in text.chars() {
        if matches!(c, '\\' | '%' | '_') {
            pattern.push('\\');
        }
        pattern.push(c);
    }
    pattern.push('%');
    pattern
}

/// The statement `key` runs, given the aggregates that exist.
pub fn statement(key: &PartKey, aggregates: Aggregates) -> Statement {
    let long = u64::from(key.window_seconds) > HOURLY_THRESHOLD.as_secs();
    let hourly = |exists: bool| match (long, exists) {
        (false, _) => Source::Raw,
        (true, true) => Source::HourlyAggregate,
        (true, false) => Source::HourlyFromRaw,
    };
    let source = match key.part {
        Part::HostProcessMetrics | Part::ProcessSearch => Source::Raw,
        Part::HostOverallMetrics | Part::HostHistory => hourly(aggregates.host_overall),
        Part::TopProcesses => hourly(aggregates.host_process),
        Part::VmMetrics | Part::PodProcesses | Part::ProcessHistory => {
            hourly(aggregates.vm_process)
        }
    };
    Statement {
        part: key.part,
        source,
    }
}

/// Whether `part`'s statement is planned for each run's parameters rather than prepared
/// once: a prepared statement's plan may become one plan for every parameter after a few
/// runs, and the search's best plan depends on the text (a generic plan that reads the
/// trigram index took 156 ms for a text a third of 144,400 processes match, where the CPU
/// index answers in 1.5 ms).
pub fn planned_per_run(part: Part) -> bool {
    part == Part::ProcessSearch
}

/// The SQL `statement` runs.
pub fn sql(statement: Statement) -> &'static str {
    let hourly = |raw, from_raw, from_aggregate| match statement.source {
        Source::Raw => raw,
        Source::HourlyFromRaw => from_raw,
        Source::HourlyAggregate => from_aggregate,
    };
    match statement.part {
        Part::HostProcessMetrics => HOST_PROCESSES,
        Part::HostOverallMetrics => hourly(
            HOST_OVERALL_RAW,
            HOST_OVERALL_HOURLY_FROM_RAW,
            HOST_OVERALL_FROM_AGGREGATE,
        ),
        Part::TopProcesses => hourly(
            TOP_PROCESSES_RAW,
            TOP_PROCESSES_HOURLY_FROM_RAW,
            TOP_PROCESSES_FROM_AGGREGATE,
        ),
        Part::VmMetrics => hourly(
            VM_METRICS,
            VM_METRICS_HOURLY_FROM_RAW,
            VM_METRICS_FROM_AGGREGATE,
        ),
        Part::ProcessSearch => PROCESS_SEARCH,
        Part::PodProcesses => hourly(
            POD_PROCESSES,
            POD_PROCESSES_HOURLY_FROM_RAW,
            POD_PROCESSES_FROM_AGGREGATE,
        ),
        Part::ProcessHistory => hourly(
            PROCESS_HISTORY,
            PROCESS_HISTORY_HOURLY_FROM_RAW,
            PROCESS_HISTORY_FROM_AGGREGATE,
        ),
        Part::HostHistory => hourly(
            HOST_HISTORY_RAW,
            HOST_HISTORY_HOURLY_FROM_RAW,
            HOST_HISTORY_FROM_AGGREGATE,
        ),
    }
}

/// The parameters [`sql`] of `key`'s part binds.
fn arguments(key: &PartKey) -> Result<PgArguments, sqlx::Error> {
    let window = f64::from(key.window_seconds);
    let limit = i64::from(key.limit.unwrap_or(1));
    let host = key.host.as_deref();
    let mut arguments = PgArguments::default();
    let add = |result: Result<(), sqlx::error::BoxDynError>| result.map_err(sqlx::Error::Encode);
    add(arguments.add(window))?;
    match key.part {
        Part::HostProcessMetrics => {
            add(arguments.add(host))?;
            add(arguments.add(limit))?;
        }
        Part::HostOverallMetrics => {
            add(arguments.add(host))?;
            add(arguments.add(NOW_LOOKBACK.as_secs_f64()))?;
        }
        Part::TopProcesses => {
            add(arguments.add(host))?;
            add(arguments.add(key.metric.unwrap_or(TopMetric::Cpu).as_str()))?;
            add(arguments.add(limit))?;
        }
        Part::VmMetrics => {
            add(arguments.add(host))?;
            add(arguments.add(key.namespace.as_deref()))?;
            add(arguments.add(limit))?;
        }
        Part::ProcessSearch => {
            let text = key.search.as_deref().unwrap_or_default();
            add(arguments.add(host))?;
            add(arguments.add(like_pattern(text)))?;
            add(arguments.add(limit))?;
            add(arguments.add(text))?;
        }
        Part::PodProcesses => {
            add(arguments.add(key.namespace.as_deref()))?;
            add(arguments.add(key.pod.as_deref()))?;
            add(arguments.add(MAX_POD_PROCESSES))?;
        }
        Part::ProcessHistory => {
            add(arguments.add(key.namespace.as_deref()))?;
            add(arguments.add(key.pod.as_deref()))?;
            add(arguments.add(key.container.as_deref()))?;
            add(arguments.add(f64::from(served_bucket_seconds(key.window_seconds))))?;
            add(arguments.add(key.command.as_deref()))?;
            add(arguments.add(MAX_HISTORY_ROWS))?;
        }
        Part::HostHistory => {
            add(arguments.add(host))?;
            add(arguments.add(f64::from(served_bucket_seconds(key.window_seconds))))?;
            add(arguments.add(MAX_HOST_HISTORY_ROWS))?;
        }
    }
    Ok(arguments)
}

/// `statement` for `key` as the service runs it: its SQL, its parameters bound, and
/// prepared once or planned for each run ([`planned_per_run`]).
pub fn prepared(
    statement: Statement,
    key: &PartKey,
) -> Result<sqlx::query::Query<'static, sqlx::Postgres, PgArguments>, sqlx::Error> {
    Ok(sqlx::query_with(sql(statement), arguments(key)?)
        .persistent(!planned_per_run(statement.part)))
}

/// Runs `statement` for `key` and serialises its answer as JSON.
pub async fn run<'c>(
    executor: impl PgExecutor<'c>,
    statement: Statement,
    key: &PartKey,
) -> Result<Vec<u8>, sqlx::Error> {
    async fn fetch<'c, R>(
        executor: impl PgExecutor<'c>,
        statement: Statement,
        key: &PartKey,
    ) -> Result<Vec<R>, sqlx::Error>
    where
        R: Send + Unpin + for<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow>,
    {
        let rows = prepared(statement, key)?.fetch_all(executor).await?;
        rows.iter().map(R::from_row).collect()
    }
    /// The rows as the part's answer: a history's with its buckets' length.
    async fn rows<'c, R>(
        executor: impl PgExecutor<'c>,
        statement: Statement,
        key: &PartKey,
    ) -> Result<Vec<u8>, sqlx::Error>
    where
        R: Serialize + Send + Unpin + for<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow>,
    {
        let rows: Vec<R> = fetch(executor, statement, key).await?;
        let (source, window_seconds) = (statement.source, key.window_seconds);
        let answer = if matches!(statement.part, Part::ProcessHistory | Part::HostHistory) {
            serde_json::to_vec(&HistoryAnswer {
                source,
                window_seconds,
                bucket_seconds: served_bucket_seconds(window_seconds),
                rows,
            })
        } else {
            serde_json::to_vec(&PartAnswer {
                source,
                window_seconds,
                rows,
            })
        };
        Ok(answer.expect("rows serialise"))
    }
    match statement.part {
        Part::HostProcessMetrics => rows::<HostProcessRow>(executor, statement, key).await,
        Part::HostOverallMetrics => rows::<HostOverallRow>(executor, statement, key).await,
        Part::TopProcesses => rows::<TopProcessRow>(executor, statement, key).await,
        Part::VmMetrics => rows::<VmRow>(executor, statement, key).await,
        Part::ProcessSearch => rows::<ProcessMatchRow>(executor, statement, key).await,
        Part::PodProcesses => rows::<PodProcessRow>(executor, statement, key).await,
        Part::ProcessHistory => rows::<ProcessHistoryRow>(executor, statement, key).await,
        Part::HostHistory => rows::<HostHistoryRow>(executor, statement, key).await,
    }
}

/// PostgreSQL's plan of `statement` for `key` (`EXPLAIN (FORMAT JSON)`, not run), for tests
/// and benchmarks that check which relations a part reads.
pub async fn explain(
    pool: &PgPool,
    statement: Statement,
    key: &PartKey,
) -> Result<serde_json::Value, sqlx::Error> {
    let explain = format!("EXPLAIN (FORMAT JSON) {}", sql(statement));
    sqlx::query_scalar_with(sqlx::AssertSqlSafe(explain), arguments(key)?)
        .persistent(!planned_per_run(statement.part))
        .fetch_one(pool)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::filters::RawFilters;

    fn key(part: Part, query: &str) -> PartKey {
        RawFilters::from_query(query)
            .unwrap()
            .validate()
            .unwrap()
            .key(part)
    }

    #[test]
    fn a_search_pattern_matches_the_text_itself_anywhere() {
        assert_eq!(like_pattern("java"), "%java%");
        assert_eq!(like_pattern("50%_a\\b"), "%50\\%\\_a\\\\b%");
    }

    #[test]
    fn a_history_has_at_most_its_bucket_count_of_whole_second_buckets() {
        assert_eq!(history_bucket_seconds(60), 1);
        assert_eq!(history_bucket_seconds(3600), 10);
        assert_eq!(history_bucket_seconds(3601), 11);
        assert_eq!(history_bucket_seconds(30 * 86400), 7200);
    }

    #[test]
    fn a_history_has_a_few_hundred_buckets_of_whole_hours_when_read_hourly() {
        assert_eq!(served_bucket_seconds(900), 3);
        assert_eq!(served_bucket_seconds(6 * 3600), 60);
        assert_eq!(served_bucket_seconds(7 * 3600), 3600);
        assert_eq!(served_bucket_seconds(7 * 86400), 3600);
        assert_eq!(served_bucket_seconds(30 * 86400), 7200);
        for window in [60u32, 3600, 6 * 3600, 6 * 3600 + 300, 7 * 86400, 30 * 86400] {
            let buckets = window.div_ceil(served_bucket_seconds(window));
            assert!(
                (1..=HISTORY_BUCKETS).contains(&buckets),
                "{window}: {buckets}"
            );
        }
    }

    #[test]
    fn long_windows_read_hourly_buckets_from_the_aggregate_when_it_exists() {
        let both = Aggregates {
            host_process: true,
            host_overall: true,
            vm_process: true,
        };
        let none = Aggregates::default();
        let source = |part, query, aggregates| statement(&key(part, query), aggregates).source;
        assert_eq!(source(Part::TopProcesses, "window=6h", both), Source::Raw);
        assert_eq!(
            source(Part::TopProcesses, "window=7h", both),
            Source::HourlyAggregate
        );
        assert_eq!(
            source(Part::TopProcesses, "window=7h", none),
            Source::HourlyFromRaw
        );
        assert_eq!(
            source(Part::HostOverallMetrics, "window=1d", both),
            Source::HourlyAggregate
        );
        assert_eq!(
            source(Part::HostOverallMetrics, "window=1d", none),
            Source::HourlyFromRaw
        );
        assert_eq!(
            source(Part::HostProcessMetrics, "window=1d", both),
            Source::Raw
        );
        assert_eq!(
            source(Part::VmMetrics, "window=1d", both),
            Source::HourlyAggregate
        );
        assert_eq!(
            source(Part::VmMetrics, "window=30d", none),
            Source::HourlyFromRaw
        );
        assert_eq!(source(Part::VmMetrics, "window=1h", both), Source::Raw);
        let history = |query, aggregates| {
            let key = crate::filters::RawHostHistory::from_query(query)
                .and_then(crate::filters::RawHostHistory::validate)
                .unwrap();
            statement(&key, aggregates).source
        };
        assert_eq!(history("window=6h", both), Source::Raw);
        assert_eq!(history("window=30d", both), Source::HourlyAggregate);
        assert_eq!(history("window=30d", none), Source::HourlyFromRaw);
        let followed = |window, aggregates| {
            let query = format!("namespace=a&pod=b&container=c&command=d&window={window}");
            let key = crate::filters::RawHistory::from_query(&query)
                .and_then(crate::filters::RawHistory::validate)
                .unwrap();
            statement(&key, aggregates).source
        };
        assert_eq!(followed("6h", both), Source::Raw);
        assert_eq!(followed("7h", both), Source::HourlyAggregate);
        assert_eq!(followed("30d", none), Source::HourlyFromRaw);
        let older_rollup = Aggregates {
            vm_process: false,
            ..both
        };
        assert_eq!(followed("30d", older_rollup), Source::HourlyFromRaw);
    }
}
