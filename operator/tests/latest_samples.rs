//! `host_process_latest`, on native PostgreSQL and on the test TimescaleDB, each in a schema
//! the operator converged: the collector's ingest keeps each process's newest sample there
//! whatever order its batches arrive in (a replayed older batch does not overwrite, the same
//! batch again changes nothing); a host's processes and the process search read it and
//! answer what the raw statements they replaced answer on the same rows; and converging
//! deletes the rows older than the longest window, keeping the newer ones, and their search
//! texts with them (the bound a shorter retention sets is `latest_horizon`'s, checked by its
//! unit test). pg_trgm is installed in both, so the operator gives the search its trigram
//! index; the search's tests in `query-service` run without it.

use chrono::{DateTime, Duration, DurationRound, Utc};
use metricsstack_collector::ingest;
use metricsstack_collector::rows::{Batch, ProcessRow, Table};
use metricsstack_common::database::{DatabaseTls, PoolSettings, TlsMode};
use metricsstack_operator::crd::MetricsStackSpec;
use metricsstack_operator::database::{self, converge};
use metricsstack_operator::validate::validate;
use metricsstack_query_service::filters::{Part, RawFilters, RawSearch};
use metricsstack_query_service::queries::{
    self, HostProcessRow, ProcessMatchRow, Source, Statement, like_pattern,
};
use metricsstack_testkit::{RAW_HOST_PROCESSES, RAW_PROCESS_SEARCH, TestDatabase, TimescaleSchema};
use serde_json::Value;
use sqlx::PgPool;

/// A stack's schema converged by the operator, on native PostgreSQL or TimescaleDB.
struct Stack {
    pool: PgPool,
    schema: String,
    // Dropping them removes the database or schema.
    _postgres: Option<TestDatabase>,
    _timescaledb: Option<TimescaleSchema>,
}

/// The spec's storage with `retention` on `host_process_metrics` (none: the defaults).
fn storage(retention: Option<&str>) -> database::DesiredStorage {
    let mut spec = serde_json::json!({"database": {"secretRef": {"name": "db"}}});
    if let Some(after) = retention {
        spec["storage"] = serde_json::json!({"tables": [
            {"table": "hostProcessMetrics", "retention": {"dropAfter": after}}
        ]});
    }
    let spec: MetricsStackSpec = serde_json::from_value(spec).expect("the spec parses");
    validate(&spec).expect("the spec is valid").storage
}

impl Stack {
    /// Closes the pool before the database or schema is removed (the test TimescaleDB
    /// takes one client at a time).
    async fn finish(self) {
        self.pool.close().await;
    }
}

async fn connect(url: &str, schema: &str) -> PgPool {
    let settings = PoolSettings {
        max_connections: 1,
        ..PoolSettings::default()
    };
    let tls = DatabaseTls {
        mode: TlsMode::Disable,
        ca: None,
    };
    database::connect(url, &tls, &settings, schema)
        .await
        .expect("the operator connects")
}

async fn postgres_stack() -> Stack {
    let db = TestDatabase::create().await;
    let schema = "metrics".to_owned();
    let pool = connect(&db.url(), &schema).await;
    sqlx::raw_sql("CREATE EXTENSION pg_trgm SCHEMA public")
        .execute(&pool)
        .await
        .expect("pg_trgm is installed");
    converge(&pool, &schema, "tests/latest", &storage(None), None)
        .await
        .expect("converges");
    Stack {
        pool,
        schema,
        _postgres: Some(db),
        _timescaledb: None,
    }
}

async fn timescaledb_stack() -> Stack {
    let tsdb = TimescaleSchema::create().await;
    let pool = connect(&tsdb.url(), &tsdb.schema).await;
    // One database for every test's schema: the extension stays once installed.
    sqlx::raw_sql("CREATE EXTENSION IF NOT EXISTS pg_trgm SCHEMA public")
        .execute(&pool)
        .await
        .expect("pg_trgm is installed");
    converge(&pool, &tsdb.schema, "tests/latest", &storage(None), None)
        .await
        .expect("converges");
    Stack {
        pool,
        schema: tsdb.schema.clone(),
        _postgres: None,
        _timescaledb: Some(tsdb),
    }
}

/// The sample of process `pid` (started at `started`) of `host` at `at`; its values follow
/// `at`, so that a row tells which sample it is.
fn process(host: &str, pid: i32, started: DateTime<Utc>, at: DateTime<Utc>) -> ProcessRow {
    let seed = (at.timestamp() / 60 + i64::from(pid) * 7) % 997;
    ProcessRow {
        timestamp: at,
        host: host.to_owned(),
        pid,
        start_time: started,
        parent_pid: Some(1),
        process_name: format!("app-{}", pid % 5),
        command_line: Some(format!("/usr/bin/app-{pid} --port={}", pid % 3)),
        username: Some("root".into()),
        state: "S".into(),
        cpu_usage_percent: seed as f32 / 10.0,
        cpu_peak_percent: seed as f32 / 5.0,
        memory_usage_mb: seed as f64 + 0.5,
        virtual_memory_mb: 2048.0,
        disk_read_bytes: seed * 4096,
        disk_write_bytes: seed * 512,
        threads: Some((seed % 16) as i32),
    }
}

fn batch(processes: Vec<ProcessRow>) -> Batch {
    Batch {
        processes,
        ..Batch::default()
    }
}

/// `host_process_latest` and each process's newest raw row, both as text, by process.
async fn latest_and_newest_raw(pool: &PgPool) -> (Vec<String>, Vec<String>) {
    const COLUMNS: &str = "\"timestamp\", host, pid, start_time, parent_pid, process_name, \
        command_line, username, state, cpu_usage_percent, cpu_peak_percent, memory_usage_mb, \
        virtual_memory_mb, disk_read_bytes, disk_write_bytes, threads";
    let latest = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT ROW({COLUMNS})::text FROM host_process_latest ORDER BY host, pid, start_time"
    )))
    .fetch_all(pool)
    .await
    .expect("the latest samples");
    let newest = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT ROW({COLUMNS})::text FROM (SELECT DISTINCT ON (host, pid, start_time) * \
         FROM host_process_metrics ORDER BY host, pid, start_time, \"timestamp\" DESC) AS n \
         ORDER BY host, pid, start_time"
    )))
    .fetch_all(pool)
    .await
    .expect("the newest raw rows");
    (latest, newest)
}

async fn each_process_keeps_its_newest_sample(stack: &Stack) {
    let pool = &stack.pool;
    let minute = Duration::minutes(1);
    let now = Utc::now().duration_trunc(minute).expect("a minute");
    let started = now - Duration::days(2);
    let at = |minutes_ago: i64| now - minute * minutes_ago as i32;
    let sample = |pids: &[i32], at: DateTime<Utc>| {
        batch(
            pids.iter()
                .map(|&pid| process("node-a", pid, started, at))
                .collect(),
        )
    };

    // Out of order: the sample of 5 minutes ago, then of 1 minute ago, then the oldest.
    for batch in [
        sample(&[1, 2, 3], at(5)),
        sample(&[1, 2], at(1)),
        sample(&[1, 2, 3], at(9)),
    ] {
        ingest::insert(pool, &batch).await.expect("written");
    }
    let (latest, newest) = latest_and_newest_raw(pool).await;
    assert_eq!(latest.len(), 3, "one row per process: {latest:#?}");
    assert_eq!(latest, newest, "each process's newest sample");
    assert_eq!(
        latest_times(pool).await,
        [(1, at(1)), (2, at(1)), (3, at(5))]
    );

    // A replay of an older batch, and of the newest batch itself, change nothing.
    for batch in [sample(&[1, 2, 3], at(5)), sample(&[1, 2], at(1))] {
        ingest::insert(pool, &batch).await.expect("replayed");
        assert_eq!(latest_and_newest_raw(pool).await.0, latest);
    }

    // One batch with two samples of a process (a merged spool), newest first: the newest
    // wins; the process rows written alone (as after a refused batch) keep it up to date too.
    let mut merged = sample(&[3], at(0));
    merged.processes.extend(sample(&[3], at(2)).processes);
    ingest::insert(pool, &merged).await.expect("written");
    ingest::insert_into(pool, Table::Processes, &sample(&[1, 4], at(0)))
        .await
        .expect("written alone");
    let (latest, newest) = latest_and_newest_raw(pool).await;
    assert_eq!(latest, newest, "each process's newest sample");
    assert_eq!(
        latest_times(pool).await,
        [(1, at(0)), (2, at(1)), (3, at(0)), (4, at(0))]
    );
}

/// Each process's pid and time in `host_process_latest`.
async fn latest_times(pool: &PgPool) -> Vec<(i32, DateTime<Utc>)> {
    sqlx::query_as("SELECT pid, \"timestamp\" FROM host_process_latest ORDER BY pid")
        .fetch_all(pool)
        .await
        .expect("the latest samples")
}

#[tokio::test]
async fn on_postgresql_each_process_keeps_its_newest_sample_however_batches_are_replayed() {
    let stack = postgres_stack().await;
    each_process_keeps_its_newest_sample(&stack).await;
    stack.finish().await;
}

#[tokio::test]
async fn on_timescaledb_each_process_keeps_its_newest_sample_however_batches_are_replayed() {
    let stack = timescaledb_stack().await;
    each_process_keeps_its_newest_sample(&stack).await;
    stack.finish().await;
}

/// 30 days of two nodes through the collector's ingest, batches out of order: a sample every
/// 2 hours (half an hour off the windows' edges) of 8 long-running processes and of 2
/// processes that live 4 hours each; now and then processes whose command line holds `%`,
/// `_`, `\`, capitals or nothing. Every fifth batch is sent again after the next one.
async fn seed_month(pool: &PgPool) {
    let now = Utc::now();
    let long_started = now - Duration::days(40);
    let mut batches = Vec::new();
    for step in 0..360i64 {
        let at = now - Duration::minutes(30) - Duration::hours(2) * step as i32;
        for host in ["node-a", "node-b"] {
            let mut rows: Vec<ProcessRow> = (1..=8)
                .map(|pid| process(host, pid, long_started, at))
                .collect();
            for slot in 0..2 {
                let life = step / 2;
                let started = now - Duration::hours(4) * (life + 1) as i32;
                rows.push(process(host, 100 + slot, started, at));
            }
            if step % 7 == 0 {
                let odd = (step / 7) % 4;
                let mut row = process(host, 50 + odd as i32, long_started, at);
                row.command_line = Some(
                    [
                        "java -Xmx50% -jar Shop.jar",
                        "tool a_b",
                        "tool a\\b",
                        "Tool AXB",
                    ][odd as usize]
                        .to_owned(),
                );
                rows.push(row);
                let mut nameless = process(host, 55, long_started, at);
                nameless.command_line = None;
                nameless.process_name = "kworker/0:1".into();
                rows.push(nameless);
            }
            batches.push(batch(rows));
        }
    }
    // Newest last, pairs swapped, every fifth batch replayed late.
    batches.reverse();
    for pair in batches.chunks_mut(2) {
        pair.reverse();
    }
    for (i, batch) in batches.iter().enumerate() {
        ingest::insert(pool, batch).await.expect("written");
        if i % 5 == 1 {
            ingest::insert(pool, &batches[i - 1])
                .await
                .expect("replayed");
        }
    }
}

/// Asserts that `answer` holds `expected`'s rows, naming the first row that differs.
fn assert_same_rows(answer: Value, expected: Value, query: &str) {
    let (answer, expected) = (
        answer.as_array().cloned().unwrap_or_default(),
        expected.as_array().cloned().unwrap_or_default(),
    );
    for (i, (a, e)) in answer.iter().zip(&expected).enumerate() {
        assert_eq!(a, e, "{query}: row {i}");
    }
    assert_eq!(answer.len(), expected.len(), "{query}: rows");
}

/// `rows` as JSON read back, as the answers are (serde_json reads the last digit of a float
/// back as it does in an answer).
fn as_parsed<R: serde::Serialize>(rows: &[R]) -> Value {
    serde_json::from_slice(&serde_json::to_vec(rows).expect("JSON")).expect("JSON")
}

/// The rows of a part's JSON answer.
fn answer_rows(answer: &[u8]) -> Value {
    let answer: Value = serde_json::from_slice(answer).expect("JSON");
    assert_eq!(answer["source"], "raw");
    answer["rows"].clone()
}

/// The search's statement.
const SEARCH: Statement = Statement {
    part: Part::ProcessSearch,
    source: Source::Raw,
};

/// The search's key for a query string.
fn search_key(query: &str) -> metricsstack_query_service::filters::PartKey {
    RawSearch::from_query(query)
        .expect("parses")
        .validate()
        .expect("valid")
}

/// How many processes the search answers for a query string.
async fn found(pool: &PgPool, query: &str) -> usize {
    let answer = queries::run(pool, SEARCH, &search_key(query))
        .await
        .expect("answered");
    answer_rows(&answer).as_array().map_or(0, Vec::len)
}

async fn parts_answer_as_the_raw_statements(stack: &Stack) {
    let pool = &stack.pool;
    seed_month(pool).await;
    let statement = |part| Statement {
        part,
        source: Source::Raw,
    };
    for query in [
        "window=1h&limit=1000",
        "window=1d&limit=1000",
        "window=30d&limit=1000",
        "window=30d&limit=7",
        "window=30d&limit=1000&host=node-b",
        "window=1h&limit=3&host=node-a",
    ] {
        let key = RawFilters::from_query(query)
            .expect("parses")
            .validate()
            .expect("valid")
            .key(Part::HostProcessMetrics);
        let answer = queries::run(pool, statement(Part::HostProcessMetrics), &key)
            .await
            .expect("answered");
        let raw: Vec<HostProcessRow> = sqlx::query_as(RAW_HOST_PROCESSES)
            .bind(f64::from(key.window_seconds))
            .bind(key.host.as_deref())
            .bind(i64::from(key.limit.expect("a limit")))
            .fetch_all(pool)
            .await
            .expect("the raw statement");
        assert!(!raw.is_empty(), "{query}");
        assert_same_rows(answer_rows(&answer), as_parsed(&raw), query);
    }
    for query in [
        "q=app-1&window=30d&limit=100",
        "q=APP-3%20--port%3D0&window=1d&limit=100",
        "q=--port%3D2&window=1h&limit=5",
        "q=50%25&window=30d",
        "q=a_b&window=30d",
        "q=a%5Cb&window=30d",
        "q=axb&window=30d",
        "q=kworker&window=30d&host=node-a",
        "q=no-such-process&window=30d",
        // Two characters, which no trigram serves: `_` is itself there too.
        "q=p-&window=30d&limit=100",
        "q=_b&window=30d",
        "q=zq&window=30d",
    ] {
        let key = RawSearch::from_query(query)
            .expect("parses")
            .validate()
            .expect("valid");
        let answer = queries::run(pool, statement(Part::ProcessSearch), &key)
            .await
            .expect("answered");
        let raw: Vec<ProcessMatchRow> = sqlx::query_as(RAW_PROCESS_SEARCH)
            .bind(f64::from(key.window_seconds))
            .bind(key.host.as_deref())
            .bind(like_pattern(key.search.as_deref().expect("a text")))
            .bind(i64::from(key.limit.expect("a limit")))
            .fetch_all(pool)
            .await
            .expect("the raw statement");
        assert_same_rows(answer_rows(&answer), as_parsed(&raw), query);
    }

    // A process whose command line changed (an exec) is found by its latest one only,
    // where the raw rows found it by an earlier one too.
    let now = Utc::now();
    let mut before = process(
        "node-a",
        60,
        now - Duration::days(1),
        now - Duration::minutes(20),
    );
    before.command_line = Some("before-exec".into());
    let mut after = process(
        "node-a",
        60,
        now - Duration::days(1),
        now - Duration::minutes(10),
    );
    after.command_line = Some("after-exec".into());
    ingest::insert(pool, &batch(vec![before.clone(), after]))
        .await
        .expect("written");
    // The older sample again, alone (a spool replayed late), brings the old text back
    // neither to the latest sample nor to the search.
    ingest::insert(pool, &batch(vec![before]))
        .await
        .expect("replayed");
    for (text, expected) in [("before-exec", 0), ("after-exec", 1)] {
        assert_eq!(
            found(pool, &format!("q={text}&window=1h")).await,
            expected,
            "{text}"
        );
    }
}

#[tokio::test]
async fn on_postgresql_a_hosts_processes_and_the_search_answer_what_the_raw_rows_did() {
    let stack = postgres_stack().await;
    parts_answer_as_the_raw_statements(&stack).await;
    stack.finish().await;
}

/// A collector on the new image while migration 0004 has not run yet (the operator rolls
/// the pods and migrates independently): its batch is refused as transient, so it waits in
/// the spool, and lands whole, search text included, once the migration has run.
#[tokio::test]
async fn a_batch_written_before_the_search_texts_migration_waits_and_then_lands() {
    let db = TestDatabase::create().await;
    let pool = db.pool(1).await;
    let migrations = metricsstack_testkit::TempDir::new("migrations");
    let source = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../migrations");
    for entry in std::fs::read_dir(&source).expect("the migrations") {
        let path = entry.expect("an entry").path();
        let name = path
            .file_name()
            .expect("a name")
            .to_string_lossy()
            .into_owned();
        if name.as_str() < "0004" {
            std::fs::copy(&path, migrations.path().join(&name)).expect("copied");
        }
    }
    sqlx::migrate::Migrator::new(migrations.path())
        .await
        .expect("the older migrations")
        .run(&pool)
        .await
        .expect("migrated up to 0003");

    let now = Utc::now();
    let row = process("node-a", 7, now - Duration::hours(1), now);
    let error = ingest::insert(&pool, &batch(vec![row.clone()]))
        .await
        .expect_err("the statement needs migration 0004");
    assert_eq!(
        ingest::classify(&error),
        ingest::Failure::Transient,
        "{error}"
    );

    database::MIGRATOR.run(&pool).await.expect("migrated");
    ingest::insert(&pool, &batch(vec![row]))
        .await
        .expect("written");
    assert_eq!(found(&pool, "q=app-7&window=1h").await, 1);
    pool.close().await;
}

#[tokio::test]
async fn on_postgresql_with_pg_trgm_the_search_reads_the_trigram_index() {
    let stack = postgres_stack().await;
    let pool = &stack.pool;
    assert!(
        database::ensure_search_index(pool, &stack.schema)
            .await
            .expect("looked up"),
        "converging created the index"
    );
    seed_month(pool).await;
    // A few hundred rows are cheaper to scan than to look up: the plan shows that the index
    // serves the search's condition (the escaped, lower-cased pattern as a parameter) once
    // scans of the table and of its other indexes are priced out; at the plan's size the
    // planner takes it by itself (`scripts/bench-long-windows`).
    sqlx::raw_sql("SET enable_seqscan = off; SET enable_indexscan = off")
        .execute(pool)
        .await
        .expect("set");
    let plan = |query: &'static str| async move {
        queries::explain(pool, SEARCH, &search_key(query))
            .await
            .expect("explained")
            .to_string()
    };
    let long = plan("q=no-such-process&window=30d").await;
    // Two characters hold no trigram: the index, which would be read whole, is not used.
    let short = plan("q=zq&window=30d").await;
    sqlx::raw_sql("RESET enable_seqscan; RESET enable_indexscan")
        .execute(pool)
        .await
        .expect("reset");
    assert!(long.contains(database::SEARCH_INDEX), "{long}");
    assert!(!short.contains(database::SEARCH_INDEX), "{short}");
    stack.finish().await;
}

/// Texts missing or outdated, as collectors of the previous release leave them during the
/// rollout (they upsert the latest samples and write no text), are repaired by the
/// convergences of the day after migration 0004, and only then.
#[tokio::test]
async fn processes_written_without_their_text_during_the_rollout_are_given_it() {
    let stack = postgres_stack().await;
    let pool = &stack.pool;
    let now = Utc::now();
    // What an older collector writes: the latest sample alone.
    let older_collector = |pid: i32, line: &'static str| async move {
        sqlx::query(
            "INSERT INTO host_process_latest (\"timestamp\", host, pid, start_time, \
                 process_name, command_line, cpu_usage_percent, cpu_peak_percent, \
                 memory_usage_mb, virtual_memory_mb, disk_read_bytes, disk_write_bytes) \
             VALUES (now(), 'node-a', $1, now() - interval '1 hour', 'app', $2, 1, 1, 1, 1, 0, 0) \
             ON CONFLICT (host, pid, start_time) \
             DO UPDATE SET command_line = excluded.command_line",
        )
        .bind(pid)
        .bind(line)
        .execute(pool)
        .await
        .expect("written")
    };
    // A process the new collector wrote, whose command line an older one then changed.
    ingest::insert(
        pool,
        &batch(vec![process("node-a", 8, now - Duration::hours(1), now)]),
    )
    .await
    .expect("written");
    older_collector(7, "/usr/bin/written-by-the-old-release").await;
    older_collector(8, "/usr/bin/changed-by-the-old-release").await;
    assert_eq!(
        found(pool, "q=written-by-the-old&window=1d").await,
        0,
        "no text yet"
    );
    assert_eq!(
        found(pool, "q=changed-by-the-old&window=1d").await,
        0,
        "the old text still"
    );

    converge(pool, &stack.schema, "tests/latest", &storage(None), None)
        .await
        .expect("converges");
    assert_eq!(found(pool, "q=written-by-the-old&window=1d").await, 1);
    assert_eq!(found(pool, "q=changed-by-the-old&window=1d").await, 1);

    // A day after the migration, no collector of the previous release is left: the
    // convergence reads neither table.
    sqlx::query(
        "UPDATE _sqlx_migrations SET installed_on = now() - interval '25 hours' WHERE version = 4",
    )
    .execute(pool)
    .await
    .expect("aged");
    older_collector(9, "/usr/bin/a-day-later").await;
    converge(pool, &stack.schema, "tests/latest", &storage(None), None)
        .await
        .expect("converges");
    assert_eq!(found(pool, "q=a-day-later&window=1d").await, 0);
    stack.finish().await;
}

/// The index is an optimisation: a convergence that cannot build it in time (a writer holds
/// the table past the lock timeout) carries on without it, and a later one builds it.
#[tokio::test]
async fn a_search_index_that_cannot_be_created_now_fails_no_convergence_and_comes_later() {
    let db = TestDatabase::create().await;
    let schema = "metrics";
    let pool = connect(&db.url(), schema).await;
    let desired = storage(None);
    let converge_stack = || converge(&pool, schema, "tests/latest", &desired, None);
    converge_stack().await.expect("converges without pg_trgm");
    assert!(
        !database::ensure_search_index(&pool, schema)
            .await
            .expect("looked up"),
        "no pg_trgm, no index"
    );
    sqlx::raw_sql("CREATE EXTENSION pg_trgm SCHEMA public")
        .execute(&pool)
        .await
        .expect("pg_trgm is installed");
    // A writer's lock, as a collector's open transaction holds it: the index's SHARE lock
    // waits for it until the lock timeout.
    let writers = db.pool(1).await;
    let mut writing = writers.begin().await.expect("begin");
    sqlx::raw_sql("LOCK TABLE metrics.host_process_texts IN ROW EXCLUSIVE MODE")
        .execute(&mut *writing)
        .await
        .expect("locked");
    converge_stack()
        .await
        .expect("converges while the index waits");
    assert!(
        !database::ensure_search_index(&pool, schema)
            .await
            .expect("looked up"),
        "the index waited for the lock and gave up"
    );
    writing.rollback().await.expect("released");
    converge_stack().await.expect("converges");
    let valid: Option<bool> =
        sqlx::query_scalar("SELECT indisvalid FROM pg_index WHERE indexrelid = to_regclass($1)")
            .bind(format!("{schema}.{}", database::SEARCH_INDEX))
            .fetch_optional(&pool)
            .await
            .expect("looked up");
    assert_eq!(valid, Some(true), "the next convergence built the index");
    writers.close().await;
    pool.close().await;
}

#[tokio::test]
async fn on_timescaledb_a_hosts_processes_and_the_search_answer_what_the_raw_rows_did() {
    let stack = timescaledb_stack().await;
    parts_answer_as_the_raw_statements(&stack).await;
    stack.finish().await;
}

/// Writes one sample of a process of `node-old` per age (in days) through the collector's
/// ingest; converges with `retention` on `host_process_metrics`; the ages whose latest
/// samples are left.
async fn ages_left_after_converging(
    stack: &Stack,
    retention: Option<&str>,
    ages: &[i64],
) -> Vec<i64> {
    let now = Utc::now();
    for (pid, age) in ages.iter().enumerate() {
        let row = process(
            "node-old",
            pid as i32,
            now - Duration::days(60),
            now - Duration::days(*age) + Duration::hours(1),
        );
        ingest::insert(&stack.pool, &batch(vec![row]))
            .await
            .expect("written");
    }
    converge(
        &stack.pool,
        &stack.schema,
        "tests/latest",
        &storage(retention),
        None,
    )
    .await
    .expect("converges");
    let ages = sqlx::query_scalar(
        "SELECT (extract(epoch FROM now() - \"timestamp\") / 86400)::int8 \
         FROM host_process_latest WHERE host = 'node-old' ORDER BY 1",
    )
    .fetch_all(&stack.pool)
    .await
    .expect("the ages");
    let texts_of_processes_gone: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM host_process_texts AS texts WHERE NOT EXISTS \
         (SELECT 1 FROM host_process_latest AS latest \
          WHERE (latest.host, latest.pid, latest.start_time) \
              = (texts.host, texts.pid, texts.start_time))",
    )
    .fetch_one(&stack.pool)
    .await
    .expect("the texts");
    assert_eq!(texts_of_processes_gone, 0, "the texts go with the samples");
    ages
}

#[tokio::test]
async fn on_postgresql_converging_deletes_the_latest_samples_older_than_the_longest_window() {
    let stack = postgres_stack().await;
    // No retention runs on PostgreSQL: only the longest window bounds the table.
    assert_eq!(
        ages_left_after_converging(&stack, Some("7d"), &[1, 8, 29, 31, 45]).await,
        [1, 8, 29]
    );
    stack.finish().await;
}

#[tokio::test]
async fn on_timescaledb_converging_deletes_the_latest_samples_older_than_the_longest_window() {
    let stack = timescaledb_stack().await;
    assert_eq!(
        ages_left_after_converging(&stack, None, &[1, 8, 29, 31]).await,
        [1, 8, 29]
    );
    stack.finish().await;
}
