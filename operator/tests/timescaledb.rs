//! The policy manager against real TimescaleDB (one test at a time: the test server is a
//! single session) and native PostgreSQL: every state is read back from the database's own
//! catalog.

use std::collections::BTreeSet;

use metricsstack_common::database::{DatabaseTls, PoolSettings, TlsMode};
use metricsstack_operator::crd::MetricsStack;
use metricsstack_operator::database::{
    self, Convergence, DatabaseState, DesiredStorage, JobKind, converge, read_state,
};
use metricsstack_operator::validate::validate;
use metricsstack_testkit::{TestDatabase, TimescaleSchema};
use sqlx::PgPool;

/// The stack these tests converge the schema for.
const OWNER: &str = "tests/timescaledb";

/// The test servers speak no TLS.
const DISABLE_TLS: DatabaseTls = DatabaseTls {
    mode: TlsMode::Disable,
    ca: None,
};

const DAY: i64 = 86_400;

/// The production example's storage policy.
fn production() -> DesiredStorage {
    let stack: MetricsStack =
        serde_yaml::from_str(include_str!("fixtures/production.yaml")).expect("the fixture parses");
    validate(&stack.spec).expect("the fixture is valid").storage
}

/// The operator's pool for a test schema: one connection, as the single-session server needs.
async fn pool(url: &str, schema: &str) -> PgPool {
    let settings = PoolSettings {
        max_connections: 1,
        ..PoolSettings::default()
    };
    database::connect(url, &DISABLE_TLS, &settings, schema)
        .await
        .expect("the operator connects")
}

/// The database's policy state without job ids, which a removed-and-re-added policy changes.
fn shape(state: &DatabaseState) -> (String, BTreeSet<String>) {
    let jobs = state
        .jobs
        .iter()
        .map(|j| {
            format!(
                "{:?} {} {} {:?} {:?}",
                j.kind, j.relation, j.schedule, j.after, j.end_offset
            )
        })
        .collect();
    let tables = format!("{:?} {:?}", state.hypertables, state.aggregates);
    (tables, jobs)
}

async fn insert_process_rows(pool: &PgPool, ages_in_hours: &[i64]) {
    for (i, age) in ages_in_hours.iter().enumerate() {
        sqlx::query(
            "INSERT INTO host_process_metrics (\"timestamp\", host, pid, start_time, process_name, \
               cpu_usage_percent, cpu_peak_percent, memory_usage_mb, virtual_memory_mb, \
               disk_read_bytes, disk_write_bytes) \
             VALUES (date_trunc('hour', now()) - make_interval(hours => $1::int) + interval '10 minutes', \
                     'node-a', $2, now() - interval '400 days', 'postgres', $3, $3, 100, 200, 0, 0)",
        )
        .bind(*age as i32)
        .bind(i as i32 + 1)
        .bind((i as f32 + 1.0) * 10.0)
        .execute(pool)
        .await
        .expect("a row is inserted");
    }
}

#[tokio::test]
async fn a_fresh_database_gets_every_policy_the_spec_asks_for() {
    let tsdb = TimescaleSchema::create().await;
    let pool = pool(&tsdb.url(), &tsdb.schema).await;
    let desired = production();
    let outcome = converge(&pool, &tsdb.schema, OWNER, &desired, None)
        .await
        .expect("converges");
    assert!(outcome.pending.is_none());
    assert!(
        outcome
            .timescaledb_version
            .is_some_and(|v| v.starts_with("2."))
    );

    let hypertables: Vec<(String, i64)> = sqlx::query_as(
        "SELECT hypertable_name::text, EXTRACT(EPOCH FROM time_interval)::bigint \
         FROM timescaledb_information.dimensions WHERE hypertable_schema = $1 ORDER BY 1",
    )
    .bind(&tsdb.schema)
    .fetch_all(&pool)
    .await
    .expect("dimensions");
    assert_eq!(
        hypertables,
        [
            ("host_overall_metrics".to_owned(), 7 * DAY),
            ("host_process_metrics".to_owned(), DAY),
            ("vm_process_metrics".to_owned(), DAY),
        ]
    );
    let segment_by: String = sqlx::query_scalar(
        "SELECT segmentby FROM timescaledb_information.hypertable_compression_settings \
         WHERE hypertable = format('%I.host_process_metrics', $1::text)::regclass",
    )
    .bind(&tsdb.schema)
    .fetch_one(&pool)
    .await
    .expect("compression settings");
    assert_eq!(segment_by, "host");
    let jobs: Vec<(String, String, Option<String>)> = sqlx::query_as(
        "SELECT proc_name::text, hypertable_name::text, \
                COALESCE(config->>'compress_after', config->>'drop_after', config->>'start_offset') \
         FROM timescaledb_information.jobs WHERE hypertable_schema = $1 ORDER BY 2, 1",
    )
    .bind(&tsdb.schema)
    .fetch_all(&pool)
    .await
    .expect("jobs");
    let expected = [
        ("policy_compression", "host_overall_metrics", "3 days"),
        ("policy_retention", "host_overall_metrics", "365 days"),
        (
            "policy_refresh_continuous_aggregate",
            "host_overall_metrics_daily",
            "3 days",
        ),
        ("policy_compression", "host_process_metrics", "3 days"),
        ("policy_retention", "host_process_metrics", "90 days"),
        (
            "policy_refresh_continuous_aggregate",
            "host_process_metrics_hourly",
            "03:00:00",
        ),
        (
            "policy_retention",
            "host_process_metrics_hourly",
            "365 days",
        ),
        ("policy_compression", "vm_process_metrics", "3 days"),
        ("policy_retention", "vm_process_metrics", "30 days"),
    ];
    let expected: Vec<_> = expected
        .iter()
        .map(|(p, r, a)| (p.to_string(), r.to_string(), Some(a.to_string())))
        .collect();
    assert_eq!(jobs, expected);
    assert_eq!(outcome.policies, 9);
    pool.close().await;
}

#[tokio::test]
async fn edits_alter_jobs_in_place_and_aggregates_fill_when_their_job_runs() {
    let tsdb = TimescaleSchema::create().await;
    let pool = pool(&tsdb.url(), &tsdb.schema).await;
    let mut desired = production();
    let hourly = desired.aggregates.remove(0);
    assert_eq!(hourly.name, "host_process_metrics_hourly");
    converge(&pool, &tsdb.schema, OWNER, &desired, None)
        .await
        .expect("converges");
    let before = read_state(&pool, &tsdb.schema).await.expect("state");
    let compression = before
        .job(JobKind::Compression, "host_process_metrics")
        .expect("a compression job")
        .clone();

    // A new compressAfter alters the same job.
    desired.tables[0]
        .compression
        .as_mut()
        .expect("compression")
        .after = 2 * DAY;
    let outcome = converge(&pool, &tsdb.schema, OWNER, &desired, None)
        .await
        .expect("converges");
    assert_eq!(outcome.applied.len(), 1, "{:?}", outcome.applied);
    let after = read_state(&pool, &tsdb.schema).await.expect("state");
    let altered = after
        .job(JobKind::Compression, "host_process_metrics")
        .expect("the job");
    assert_eq!((altered.id, altered.after), (compression.id, Some(2 * DAY)));

    // No retention: the job goes.
    desired.tables[0].retention = None;
    converge(&pool, &tsdb.schema, OWNER, &desired, None)
        .await
        .expect("converges");
    let state = read_state(&pool, &tsdb.schema).await.expect("state");
    assert!(
        state
            .job(JobKind::Retention, "host_process_metrics")
            .is_none()
    );

    // A new aggregate is created, and running its refresh job (no background workers
    // here) materialises the one complete bucket of its refresh window, 3 h to 1 h before
    // the job runs: the bucket two hours back, or the one an hour back if the hour turns
    // between these rows and the job. Both have rows, so either way one bucket is
    // materialised from its own rows, whatever the clock says.
    insert_process_rows(&pool, &[2, 2, 1, 1]).await;
    desired.aggregates.push(hourly);
    converge(&pool, &tsdb.schema, OWNER, &desired, None)
        .await
        .expect("converges");
    let state = read_state(&pool, &tsdb.schema).await.expect("state");
    let refresh = state
        .job(JobKind::Refresh, "host_process_metrics_hourly")
        .expect("a refresh job");
    let materialized: String = sqlx::query_scalar(
        "SELECT format('%I.%I', materialization_hypertable_schema, materialization_hypertable_name) \
         FROM timescaledb_information.continuous_aggregates \
         WHERE view_schema = $1 AND view_name = 'host_process_metrics_hourly'",
    )
    .bind(&tsdb.schema)
    .fetch_one(&pool)
    .await
    .expect("the aggregate exists");
    let count = format!("SELECT count(*) FROM {materialized}");
    let rows: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(count))
        .fetch_one(&pool)
        .await
        .expect("count");
    assert_eq!(rows, 0, "nothing is materialised before the job runs");
    sqlx::query(sqlx::AssertSqlSafe(format!("CALL run_job({})", refresh.id)))
        .execute(&pool)
        .await
        .expect("the refresh job runs");
    // Each materialised bucket beside the raw rows it rolls up.
    let buckets: Vec<(f64, i64, f64, i64)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT m.avg_cpu::float8, m.samples::int8, \
                avg(r.cpu_usage_percent)::float8, count(r.*) \
           FROM {materialized} m \
           JOIN host_process_metrics r \
             ON time_bucket(INTERVAL '1 hour', r.\"timestamp\") = m.bucket \
          GROUP BY m.bucket, m.avg_cpu, m.samples"
    )))
    .fetch_all(&pool)
    .await
    .expect("the materialised buckets");
    let [(avg_cpu, samples, raw_avg_cpu, raw_samples)] = buckets[..] else {
        panic!("the job materialises one bucket: {buckets:?}");
    };
    assert_eq!((avg_cpu, samples), (raw_avg_cpu, raw_samples));
    assert_eq!(samples, 2);
    pool.close().await;
}

#[tokio::test]
async fn a_then_b_then_a_again_returns_to_the_first_state() {
    let tsdb = TimescaleSchema::create().await;
    let pool = pool(&tsdb.url(), &tsdb.schema).await;
    let a = production();
    let mut b = a.clone();
    b.tables[0].compression.as_mut().expect("compression").after = 2 * DAY;
    b.tables[1].retention = Some(400 * DAY);
    b.tables[2].compression = None;
    b.tables[0].chunk_interval = 2 * DAY;
    b.aggregates[0].refresh.schedule = 2 * 3600;
    b.aggregates[0].retention = None;
    converge(&pool, &tsdb.schema, OWNER, &a, None)
        .await
        .expect("A converges");
    let first = read_state(&pool, &tsdb.schema).await.expect("state");
    let to_b = converge(&pool, &tsdb.schema, OWNER, &b, None)
        .await
        .expect("B converges");
    assert!(to_b.applied.len() >= 6, "{:?}", to_b.applied);
    assert_ne!(
        shape(&read_state(&pool, &tsdb.schema).await.expect("state")),
        shape(&first)
    );
    converge(&pool, &tsdb.schema, OWNER, &a, None)
        .await
        .expect("A converges again");
    let again = read_state(&pool, &tsdb.schema).await.expect("state");
    assert_eq!(shape(&again), shape(&first));
    pool.close().await;
}

#[tokio::test]
async fn a_second_converge_plans_nothing_and_runs_no_ddl() {
    let tsdb = TimescaleSchema::create().await;
    let pool = pool(&tsdb.url(), &tsdb.schema).await;
    converge(&pool, &tsdb.schema, OWNER, &production(), None)
        .await
        .expect("converges");
    // Count every DDL command from here on.
    sqlx::raw_sql(
        "CREATE TABLE ddl_log (command text); \
         CREATE FUNCTION log_ddl() RETURNS event_trigger LANGUAGE plpgsql AS $$ \
         BEGIN INSERT INTO ddl_log SELECT command_tag FROM pg_event_trigger_ddl_commands(); END $$; \
         CREATE EVENT TRIGGER count_ddl ON ddl_command_end EXECUTE FUNCTION log_ddl();",
    )
    .execute(&pool)
    .await
    .expect("the DDL counter is installed");
    let second: Convergence = converge(&pool, &tsdb.schema, OWNER, &production(), None)
        .await
        .expect("converges");
    let ddl: Vec<String> = sqlx::query_scalar("SELECT command FROM ddl_log")
        .fetch_all(&pool)
        .await
        .expect("the DDL log");
    sqlx::raw_sql("DROP EVENT TRIGGER count_ddl")
        .execute(&pool)
        .await
        .expect("dropped");
    assert!(second.applied.is_empty(), "{:?}", second.applied);
    assert!(ddl.is_empty(), "a converged database got DDL: {ddl:?}");
    assert_eq!(second.policies, 9);
    pool.close().await;
}

#[tokio::test]
async fn a_shorter_retention_over_old_data_waits_for_acknowledgement() {
    let tsdb = TimescaleSchema::create().await;
    let pool = pool(&tsdb.url(), &tsdb.schema).await;
    let mut desired = production();
    desired.tables[0].retention = Some(365 * DAY);
    converge(&pool, &tsdb.schema, OWNER, &desired, None)
        .await
        .expect("converges");
    insert_process_rows(&pool, &[100 * 24, 60 * 24, 60 * 24, 24]).await;

    desired.tables[0].retention = Some(30 * DAY);
    let held = converge(&pool, &tsdb.schema, OWNER, &desired, None)
        .await
        .expect("converges");
    let pending = held.pending.expect("the shorter retention is held back");
    assert_eq!(pending.loss.rows, 3, "three rows are older than 30 days");
    assert_eq!(pending.loss.chunks, 2, "in two daily chunks");
    assert_eq!(pending.steps.len(), 1);
    let state = read_state(&pool, &tsdb.schema).await.expect("state");
    let retention = state
        .job(JobKind::Retention, "host_process_metrics")
        .expect("retention");
    assert_eq!(
        retention.after,
        Some(365 * DAY),
        "the old retention stays in force"
    );

    // A wrong acknowledgement changes nothing; the plan's own hash applies it.
    let wrong = converge(
        &pool,
        &tsdb.schema,
        OWNER,
        &desired,
        Some("0123456789abcdef"),
    )
    .await
    .expect("converges");
    assert_eq!(wrong.pending.map(|p| p.hash), Some(pending.hash.clone()));
    let applied = converge(&pool, &tsdb.schema, OWNER, &desired, Some(&pending.hash))
        .await
        .expect("converges");
    assert!(applied.pending.is_none());
    assert_eq!(applied.applied.len(), 1);
    let state = read_state(&pool, &tsdb.schema).await.expect("state");
    let retention = state
        .job(JobKind::Retention, "host_process_metrics")
        .expect("retention");
    assert_eq!(retention.after, Some(30 * DAY));
    pool.close().await;
}

#[tokio::test]
async fn plain_postgres_gets_the_schema_and_reports_what_it_cannot_do() {
    let db = TestDatabase::create().await;
    // A schema the database does not have yet: the operator creates it.
    let pool = pool(&db.url(), "metrics").await;
    let outcome = converge(&pool, "metrics", OWNER, &production(), None)
        .await
        .expect("converges");
    assert!(outcome.timescaledb_version.is_none());
    assert!(outcome.applied.is_empty());
    assert!(
        outcome
            .unsupported
            .contains(&"compression of host_process_metrics".to_owned())
    );
    assert!(
        outcome
            .unsupported
            .contains(&"continuous aggregate host_overall_metrics_daily".to_owned())
    );
    // The migrations created the tables with exactly the columns the validation knows.
    for table in metricsstack_operator::crd::MetricTable::ALL {
        let columns: Vec<String> = sqlx::query_scalar(
            "SELECT column_name::text FROM information_schema.columns \
             WHERE table_schema = 'metrics' AND table_name = $1 ORDER BY ordinal_position",
        )
        .bind(table.table_name())
        .fetch_all(&pool)
        .await
        .expect("columns");
        assert_eq!(
            columns,
            database::table_columns(table),
            "{}",
            table.table_name()
        );
    }
    pool.close().await;
}

#[tokio::test]
async fn a_shorter_retention_over_young_data_is_held_too_and_says_when_deleting_starts() {
    let tsdb = TimescaleSchema::create().await;
    let pool = pool(&tsdb.url(), &tsdb.schema).await;
    let mut desired = production();
    desired.tables[0].retention = Some(365 * DAY);
    converge(&pool, &tsdb.schema, OWNER, &desired, None)
        .await
        .expect("converges");
    // Nothing is older than 30 days: the shorter retention deletes nothing now, but the
    // rows the current policy keeps for a year go after 30 days.
    insert_process_rows(&pool, &[48, 24]).await;

    desired.tables[0].retention = Some(30 * DAY);
    let held = converge(&pool, &tsdb.schema, OWNER, &desired, None)
        .await
        .expect("converges");
    let pending = held.pending.expect("the shorter retention is held back");
    assert_eq!((pending.loss.rows, pending.loss.chunks), (0, 0));
    let oldest: chrono::DateTime<chrono::Utc> =
        sqlx::query_scalar("SELECT min(\"timestamp\") FROM host_process_metrics")
            .fetch_one(&pool)
            .await
            .expect("the oldest row");
    // Deleting starts when the oldest row is 30 days old (an hour either way: the database
    // adds calendar days in its time zone).
    let starts = pending.loss.earliest_deletion.expect("a first deletion");
    let expected = oldest + chrono::Duration::days(30);
    assert!(
        (starts - expected).num_minutes().abs() <= 60,
        "deleting starts at {starts}, expected about {expected}"
    );
    let applied = converge(&pool, &tsdb.schema, OWNER, &desired, Some(&pending.hash))
        .await
        .expect("converges");
    assert!(applied.pending.is_none());
    pool.close().await;
}

#[tokio::test]
async fn an_aggregate_redefined_behind_the_operators_back_is_recreated_as_the_spec_says() {
    let tsdb = TimescaleSchema::create().await;
    let pool = pool(&tsdb.url(), &tsdb.schema).await;
    let desired = production();
    converge(&pool, &tsdb.schema, OWNER, &desired, None)
        .await
        .expect("converges");
    let first = read_state(&pool, &tsdb.schema).await.expect("state");
    let aggregate = &desired.aggregates[0];
    let read = &first.aggregates[&aggregate.name];
    assert_eq!(
        read.bucket,
        Some(aggregate.bucket),
        "the bucket is read back"
    );
    assert_eq!(read.columns.first().map(String::as_str), Some("bucket"));

    // Someone recreates the view with twice the bucket width (and the operator's comment).
    let view = database::qualified(&tsdb.schema, &aggregate.name);
    let source = database::qualified(&tsdb.schema, aggregate.source.table_name());
    let (select, group) = database::rollup(aggregate.source);
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "DROP MATERIALIZED VIEW {view}; \
         CREATE MATERIALIZED VIEW {view} WITH (timescaledb.continuous) AS \
         SELECT time_bucket(INTERVAL '{} seconds', \"timestamp\") AS bucket, {select} \
         FROM {source} GROUP BY bucket, {group} WITH NO DATA; \
         COMMENT ON VIEW {view} IS '{}'",
        2 * aggregate.bucket,
        database::MANAGED_COMMENT
    )))
    .execute(&pool)
    .await
    .expect("the view is redefined");
    let redefined = read_state(&pool, &tsdb.schema).await.expect("state");
    assert_eq!(
        redefined.aggregates[&aggregate.name].bucket,
        Some(2 * aggregate.bucket)
    );

    // It holds no data: recreating it loses nothing, and happens at once.
    let restored = converge(&pool, &tsdb.schema, OWNER, &desired, None)
        .await
        .expect("converges");
    let steps: Vec<String> = restored.applied.iter().map(ToString::to_string).collect();
    assert!(
        steps[0] == format!("drop continuous aggregate {}", aggregate.name)
            && steps[1].starts_with(&format!("create continuous aggregate {}", aggregate.name)),
        "{steps:?}"
    );
    let after = read_state(&pool, &tsdb.schema).await.expect("state");
    assert_eq!(shape(&after), shape(&first));
    pool.close().await;
}

#[tokio::test]
async fn a_populated_table_too_large_to_convert_within_the_lock_timeout_is_refused_saying_how() {
    let tsdb = TimescaleSchema::create().await;
    let pool = pool(&tsdb.url(), &tsdb.schema).await;
    database::migrate(&pool, &tsdb.schema)
        .await
        .expect("migrated");
    let rows = database::ADOPTION_MAX_ROWS + 1;
    sqlx::query(
        "INSERT INTO host_process_metrics (\"timestamp\", host, pid, start_time, \
           process_name, cpu_usage_percent, cpu_peak_percent, memory_usage_mb, \
           virtual_memory_mb, disk_read_bytes, disk_write_bytes) \
         SELECT now() - n * interval '1 second', 'node-a', 1, now() - interval '30 days', \
                'postgres', 1, 1, 1, 1, 0, 0 FROM generate_series(1, $1) AS n",
    )
    .bind(rows)
    .execute(&pool)
    .await
    .expect("rows");
    let desired = production();
    let error = converge(&pool, &tsdb.schema, OWNER, &desired, None)
        .await
        .expect_err("converting would block ingest too long");
    let message = error.to_string();
    assert!(
        matches!(error, database::DatabaseError::MigrationNeeded { .. })
            && message.contains(&format!("{}.host_process_metrics", tsdb.schema))
            && message.contains("migrate_data => true"),
        "{message}"
    );
    let state = read_state(&pool, &tsdb.schema).await.expect("state");
    assert!(state.hypertables.is_empty(), "nothing was converted");
    assert!(state.jobs.is_empty(), "nothing else was applied either");

    // Converted as the message says, the operator carries on with every row kept.
    let command = message
        .split('`')
        .nth(1)
        .expect("the message quotes the command");
    sqlx::raw_sql(sqlx::AssertSqlSafe(command.to_owned()))
        .execute(&pool)
        .await
        .expect("the quoted command converts the table");
    converge(&pool, &tsdb.schema, OWNER, &desired, None)
        .await
        .expect("converges");
    let kept: i64 = sqlx::query_scalar("SELECT count(*) FROM host_process_metrics")
        .fetch_one(&pool)
        .await
        .expect("count");
    assert_eq!(kept, rows);
    pool.close().await;
}

/// One bucket of an hourly process aggregate: bucket, host, process, average and peak CPU,
/// samples.
type ProcessBucket = (chrono::DateTime<chrono::Utc>, String, String, f64, f64, i64);

/// The buckets `view` has materialised, and the same buckets computed with `time_bucket`
/// from the raw rows, both in order.
async fn materialised_beside_raw(
    pool: &PgPool,
    schema: &str,
    view: &str,
) -> (Vec<ProcessBucket>, Vec<ProcessBucket>) {
    let materialized: String = sqlx::query_scalar(
        "SELECT format('%I.%I', materialization_hypertable_schema, materialization_hypertable_name) \
         FROM timescaledb_information.continuous_aggregates \
         WHERE view_schema = $1 AND view_name = $2",
    )
    .bind(schema)
    .bind(view)
    .fetch_one(pool)
    .await
    .expect("the aggregate exists");
    let aggregated = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT bucket, host, process_name, avg_cpu::float8, max_cpu::float8, samples::int8 \
         FROM {materialized} ORDER BY 1, 2, 3"
    )))
    .fetch_all(pool)
    .await
    .expect("the materialised buckets");
    let raw = sqlx::query_as(
        "SELECT time_bucket(INTERVAL '1 hour', \"timestamp\") AS bucket, host, process_name, \
                avg(cpu_usage_percent)::float8, max(cpu_peak_percent)::float8, count(*) \
         FROM host_process_metrics GROUP BY 1, 2, 3 ORDER BY 1, 2, 3",
    )
    .fetch_all(pool)
    .await
    .expect("the raw buckets");
    (aggregated, raw)
}

#[tokio::test]
async fn a_new_aggregate_is_backfilled_once_with_the_buckets_of_rows_older_than_its_refresh_window()
{
    let tsdb = TimescaleSchema::create().await;
    let pool = pool(&tsdb.url(), &tsdb.schema).await;
    let mut desired = production();
    let hourly = desired.aggregates.remove(0);
    converge(&pool, &tsdb.schema, OWNER, &desired, None)
        .await
        .expect("converges");
    // Rows from 60 days to 2 hours back, several in some hours: the refresh policy (3 h to
    // 1 h ago) would reach only the youngest.
    insert_process_rows(&pool, &[60 * 24, 60 * 24, 20 * 24, 50, 50, 50, 6, 2]).await;

    desired.aggregates.insert(0, hourly.clone());
    let created = converge(&pool, &tsdb.schema, OWNER, &desired, None)
        .await
        .expect("converges");
    let [backfill] = &created.backfills[..] else {
        panic!("one aggregate is backfilled: {:?}", created.backfills);
    };
    assert_eq!(
        (
            backfill.aggregate.as_str(),
            backfill.reached,
            &backfill.stopped
        ),
        (hourly.name.as_str(), backfill.from, &None),
        "{backfill:?}"
    );
    let (aggregated, raw) = materialised_beside_raw(&pool, &tsdb.schema, &hourly.name).await;
    assert_eq!(raw.len(), 5, "{raw:?}");
    assert_eq!(aggregated, raw);

    // Filled once: the next check finds nothing missing and refreshes nothing.
    let again = converge(&pool, &tsdb.schema, OWNER, &desired, None)
        .await
        .expect("converges");
    assert_eq!(again.backfills, []);
    assert!(again.applied.is_empty(), "{:?}", again.applied);
    pool.close().await;
}

#[tokio::test]
async fn an_aggregate_an_older_operator_left_with_only_its_refresh_window_is_filled_below_it() {
    let tsdb = TimescaleSchema::create().await;
    let pool = pool(&tsdb.url(), &tsdb.schema).await;
    let mut desired = production();
    let hourly = desired.aggregates.remove(0);
    converge(&pool, &tsdb.schema, OWNER, &desired, None)
        .await
        .expect("converges");
    insert_process_rows(&pool, &[30 * 24, 30 * 24, 3 * 24, 2, 2]).await;
    // As an operator without backfilling left it: created empty with its policies, then
    // refreshed by its policy over the window 3 h to 1 h ago only.
    let view = database::qualified(&tsdb.schema, &hourly.name);
    let source = database::qualified(&tsdb.schema, hourly.source.table_name());
    let (select, group) = database::rollup(hourly.source);
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "CREATE MATERIALIZED VIEW {view} \
         WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS \
         SELECT time_bucket(INTERVAL '1 hour', \"timestamp\") AS bucket, {select} \
         FROM {source} GROUP BY bucket, {group} WITH NO DATA; \
         COMMENT ON VIEW {view} IS '{}'",
        database::MANAGED_COMMENT
    )))
    .execute(&pool)
    .await
    .expect("the aggregate is created empty");
    let job: i32 = sqlx::query_scalar(
        "SELECT add_continuous_aggregate_policy($1::regclass, start_offset => INTERVAL '3 hours', \
           end_offset => INTERVAL '1 hour', schedule_interval => INTERVAL '30 minutes')",
    )
    .bind(&view)
    .fetch_one(&pool)
    .await
    .expect("the refresh policy is added");
    sqlx::query(
        "SELECT add_retention_policy($1::regclass, INTERVAL '365 days', \
           schedule_interval => INTERVAL '1 day')",
    )
    .bind(&view)
    .execute(&pool)
    .await
    .expect("the retention policy is added");
    sqlx::query(sqlx::AssertSqlSafe(format!("CALL run_job({job})")))
        .execute(&pool)
        .await
        .expect("the refresh job runs");
    let (aggregated, raw) = materialised_beside_raw(&pool, &tsdb.schema, &hourly.name).await;
    assert_eq!(
        aggregated.len(),
        1,
        "only the refresh window: {aggregated:?}"
    );
    assert_eq!(raw.len(), 3, "{raw:?}");

    desired.aggregates.insert(0, hourly.clone());
    let converged = converge(&pool, &tsdb.schema, OWNER, &desired, None)
        .await
        .expect("converges");
    assert!(
        converged
            .applied
            .iter()
            .all(|step| step.relation() != hourly.name),
        "the aggregate and its policy are kept: {:?}",
        converged.applied
    );
    assert!(
        converged
            .backfills
            .iter()
            .any(|b| b.aggregate == hourly.name && b.stopped.is_none()),
        "{:?}",
        converged.backfills
    );
    let (aggregated, raw) = materialised_beside_raw(&pool, &tsdb.schema, &hourly.name).await;
    assert_eq!(aggregated, raw);
    pool.close().await;
}

#[tokio::test]
async fn rows_older_than_the_aggregates_retention_are_not_backfilled() {
    let tsdb = TimescaleSchema::create().await;
    let pool = pool(&tsdb.url(), &tsdb.schema).await;
    let mut desired = production();
    let mut hourly = desired.aggregates.remove(0);
    converge(&pool, &tsdb.schema, OWNER, &desired, None)
        .await
        .expect("converges");
    insert_process_rows(&pool, &[60 * 24, 20 * 24]).await;

    // The raw table keeps 90 days; the aggregate would drop buckets after 30.
    hourly.retention = Some(30 * DAY);
    desired.aggregates.insert(0, hourly.clone());
    let created = converge(&pool, &tsdb.schema, OWNER, &desired, None)
        .await
        .expect("converges");
    let (aggregated, raw) = materialised_beside_raw(&pool, &tsdb.schema, &hourly.name).await;
    assert_eq!(raw.len(), 2, "{raw:?}");
    assert_eq!(aggregated, raw[1..], "only the 20-day-old bucket");
    assert_eq!(
        created.backfills.iter().map(|b| b.from).collect::<Vec<_>>(),
        [raw[1].0]
    );
    pool.close().await;
}
