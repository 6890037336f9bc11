//! Late rows on real TimescaleDB: a collector that comes back after its samples' chunk was
//! compressed replays its spool into the compressed chunk, and the rows land once, even when
//! the same batch is replayed again (a collector killed after the database took a batch but
//! before it removed it from the spool sends it once more).

use std::sync::{Arc, Mutex};

use chrono::{DateTime, Duration, DurationRound, Utc};
use metricsstack_collector::metrics::Metrics;
use metricsstack_collector::rows::{Batch, HostRow, ProcessRow, VmRow};
use metricsstack_collector::spool::Spool;
use metricsstack_collector::writer::Writer;
use metricsstack_common::database::{
    DatabaseTls, PoolSettings, Pooler, SearchPath, Session, TlsMode,
};
use metricsstack_operator::crd::MetricsStackSpec;
use metricsstack_operator::database::{self, JobKind, converge, read_state};
use metricsstack_operator::validate::validate;
use metricsstack_testkit::{TimescaleSchema, unique_name};
use sqlx::PgPool;

const HOST: &str = "node-late";

/// One sample of one node: its host row, `processes` process rows and as many pod rows.
fn sample(at: DateTime<Utc>, processes: i32) -> Batch {
    let started = at - Duration::hours(5);
    Batch {
        hosts: vec![HostRow {
            timestamp: at,
            host: HOST.into(),
            cpu_usage_percent: 12.5,
            cpu_per_core_percent: vec![10.0, 15.0],
            load_1: 0.5,
            load_5: 0.4,
            load_15: 0.3,
            memory_total_bytes: 8 << 30,
            memory_used_bytes: 3 << 30,
            memory_usage_mb: 3072.0,
            swap_total_bytes: 0,
            swap_used_bytes: 0,
            disk_total_bytes: 100 << 30,
            disk_used_bytes: 40 << 30,
            disk_read_bytes: 4096,
            disk_write_bytes: 8192,
            network_rx_bytes: 1000,
            network_tx_bytes: 2000,
            uptime_seconds: 86_400,
            process_count: 200,
        }],
        processes: (1..=processes)
            .map(|pid| ProcessRow {
                timestamp: at,
                host: HOST.into(),
                pid: 1000 + pid,
                start_time: started,
                parent_pid: Some(1),
                process_name: format!("worker-{pid}"),
                command_line: Some(format!("/usr/bin/worker --id {pid}")),
                username: Some("root".into()),
                state: "S".into(),
                cpu_usage_percent: pid as f32,
                cpu_peak_percent: pid as f32 * 2.0,
                memory_usage_mb: 100.0,
                virtual_memory_mb: 400.0,
                disk_read_bytes: 0,
                disk_write_bytes: 0,
                threads: Some(4),
            })
            .collect(),
        vms: (1..=processes)
            .map(|pid| VmRow {
                timestamp: at,
                host: HOST.into(),
                pid: 1000 + pid,
                start_time: started,
                process_name: format!("worker-{pid}"),
                command_line: Some(format!("/usr/bin/worker --id {pid}")),
                pod_namespace: Some("jobs".into()),
                pod_name: Some(format!("worker-{pid}")),
                pod_uid: format!("uid-{pid}"),
                container_id: format!("container-{pid}"),
                container_name: Some("worker".into()),
                cpu_usage_percent: pid as f32,
                cpu_peak_percent: pid as f32 * 2.0,
                cpu_limit_percent: None,
                cpu_request_percent: None,
                memory_limit_percent: None,
                memory_request_percent: None,
                memory_usage_mb: 100.0,
                disk_read_bytes: 0,
                disk_write_bytes: 0,
            })
            .collect(),
    }
}

/// Rows of each metric table at `at`.
async fn rows_at(pool: &PgPool, at: DateTime<Utc>) -> [i64; 3] {
    let mut counts = [0; 3];
    for (count, table) in counts.iter_mut().zip([
        "host_overall_metrics",
        "host_process_metrics",
        "vm_process_metrics",
    ]) {
        *count = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT count(*) FROM {table} WHERE \"timestamp\" = $1"
        )))
        .bind(at)
        .fetch_one(pool)
        .await
        .expect("count");
    }
    counts
}

/// Chunks of the stack's tables that hold rows at `at`, and how many of them are compressed.
async fn chunks_at(pool: &PgPool, schema: &str, at: DateTime<Utc>) -> (i64, i64) {
    sqlx::query_as(
        "SELECT count(*), count(*) FILTER (WHERE is_compressed) \
         FROM timescaledb_information.chunks \
         WHERE hypertable_schema = $1 AND range_start <= $2 AND range_end > $2",
    )
    .bind(schema)
    .bind(at)
    .fetch_one(pool)
    .await
    .expect("the chunks")
}

#[tokio::test]
async fn a_spool_replayed_after_its_chunk_was_compressed_lands_in_it_exactly_once() {
    let tsdb = TimescaleSchema::create().await;
    let settings = PoolSettings {
        max_connections: 1,
        ..PoolSettings::default()
    };
    let tls = DatabaseTls {
        mode: TlsMode::Disable,
        ca: None,
    };
    let pool = database::connect(&tsdb.url(), &tls, &settings, &tsdb.schema)
        .await
        .expect("the operator connects");
    // The default MetricsStack's storage: compression after 7 days.
    let spec: MetricsStackSpec =
        serde_json::from_value(serde_json::json!({"database": {"secretRef": {"name": "db"}}}))
            .expect("a minimal spec parses");
    let storage = validate(&spec).expect("the defaults are valid").storage;
    converge(
        &pool,
        &tsdb.schema,
        "tests/compressed-inserts",
        &storage,
        None,
    )
    .await
    .expect("converges");

    // The node wrote samples ten days ago, past the compression horizon, and the policy
    // compressed their chunks.
    let minute = Duration::minutes(1);
    let ten_days_ago = (Utc::now() - Duration::days(10))
        .duration_trunc(minute)
        .expect("a minute");
    let early = sample(ten_days_ago, 5);
    metricsstack_collector::ingest::insert(&pool, &early)
        .await
        .expect("the early sample is written");
    let state = read_state(&pool, &tsdb.schema).await.expect("state");
    for table in [
        "host_overall_metrics",
        "host_process_metrics",
        "vm_process_metrics",
    ] {
        let job = state
            .job(JobKind::Compression, table)
            .expect("a compression policy");
        sqlx::query(sqlx::AssertSqlSafe(format!("CALL run_job({})", job.id)))
            .execute(&pool)
            .await
            .expect("the compression job runs");
    }
    let late_at = ten_days_ago + minute;
    assert_eq!(
        chunks_at(&pool, &tsdb.schema, late_at).await,
        (3, 3),
        "each table's chunk of the late sample is compressed"
    );

    // The collector was away; its spool replays, oldest first: the early sample once more
    // (the database took it, but the collector was killed before removing it from the
    // spool), then the next sample, twice for the same reason.
    let late = sample(late_at, 5);
    let spool_dir = std::env::temp_dir().join(unique_name("compressed-inserts-spool"));
    let mut spool = Spool::open(&spool_dir, 1 << 20).expect("the spool opens");
    for batch in [&early, &late, &late] {
        spool.push(batch).expect("spooled");
    }
    let spool = Arc::new(Mutex::new(spool));
    let metrics = Arc::new(Metrics::default());
    let session = Session {
        application_name: "metricsstack-collector",
        schema: tsdb.schema.clone(),
        search_path: SearchPath::StackSchema,
        statement_timeout: None,
        pooler: Pooler::None,
    };
    let mut writer = Writer::new(pool.clone(), session, spool.clone(), metrics.clone());
    writer.drain().await;
    assert!(
        spool.lock().expect("not poisoned").is_empty(),
        "the database took every replayed batch"
    );
    assert_eq!(metrics.write_failures.get(), 0, "no write failed");
    assert_eq!(metrics.rows_dead_lettered_total(), 0, "no row was refused");

    assert_eq!(
        rows_at(&pool, ten_days_ago).await,
        [1, 5, 5],
        "the compressed rows are there once, replayed or not"
    );
    assert_eq!(
        rows_at(&pool, late_at).await,
        [1, 5, 5],
        "the late sample's rows are there once"
    );
    let (chunks, _) = chunks_at(&pool, &tsdb.schema, late_at).await;
    assert_eq!(chunks, 3, "the late rows went into the existing chunks");
    drop(writer);
    pool.close().await;
    std::fs::remove_dir_all(&spool_dir).ok();
}
