//! The operator's DDL never queues for long behind a lock on a metric table: while a step
//! waits for its exclusive lock, every insert of the collectors would queue behind it, so
//! a plan gives up after `DDL_LOCK_TIMEOUT` (and is retried with backoff) instead.

use std::time::Duration;

use metricsstack_common::database::{DatabaseTls, PoolSettings};
use metricsstack_operator::crd::MetricTable;
use metricsstack_operator::database::{
    DatabaseError, DatabaseState, Step, apply_steps, connect, migrate,
};
use metricsstack_testkit::TestDatabase;

#[tokio::test]
async fn a_step_waiting_for_a_lock_gives_up_instead_of_stalling_ingest() {
    let db = TestDatabase::create().await;
    let operator = connect(
        &db.url(),
        &DatabaseTls::default(),
        &PoolSettings::default(),
        "public",
    )
    .await
    .expect("the operator connects");
    migrate(&operator, "public").await.expect("migrated");

    // Another session holds the table, as a long transaction or a backup would.
    let holder = db.pool(1).await;
    let mut held = holder.begin().await.expect("a transaction");
    sqlx::query("LOCK TABLE host_process_metrics IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *held)
        .await
        .expect("the lock");

    let step = Step::ConfigureCompression {
        table: MetricTable::HostProcessMetrics,
        segment_by: vec!["host".into()],
        order_by: vec!["timestamp DESC".into()],
    };
    // Far above the lock timeout: without it the step would wait as long as the lock is held.
    let outcome = tokio::time::timeout(
        Duration::from_secs(120),
        apply_steps(&operator, "public", &DatabaseState::default(), &[step]),
    )
    .await
    .expect("the step gave up waiting for the lock");
    match outcome {
        Err(DatabaseError::Statement {
            source: sqlx::Error::Database(error),
            ..
        }) => assert_eq!(
            error.code().as_deref(),
            Some("55P03"),
            "lock_not_available, not another failure: {error}"
        ),
        other => panic!("expected the lock timeout, got {other:?}"),
    }
    held.rollback().await.expect("released");
}
