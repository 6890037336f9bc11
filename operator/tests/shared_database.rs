//! Two stacks on one PostgreSQL database, each in its own schema, stay apart: a stack whose
//! schema is not `public` gets its own tables even when `public` already holds another
//! stack's migrated tables (the operator's search path ends with `public`, where a lookup
//! through the path would find the other stack's bookkeeping), and each stack's data plane
//! reads and writes its own schema only.

use metricsstack_common::database::{DatabaseTls, PoolSettings, Pooler, SearchPath, Session};
use metricsstack_operator::database::{connect, migrate};
use metricsstack_testkit::TestDatabase;
use sqlx::PgPool;
use sqlx::postgres::PgConnectOptions;

async fn operator_pool(db: &TestDatabase, schema: &str) -> PgPool {
    connect(
        &db.url(),
        &DatabaseTls::default(),
        &PoolSettings::default(),
        schema,
    )
    .await
    .expect("the operator connects")
}

async fn exists(pool: &PgPool, relation: &str) -> bool {
    sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
        .bind(relation)
        .fetch_one(pool)
        .await
        .expect("to_regclass answers")
}

#[tokio::test]
async fn a_stack_in_its_own_schema_is_migrated_there_although_public_is_migrated_already() {
    let db = TestDatabase::create().await;
    let first = operator_pool(&db, "public").await;
    migrate(&first, "public").await.expect("public is migrated");
    assert!(exists(&first, "public.host_process_metrics").await);

    sqlx::query("CREATE SCHEMA team_b")
        .execute(&first)
        .await
        .expect("the second stack's schema");
    let second = operator_pool(&db, "team_b").await;
    migrate(&second, "team_b")
        .await
        .expect("team_b is migrated");
    for table in [
        "team_b._sqlx_migrations",
        "team_b.host_process_metrics",
        "team_b.host_overall_metrics",
        "team_b.vm_process_metrics",
    ] {
        assert!(exists(&second, table).await, "{table} exists");
    }
    // Migrated once, the schema is only read.
    migrate(&second, "team_b")
        .await
        .expect("an up-to-date schema");

    // The second stack's data plane (the stack's schema alone on its path) and its operator
    // (the schema, then public) both resolve the metric tables to the stack's own schema.
    let options: PgConnectOptions = db.url().parse().expect("a URL");
    let data_plane = Session {
        application_name: "test-collector",
        schema: "team_b".into(),
        search_path: SearchPath::StackSchema,
        statement_timeout: None,
        pooler: Pooler::None,
    }
    .connect(options, &PoolSettings::default())
    .await
    .expect("the data plane connects");
    for pool in [&data_plane, &second] {
        let resolved: String = sqlx::query_scalar(
            "SELECT n.nspname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.oid = 'host_process_metrics'::regclass",
        )
        .fetch_one(pool)
        .await
        .expect("the table resolves");
        assert_eq!(resolved, "team_b");
    }
}
