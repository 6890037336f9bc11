//! Running plan steps against the database, and measuring what a step would delete before
//! it is allowed to run. Identifiers come from validated settings and are quoted; values are
//! bound as parameters.

use sqlx::{PgConnection, PgPool, Postgres, Transaction};

use super::DatabaseError;
use super::desired::{DesiredRefresh, rollup};
use super::introspect::{DatabaseState, JobKind, MANAGED_COMMENT};
use super::plan::Step;

/// A quoted, schema-qualified name.
pub fn qualified(schema: &str, name: &str) -> String {
    format!("\"{schema}\".\"{name}\"")
}

/// An interval literal PostgreSQL reads, from whole seconds (`7 days`, `3 hours`).
pub fn interval(seconds: i64) -> String {
    for (unit, size) in [("days", 86_400), ("hours", 3_600), ("minutes", 60)] {
        if seconds != 0 && seconds % size == 0 {
            return format!("{} {unit}", seconds / size);
        }
    }
    format!("{seconds} seconds")
}

/// How long a step waits for a lock on a metric table before the plan gives up (and is
/// retried with backoff). DDL needs an exclusive lock; while it waits, every insert queues
/// behind it, so waiting long would stall the collectors' ingest.
pub const DDL_LOCK_TIMEOUT: &str = "5s";
/// How long one step may run. Turning a populated table into a hypertable moves its rows;
/// beyond this the plan fails and says so rather than holding locks for hours.
pub const DDL_STATEMENT_TIMEOUT: &str = "10min";

/// A transaction for DDL: each statement waits at most [`DDL_LOCK_TIMEOUT`] for a lock and
/// runs at most [`DDL_STATEMENT_TIMEOUT`] (both local to the transaction).
pub(super) async fn begin_ddl(
    pool: &PgPool,
) -> Result<Transaction<'static, Postgres>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query(
        "SELECT set_config('lock_timeout', $1, true), set_config('statement_timeout', $2, true)",
    )
    .bind(DDL_LOCK_TIMEOUT)
    .bind(DDL_STATEMENT_TIMEOUT)
    .execute(&mut *tx)
    .await?;
    Ok(tx)
}

/// Runs `steps` in one transaction: all of them or, on an error, none; each statement
/// waits at most [`DDL_LOCK_TIMEOUT`] for a lock and runs at most
/// [`DDL_STATEMENT_TIMEOUT`] (both local to the transaction).
pub async fn apply_steps(
    pool: &PgPool,
    schema: &str,
    state: &DatabaseState,
    steps: &[Step],
) -> Result<(), DatabaseError> {
    let mut tx = begin_ddl(pool)
        .await
        .map_err(DatabaseError::statement("starting the plan's transaction"))?;
    for step in steps {
        run(&mut tx, schema, state, step)
            .await
            .map_err(|error| match step {
                // The conversion outran the lock timeout: moving the rows takes longer.
                Step::CreateHypertable {
                    table,
                    chunk_interval,
                } if is_cancelled(&error) => DatabaseError::MigrationNeeded {
                    schema: schema.to_owned(),
                    table: table.table_name().to_owned(),
                    rows: "too many to move within the lock timeout".to_owned(),
                    chunk_interval: interval(*chunk_interval),
                },
                _ => DatabaseError::Statement {
                    context: step.to_string(),
                    source: error,
                },
            })?;
    }
    tx.commit()
        .await
        .map_err(DatabaseError::statement("committing the plan"))
}

async fn run(
    conn: &mut PgConnection,
    schema: &str,
    state: &DatabaseState,
    step: &Step,
) -> Result<(), sqlx::Error> {
    match step {
        Step::CreateHypertable {
            table,
            chunk_interval,
        } => {
            // Moving a populated table's rows holds a lock that blocks inserts: the statement
            // may run no longer than a lock may be waited for, so ingest waits at most twice
            // the lock timeout (`adoptable` refused tables too large for that beforehand).
            let statement_timeout = "SELECT set_config('statement_timeout', $1, true)";
            sqlx::query(statement_timeout)
                .bind(DDL_LOCK_TIMEOUT)
                .execute(&mut *conn)
                .await?;
            sqlx::query(
                "SELECT create_hypertable($1::regclass, by_range('timestamp', $2::interval), \
                 migrate_data => true, if_not_exists => true)",
            )
            .bind(qualified(schema, table.table_name()))
            .bind(interval(*chunk_interval))
            .execute(&mut *conn)
            .await?;
            sqlx::query(statement_timeout)
                .bind(DDL_STATEMENT_TIMEOUT)
                .execute(conn)
                .await?;
        }
        Step::SetChunkInterval {
            table,
            chunk_interval,
        } => {
            sqlx::query("SELECT set_chunk_time_interval($1::regclass, $2::interval)")
                .bind(qualified(schema, table.table_name()))
                .bind(interval(*chunk_interval))
                .execute(conn)
                .await?;
        }
        Step::ConfigureCompression {
            table,
            segment_by,
            order_by,
        } => {
            // DDL takes no parameters: the columns matched the identifier pattern and the
            // table's column list in validation, and are quoted here.
            let mut options = vec!["timescaledb.compress".to_owned()];
            if !segment_by.is_empty() {
                let columns: Vec<String> = segment_by.iter().map(|c| format!("\"{c}\"")).collect();
                options.push(format!(
                    "timescaledb.compress_segmentby = '{}'",
                    columns.join(", ")
                ));
            }
            if !order_by.is_empty() {
                let entries: Vec<String> = order_by
                    .iter()
                    .map(|entry| match entry.split_once(' ') {
                        Some((column, direction)) => format!("\"{column}\" {direction}"),
                        None => format!("\"{entry}\""),
                    })
                    .collect();
                options.push(format!(
                    "timescaledb.compress_orderby = '{}'",
                    entries.join(", ")
                ));
            }
            let statement = format!(
                "ALTER TABLE {} SET ({})",
                qualified(schema, table.table_name()),
                options.join(", ")
            );
            sqlx::raw_sql(sqlx::AssertSqlSafe(statement))
                .execute(conn)
                .await?;
        }
        Step::AddPolicy {
            kind,
            relation,
            after,
            schedule,
            refresh,
        } => {
            let relation = qualified(schema, relation);
            let query = match kind {
                JobKind::Compression if state.columnstore_api => sqlx::query(
                    "CALL add_columnstore_policy($1::regclass, after => $2::interval, \
                     schedule_interval => $4::interval)",
                ),
                JobKind::Compression => sqlx::query(
                    "SELECT add_compression_policy($1::regclass, $2::interval, \
                     schedule_interval => $4::interval)",
                ),
                JobKind::Retention => sqlx::query(
                    "SELECT add_retention_policy($1::regclass, $2::interval, \
                     schedule_interval => $4::interval)",
                ),
                JobKind::Refresh => sqlx::query(
                    "SELECT add_continuous_aggregate_policy($1::regclass, \
                     start_offset => $2::interval, end_offset => $3::interval, \
                     schedule_interval => $4::interval)",
                ),
            };
            query
                .bind(relation)
                .bind(interval(*after))
                .bind(end_offset(refresh))
                .bind(interval(*schedule))
                .execute(conn)
                .await?;
        }
        Step::AlterPolicy {
            job_id,
            kind,
            after,
            schedule,
            refresh,
            ..
        } => {
            let key = match kind {
                JobKind::Compression => "compress_after",
                JobKind::Retention => "drop_after",
                JobKind::Refresh => "start_offset",
            };
            // The job's config and schedule are changed in place (same job id); a refresh
            // also gets its end offset.
            sqlx::query(
                "SELECT alter_job(job_id, \
                   schedule_interval => $5::interval, \
                   config => CASE WHEN $4 \
                     THEN jsonb_set(jsonb_set(config, ARRAY[$2], to_jsonb($3::interval::text)), \
                                    '{end_offset}', COALESCE(to_jsonb($6::interval::text), 'null'::jsonb)) \
                     ELSE jsonb_set(config, ARRAY[$2], to_jsonb($3::interval::text)) END) \
                 FROM timescaledb_information.jobs WHERE job_id = $1",
            )
            .bind(job_id)
            .bind(key)
            .bind(interval(*after))
            .bind(*kind == JobKind::Refresh)
            .bind(interval(*schedule))
            .bind(end_offset(refresh))
            .execute(conn)
            .await?;
        }
        Step::RemovePolicy { job_id, .. } => {
            sqlx::query("SELECT delete_job($1)")
                .bind(job_id)
                .execute(conn)
                .await?;
        }
        Step::CreateAggregate {
            name,
            source,
            bucket,
        } => {
            let (select, group) = rollup(*source);
            let view = qualified(schema, name);
            let statement = format!(
                "CREATE MATERIALIZED VIEW {view} \
                 WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS \
                 SELECT time_bucket(INTERVAL '{}', \"timestamp\") AS bucket, {select} \
                 FROM {} GROUP BY bucket, {group} WITH NO DATA",
                interval(*bucket),
                qualified(schema, source.table_name())
            );
            sqlx::raw_sql(sqlx::AssertSqlSafe(statement))
                .execute(&mut *conn)
                .await?;
            let comment = format!("COMMENT ON VIEW {view} IS '{MANAGED_COMMENT}'");
            sqlx::raw_sql(sqlx::AssertSqlSafe(comment))
                .execute(conn)
                .await?;
        }
        Step::DropAggregate { name } => {
            let statement = format!("DROP MATERIALIZED VIEW {}", qualified(schema, name));
            sqlx::raw_sql(sqlx::AssertSqlSafe(statement))
                .execute(conn)
                .await?;
        }
    }
    Ok(())
}

/// A refresh's `end_offset` as an interval parameter (`NULL` where absent: up to now).
fn end_offset(refresh: &Option<DesiredRefresh>) -> Option<String> {
    refresh.and_then(|r| r.end_offset).map(interval)
}

/// How much of a step's loss [`measure_loss`] measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Measure {
    /// Only when deleting would start: enough to tell whether the step must wait for
    /// acknowledgement.
    DeletionStart,
    /// Also the chunks and rows it would drop now (counting rows).
    Everything,
}

/// What a step would delete: right now, and from when on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Loss {
    /// Chunks dropped at once.
    pub chunks: i64,
    /// Rows dropped at once.
    pub rows: i64,
    /// When the step starts deleting data the current policy keeps: now for data old
    /// enough already, else when the oldest row ages past the new retention. `None` when
    /// the relation holds no data at all, so that the step deletes nothing anyone kept.
    pub earliest_deletion: Option<chrono::DateTime<chrono::Utc>>,
}

impl Loss {
    /// Whether the step would ever delete data the current policy keeps.
    pub fn deletes_kept_data(&self) -> bool {
        self.earliest_deletion.is_some()
    }

    /// Both losses: the sums, and the earlier first deletion.
    pub fn and(self, other: Loss) -> Loss {
        let earliest_deletion = match (self.earliest_deletion, other.earliest_deletion) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        Loss {
            chunks: self.chunks + other.chunks,
            rows: self.rows + other.rows,
            earliest_deletion,
        }
    }
}

/// Measures what `step` would delete (nothing for steps that cannot drop data, and for
/// relations that do not exist yet). A retention shortened, or added where there was none,
/// deletes data the current policy keeps as soon as the relation holds any, even when none
/// is old enough yet: the data goes later, and [`Loss::earliest_deletion`] says when.
///
/// With [`Measure::DeletionStart`] only when deleting starts is read (from the oldest row,
/// an index lookup), and the counts are left at zero.
pub async fn measure_loss(
    pool: &PgPool,
    schema: &str,
    state: &DatabaseState,
    step: &Step,
    measure: Measure,
) -> Result<Loss, DatabaseError> {
    let context = || DatabaseError::statement(format!("measuring what \"{step}\" would delete"));
    let (relation, older_than, time_column) = match step {
        Step::AddPolicy {
            kind: JobKind::Retention,
            relation,
            after,
            ..
        }
        | Step::AlterPolicy {
            kind: JobKind::Retention,
            relation,
            after,
            ..
        } => (relation, Some(interval(*after)), time_column(relation)),
        Step::DropAggregate { name } => (name, None, "bucket"),
        _ => return Ok(Loss::default()),
    };
    let is_table = time_column == "timestamp";
    let is_hypertable = state.hypertables.keys().any(|t| t.table_name() == relation)
        || state.aggregates.contains_key(relation);
    if !is_hypertable && !is_table {
        // An aggregate that does not exist yet holds nothing to lose.
        return Ok(Loss::default());
    }
    let target = qualified(schema, relation);
    // The oldest row ages past the new retention at min(time) + retention (an index scan).
    let earliest_deletion: Option<chrono::DateTime<chrono::Utc>> =
        sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT greatest(oldest + coalesce($1::interval, interval '0'), now()) \
             FROM (SELECT min(\"{time_column}\") AS oldest FROM {target}) AS o \
             WHERE oldest IS NOT NULL"
        )))
        .bind(&older_than)
        .fetch_optional(pool)
        .await
        .map_err(context())?;
    if measure == Measure::DeletionStart || earliest_deletion.is_none() {
        return Ok(Loss {
            earliest_deletion,
            ..Loss::default()
        });
    }
    // A metric table that is no hypertable yet has rows but no chunks.
    let chunks: i64 = if is_hypertable {
        sqlx::query_scalar(
            "SELECT count(*) FROM show_chunks($1::regclass, older_than => $2::interval)",
        )
        .bind(&target)
        .bind(&older_than)
        .fetch_one(pool)
        .await
        .map_err(context())?
    } else {
        0
    };
    let rows: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT count(*) FROM {target} WHERE $1::interval IS NULL OR \"{time_column}\" < now() - $1::interval"
    )))
    .bind(&older_than)
    .fetch_one(pool)
    .await
    .map_err(context())?;
    Ok(Loss {
        chunks,
        rows,
        earliest_deletion,
    })
}

/// The time column of a metric table (`timestamp`) or of an aggregate (`bucket`).
fn time_column(relation: &str) -> &'static str {
    if crate::crd::MetricTable::ALL
        .iter()
        .any(|t| t.table_name() == relation)
    {
        "timestamp"
    } else {
        "bucket"
    }
}

/// PostgreSQL's SQLSTATE for a statement cancelled by `statement_timeout`.
const QUERY_CANCELED: &str = "57014";

/// Whether the server cancelled the statement for running past `statement_timeout`.
pub(super) fn is_cancelled(error: &sqlx::Error) -> bool {
    error
        .as_database_error()
        .and_then(|e| e.code())
        .is_some_and(|code| code == QUERY_CANCELED)
}

/// Most rows a plain metric table may hold for the operator to turn it into a hypertable in
/// place: moving them must fit in the lock timeout, since inserts wait meanwhile.
pub const ADOPTION_MAX_ROWS: i64 = 100_000;

/// Checks that `step`, if it turns a plain table into a hypertable, can move the table's
/// rows without blocking ingest for long: at most [`ADOPTION_MAX_ROWS`] rows (counted with a
/// bounded scan), else [`DatabaseError::MigrationNeeded`] saying how to convert it.
pub async fn adoptable(pool: &PgPool, schema: &str, step: &Step) -> Result<(), DatabaseError> {
    let Step::CreateHypertable {
        table,
        chunk_interval,
    } = step
    else {
        return Ok(());
    };
    let rows: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT count(*) FROM (SELECT 1 FROM {} LIMIT $1) AS bounded",
        qualified(schema, table.table_name())
    )))
    .bind(ADOPTION_MAX_ROWS + 1)
    .fetch_one(pool)
    .await
    .map_err(DatabaseError::statement(format!(
        "counting the rows of {} before converting it",
        table.table_name()
    )))?;
    if rows <= ADOPTION_MAX_ROWS {
        return Ok(());
    }
    Err(DatabaseError::MigrationNeeded {
        schema: schema.to_owned(),
        table: table.table_name().to_owned(),
        rows: format!("more than {ADOPTION_MAX_ROWS}"),
        chunk_interval: interval(*chunk_interval),
    })
}
