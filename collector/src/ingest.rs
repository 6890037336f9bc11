//! Writing a batch to the database in one round trip: one statement whose three
//! `INSERT ... SELECT FROM UNNEST(arrays)` parts fill the three metric tables. Each table has a
//! natural key, and `ON CONFLICT DO NOTHING` makes a replayed batch insert nothing twice.

use sqlx::PgPool;

use crate::rows::Batch;

/// Rows a batch actually added to each table (a replayed batch adds none).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Inserted {
    /// Rows added to `host_overall_metrics`.
    pub hosts: i64,
    /// Rows added to `host_process_metrics`.
    pub processes: i64,
    /// Rows added to `vm_process_metrics`.
    pub vms: i64,
}

const INSERT_BATCH: &str = r#"
WITH hosts AS (
  INSERT INTO host_overall_metrics ("timestamp", host, cpu_usage_percent, cpu_per_core_percent,
    load_1, load_5, load_15, memory_total_bytes, memory_used_bytes, memory_usage_mb,
    swap_total_bytes, swap_used_bytes, disk_total_bytes, disk_used_bytes, disk_read_bytes,
    disk_write_bytes, network_rx_bytes, network_tx_bytes, uptime_seconds, process_count)
  SELECT t, h, c, cores::real[], l1, l5, l15, mt, mu, mmb, st, su, dt, du, dr, dw, rx, tx, up, pc
  FROM UNNEST($1::timestamptz[], $2::text[], $3::real[], $4::text[], $5::float8[], $6::float8[],
    $7::float8[], $8::int8[], $9::int8[], $10::float8[], $11::int8[], $12::int8[], $13::int8[],
    $14::int8[], $15::int8[], $16::int8[], $17::int8[], $18::int8[], $19::int8[], $20::int4[])
    AS u(t, h, c, cores, l1, l5, l15, mt, mu, mmb, st, su, dt, du, dr, dw, rx, tx, up, pc)
  ON CONFLICT DO NOTHING RETURNING 1
), processes AS (
  INSERT INTO host_process_metrics ("timestamp", host, pid, start_time, parent_pid, process_name,
    command_line, username, state, cpu_usage_percent, cpu_peak_percent, memory_usage_mb,
    virtual_memory_mb, disk_read_bytes, disk_write_bytes, threads)
  SELECT * FROM UNNEST($21::timestamptz[], $22::text[], $23::int4[], $24::timestamptz[],
    $25::int4[], $26::text[], $27::text[], $28::text[], $29::text[], $30::real[], $31::real[],
    $32::float8[], $33::float8[], $34::int8[], $35::int8[], $36::int4[])
  ON CONFLICT DO NOTHING RETURNING 1
), vms AS (
  INSERT INTO vm_process_metrics ("timestamp", host, pid, start_time, process_name, command_line,
    pod_namespace, pod_name, pod_uid, container_id, container_name, cpu_usage_percent,
    cpu_peak_percent, cpu_limit_percent, memory_usage_mb, disk_read_bytes, disk_write_bytes)
  SELECT * FROM UNNEST($37::timestamptz[], $38::text[], $39::int4[], $40::timestamptz[],
    $41::text[], $42::text[], $43::text[], $44::text[], $45::text[], $46::text[], $47::text[],
    $48::real[], $49::real[], $50::real[], $51::float8[], $52::int8[], $53::int8[])
  ON CONFLICT DO NOTHING RETURNING 1
)
SELECT (SELECT count(*) FROM hosts), (SELECT count(*) FROM processes), (SELECT count(*) FROM vms)
"#;

/// Inserts a batch in one round trip; returns the rows each table gained.
pub async fn insert(pool: &PgPool, batch: &Batch) -> Result<Inserted, sqlx::Error> {
    let h = &batch.hosts;
    let p = &batch.processes;
    let v = &batch.vms;
    fn col<T, U>(rows: &[T], f: impl Fn(&T) -> U) -> Vec<U> {
        rows.iter().map(f).collect()
    }
    let cores = col(h, |r| {
        let values: Vec<String> = r.cpu_per_core_percent.iter().map(f32::to_string).collect();
        format!("{{{}}}", values.join(","))
    });
    let (hosts, processes, vms): (i64, i64, i64) = sqlx::query_as(INSERT_BATCH)
        .bind(col(h, |r| r.timestamp))
        .bind(col(h, |r| r.host.clone()))
        .bind(col(h, |r| r.cpu_usage_percent))
        .bind(cores)
        .bind(col(h, |r| r.load_1))
        .bind(col(h, |r| r.load_5))
        .bind(col(h, |r| r.load_15))
        .bind(col(h, |r| r.memory_total_bytes))
        .bind(col(h, |r| r.memory_used_bytes))
        .bind(col(h, |r| r.memory_usage_mb))
        .bind(col(h, |r| r.swap_total_bytes))
        .bind(col(h, |r| r.swap_used_bytes))
        .bind(col(h, |r| r.disk_total_bytes))
        .bind(col(h, |r| r.disk_used_bytes))
        .bind(col(h, |r| r.disk_read_bytes))
        .bind(col(h, |r| r.disk_write_bytes))
        .bind(col(h, |r| r.network_rx_bytes))
        .bind(col(h, |r| r.network_tx_bytes))
        .bind(col(h, |r| r.uptime_seconds))
        .bind(col(h, |r| r.process_count))
        .bind(col(p, |r| r.timestamp))
        .bind(col(p, |r| r.host.clone()))
        .bind(col(p, |r| r.pid))
        .bind(col(p, |r| r.start_time))
        .bind(col(p, |r| r.parent_pid))
        .bind(col(p, |r| r.process_name.clone()))
        .bind(col(p, |r| r.command_line.clone()))
        .bind(col(p, |r| r.username.clone()))
        .bind(col(p, |r| r.state.clone()))
        .bind(col(p, |r| r.cpu_usage_percent))
        .bind(col(p, |r| r.cpu_peak_percent))
        .bind(col(p, |r| r.memory_usage_mb))
        .bind(col(p, |r| r.virtual_memory_mb))
        .bind(col(p, |r| r.disk_read_bytes))
        .bind(col(p, |r| r.disk_write_bytes))
        .bind(col(p, |r| r.threads))
        .bind(col(v, |r| r.timestamp))
        .bind(col(v, |r| r.host.clone()))
        .bind(col(v, |r| r.pid))
        .bind(col(v, |r| r.start_time))
        .bind(col(v, |r| r.process_name.clone()))
        .bind(col(v, |r| r.command_line.clone()))
        .bind(col(v, |r| r.pod_namespace.clone()))
        .bind(col(v, |r| r.pod_name.clone()))
        .bind(col(v, |r| r.pod_uid.clone()))
        .bind(col(v, |r| r.container_id.clone()))
        .bind(col(v, |r| r.container_name.clone()))
        .bind(col(v, |r| r.cpu_usage_percent))
        .bind(col(v, |r| r.cpu_peak_percent))
        .bind(col(v, |r| r.cpu_limit_percent))
        .bind(col(v, |r| r.memory_usage_mb))
        .bind(col(v, |r| r.disk_read_bytes))
        .bind(col(v, |r| r.disk_write_bytes))
        .fetch_one(pool)
        .await?;
    Ok(Inserted {
        hosts,
        processes,
        vms,
    })
}
