-- The metric tables of the dashboard (column names as in its plan: `timestamp`,
-- `process_name`, `cpu_usage_percent`, `memory_usage_mb`), plus what the collector records.
-- Plain PostgreSQL: on TimescaleDB the operator turns them into hypertables with the chunk
-- interval from the MetricsStack. Each table has a natural key including the time column,
-- so a replayed batch inserts nothing twice (ON CONFLICT DO NOTHING).

-- One row per recorded process and sample. A process is identified across samples by
-- (host, pid, start_time).
CREATE TABLE host_process_metrics (
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
    UNIQUE (host, pid, start_time, "timestamp")
);
CREATE INDEX host_process_metrics_time ON host_process_metrics ("timestamp" DESC);
CREATE INDEX host_process_metrics_host_time ON host_process_metrics (host, "timestamp" DESC);

-- One row per node and sample.
CREATE TABLE host_overall_metrics (
    "timestamp"          timestamptz      NOT NULL,
    host                 text             NOT NULL,
    cpu_usage_percent    real             NOT NULL,
    cpu_per_core_percent real[]           NOT NULL,
    load_1               double precision NOT NULL,
    load_5               double precision NOT NULL,
    load_15              double precision NOT NULL,
    memory_total_bytes   bigint           NOT NULL,
    memory_used_bytes    bigint           NOT NULL,
    memory_usage_mb      double precision NOT NULL,
    swap_total_bytes     bigint           NOT NULL,
    swap_used_bytes      bigint           NOT NULL,
    disk_total_bytes     bigint           NOT NULL,
    disk_used_bytes      bigint           NOT NULL,
    disk_read_bytes      bigint           NOT NULL,
    disk_write_bytes     bigint           NOT NULL,
    network_rx_bytes     bigint           NOT NULL,
    network_tx_bytes     bigint           NOT NULL,
    uptime_seconds       bigint           NOT NULL,
    process_count        integer          NOT NULL,
    UNIQUE (host, "timestamp")
);
CREATE INDEX host_overall_metrics_time ON host_overall_metrics ("timestamp" DESC);

-- Processes attributed to a container and pod (or VM), with CPU also against the
-- container's CPU limit where one is set.
CREATE TABLE vm_process_metrics (
    "timestamp"        timestamptz      NOT NULL,
    host               text             NOT NULL,
    pid                integer          NOT NULL,
    start_time         timestamptz      NOT NULL,
    process_name       text             NOT NULL,
    command_line       text,
    pod_namespace      text,
    pod_name           text,
    pod_uid            text             NOT NULL,
    container_id       text             NOT NULL,
    container_name     text,
    cpu_usage_percent  real             NOT NULL,
    cpu_peak_percent   real             NOT NULL,
    cpu_limit_percent  real,
    memory_usage_mb    double precision NOT NULL,
    disk_read_bytes    bigint           NOT NULL,
    disk_write_bytes   bigint           NOT NULL,
    UNIQUE (host, pid, start_time, "timestamp")
);
CREATE INDEX vm_process_metrics_time ON vm_process_metrics ("timestamp" DESC);
CREATE INDEX vm_process_metrics_pod_time ON vm_process_metrics (pod_namespace, pod_name, "timestamp" DESC);
