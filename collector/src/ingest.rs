//! Writing a batch to the database in one statement whose three
//! `INSERT ... SELECT FROM UNNEST(arrays)` parts fill the three metric tables. Each table has a
//! natural key, and `ON CONFLICT DO NOTHING` makes a replayed batch insert nothing twice.
//! The process rows also bring each process's row of `host_process_latest` up to the
//! batch's newest sample of it, in the same statement; an older or the same sample changes
//! nothing there, so batches replayed in any order leave each process's newest sample. A
//! replaced sample whose command line or name changed updates the process's search text in
//! `host_process_texts`.
//! Each table's part also runs alone, to find which table refuses a batch, and errors are
//! classified as transient (wait and try again) or permanent (the rows themselves are
//! refused).

use std::sync::LazyLock;

use regex::Regex;
use sqlx::postgres::PgArguments;
use sqlx::query::QueryAs;
use sqlx::{PgExecutor, Postgres};

use crate::rows::{Batch, HostRow, ProcessRow, Table, VmRow};

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

/// The rows of `host_overall_metrics`, from the arrays `$1` to `$20`.
const INSERT_HOSTS: &str = r#"
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
"#;
/// Parameters of [`INSERT_HOSTS`].
const HOST_PARAMETERS: usize = 20;

/// The rows of `host_process_metrics`, from the arrays `$1` to `$16`.
const INSERT_PROCESSES: &str = r#"
  INSERT INTO host_process_metrics ("timestamp", host, pid, start_time, parent_pid, process_name,
    command_line, username, state, cpu_usage_percent, cpu_peak_percent, memory_usage_mb,
    virtual_memory_mb, disk_read_bytes, disk_write_bytes, threads)
  SELECT * FROM UNNEST($1::timestamptz[], $2::text[], $3::int4[], $4::timestamptz[],
    $5::int4[], $6::text[], $7::text[], $8::text[], $9::text[], $10::real[], $11::real[],
    $12::float8[], $13::float8[], $14::int8[], $15::int8[], $16::int4[])
  ON CONFLICT DO NOTHING RETURNING 1
"#;
/// Parameters of [`INSERT_PROCESSES`].
const PROCESS_PARAMETERS: usize = 16;

/// Each process's newest sample of the arrays of [`INSERT_PROCESSES`] into
/// `host_process_latest`, where it replaces an older sample only. One row per process
/// (`DISTINCT ON`): an upsert may not touch a row twice.
const UPSERT_LATEST: &str = r#"
  INSERT INTO host_process_latest AS latest ("timestamp", host, pid, start_time, parent_pid,
    process_name, command_line, username, state, cpu_usage_percent, cpu_peak_percent,
    memory_usage_mb, virtual_memory_mb, disk_read_bytes, disk_write_bytes, threads)
  SELECT DISTINCT ON (h, p, st) * FROM UNNEST($1::timestamptz[], $2::text[], $3::int4[],
    $4::timestamptz[], $5::int4[], $6::text[], $7::text[], $8::text[], $9::text[], $10::real[],
    $11::real[], $12::float8[], $13::float8[], $14::int8[], $15::int8[], $16::int4[])
    AS u(t, h, p, st, pp, name, line, who, state, cpu, peak, mem, vmem, rd, wr, threads)
  ORDER BY h, p, st, t DESC
  ON CONFLICT (host, pid, start_time) DO UPDATE SET "timestamp" = excluded."timestamp",
    parent_pid = excluded.parent_pid, process_name = excluded.process_name,
    command_line = excluded.command_line, username = excluded.username, state = excluded.state,
    cpu_usage_percent = excluded.cpu_usage_percent, cpu_peak_percent = excluded.cpu_peak_percent,
    memory_usage_mb = excluded.memory_usage_mb, virtual_memory_mb = excluded.virtual_memory_mb,
    disk_read_bytes = excluded.disk_read_bytes, disk_write_bytes = excluded.disk_write_bytes,
    threads = excluded.threads
  WHERE excluded."timestamp" > latest."timestamp"
  RETURNING host, pid, start_time, process_search_text(command_line, process_name) AS text
"#;

/// The search texts of the processes whose latest sample [`UPSERT_LATEST`] (the `latest`
/// part of the statement) replaced, into `host_process_texts` where the text differs: most
/// samples bring the text the process had and write nothing there. Only a newer sample
/// reaches it, so a replayed older one never brings an older text back.
const UPSERT_TEXTS: &str = r#"
  INSERT INTO host_process_texts AS texts (host, pid, start_time, search_text)
  SELECT host, pid, start_time, text FROM latest
  WHERE NOT EXISTS (SELECT 1 FROM host_process_texts AS kept
                    WHERE (kept.host, kept.pid, kept.start_time, kept.search_text)
                        = (latest.host, latest.pid, latest.start_time, latest.text))
  ON CONFLICT (host, pid, start_time) DO UPDATE SET search_text = excluded.search_text
"#;

/// The rows of `vm_process_metrics`, from the arrays `$1` to `$20`.
const INSERT_VMS: &str = r#"
  INSERT INTO vm_process_metrics ("timestamp", host, pid, start_time, process_name, command_line,
    pod_namespace, pod_name, pod_uid, container_id, container_name, cpu_usage_percent,
    cpu_peak_percent, cpu_limit_percent, memory_usage_mb, disk_read_bytes, disk_write_bytes,
    cpu_request_percent, memory_limit_percent, memory_request_percent)
  SELECT * FROM UNNEST($1::timestamptz[], $2::text[], $3::int4[], $4::timestamptz[],
    $5::text[], $6::text[], $7::text[], $8::text[], $9::text[], $10::text[], $11::text[],
    $12::real[], $13::real[], $14::real[], $15::float8[], $16::int8[], $17::int8[],
    $18::real[], $19::real[], $20::real[])
  ON CONFLICT DO NOTHING RETURNING 1
"#;

/// `insert` with its parameters numbered from `$1 + offset` on.
fn shifted(insert: &str, offset: usize) -> String {
    static PARAMETER: LazyLock<Regex> =
        LazyLock::new(|| Regex::new(r"\$(\d+)").expect("a valid pattern"));
    PARAMETER
        .replace_all(insert, |captures: &regex::Captures| {
            let number: usize = captures[1].parse().expect("digits");
            format!("${}", number + offset)
        })
        .into_owned()
}

/// All three tables (and the latest samples) in one statement: the host arrays first, then
/// the process arrays, then the pod process arrays. PostgreSQL runs a data-modifying `WITH`
/// part whether or not the query reads it.
static INSERT_BATCH: LazyLock<String> = LazyLock::new(|| {
    format!(
        "WITH hosts AS ({}), processes AS ({}), latest AS ({}), texts AS ({UPSERT_TEXTS}), \
         vms AS ({})\n\
         SELECT (SELECT count(*) FROM hosts), (SELECT count(*) FROM processes), \
         (SELECT count(*) FROM vms)",
        INSERT_HOSTS,
        shifted(INSERT_PROCESSES, HOST_PARAMETERS),
        shifted(UPSERT_LATEST, HOST_PARAMETERS),
        shifted(INSERT_VMS, HOST_PARAMETERS + PROCESS_PARAMETERS),
    )
});

/// One table's insert alone, returning the rows it added.
fn alone(insert: &str) -> String {
    format!("WITH inserted AS ({insert}) SELECT count(*) FROM inserted")
}

static INSERT_HOSTS_ALONE: LazyLock<String> = LazyLock::new(|| alone(INSERT_HOSTS));
/// The process rows alone bring the latest samples along, as in [`INSERT_BATCH`].
static INSERT_PROCESSES_ALONE: LazyLock<String> = LazyLock::new(|| {
    format!(
        "WITH latest AS ({UPSERT_LATEST}), texts AS ({UPSERT_TEXTS}), \
         inserted AS ({INSERT_PROCESSES}) SELECT count(*) FROM inserted"
    )
});
static INSERT_VMS_ALONE: LazyLock<String> = LazyLock::new(|| alone(INSERT_VMS));
static INSERT_PROCESSES_WITHOUT_LATEST: LazyLock<String> =
    LazyLock::new(|| alone(INSERT_PROCESSES));

/// A statement being bound, whatever it returns.
type Insert<O> = QueryAs<'static, Postgres, O, PgArguments>;

fn col<T, U>(rows: &[T], f: impl Fn(&T) -> U) -> Vec<U> {
    rows.iter().map(f).collect()
}

/// Binds the arrays of [`INSERT_HOSTS`], in order.
fn bind_hosts<O>(query: Insert<O>, h: &[HostRow]) -> Insert<O> {
    let cores = col(h, |r| {
        let values: Vec<String> = r.cpu_per_core_percent.iter().map(f32::to_string).collect();
        format!("{{{}}}", values.join(","))
    });
    query
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
}

/// Binds the arrays of [`INSERT_PROCESSES`], in order.
fn bind_processes<O>(query: Insert<O>, p: &[ProcessRow]) -> Insert<O> {
    query
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
}

/// Binds the arrays of [`INSERT_VMS`], in order.
fn bind_vms<O>(query: Insert<O>, v: &[VmRow]) -> Insert<O> {
    query
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
        .bind(col(v, |r| r.cpu_request_percent))
        .bind(col(v, |r| r.memory_limit_percent))
        .bind(col(v, |r| r.memory_request_percent))
}

/// Inserts a batch in one statement; returns the rows each table gained.
pub async fn insert<'c>(
    executor: impl PgExecutor<'c>,
    batch: &Batch,
) -> Result<Inserted, sqlx::Error> {
    let query = sqlx::query_as(INSERT_BATCH.as_str());
    let query = bind_vms(
        bind_processes(bind_hosts(query, &batch.hosts), &batch.processes),
        &batch.vms,
    );
    let (hosts, processes, vms): (i64, i64, i64) = query.fetch_one(executor).await?;
    Ok(Inserted {
        hosts,
        processes,
        vms,
    })
}

/// Inserts the rows a batch holds for one table, in a statement that names no other table
/// (so that a table that refuses them fails this statement alone); returns the rows added.
pub async fn insert_into<'c>(
    executor: impl PgExecutor<'c>,
    table: Table,
    batch: &Batch,
) -> Result<i64, sqlx::Error> {
    let query = match table {
        Table::Hosts => bind_hosts(sqlx::query_as(INSERT_HOSTS_ALONE.as_str()), &batch.hosts),
        Table::Processes => bind_processes(
            sqlx::query_as(INSERT_PROCESSES_ALONE.as_str()),
            &batch.processes,
        ),
        Table::Vms => bind_vms(sqlx::query_as(INSERT_VMS_ALONE.as_str()), &batch.vms),
    };
    let (inserted,): (i64,) = query.fetch_one(executor).await?;
    Ok(inserted)
}

/// The process rows' insert as the collector ran it before `host_process_latest` (without
/// the latest-sample upsert); returns the rows added. Not used by the collector: the
/// long-window benchmark times it beside [`insert_into`] to measure what the upsert costs.
#[doc(hidden)]
pub async fn insert_processes_without_latest<'c>(
    executor: impl PgExecutor<'c>,
    rows: &[ProcessRow],
) -> Result<i64, sqlx::Error> {
    let query = sqlx::query_as(INSERT_PROCESSES_WITHOUT_LATEST.as_str());
    let (inserted,): (i64,) = bind_processes(query, rows).fetch_one(executor).await?;
    Ok(inserted)
}

/// Whether a failed write may succeed when tried again as it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// The database (or the way to it) is away, overloaded or busy: the batch waits.
    Transient,
    /// The database refuses these rows themselves (a constraint, a type, a column the table
    /// no longer has): trying again will not help.
    Permanent,
}

/// Classifies a failed write by its SQLSTATE. Permanent: class 22 (data exception), 23
/// (integrity constraint violation), 42 (syntax error or access rule violation: an
/// undefined column, a datatype mismatch), 0A (feature not supported) and 54 (program limit
/// exceeded). Three codes of class 42 say that the environment is not ready rather than that
/// the rows are wrong, and are transient like everything else: 42P01 (undefined table: the
/// operator has not created the schema yet), 42883 (undefined function: the statement is
/// fixed and its values are bound as typed arrays, so only a migration still to run can
/// lack one) and 42501 (insufficient privilege: a grant is pending). Connection errors, pool
/// timeouts and the classes 08, 53, 57, 40 and 55 are transient.
pub fn classify(error: &sqlx::Error) -> Failure {
    match error {
        sqlx::Error::Encode(_) => Failure::Permanent,
        sqlx::Error::Database(error) => match error.code().as_deref() {
            Some("42P01" | "42883" | "42501") => Failure::Transient,
            Some(code)
                if ["22", "23", "42", "0A", "54"]
                    .iter()
                    .any(|c| code.starts_with(c)) =>
            {
                Failure::Permanent
            }
            _ => Failure::Transient,
        },
        _ => Failure::Transient,
    }
}

/// The SQLSTATE of an error the database returned.
pub fn sqlstate(error: &sqlx::Error) -> Option<String> {
    match error {
        sqlx::Error::Database(error) => error.code().map(|code| code.into_owned()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_statement_numbers_the_parameters_of_the_three_tables_one_after_another() {
        for n in 1..=56 {
            assert!(
                INSERT_BATCH.contains(&format!("${n}::")),
                "${n} in {}",
                *INSERT_BATCH
            );
        }
        assert!(!INSERT_BATCH.contains("$57"));
        assert!(shifted("UNNEST($1::int4[], $12::text[])", 20).contains("$21::int4[], $32::"));
    }
}
