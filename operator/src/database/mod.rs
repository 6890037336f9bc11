//! The operator's side of the database: connecting with the spec's pool settings, and the
//! policy manager that converges schema and storage policies: read what the database has
//! ([`introspect`]), compare with the spec into a typed plan ([`plan`], pure), and apply
//! only that ([`apply`]), holding back steps that would delete data until acknowledged;
//! then fill continuous aggregates that lack the buckets of older rows ([`backfill`]).

mod apply;
mod backfill;
mod connection;
mod desired;
mod introspect;
mod owner;
mod plan;

use std::collections::BTreeSet;

use sha2::{Digest, Sha256};
use sqlx::PgPool;

pub use apply::{
    ADOPTION_MAX_ROWS, DDL_LOCK_TIMEOUT, DDL_STATEMENT_TIMEOUT, Loss, Measure, adoptable,
    apply_steps, interval, measure_loss, qualified,
};
pub use backfill::{Backfill, BackfillStop};
pub use connection::{DatabaseError, DatabaseInfo, MIGRATOR, connect, migrate, probe};
pub use desired::{
    DesiredAggregate, DesiredCompression, DesiredRefresh, DesiredStorage, DesiredTable,
    latest_horizon, rollup, table_columns,
};
pub use introspect::{
    DatabaseState, FailingJob, Job, JobKind, MANAGED_COMMENT, read_failing_jobs, read_state,
};
pub use owner::{OWNER_TABLE, release};
pub use plan::{Step, human, plan, removal};

/// What converging the database did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Convergence {
    /// The TimescaleDB version; `None` on plain PostgreSQL.
    pub timescaledb_version: Option<String>,
    /// The steps applied, in order (empty when the database already matched).
    pub applied: Vec<Step>,
    /// Steps held back because they would delete data now, with what they would delete.
    pub pending: Option<PendingSteps>,
    /// What the spec asks that this database cannot do.
    pub unsupported: Vec<String>,
    /// Policy jobs in force for the stack's tables and aggregates.
    pub policies: usize,
    /// Those of them whose last run failed.
    pub failing_jobs: Vec<FailingJob>,
    /// The aggregates that lacked the buckets of older source rows, and how far this
    /// convergence filled them (empty when every aggregate was complete).
    pub backfills: Vec<Backfill>,
}

/// Steps that would delete data, waiting for their hash to be acknowledged.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PendingSteps {
    /// Hash of the held-back steps; acknowledging it lets them run.
    pub hash: String,
    /// The held-back steps.
    pub steps: Vec<Step>,
    /// What they would delete now, in total.
    pub loss: Loss,
}

/// The hash that acknowledges exactly these steps.
pub fn plan_hash(steps: &[Step]) -> String {
    let mut hasher = Sha256::new();
    for step in steps {
        hasher.update(step.to_string().as_bytes());
        hasher.update(b"\n");
    }
    format!("{:x}", hasher.finalize())[..16].to_owned()
}

/// Brings the schema up to date and the storage policies in line with `desired`. Steps that
/// would ever delete data the current policies keep (now, or later: a retention shortened
/// over young data) run only when `acknowledged` is their [`plan_hash`]; so do the steps
/// that recreate an aggregate whose drop is held back.
///
/// The schema is claimed for `owner` (the stack's `namespace/name`) first: a schema another
/// stack manages is left alone ([`DatabaseError::Conflict`]), so that two stacks never drop
/// each other's policies and aggregates.
pub async fn converge(
    pool: &PgPool,
    schema: &str,
    owner: &str,
    desired: &DesiredStorage,
    acknowledged: Option<&str>,
) -> Result<Convergence, DatabaseError> {
    converge_measured(pool, schema, owner, desired, acknowledged, None).await
}

/// As [`converge`], given what the plan held back last time would delete (`measured`: its
/// [`plan_hash`] and [`Loss`], from the stack's status). A held plan with that hash is not
/// counted again, and its loss is reported unchanged: rows are counted once per plan, not
/// on every check (counting is a scan, and a count that moves as rows age would rewrite
/// the status on every check).
pub async fn converge_measured(
    pool: &PgPool,
    schema: &str,
    owner: &str,
    desired: &DesiredStorage,
    acknowledged: Option<&str>,
    measured: Option<(&str, Loss)>,
) -> Result<Convergence, DatabaseError> {
    ensure_schema(pool, schema).await?;
    owner::claim(pool, schema, owner).await?;
    migrate(pool, schema).await?;
    ensure_search_index(pool, schema).await?;
    repair_texts(pool, schema).await?;
    let state = read_state(pool, schema).await?;
    let horizon = latest_horizon(desired, state.timescaledb_version.is_some());
    prune_latest(pool, schema, horizon).await?;
    if state.timescaledb_version.is_none() {
        return Ok(Convergence {
            unsupported: unsupported_without_timescaledb(desired),
            ..Convergence::default()
        });
    }
    let steps = plan(desired, &state);
    let mut safe = Vec::new();
    let mut risky = Vec::new();
    // Aggregates whose drop is held back: the steps that recreate them wait with it.
    let mut held = BTreeSet::new();
    for step in steps {
        if held.contains(step.relation()) {
            risky.push(step);
            continue;
        }
        let would_lose = if step.can_drop_data() {
            measure_loss(pool, schema, &state, &step, Measure::DeletionStart).await?
        } else {
            Loss::default()
        };
        if would_lose.deletes_kept_data() {
            if let Step::DropAggregate { name } = &step {
                held.insert(name.clone());
            }
            risky.push(step);
        } else {
            safe.push(step);
        }
    }
    let hash = plan_hash(&risky);
    let pending = if risky.is_empty() || acknowledged == Some(hash.as_str()) {
        safe.append(&mut risky);
        None
    } else {
        let loss = match measured {
            Some((measured_hash, loss)) if measured_hash == hash => loss,
            _ => {
                let mut loss = Loss::default();
                // A recreated aggregate's new policies lose what its drop loses already.
                let measurable = |step: &&Step| {
                    step.can_drop_data()
                        && (matches!(step, Step::DropAggregate { .. })
                            || !held.contains(step.relation()))
                };
                for step in risky.iter().filter(measurable) {
                    let step_loss =
                        measure_loss(pool, schema, &state, step, Measure::Everything).await?;
                    loss = loss.and(step_loss);
                }
                loss
            }
        };
        Some(PendingSteps {
            hash,
            steps: risky,
            loss,
        })
    };
    for step in &safe {
        adoptable(pool, schema, step).await?;
    }
    let jobs = if safe.is_empty() {
        state.jobs
    } else {
        apply::apply_steps(pool, schema, &state, &safe).await?;
        read_state(pool, schema).await?.jobs
    };
    let failing_jobs = read_failing_jobs(pool, &jobs).await?;
    // After the plan's transaction (a refresh cannot run inside one); an aggregate whose
    // recreation waits for acknowledgement is not filled before it is dropped.
    let backfilled: Vec<(&DesiredAggregate, i64)> = desired
        .aggregates
        .iter()
        .filter(|aggregate| pending.is_none() || !held.contains(&aggregate.name))
        .map(|aggregate| (aggregate, backfill_window(desired, aggregate)))
        .collect();
    let backfills = backfill::backfill(pool, schema, &backfilled).await?;
    Ok(Convergence {
        timescaledb_version: state.timescaledb_version,
        applied: safe,
        pending,
        unsupported: Vec::new(),
        policies: jobs.len(),
        failing_jobs,
        backfills,
    })
}

/// How much time one backfill statement of `aggregate` refreshes at first, in seconds: its
/// source's chunk interval (a day when the spec leaves the table out).
fn backfill_window(desired: &DesiredStorage, aggregate: &DesiredAggregate) -> i64 {
    desired
        .tables
        .iter()
        .find(|table| table.table == aggregate.source)
        .map_or(86_400, |table| table.chunk_interval)
}

/// Deletes the rows of `host_process_latest` whose latest sample is older than `horizon`
/// seconds ([`latest_horizon`]): processes no window can list any more; their search texts
/// go with them. Run on every convergence, that is every drift check; it finds nothing to
/// delete most of the time, by the table's time index.
async fn prune_latest(pool: &PgPool, schema: &str, horizon: i64) -> Result<(), DatabaseError> {
    let latest = qualified(schema, "host_process_latest");
    let texts = qualified(schema, "host_process_texts");
    // The texts of the same rows (one snapshot for both parts); the statement's own rows are
    // the processes deleted.
    let deleted = sqlx::query(sqlx::AssertSqlSafe(format!(
        "WITH texts AS (DELETE FROM {texts} AS texts USING {latest} AS latest \
                        WHERE (texts.host, texts.pid, texts.start_time) \
                            = (latest.host, latest.pid, latest.start_time) \
                          AND latest.\"timestamp\" < now() - $1::interval) \
         DELETE FROM {latest} WHERE \"timestamp\" < now() - $1::interval"
    )))
    .bind(interval(horizon))
    .execute(pool)
    .await
    .map_err(DatabaseError::statement(
        "pruning the latest process samples",
    ))?
    .rows_affected();
    if deleted > 0 {
        tracing::info!(
            deleted,
            horizon,
            "pruned the latest samples of processes gone"
        );
    }
    Ok(())
}

/// Migration 0004, which moved the search texts into `host_process_texts`.
const TEXTS_MIGRATION: i64 = 4;

/// For a day after migration 0004, gives every latest sample whose process has no search
/// text, or one its sample no longer has, the text of that sample: rows that collectors of
/// the previous release wrote while the rollout ran (they write no texts), or that came in
/// while the migration copied the texts. A hash join of the two tables (a quarter of a
/// second at 144,400 processes on a busy 2-core machine), hence only while such writers can
/// remain; afterwards one lookup finds the day past and reads neither table.
async fn repair_texts(pool: &PgPool, schema: &str) -> Result<(), DatabaseError> {
    let latest = qualified(schema, "host_process_latest");
    let texts = qualified(schema, "host_process_texts");
    let migrations = qualified(schema, "_sqlx_migrations");
    let text = qualified(schema, "process_search_text");
    let repaired = sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO {texts} AS texts (host, pid, start_time, search_text) \
         SELECT latest.host, latest.pid, latest.start_time, \
                {text}(latest.command_line, latest.process_name) \
         FROM {latest} AS latest LEFT JOIN {texts} AS kept USING (host, pid, start_time) \
         WHERE kept.search_text IS DISTINCT FROM {text}(latest.command_line, latest.process_name) \
           AND EXISTS (SELECT 1 FROM {migrations} \
                       WHERE version = $1 AND installed_on > now() - interval '1 day') \
         ON CONFLICT (host, pid, start_time) DO UPDATE SET search_text = excluded.search_text"
    )))
    .bind(TEXTS_MIGRATION)
    .execute(pool)
    .await
    .map_err(DatabaseError::statement(
        "repairing the process search texts",
    ))?
    .rows_affected();
    if repaired > 0 {
        tracing::info!(
            repaired,
            "gave processes written without a search text theirs"
        );
    }
    Ok(())
}

/// The trigram index of the processes' search texts (`host_process_texts`).
pub const SEARCH_INDEX: &str = "host_process_texts_search";

/// Creates [`SEARCH_INDEX`] when pg_trgm is installed in the database (in any schema: its
/// operator class is named with that schema) and the index is missing, so that a search
/// few processes match reads the index rather than every process's text; returns whether
/// the index exists. Without pg_trgm (`CREATE EXTENSION pg_trgm`, a trusted extension a
/// database owner may create) the search still answers, reading every text. The table holds
/// one row per process and gets the index once, waiting at most [`DDL_LOCK_TIMEOUT`] for
/// its lock; every later convergence reads the catalog once and does nothing. The index is
/// an optimisation: failing to create it (a lock held too long, no `USAGE` on pg_trgm's
/// schema) is logged as a warning and tried again on the next convergence, and fails no
/// convergence.
pub async fn ensure_search_index(pool: &PgPool, schema: &str) -> Result<bool, DatabaseError> {
    let (index, trigram_schema): (bool, Option<String>) = sqlx::query_as(
        "SELECT to_regclass(format('%I.%I', $1::text, $2::text)) IS NOT NULL, \
                (SELECT quote_ident(n.nspname) FROM pg_extension AS e \
                 JOIN pg_namespace AS n ON n.oid = e.extnamespace WHERE e.extname = 'pg_trgm')",
    )
    .bind(schema)
    .bind(SEARCH_INDEX)
    .fetch_one(pool)
    .await
    .map_err(DatabaseError::statement("looking up the search index"))?;
    let Some(trigram_schema) = trigram_schema.filter(|_| !index) else {
        return Ok(index);
    };
    match create_search_index(pool, schema, &trigram_schema).await {
        Ok(()) => {
            tracing::info!(schema, "created the trigram index of the process search");
            Ok(true)
        }
        Err(error) => {
            tracing::warn!(
                schema,
                %error,
                "could not create the trigram index of the process search; searches read \
                 every process's text until the next convergence creates it"
            );
            Ok(false)
        }
    }
}

/// [`SEARCH_INDEX`] with pg_trgm's operator class from `trigram_schema` (quoted), in a
/// transaction that waits at most [`DDL_LOCK_TIMEOUT`] for the table's lock and runs at
/// most [`DDL_STATEMENT_TIMEOUT`]. Not `CONCURRENTLY`: the build holds the collectors'
/// writes of texts for its seconds, once, and the test TimescaleDB (PGlite, one session)
/// was seen to corrupt its state after concurrent builds.
async fn create_search_index(
    pool: &PgPool,
    schema: &str,
    trigram_schema: &str,
) -> Result<(), sqlx::Error> {
    let mut tx = apply::begin_ddl(pool).await?;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "CREATE INDEX IF NOT EXISTS \"{SEARCH_INDEX}\" ON {} \
         USING gin (search_text {trigram_schema}.gin_trgm_ops)",
        qualified(schema, "host_process_texts")
    )))
    .execute(&mut *tx)
    .await?;
    tx.commit().await
}

/// Creates the stack's schema if the database does not have it yet (and only then: a
/// converged database gets no DDL).
async fn ensure_schema(pool: &PgPool, schema: &str) -> Result<(), DatabaseError> {
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)")
            .bind(schema)
            .fetch_one(pool)
            .await
            .map_err(DatabaseError::statement("looking up the schema"))?;
    if !exists {
        // The name matched the identifier pattern in validation; it is quoted all the same.
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE SCHEMA \"{schema}\"")))
            .execute(pool)
            .await
            .map_err(DatabaseError::statement(format!(
                "creating the schema {schema}"
            )))?;
    }
    Ok(())
}

/// Removes every policy job the operator manages in `schema` (tables, aggregates and data
/// stay); returns the steps run.
pub async fn remove_policies(pool: &PgPool, schema: &str) -> Result<Vec<Step>, DatabaseError> {
    let state = read_state(pool, schema).await?;
    let steps = removal(&state);
    if !steps.is_empty() {
        apply::apply_steps(pool, schema, &state, &steps).await?;
    }
    Ok(steps)
}

/// What the spec asks that a PostgreSQL without TimescaleDB cannot do.
fn unsupported_without_timescaledb(desired: &DesiredStorage) -> Vec<String> {
    let mut unsupported = Vec::new();
    for table in &desired.tables {
        let name = table.table.table_name();
        unsupported.push(format!("hypertable {name}"));
        if table.compression.is_some() {
            unsupported.push(format!("compression of {name}"));
        }
        if table.retention.is_some() {
            unsupported.push(format!("retention of {name}"));
        }
    }
    for aggregate in &desired.aggregates {
        unsupported.push(format!("continuous aggregate {}", aggregate.name));
    }
    unsupported
}
