//! The collector's writes through a real PgBouncer (Debian's package, 1.18) in transaction
//! mode, whose server pool (4 connections) is smaller than the number of writers: with
//! `database.pooler: PgBouncerTransaction` every batch arrives exactly once and in its own
//! stack's schema; sqlx's default named prepared statements do not survive such a pooler.

use std::sync::{Arc, Mutex};

use chrono::{DateTime, Duration, Utc};
use metricsstack_collector::metrics::Metrics;
use metricsstack_collector::rows::{Batch, HostRow};
use metricsstack_collector::spool::Spool;
use metricsstack_collector::writer::{Writer, spool_sample};
use metricsstack_common::database::{PoolSettings, Pooler, SearchPath, Session};
use metricsstack_testkit::{TempDir, TestDatabase, required_env};
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions as _, Connection as _, PgPool};

/// Writers at once: three times PgBouncer's server pool in the test environment.
const WRITERS: usize = 12;
/// Batches each writer sends.
const BATCHES: usize = 10;

/// The test database as reached through the test environment's PgBouncer.
fn through_pgbouncer(db: &TestDatabase) -> PgConnectOptions {
    required_env("METRICSSTACK_TEST_PGBOUNCER_URL")
        .parse::<PgConnectOptions>()
        .expect("the PgBouncer URL parses")
        .database(&db.name)
}

/// A database with the metric tables in `public` and in the schema `stack_b`.
async fn two_stacks() -> (TestDatabase, PgPool) {
    let db = TestDatabase::create().await;
    let pool = db.pool(2).await;
    sqlx::migrate!("../migrations")
        .run(&pool)
        .await
        .expect("the schema applies to public");
    sqlx::raw_sql("CREATE SCHEMA stack_b")
        .execute(&pool)
        .await
        .expect("the second schema");
    let stack_b = db
        .options
        .clone()
        .options([("search_path", "stack_b")])
        .connect()
        .await
        .expect("a connection on the second schema");
    let mut stack_b = stack_b;
    sqlx::migrate!("../migrations")
        .run(&mut stack_b)
        .await
        .expect("the schema applies to stack_b");
    stack_b.close().await.ok();
    (db, pool)
}

fn host_row(host: &str, timestamp: DateTime<Utc>) -> HostRow {
    HostRow {
        timestamp,
        host: host.into(),
        cpu_usage_percent: 1.0,
        cpu_per_core_percent: vec![1.0, 2.0],
        load_1: 0.0,
        load_5: 0.0,
        load_15: 0.0,
        memory_total_bytes: 1,
        memory_used_bytes: 1,
        memory_usage_mb: 0.0,
        swap_total_bytes: 0,
        swap_used_bytes: 0,
        disk_total_bytes: 0,
        disk_used_bytes: 0,
        disk_read_bytes: 0,
        disk_write_bytes: 0,
        network_rx_bytes: 0,
        network_tx_bytes: 0,
        uptime_seconds: 0,
        process_count: 0,
    }
}

/// One collector's write path: its own pool of one connection through PgBouncer, its own
/// spool, and the writer between them.
struct Collector {
    host: String,
    spool: Arc<Mutex<Spool>>,
    metrics: Arc<Metrics>,
    writer: Writer,
    _dir: TempDir,
}

impl Collector {
    fn new(host: String, schema: &str, pooler: Pooler, options: PgConnectOptions) -> Self {
        let session = Session {
            application_name: "test-collector",
            schema: schema.into(),
            search_path: SearchPath::StackSchema,
            statement_timeout: None,
            pooler,
        };
        let settings = PoolSettings {
            max_connections: 1,
            ..PoolSettings::default()
        };
        let pool = session.connect_lazy(options, &settings);
        let dir = TempDir::new("pgbouncer");
        let spool = Arc::new(Mutex::new(
            Spool::open(dir.path(), 64 * 1024 * 1024).expect("the spool opens"),
        ));
        let metrics = Arc::new(Metrics::default());
        let writer = Writer::new(pool, session, spool.clone(), metrics.clone());
        Self {
            host,
            spool,
            metrics,
            writer,
            _dir: dir,
        }
    }

    /// Spools one sample at `timestamp` and sends what the spool holds.
    async fn sample_and_send(&mut self, timestamp: DateTime<Utc>) {
        let batch = Batch {
            hosts: vec![host_row(&self.host, timestamp)],
            ..Batch::default()
        };
        let (spool, metrics) = (self.spool.clone(), self.metrics.clone());
        tokio::task::spawn_blocking(move || spool_sample(&spool, &metrics, batch, 1000))
            .await
            .expect("spooling ends");
        self.writer.drain().await;
    }

    fn spool_is_empty(&self) -> bool {
        self.spool.lock().expect("the spool").is_empty()
    }
}

/// Host rows of `host` in `schema`.
async fn rows_of(pool: &PgPool, schema: &str, host: &str) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT count(*) FROM {schema}.host_overall_metrics WHERE host = $1"
    )))
    .bind(host)
    .fetch_one(pool)
    .await
    .expect("a count")
}

/// What became of one collector's batches.
#[derive(Debug, PartialEq, Eq)]
struct Outcome {
    host: String,
    /// The spool is empty: the database took every batch.
    delivered: bool,
    /// Host rows in the collector's own schema.
    own_schema: i64,
    /// Host rows in the other stack's schema.
    other_schema: i64,
}

/// [`WRITERS`] collectors, half of them of each stack, each sending [`BATCHES`] batches
/// through PgBouncer at once, their sessions set up for `pooler`.
async fn write_through_pgbouncer(pooler: Pooler) -> Vec<Outcome> {
    let (db, pool) = two_stacks().await;
    let options = through_pgbouncer(&db);
    let start = Utc::now();
    let schema = |i: usize| {
        if i.is_multiple_of(2) {
            "public"
        } else {
            "stack_b"
        }
    };
    let writers = (0..WRITERS).map(|i| {
        let mut collector = Collector::new(format!("node-{i}"), schema(i), pooler, options.clone());
        tokio::spawn(async move {
            for n in 0..BATCHES {
                collector
                    .sample_and_send(start + Duration::seconds(n as i64))
                    .await;
            }
            collector
        })
    });
    let mut outcomes = Vec::new();
    for (i, collector) in futures::future::join_all(writers)
        .await
        .into_iter()
        .enumerate()
    {
        let collector = collector.expect("the writer ends");
        outcomes.push(Outcome {
            delivered: collector.spool_is_empty(),
            own_schema: rows_of(&pool, schema(i), &collector.host).await,
            other_schema: rows_of(&pool, schema(i + 1), &collector.host).await,
            host: collector.host,
        });
    }
    outcomes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn batches_of_more_writers_than_server_connections_arrive_once_in_their_own_schema() {
    for outcome in write_through_pgbouncer(Pooler::PgBouncerTransaction).await {
        assert_eq!(
            outcome,
            Outcome {
                host: outcome.host.clone(),
                delivered: true,
                own_schema: BATCHES as i64,
                other_schema: 0,
            },
            "every batch once, in the collector's own schema"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sessions_set_up_for_a_direct_connection_fail_or_write_into_another_stack() {
    let outcomes = write_through_pgbouncer(Pooler::None).await;
    let wrong: Vec<&Outcome> = outcomes
        .iter()
        .filter(|o| !o.delivered || o.own_schema != BATCHES as i64 || o.other_schema != 0)
        .collect();
    // Seen: most spools keep batches that failed on a statement name the server connection
    // lacks or already has, and rows land in the other stack's schema, whose search path an
    // earlier client left on the server connection.
    assert!(
        !wrong.is_empty(),
        "without database.pooler every write went right through transaction-mode PgBouncer: \
         {outcomes:#?}"
    );
}

#[tokio::test]
async fn sqlx_named_prepared_statements_break_through_transaction_mode() {
    let db = TestDatabase::create().await;
    let options = through_pgbouncer(&db);
    // Two clients, one after the other: PgBouncer hands the second the server connection
    // the first used, where the first's statement `sqlx_s_1` still exists.
    let mut first = options.connect().await.expect("the first client connects");
    let mut second = options.connect().await.expect("the second client connects");
    let answer: i32 = sqlx::query_scalar("SELECT $1::int4")
        .bind(1)
        .fetch_one(&mut first)
        .await
        .expect("the first client's statement");
    assert_eq!(answer, 1);
    let error = sqlx::query_scalar::<_, i32>("SELECT $1::int4")
        .bind(2)
        .fetch_one(&mut second)
        .await
        .expect_err("the second client's statement collides with the first's");
    let code = error
        .as_database_error()
        .and_then(|e| e.code())
        .map(|code| code.into_owned());
    assert_eq!(code.as_deref(), Some("42P05"), "{error}");
}
