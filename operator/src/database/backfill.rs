//! Filling a continuous aggregate with the buckets of its source's rows that its refresh
//! policy never reaches. The policy refreshes only its window (by default 3 h to 1 h ago),
//! and an aggregate is created empty, so without this an aggregate made after the rows
//! (a new aggregate, one recreated, an upgrade that added it) shows only what arrived
//! since: long windows look truncated.
//!
//! Nothing is recorded about a backfill: whether one is due is read from the data on every
//! check (the oldest source row an aggregate should roll up against its oldest
//! materialised bucket), so a backfill cut short by a timeout, a lost connection or a
//! restarted operator resumes where it stopped, and a finished one is never run again.
//!
//! `refresh_continuous_aggregate` cannot run in a transaction, so each window is its own
//! statement, outside the plan's transaction, newest window first: what is materialised
//! always reaches down contiguously from the newest buckets, and the oldest materialised
//! bucket is where the next check carries on.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use sqlx::PgPool;

use super::DatabaseError;
use super::apply::{DDL_LOCK_TIMEOUT, interval, is_cancelled, qualified};
use super::desired::DesiredAggregate;

/// How long one backfill window may run before the server cancels it (the window is then
/// halved and tried again, down to a single bucket).
pub const BACKFILL_STATEMENT_TIMEOUT: &str = "2min";

/// How long one check keeps starting new backfill windows; the rest waits for the next
/// check, so that a large backfill does not hold up the stack's reconcile for long.
pub const BACKFILL_BUDGET: Duration = Duration::from_secs(60);

/// What a backfill check did for one aggregate that lacked buckets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Backfill {
    /// The aggregate.
    pub aggregate: String,
    /// The oldest bucket it should hold.
    pub from: DateTime<Utc>,
    /// How far down it is filled now: buckets from here on are materialised (`from` when
    /// the backfill finished).
    pub reached: DateTime<Utc>,
    /// Why it stopped before `from`; `None` when it finished.
    pub stopped: Option<BackfillStop>,
}

/// Why a backfill stopped short; the next check carries on from where it got.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BackfillStop {
    /// This check's [`BACKFILL_BUDGET`] was spent.
    Budget,
    /// A window failed (a lock not granted in time, a single bucket outrunning
    /// [`BACKFILL_STATEMENT_TIMEOUT`], a lost connection): the database's error.
    Failed(String),
}

/// The range of buckets an aggregate lacks: its source has rows older than the refresh
/// policy's window (and younger than the aggregate's retention) whose buckets are older
/// than its oldest materialised bucket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Gap {
    /// The bucket of the oldest such row.
    from: DateTime<Utc>,
    /// The oldest materialised bucket, or (when none is) the start of the bucket holding
    /// the refresh policy's end: the buckets before it are missing.
    until: DateTime<Utc>,
}

/// Fills each of `aggregates` that lacks buckets its source's rows make, within
/// [`BACKFILL_BUDGET`] in all; returns what it did for each aggregate that lacked any
/// (none for aggregates that were complete). Each aggregate comes with how much time one
/// statement refreshes at first, in seconds (its source table's chunk interval: a chunk is
/// what TimescaleDB sizes to be worked on at once).
pub async fn backfill(
    pool: &PgPool,
    schema: &str,
    aggregates: &[(&DesiredAggregate, i64)],
) -> Result<Vec<Backfill>, DatabaseError> {
    let started = Instant::now();
    let mut backfills = Vec::new();
    for (aggregate, window) in aggregates {
        let Some(gap) = gap(pool, schema, aggregate).await? else {
            continue;
        };
        let (reached, stopped) = fill(pool, schema, aggregate, gap, *window, started).await;
        tracing::info!(
            aggregate = aggregate.name,
            from = %gap.from,
            reached = %reached,
            stopped = ?stopped,
            "backfilled a continuous aggregate"
        );
        backfills.push(Backfill {
            aggregate: aggregate.name.clone(),
            from: gap.from,
            reached,
            stopped,
        });
    }
    Ok(backfills)
}

/// The buckets `aggregate` lacks, if any: two index lookups (the oldest source row in
/// range, the oldest materialised bucket).
async fn gap(
    pool: &PgPool,
    schema: &str,
    aggregate: &DesiredAggregate,
) -> Result<Option<Gap>, DatabaseError> {
    let materialized: Option<String> = sqlx::query_scalar(
        "SELECT format('%I.%I', materialization_hypertable_schema, \
                       materialization_hypertable_name) \
         FROM timescaledb_information.continuous_aggregates \
         WHERE view_schema = $1 AND view_name = $2",
    )
    .bind(schema)
    .bind(&aggregate.name)
    .fetch_optional(pool)
    .await
    .map_err(DatabaseError::statement(format!(
        "looking up the materialisation of {}",
        aggregate.name
    )))?;
    let Some(materialized) = materialized else {
        return Ok(None);
    };
    let source = qualified(schema, aggregate.source.table_name());
    let refresh = aggregate.refresh;
    // Rows the aggregate's retention would drop again are left out (one bound, so that the
    // index scan and chunk exclusion start at it); so are rows inside the refresh window,
    // which the policy fills.
    let gap: Option<(DateTime<Utc>, DateTime<Utc>)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT time_bucket($1::interval, oldest.at), \
                    least(materialised.at, time_bucket($1::interval, \
                          now() - coalesce($4::interval, interval '0'))) \
             FROM (SELECT min(\"timestamp\") AS at FROM {source} \
                   WHERE \"timestamp\" >= coalesce(now() - $2::interval, '-infinity')) AS oldest, \
                  (SELECT min(bucket) AS at FROM {materialized}) AS materialised \
             WHERE oldest.at < now() - $3::interval \
               AND time_bucket($1::interval, oldest.at) < coalesce(materialised.at, 'infinity')"
    )))
    .bind(interval(aggregate.bucket))
    .bind(aggregate.retention.map(interval))
    .bind(interval(refresh.start_offset))
    .bind(refresh.end_offset.map(interval))
    .fetch_optional(pool)
    .await
    .map_err(DatabaseError::statement(format!(
        "comparing {} with its source's rows",
        aggregate.name
    )))?;
    Ok(gap
        .filter(|(from, until)| from < until)
        .map(|(from, until)| Gap { from, until }))
}

/// Refreshes `gap` window by window, newest first, until it is filled, the budget is spent
/// or a window fails; returns how far down it got and why it stopped, if it did.
async fn fill(
    pool: &PgPool,
    schema: &str,
    aggregate: &DesiredAggregate,
    gap: Gap,
    window: i64,
    started: Instant,
) -> (DateTime<Utc>, Option<BackfillStop>) {
    let bucket = aggregate.bucket;
    // Whole buckets, so that every window starts on a bucket boundary as `gap` does.
    let mut window = window.max(bucket) / bucket * bucket;
    let mut reached = gap.until;
    while reached > gap.from {
        if started.elapsed() >= BACKFILL_BUDGET {
            return (reached, Some(BackfillStop::Budget));
        }
        let start = (reached - chrono::Duration::seconds(window)).max(gap.from);
        match refresh(pool, schema, &aggregate.name, start, reached).await {
            Ok(()) => reached = start,
            Err(error) if is_cancelled(&error) && window > bucket => {
                window = (window / 2).max(bucket) / bucket * bucket;
            }
            Err(error) => return (reached, Some(BackfillStop::Failed(error.to_string()))),
        }
    }
    (reached, None)
}

/// Refreshes the buckets of `view` from `start` to `end` in one statement of its own
/// (outside any transaction, as TimescaleDB requires), bounded by [`DDL_LOCK_TIMEOUT`] and
/// [`BACKFILL_STATEMENT_TIMEOUT`]. The connection's own limits are restored afterwards; a
/// connection whose limits cannot be restored is closed rather than returned to the pool.
async fn refresh(
    pool: &PgPool,
    schema: &str,
    view: &str,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    let mut conn = pool.acquire().await?;
    let (statement_timeout, lock_timeout): (String, String) = sqlx::query_as(
        "SELECT current_setting('statement_timeout'), current_setting('lock_timeout')",
    )
    .fetch_one(&mut *conn)
    .await?;
    let limit = "SELECT set_config('statement_timeout', $1, false), \
                        set_config('lock_timeout', $2, false)";
    sqlx::query(limit)
        .bind(BACKFILL_STATEMENT_TIMEOUT)
        .bind(DDL_LOCK_TIMEOUT)
        .execute(&mut *conn)
        .await?;
    let refreshed = sqlx::query(
        "CALL refresh_continuous_aggregate($1::regclass, $2::timestamptz, $3::timestamptz)",
    )
    .bind(qualified(schema, view))
    .bind(start)
    .bind(end)
    .execute(&mut *conn)
    .await;
    let restored = sqlx::query(limit)
        .bind(statement_timeout)
        .bind(lock_timeout)
        .execute(&mut *conn)
        .await;
    if restored.is_err() {
        conn.close_on_drop();
    }
    refreshed.map(drop)
}
