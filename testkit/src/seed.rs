//! Benchmark data for the dashboard's three tables: deterministic samples, one a minute,
//! ending now, written with one `INSERT ... SELECT` over `generate_series` per table (into
//! the migrated, indexed, logged tables), so that the query service's benchmarks measure
//! the same rows.

use std::time::{Duration, Instant};

use sqlx::PgPool;

/// Hosts of the seeded fleet.
pub const SEED_HOSTS: i64 = 20;
/// Processes sampled on each host.
pub const SEED_PROCESSES_PER_HOST: i64 = 30;
/// Pods of the seeded fleet, spread over the hosts and four namespaces.
pub const SEED_PODS: i64 = 20;
/// Processes sampled in each pod.
pub const SEED_PROCESSES_PER_POD: i64 = 3;

/// How [`seed_dashboard`] went: the minutes its samples span and how long each table took.
#[derive(Clone, Debug)]
pub struct Seeded {
    /// Minutes back from now that the samples cover.
    pub minutes: i64,
    /// Each table with the time from the start of seeding until it was filled.
    pub tables: Vec<(&'static str, Duration)>,
}

/// Seeds `rows` `host_process_metrics` samples ([`SEED_HOSTS`] hosts with
/// [`SEED_PROCESSES_PER_HOST`] processes, one sample a minute ending now), with host samples
/// and pod process samples over the same minutes, fills each process's latest sample
/// ([`crate::fill_latest_samples`], as the collector keeps it), then runs `ANALYZE`.
pub async fn seed_dashboard(pool: &PgPool, rows: i64) -> Result<Seeded, sqlx::Error> {
    let per_minute = SEED_HOSTS * SEED_PROCESSES_PER_HOST;
    let minutes = (rows.max(0) + per_minute - 1) / per_minute;
    let started = Instant::now();
    let statements = [
        (
            "host_process_metrics",
            r#"INSERT INTO host_process_metrics ("timestamp", host, pid, start_time, parent_pid,
                   process_name, command_line, username, state, cpu_usage_percent,
                   cpu_peak_percent, memory_usage_mb, virtual_memory_mb, disk_read_bytes,
                   disk_write_bytes, threads)
               SELECT now() - make_interval(mins => s::int), 'node-' || h, 1000 + p,
                      TIMESTAMPTZ '2024-01-01 00:00:00+00', 1, 'process-' || (p % 12),
                      '/usr/bin/process-' || p || ' --serve', 'app', 'S',
                      ((h * 7919 + p * 104729 + s * 31) % 1000)::real / 10,
                      ((h * 7919 + p * 104729 + s * 37) % 1000)::real / 8,
                      ((h * 31 + p * 977 + s) % 4096)::float8 + 0.5, 8192,
                      s * 4096, s * 1024, 1 + p % 16
               FROM generate_series(0, $1 - 1) AS s, generate_series(1, $2) AS h,
                    generate_series(1, $3) AS p
               LIMIT $4"#,
            vec![minutes, SEED_HOSTS, SEED_PROCESSES_PER_HOST, rows],
        ),
        (
            "host_overall_metrics",
            r#"INSERT INTO host_overall_metrics ("timestamp", host, cpu_usage_percent,
                   cpu_per_core_percent, load_1, load_5, load_15, memory_total_bytes,
                   memory_used_bytes, memory_usage_mb, swap_total_bytes, swap_used_bytes,
                   disk_total_bytes, disk_used_bytes, disk_read_bytes, disk_write_bytes,
                   network_rx_bytes, network_tx_bytes, uptime_seconds, process_count)
               SELECT now() - make_interval(mins => s::int), 'node-' || h,
                      ((h * 13 + s * 7) % 1000)::real / 10, ARRAY[10, 20]::real[],
                      ((h + s) % 400)::float8 / 100, 1, 1, 68719476736, 34359738368,
                      ((h * 131 + s) % 32768)::float8, 0, 0, 500000000000, 200000000000, 0, 0,
                      6000000 + h * 1000, 3000000 + h * 100, s * 60, 300
               FROM generate_series(0, $1 - 1) AS s, generate_series(1, $2) AS h"#,
            vec![minutes, SEED_HOSTS],
        ),
        (
            "vm_process_metrics",
            r#"INSERT INTO vm_process_metrics ("timestamp", host, pid, start_time, process_name,
                   pod_namespace, pod_name, pod_uid, container_id, container_name,
                   cpu_usage_percent, cpu_peak_percent, memory_usage_mb, disk_read_bytes,
                   disk_write_bytes)
               SELECT now() - make_interval(mins => s::int), 'node-' || (pd % $2 + 1),
                      5000 + pd * 10 + pr, TIMESTAMPTZ '2024-01-01 00:00:00+00', 'worker-' || pr,
                      'namespace-' || (pd % 4), 'pod-' || pd, 'uid-' || pd, 'cid-' || pd, 'main',
                      ((pd * 17 + pr * 5 + s) % 400)::real / 4, 100,
                      ((pd * 100 + pr * 10 + s) % 2048)::float8, 0, 0
               FROM generate_series(0, $1 - 1) AS s, generate_series(1, $3) AS pd,
                    generate_series(1, $4) AS pr"#,
            vec![minutes, SEED_HOSTS, SEED_PODS, SEED_PROCESSES_PER_POD],
        ),
    ];
    let mut tables = Vec::new();
    for (table, statement, binds) in statements {
        let mut query = sqlx::query(statement);
        for bind in binds {
            query = query.bind(bind);
        }
        query.execute(pool).await?;
        tables.push((table, started.elapsed()));
    }
    crate::fill_latest_samples(pool).await?;
    tables.push(("host_process_latest", started.elapsed()));
    sqlx::query("ANALYZE").execute(pool).await?;
    Ok(Seeded { minutes, tables })
}
