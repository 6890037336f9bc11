//! Reading what the database has: hypertables, compression settings, policies (jobs) and
//! the continuous aggregates the operator manages, from TimescaleDB's own catalog; and
//! which of those jobs are failing, from its job statistics.

use std::collections::BTreeMap;

use sqlx::{PgPool, Row};

use super::DatabaseError;
use crate::crd::MetricTable;

/// Comment the operator puts on the continuous aggregates it creates, so that it never
/// touches a view someone else made.
pub const MANAGED_COMMENT: &str = "managed by metricsstack";

/// The storage state of the stack's schema.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DatabaseState {
    /// The TimescaleDB version; `None` on plain PostgreSQL (then everything else is empty).
    pub timescaledb_version: Option<String>,
    /// Whether `add_columnstore_policy` (TimescaleDB 2.18+) exists.
    pub columnstore_api: bool,
    /// Metric tables that are hypertables, by table.
    pub hypertables: BTreeMap<MetricTable, HypertableState>,
    /// Managed continuous aggregates, by view name.
    pub aggregates: BTreeMap<String, AggregateState>,
    /// Compression, retention and refresh jobs on the metric tables and managed aggregates.
    pub jobs: Vec<Job>,
}

/// A metric table that is a hypertable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HypertableState {
    /// Chunk time range in seconds.
    pub chunk_interval: i64,
    /// Compression settings, when compression is enabled.
    pub compression: Option<CompressionSettings>,
}

/// A table's compression settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompressionSettings {
    /// Segment-by columns.
    pub segment_by: Vec<String>,
    /// Order-by entries (`column [ASC|DESC]`).
    pub order_by: Vec<String>,
}

/// A managed continuous aggregate, with what its definition says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AggregateState {
    /// The table it rolls up.
    pub source: String,
    /// Its bucket width in seconds, read from the view's definition; `None` when the
    /// definition does not show it (then it is not compared).
    pub bucket: Option<i64>,
    /// The view's columns, in order.
    pub columns: Vec<String>,
}

/// The kinds of policy job the operator manages.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum JobKind {
    /// `policy_compression`.
    Compression,
    /// `policy_retention`.
    Retention,
    /// `policy_refresh_continuous_aggregate`.
    Refresh,
}

/// A policy job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Job {
    /// TimescaleDB's job id.
    pub id: i32,
    /// Which policy.
    pub kind: JobKind,
    /// The table or aggregate it works on.
    pub relation: String,
    /// How often it runs, in seconds.
    pub schedule: i64,
    /// `compress_after` or `drop_after` in seconds; a refresh's `start_offset`.
    pub after: Option<i64>,
    /// A refresh's `end_offset` in seconds (`None`: up to now).
    pub end_offset: Option<i64>,
}

impl DatabaseState {
    /// The job of `kind` on `relation`, if any.
    pub fn job(&self, kind: JobKind, relation: &str) -> Option<&Job> {
        self.jobs
            .iter()
            .find(|j| j.kind == kind && j.relation == relation)
    }
}

/// Reads the storage state of `schema`.
pub async fn read_state(pool: &PgPool, schema: &str) -> Result<DatabaseState, DatabaseError> {
    let version: Option<String> =
        sqlx::query_scalar("SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'")
            .fetch_optional(pool)
            .await
            .map_err(DatabaseError::statement("reading the TimescaleDB version"))?;
    let Some(version) = version else {
        return Ok(DatabaseState::default());
    };
    let columnstore_api: bool =
        sqlx::query_scalar("SELECT to_regproc('public.add_columnstore_policy') IS NOT NULL")
            .fetch_one(pool)
            .await
            .map_err(DatabaseError::statement(
                "looking up add_columnstore_policy",
            ))?;

    let mut hypertables = BTreeMap::new();
    let rows = sqlx::query(
        "SELECT d.hypertable_name, \
                EXTRACT(EPOCH FROM d.time_interval)::bigint AS chunk_interval, \
                h.compression_enabled, s.segmentby, s.orderby \
         FROM timescaledb_information.dimensions d \
         JOIN timescaledb_information.hypertables h USING (hypertable_schema, hypertable_name) \
         LEFT JOIN timescaledb_information.hypertable_compression_settings s \
           ON s.hypertable = format('%I.%I', d.hypertable_schema, d.hypertable_name)::regclass \
         WHERE d.hypertable_schema = $1 AND d.dimension_number = 1",
    )
    .bind(schema)
    .fetch_all(pool)
    .await
    .map_err(DatabaseError::statement("reading the hypertables"))?;
    for row in rows {
        let name: String = row.get("hypertable_name");
        let Some(table) = MetricTable::ALL
            .into_iter()
            .find(|t| t.table_name() == name)
        else {
            continue;
        };
        let compression = row
            .get::<bool, _>("compression_enabled")
            .then(|| CompressionSettings {
                segment_by: split_list(row.get("segmentby")),
                order_by: split_list(row.get("orderby")),
            });
        hypertables.insert(
            table,
            HypertableState {
                chunk_interval: row.get("chunk_interval"),
                compression,
            },
        );
    }

    let mut aggregates = BTreeMap::new();
    // The bucket width is the literal interval of the definition's `time_bucket` call
    // (PostgreSQL prints it as `time_bucket('01:00:00'::interval, ...)`).
    let rows = sqlx::query(
        "SELECT view_name, hypertable_name, \
                EXTRACT(EPOCH FROM substring(view_definition \
                  FROM 'time_bucket\\(''([^'']+)''::interval')::interval)::bigint AS bucket, \
                ARRAY(SELECT attname::text FROM pg_attribute \
                      WHERE attrelid = format('%I.%I', view_schema, view_name)::regclass \
                        AND attnum > 0 AND NOT attisdropped ORDER BY attnum) AS columns \
         FROM timescaledb_information.continuous_aggregates \
         WHERE view_schema = $1 \
           AND obj_description(format('%I.%I', view_schema, view_name)::regclass, 'pg_class') = $2",
    )
    .bind(schema)
    .bind(MANAGED_COMMENT)
    .fetch_all(pool)
    .await
    .map_err(DatabaseError::statement(
        "reading the continuous aggregates",
    ))?;
    for row in rows {
        aggregates.insert(
            row.get::<String, _>("view_name"),
            AggregateState {
                source: row.get("hypertable_name"),
                bucket: row.get("bucket"),
                columns: row.get("columns"),
            },
        );
    }

    let rows = sqlx::query(
        "SELECT job_id, proc_name, hypertable_name, \
                EXTRACT(EPOCH FROM schedule_interval)::bigint AS schedule, \
                EXTRACT(EPOCH FROM COALESCE(config->>'compress_after', config->>'drop_after', \
                                            config->>'start_offset')::interval)::bigint AS after, \
                EXTRACT(EPOCH FROM (config->>'end_offset')::interval)::bigint AS end_offset \
         FROM timescaledb_information.jobs \
         WHERE hypertable_schema = $1 \
           AND proc_name IN ('policy_compression', 'policy_retention', \
                             'policy_refresh_continuous_aggregate') \
         ORDER BY job_id",
    )
    .bind(schema)
    .fetch_all(pool)
    .await
    .map_err(DatabaseError::statement("reading the policy jobs"))?;
    let jobs = rows
        .into_iter()
        .filter_map(|row| {
            let relation: String = row.get("hypertable_name");
            let managed = MetricTable::ALL.iter().any(|t| t.table_name() == relation)
                || aggregates.contains_key(&relation);
            let kind = match row.get::<String, _>("proc_name").as_str() {
                "policy_compression" => JobKind::Compression,
                "policy_retention" => JobKind::Retention,
                _ => JobKind::Refresh,
            };
            managed.then(|| Job {
                id: row.get("job_id"),
                kind,
                relation,
                schedule: row.get("schedule"),
                after: row.get("after"),
                end_offset: row.get("end_offset"),
            })
        })
        .collect();
    Ok(DatabaseState {
        timescaledb_version: Some(version),
        columnstore_api,
        hypertables,
        aggregates,
        jobs,
    })
}

/// A policy job whose last run failed, as TimescaleDB's job statistics say.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FailingJob {
    /// The job.
    pub job: Job,
    /// The last run's error (`timescaledb_information.job_errors`), when its history still
    /// holds it.
    pub error: Option<String>,
    /// The first failed run since the job last succeeded (its last run when the history no
    /// longer reaches back that far).
    pub since: Option<chrono::DateTime<chrono::Utc>>,
}

/// Which of `jobs` failed on their last run. TimescaleDB records the runs of its background
/// scheduler in `timescaledb_information.job_stats` and each failed run's error in
/// `timescaledb_information.job_errors`; a job nobody reads those views for fails silently.
/// Runs started by hand with `CALL run_job` are not recorded there.
pub async fn read_failing_jobs(
    pool: &PgPool,
    jobs: &[Job],
) -> Result<Vec<FailingJob>, DatabaseError> {
    if jobs.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<i32> = jobs.iter().map(|job| job.id).collect();
    // `-infinity` (a job that never succeeded) does not decode: compared in SQL, returned
    // only when finite.
    let rows = sqlx::query(
        "SELECT s.job_id, last_error.err_message, \
                CASE WHEN isfinite(COALESCE(first_failure.since, s.last_run_started_at)) \
                     THEN COALESCE(first_failure.since, s.last_run_started_at) END AS since \
         FROM timescaledb_information.job_stats s \
         LEFT JOIN LATERAL ( \
             SELECT e.err_message FROM timescaledb_information.job_errors e \
             WHERE e.job_id = s.job_id ORDER BY e.start_time DESC LIMIT 1) AS last_error ON true \
         LEFT JOIN LATERAL ( \
             SELECT min(e.start_time) AS since FROM timescaledb_information.job_errors e \
             WHERE e.job_id = s.job_id AND e.start_time > s.last_successful_finish) \
           AS first_failure ON true \
         WHERE s.job_id = ANY($1) AND s.last_run_status = 'Failed' \
         ORDER BY s.job_id",
    )
    .bind(&ids)
    .fetch_all(pool)
    .await
    .map_err(DatabaseError::statement(
        "reading the policy jobs' statistics",
    ))?;
    Ok(rows
        .into_iter()
        .filter_map(|row| {
            let id: i32 = row.get("job_id");
            let job = jobs.iter().find(|job| job.id == id)?.clone();
            Some(FailingJob {
                job,
                error: row.get("err_message"),
                since: row.get("since"),
            })
        })
        .collect())
}

/// Splits TimescaleDB's `a, "b" DESC` setting lists into entries without identifier quotes.
fn split_list(text: Option<String>) -> Vec<String> {
    text.unwrap_or_default()
        .split(',')
        .map(|entry| entry.trim().replace('"', ""))
        .filter(|entry| !entry.is_empty())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_setting_lists_without_quotes() {
        assert_eq!(
            split_list(Some(r#""timestamp" DESC, host"#.into())),
            ["timestamp DESC", "host"]
        );
        assert!(split_list(None).is_empty());
    }
}
