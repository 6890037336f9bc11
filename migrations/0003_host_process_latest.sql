-- Each process's latest sample, so that a host's processes and the process search read one
-- row per process instead of every sample of the window (15.6M rows over 30 days at the
-- plan's size). The collector's batch insert keeps it in the same statement as its
-- `host_process_metrics` rows, a newer sample replacing an older one only (a replayed old
-- batch changes nothing). The operator deletes the rows of processes not seen for longer
-- than the longest window (30 days) or the table's retention, whichever is shorter. A plain
-- table on TimescaleDB too: it holds one row per process, not one per sample.
CREATE TABLE host_process_latest (
    "timestamp"        timestamptz      NOT NULL,
    host               text             NOT NULL,
    pid                integer          NOT NULL,
    start_time         timestamptz      NOT NULL,
    parent_pid         integer,
    process_name       text             NOT NULL,
    command_line       text,
    username           text,
    state              text,
    cpu_usage_percent  real             NOT NULL,
    cpu_peak_percent   real             NOT NULL,
    memory_usage_mb    double precision NOT NULL,
    virtual_memory_mb  double precision NOT NULL,
    disk_read_bytes    bigint           NOT NULL,
    disk_write_bytes   bigint           NOT NULL,
    threads            integer,
    -- What the process search matches: the command line and the name, lower-cased once
    -- here (`lower(x) LIKE lower(p)` is what ILIKE does in a UTF-8 database, and several
    -- times faster), a line break between them (a search holds no control characters, so
    -- no match spans both).
    search_text        text             NOT NULL GENERATED ALWAYS AS
                           (lower(coalesce(command_line, '') || E'\n' || process_name)) STORED,
    PRIMARY KEY (host, pid, start_time)
);
-- The window of every query, with and without a host, and the pruning.
CREATE INDEX host_process_latest_time ON host_process_latest ("timestamp" DESC);
CREATE INDEX host_process_latest_host_time ON host_process_latest (host, "timestamp" DESC);
-- A host's processes in the order they are answered: a long window reads the first rows.
CREATE INDEX host_process_latest_cpu
    ON host_process_latest (cpu_usage_percent DESC, host, pid, start_time);

-- The processes seen in the longest window so far.
INSERT INTO host_process_latest ("timestamp", host, pid, start_time, parent_pid, process_name,
    command_line, username, state, cpu_usage_percent, cpu_peak_percent, memory_usage_mb,
    virtual_memory_mb, disk_read_bytes, disk_write_bytes, threads)
SELECT DISTINCT ON (host, pid, start_time) "timestamp", host, pid, start_time, parent_pid,
       process_name, command_line, username, state, cpu_usage_percent, cpu_peak_percent,
       memory_usage_mb, virtual_memory_mb, disk_read_bytes, disk_write_bytes, threads
FROM host_process_metrics
WHERE "timestamp" >= now() - interval '30 days'
ORDER BY host, pid, start_time, "timestamp" DESC;
