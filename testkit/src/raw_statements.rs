//! The statements the query service ran on raw rows before `host_process_latest`, kept as
//! the baseline the latest-sample statements are checked against (operator tests) and timed
//! beside (the long-window benchmark).

/// The statement `/api/host-process-metrics` ran before `host_process_latest`: each
/// process's latest sample time over the window's raw rows, then those samples by the key.
pub const RAW_HOST_PROCESSES: &str = r#"
WITH latest AS (
    SELECT host, pid, start_time, max("timestamp") AS "timestamp"
    FROM host_process_metrics
    WHERE "timestamp" >= now() - make_interval(secs => $1::float8)
      AND ($2::text IS NULL OR host = $2)
    GROUP BY host, pid, start_time
)
SELECT m."timestamp", m.host, m.pid, m.start_time, m.parent_pid, m.process_name,
       m.command_line, m.username, m.state, m.cpu_usage_percent::float8 AS cpu_usage_percent,
       m.cpu_peak_percent::float8 AS cpu_peak_percent, m.memory_usage_mb, m.virtual_memory_mb,
       m.disk_read_bytes, m.disk_write_bytes, m.threads
FROM latest
JOIN host_process_metrics AS m USING (host, pid, start_time, "timestamp")
ORDER BY m.cpu_usage_percent DESC, m.host, m.pid, m.start_time
LIMIT $3"#;

/// The statement `/api/process-search` ran before `host_process_latest`: every matching
/// sample of the window, each process's latest of them.
pub const RAW_PROCESS_SEARCH: &str = r#"
SELECT "timestamp", host, pid, start_time, process_name, command_line, username,
       cpu_usage_percent, cpu_peak_percent, memory_usage_mb
FROM (
    SELECT DISTINCT ON (host, pid, start_time)
           "timestamp", host, pid, start_time, process_name, command_line, username,
           cpu_usage_percent::float8 AS cpu_usage_percent,
           cpu_peak_percent::float8 AS cpu_peak_percent, memory_usage_mb
    FROM host_process_metrics
    WHERE "timestamp" >= now() - make_interval(secs => $1::float8)
      AND ($2::text IS NULL OR host = $2)
      AND (command_line ILIKE $3 ESCAPE '\' OR process_name ILIKE $3 ESCAPE '\')
    ORDER BY host, pid, start_time, "timestamp" DESC
) AS matches
ORDER BY cpu_usage_percent DESC, host, pid, start_time
LIMIT $4"#;
