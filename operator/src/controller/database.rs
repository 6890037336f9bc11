//! The database step of a reconcile: with the connection URI and CA the Secret step read,
//! connect with the operator's pool settings and the stack's TLS (one pool per stack, kept
//! across reconciles), and converge the schema.

use std::collections::HashMap;
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::Mutex;

use kube::ResourceExt;
use kube::runtime::reflector::ObjectRef;
use sqlx::PgPool;

use k8s_openapi::jiff::Timestamp;
use sha2::{Digest, Sha256};

use super::ACKNOWLEDGE_ANNOTATION;
use super::conditions::Outcome;
use super::secret::{Connection, SecretError};
use crate::crd::{
    AppliedRevision, ConditionReason, ConditionType, DatabaseStatus, MetricsStack, PendingPlan,
};
use crate::database::{self, BackfillStop, Convergence, DatabaseError, Loss};
use crate::validate::ValidSpec;
use metricsstack_common::database::{CaCertificate, DatabaseTls};

/// Database pools, one per stack.
#[derive(Default)]
pub struct Pools {
    pools: Mutex<HashMap<ObjectRef<MetricsStack>, (u64, PgPool)>>,
}

impl Pools {
    /// The stack's pool, opened anew when the URI, the TLS or the pool settings changed.
    async fn get(
        &self,
        stack: &MetricsStack,
        connection: &Connection,
        valid: &ValidSpec,
    ) -> Result<PgPool, DatabaseError> {
        let key = ObjectRef::from_obj(stack);
        let mut hasher = DefaultHasher::new();
        let database = &stack.spec.database;
        let uri = connection.uri.as_str();
        let tls = DatabaseTls {
            mode: database.tls_mode.into(),
            ca: connection.ca.clone().map(CaCertificate::Pem),
        };
        (uri, &tls, &database.schema, &valid.operator_pool).hash(&mut hasher);
        let fingerprint = hasher.finish();
        let cached = self.lock().get(&key).cloned();
        if let Some((existing, pool)) = cached
            && existing == fingerprint
        {
            return Ok(pool);
        }
        let pool =
            database::connect(uri, &tls, &valid.operator_pool, &stack.spec.database.schema).await?;
        let replaced = self.lock().insert(key, (fingerprint, pool.clone()));
        if let Some((_, old)) = replaced {
            old.close().await;
        }
        Ok(pool)
    }

    /// Closes and forgets the stack's pool.
    pub async fn remove(&self, stack: &MetricsStack) {
        let removed = self.lock().remove(&ObjectRef::from_obj(stack));
        if let Some((_, pool)) = removed {
            pool.close().await;
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ObjectRef<MetricsStack>, (u64, PgPool)>> {
        self.pools.lock().expect("the pool map is not poisoned")
    }
}

/// What the database step found: three conditions, the database status, and whether the
/// failure (if any) is transient and worth a retry with backoff.
pub struct DatabaseOutcome {
    /// `DatabaseReady`.
    pub ready: Outcome,
    /// `PoliciesApplied`.
    pub policies: Outcome,
    /// `JobsHealthy`.
    pub jobs: Outcome,
    /// `AggregatesBackfilled`.
    pub backfill: Outcome,
    /// How many of the stack's policy jobs failed on their last run; `None` when the step
    /// did not get as far as reading them.
    pub failing_jobs: Option<usize>,
    /// For `status.database`.
    pub status: Option<DatabaseStatus>,
    /// A transient error to retry with backoff.
    pub retry: Option<DatabaseError>,
    /// What was restored in a database that had drifted from a plan it already matched,
    /// for the `DriftCorrected` event.
    pub drift_corrected: Option<String>,
    /// The aggregates this check finished filling with older buckets, for the `Backfilled`
    /// event.
    pub backfilled: Option<String>,
}

impl DatabaseOutcome {
    /// The database did not answer: policies waiting for it.
    fn not_ready(reason: ConditionReason, message: String, retry: Option<DatabaseError>) -> Self {
        Self::policies_failed(
            Outcome::failed(ConditionType::DatabaseReady, reason, message),
            Outcome::failed(
                ConditionType::PoliciesApplied,
                ConditionReason::Waiting,
                "waiting for the database",
            ),
            retry,
        )
    }

    /// The policies could not be applied (`policies` says why): jobs and backfill unknown,
    /// no status to write.
    fn policies_failed(ready: Outcome, policies: Outcome, retry: Option<DatabaseError>) -> Self {
        Self {
            ready,
            policies,
            jobs: jobs_unknown(),
            backfill: backfill_unknown(),
            failing_jobs: None,
            status: None,
            retry,
            drift_corrected: None,
            backfilled: None,
        }
    }
}

/// `JobsHealthy` while the jobs cannot be read: a warning, as a failing job is.
fn jobs_unknown() -> Outcome {
    Outcome::warning(
        ConditionType::JobsHealthy,
        ConditionReason::Waiting,
        "waiting for the policies to be applied",
    )
}

/// `AggregatesBackfilled` while the aggregates cannot be read: a warning.
fn backfill_unknown() -> Outcome {
    Outcome::warning(
        ConditionType::AggregatesBackfilled,
        ConditionReason::Waiting,
        "waiting for the policies to be applied",
    )
}

/// Connects with the URI and CA the Secret step read, and converges the schema and storage
/// policies. Fails only when reading the Secret or the CA failed at the API server.
#[tracing::instrument(skip_all, fields(
    namespace = stack.metadata.namespace.as_deref(),
    name = stack.metadata.name.as_deref(),
))]
pub async fn reconcile_database(
    pools: &Pools,
    stack: &MetricsStack,
    valid: &ValidSpec,
    secret: Result<Connection, SecretError>,
) -> Result<DatabaseOutcome, kube::Error> {
    let pool = match connect_stack(pools, stack, valid, secret).await? {
        Ok(pool) => pool,
        Err(outcome) => return Ok(outcome),
    };
    let info = match database::probe(&pool).await {
        Ok(info) => info,
        Err(error) => {
            return Ok(DatabaseOutcome::not_ready(
                ConditionReason::DatabaseUnreachable,
                error.to_string(),
                Some(error),
            ));
        }
    };
    let ready = Outcome::ok(
        ConditionType::DatabaseReady,
        match &info.timescaledb_version {
            Some(version) => format!("connected; TimescaleDB {version}"),
            None => "connected; PostgreSQL without TimescaleDB".to_owned(),
        },
    );
    let acknowledged = stack
        .annotations()
        .get(ACKNOWLEDGE_ANNOTATION)
        .map(String::as_str);
    let schema = &stack.spec.database.schema;
    let owner = stack_owner(stack);
    let measured = measured_plan(stack);
    let converged = database::converge_measured(
        &pool,
        schema,
        &owner,
        &valid.storage,
        acknowledged,
        measured.as_ref().map(|(hash, loss)| (hash.as_str(), *loss)),
    )
    .await;
    let convergence = match converged {
        Ok(convergence) => convergence,
        // Nothing to retry: the spec or the other stack must change, or the table be
        // converted by hand (a periodic check and every spec change look again).
        Err(error @ (DatabaseError::Conflict { .. } | DatabaseError::MigrationNeeded { .. })) => {
            let reason = match error {
                DatabaseError::Conflict { .. } => ConditionReason::Conflict,
                _ => ConditionReason::MigrationNeeded,
            };
            let policies =
                Outcome::failed(ConditionType::PoliciesApplied, reason, error.to_string());
            return Ok(DatabaseOutcome::policies_failed(ready, policies, None));
        }
        Err(error) => {
            let policies = Outcome::failed(
                ConditionType::PoliciesApplied,
                ConditionReason::DatabaseError,
                error.to_string(),
            );
            return Ok(DatabaseOutcome::policies_failed(
                ready,
                policies,
                Some(error),
            ));
        }
    };
    Ok(DatabaseOutcome {
        ready,
        policies: policies_outcome(&convergence),
        jobs: jobs_outcome(&convergence),
        backfill: backfill_outcome(&convergence),
        failing_jobs: Some(convergence.failing_jobs.len()),
        status: Some(database_status(stack, &convergence)),
        retry: None,
        drift_corrected: drift_corrected(stack, &convergence),
        backfilled: backfilled(&convergence),
    })
}

/// What the convergence restored, when the database had already matched this generation
/// of the spec (`PoliciesApplied` held for it): then every step applied undoes a change
/// made behind the operator's back. `None` when nothing was applied or the spec changed.
fn drift_corrected(stack: &MetricsStack, convergence: &Convergence) -> Option<String> {
    let generation = stack.metadata.generation;
    let matched_before = (stack.status.as_ref()).is_some_and(|status| {
        status.conditions.iter().any(|c| {
            c.type_ == ConditionType::PoliciesApplied.as_str()
                && c.status == "True"
                && c.observed_generation == generation
        })
    });
    if !matched_before || convergence.applied.is_empty() {
        return None;
    }
    let steps: Vec<String> = convergence
        .applied
        .iter()
        .map(ToString::to_string)
        .collect();
    Some(format!(
        "the database had drifted from the spec; restored: {}",
        steps.join("; ")
    ))
}

/// The hash and loss of the plan the status shows held back, so that an unchanged plan is
/// not counted again; `None` when there is none or its deletion time does not parse.
fn measured_plan(stack: &MetricsStack) -> Option<(String, Loss)> {
    let pending = stack
        .status
        .as_ref()?
        .database
        .as_ref()?
        .pending_plan
        .as_ref()?;
    let earliest_deletion = match &pending.earliest_deletion {
        Some(at) => Some(
            chrono::DateTime::parse_from_rfc3339(at)
                .ok()?
                .with_timezone(&chrono::Utc),
        ),
        None => None,
    };
    Some((
        pending.hash.clone(),
        Loss {
            chunks: pending.chunks_to_drop,
            rows: pending.rows_to_drop,
            earliest_deletion,
        },
    ))
}

/// How many applied revisions the status keeps.
const REVISIONS_KEPT: usize = 5;

fn policies_outcome(convergence: &Convergence) -> Outcome {
    if let Some(pending) = &convergence.pending {
        let steps: Vec<String> = pending.steps.iter().map(ToString::to_string).collect();
        return Outcome::failed(
            ConditionType::PoliciesApplied,
            ConditionReason::DataLossNotAcknowledged,
            format!(
                "held back because it would delete data the current policies keep: {} rows in \
                 {} chunks now, and deleting starts {}: {}. To apply it, set the annotation \
                 {ACKNOWLEDGE_ANNOTATION}: \"{}\"",
                pending.loss.rows,
                pending.loss.chunks,
                pending
                    .loss
                    .earliest_deletion
                    .map_or_else(|| "now".to_owned(), |at| format!("at {}", at.to_rfc3339())),
                steps.join("; "),
                pending.hash
            ),
        );
    }
    if !convergence.unsupported.is_empty() {
        return Outcome {
            type_: ConditionType::PoliciesApplied,
            ok: true,
            reason: ConditionReason::TimescaleDbMissing,
            message: format!(
                "schema applied; TimescaleDB is not installed, so these are not: {}",
                convergence.unsupported.join(", ")
            ),
            blocks_ready: true,
        };
    }
    Outcome::ok(
        ConditionType::PoliciesApplied,
        format!("{} policies in force", convergence.policies),
    )
}

/// `JobsHealthy`: which of the stack's policy jobs failed on their last run, with their
/// error and since when. A warning: the stack serves, and only the database can fix the
/// job, but its rollups go stale, or its data goes uncompressed or undropped.
fn jobs_outcome(convergence: &Convergence) -> Outcome {
    if convergence.timescaledb_version.is_none() {
        return Outcome::ok(
            ConditionType::JobsHealthy,
            "no policy jobs: PostgreSQL without TimescaleDB",
        );
    }
    if convergence.failing_jobs.is_empty() {
        return Outcome::ok(
            ConditionType::JobsHealthy,
            format!(
                "none of {} policy jobs failed on its last run",
                convergence.policies
            ),
        );
    }
    let failing: Vec<String> = convergence
        .failing_jobs
        .iter()
        .map(|failing| {
            let job = &failing.job;
            let kind = match job.kind {
                database::JobKind::Compression => "compression",
                database::JobKind::Retention => "retention",
                database::JobKind::Refresh => "refresh",
            };
            format!(
                "{kind} policy (job {}) on {}: failing since {}: {}",
                job.id,
                job.relation,
                failing
                    .since
                    .map_or_else(|| "an unknown time".to_owned(), |at| at.to_rfc3339()),
                failing.error.as_deref().unwrap_or("no error recorded")
            )
        })
        .collect();
    Outcome::warning(
        ConditionType::JobsHealthy,
        ConditionReason::JobFailed,
        format!(
            "{} of {} policy jobs failed on their last run: {}. TimescaleDB retries them on \
             schedule; timescaledb_information.job_errors has each run's error",
            failing.len(),
            convergence.policies,
            failing.join("; ")
        ),
    )
}

/// `AggregatesBackfilled`: whether each continuous aggregate holds the buckets of its
/// source's rows older than its refresh window. Unfinished for want of time, it holds
/// `Ready` back (the long windows still lack data, and the stack is checked again soon);
/// failed, it is a warning (the next periodic check tries again, and the stack serves).
fn backfill_outcome(convergence: &Convergence) -> Outcome {
    if convergence.timescaledb_version.is_none() {
        return Outcome::ok(
            ConditionType::AggregatesBackfilled,
            "no continuous aggregates: PostgreSQL without TimescaleDB",
        );
    }
    let (mut failed, mut budgeted) = (Vec::new(), Vec::new());
    for b in &convergence.backfills {
        let reached = format!(
            "{} filled down to {} of {}",
            b.aggregate,
            b.reached.to_rfc3339(),
            b.from.to_rfc3339()
        );
        match &b.stopped {
            Some(BackfillStop::Failed(error)) => failed.push(format!("{reached}: {error}")),
            Some(BackfillStop::Budget) => budgeted.push(reached),
            None => {}
        }
    }
    if !failed.is_empty() {
        return Outcome::warning(
            ConditionType::AggregatesBackfilled,
            ConditionReason::BackfillFailed,
            format!(
                "filling continuous aggregates with the buckets of older rows failed: {}. \
                 Long windows lack those buckets; the next check carries on from there",
                failed.join("; ")
            ),
        );
    }
    if !budgeted.is_empty() {
        return Outcome::failed(
            ConditionType::AggregatesBackfilled,
            ConditionReason::Backfilling,
            format!(
                "filling continuous aggregates with the buckets of older rows, newest first: \
                 {}; the next check carries on",
                budgeted.join("; ")
            ),
        );
    }
    Outcome::ok(
        ConditionType::AggregatesBackfilled,
        "every continuous aggregate holds the buckets of its source's rows",
    )
}

/// The aggregates this convergence finished filling, for the `Backfilled` event.
fn backfilled(convergence: &Convergence) -> Option<String> {
    let filled: Vec<String> = convergence
        .backfills
        .iter()
        .filter(|b| b.stopped.is_none())
        .map(|b| format!("{} from {}", b.aggregate, b.from.to_rfc3339()))
        .collect();
    (!filled.is_empty()).then(|| {
        format!(
            "filled continuous aggregates with the buckets of rows older than their refresh \
             window: {}",
            filled.join("; ")
        )
    })
}

/// The database's status after `convergence`: its `applied_revisions` hold only the
/// revision this convergence applied, if any; [`with_history`] adds the older ones from the
/// status it is written over.
fn database_status(stack: &MetricsStack, convergence: &Convergence) -> DatabaseStatus {
    let applied_revisions = if convergence.applied.is_empty() {
        Vec::new()
    } else {
        vec![AppliedRevision {
            generation: stack.metadata.generation.unwrap_or_default(),
            spec_hash: storage_hash(stack),
            steps: convergence
                .applied
                .iter()
                .map(ToString::to_string)
                .collect(),
            applied_at: Timestamp::now().to_string(),
        }]
    };
    DatabaseStatus {
        timescaledb_version: convergence.timescaledb_version.clone(),
        policies: i32::try_from(convergence.policies).unwrap_or(i32::MAX),
        unsupported: convergence.unsupported.clone(),
        applied_revisions,
        pending_plan: convergence.pending.as_ref().map(|p| PendingPlan {
            hash: p.hash.clone(),
            steps: p.steps.iter().map(ToString::to_string).collect(),
            chunks_to_drop: p.loss.chunks,
            rows_to_drop: p.loss.rows,
            earliest_deletion: p.loss.earliest_deletion.map(|at| at.to_rfc3339()),
        }),
    }
}

/// `database` (as [`database_status`] made it) with the revisions `previous` recorded
/// after its own, newest first, at most [`REVISIONS_KEPT`]. It is applied to the status the
/// write goes over, not to the one the reconcile started from, which the watch cache may
/// hold from before the operator's last write: building on that, a reconcile that applied
/// nothing wrote an empty history over the one just written.
pub(super) fn with_history(
    mut database: DatabaseStatus,
    previous: Option<&DatabaseStatus>,
) -> DatabaseStatus {
    if let Some(previous) = previous {
        database
            .applied_revisions
            .extend(previous.applied_revisions.iter().cloned());
    }
    database.applied_revisions.truncate(REVISIONS_KEPT);
    database
}

/// A short hash of the storage spec, so that a person can match revisions to commits.
fn storage_hash(stack: &MetricsStack) -> String {
    let json = serde_json::to_vec(&stack.spec.storage).expect("the storage spec serialises");
    format!("{:x}", Sha256::digest(json))[..16].to_owned()
}

/// Removes the policies the operator created for the stack (`deletionPolicy:
/// RemovePolicies`), connecting as the Secret step read; returns what it removed,
/// as step descriptions.
#[tracing::instrument(skip_all, fields(
    namespace = stack.metadata.namespace.as_deref(),
    name = stack.metadata.name.as_deref(),
))]
pub async fn remove_stack_policies(
    pools: &Pools,
    stack: &MetricsStack,
    valid: &ValidSpec,
    secret: Result<Connection, SecretError>,
) -> Result<Result<Vec<String>, DatabaseOutcome>, kube::Error> {
    let pool = match connect_stack(pools, stack, valid, secret).await? {
        Ok(pool) => pool,
        Err(outcome) => return Ok(Err(outcome)),
    };
    Ok(match remove_policies_and_release(&pool, stack).await {
        Ok(steps) => Ok(steps.iter().map(ToString::to_string).collect()),
        Err(error) => Err(DatabaseOutcome::not_ready(
            ConditionReason::DatabaseError,
            error.to_string(),
            Some(error),
        )),
    })
}

/// Removes the stack's policies, then hands its schema over to whichever stack comes next.
async fn remove_policies_and_release(
    pool: &PgPool,
    stack: &MetricsStack,
) -> Result<Vec<database::Step>, DatabaseError> {
    let schema = &stack.spec.database.schema;
    let steps = database::remove_policies(pool, schema).await?;
    database::release(pool, schema, &stack_owner(stack)).await?;
    Ok(steps)
}

/// How the stack is recorded as the owner of its schema: `namespace/name`.
fn stack_owner(stack: &MetricsStack) -> String {
    format!(
        "{}/{}",
        stack.namespace().unwrap_or_default(),
        stack.name_any()
    )
}

/// The stack's pool, or the outcome that says why there is none; fails only when reading
/// the Secret or the CA failed at the API server.
async fn connect_stack(
    pools: &Pools,
    stack: &MetricsStack,
    valid: &ValidSpec,
    secret: Result<Connection, SecretError>,
) -> Result<Result<PgPool, DatabaseOutcome>, kube::Error> {
    let not_ready = |reason, error: SecretError| {
        Ok(Err(DatabaseOutcome::not_ready(
            reason,
            error.to_string(),
            None,
        )))
    };
    let connection = match secret {
        Ok(connection) => connection,
        Err(SecretError::Api(error)) => return Err(error),
        Err(error @ SecretError::NotFound { .. }) => {
            return not_ready(ConditionReason::SecretNotFound, error);
        }
        Err(error @ SecretError::NoUri { .. }) => {
            return not_ready(ConditionReason::SecretInvalid, error);
        }
        Err(error @ SecretError::CaNotFound { .. }) => {
            return not_ready(ConditionReason::CaNotFound, error);
        }
        Err(error @ SecretError::NoCa { .. }) => {
            return not_ready(ConditionReason::CaInvalid, error);
        }
    };
    Ok(match pools.get(stack, &connection, valid).await {
        Ok(pool) => Ok(pool),
        Err(error @ DatabaseError::InvalidUri) => Err(DatabaseOutcome::not_ready(
            ConditionReason::SecretInvalid,
            format!("Secret {}: {error}", connection.uri.secret),
            None,
        )),
        Err(error) if error.is_tls_failure() => Err(DatabaseOutcome::not_ready(
            ConditionReason::TlsFailed,
            error.to_string(),
            Some(error),
        )),
        Err(error) => Err(DatabaseOutcome::not_ready(
            ConditionReason::DatabaseUnreachable,
            error.to_string(),
            Some(error),
        )),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::database::{Backfill, FailingJob, Job, JobKind};

    fn revision(generation: i64) -> AppliedRevision {
        AppliedRevision {
            generation,
            spec_hash: format!("hash{generation}"),
            steps: vec![format!("step of {generation}")],
            applied_at: "2026-12-02T21:00:00Z".into(),
        }
    }

    #[test]
    fn the_history_is_the_written_over_statuses_with_this_convergences_revision_first() {
        let previous = DatabaseStatus {
            applied_revisions: (1..=5).rev().map(revision).collect(),
            ..DatabaseStatus::default()
        };
        // Nothing applied: the history written over is kept whole (building on a stale
        // copy without it used to write it away).
        let nothing = DatabaseStatus::default();
        let kept = with_history(nothing.clone(), Some(&previous));
        assert_eq!(kept.applied_revisions, previous.applied_revisions);
        // A revision applied: first, the oldest dropped beyond five.
        let applied = DatabaseStatus {
            applied_revisions: vec![revision(6)],
            ..nothing
        };
        let generations: Vec<i64> = with_history(applied.clone(), Some(&previous))
            .applied_revisions
            .iter()
            .map(|r| r.generation)
            .collect();
        assert_eq!(generations, [6, 5, 4, 3, 2]);
        assert_eq!(with_history(applied, None).applied_revisions, [revision(6)]);
    }

    fn convergence(failing_jobs: Vec<FailingJob>) -> Convergence {
        Convergence {
            timescaledb_version: Some("2.23.0".into()),
            policies: 12,
            failing_jobs,
            ..Convergence::default()
        }
    }

    #[test]
    fn a_failing_job_is_a_warning_naming_its_policy_error_and_since_when() {
        let healthy = jobs_outcome(&convergence(Vec::new()));
        assert!(healthy.ok, "{healthy:?}");
        let since = chrono::DateTime::parse_from_rfc3339("2026-12-01T10:00:00Z")
            .expect("a time")
            .to_utc();
        let failing = jobs_outcome(&convergence(vec![FailingJob {
            job: Job {
                id: 1004,
                kind: JobKind::Refresh,
                relation: "vm_process_metrics_hourly".into(),
                schedule: 3600,
                after: Some(3 * 3600),
                end_offset: Some(3600),
            },
            error: Some("cannot drop portal".into()),
            since: Some(since),
        }]));
        assert_eq!(
            (failing.ok, failing.blocks_ready, failing.reason),
            (false, false, ConditionReason::JobFailed)
        );
        assert!(
            failing.message.contains(
                "refresh policy (job 1004) on vm_process_metrics_hourly: failing since \
                 2026-12-01T10:00:00+00:00: cannot drop portal"
            ),
            "{}",
            failing.message
        );
    }

    #[test]
    fn a_backfill_cut_short_holds_ready_back_and_a_failed_one_is_a_warning() {
        let at = |text| {
            chrono::DateTime::parse_from_rfc3339(text)
                .expect("a time")
                .to_utc()
        };
        let backfill = |stopped| Backfill {
            aggregate: "host_process_metrics_hourly".into(),
            from: at("2026-10-01T00:00:00Z"),
            reached: at("2026-11-20T00:00:00Z"),
            stopped,
        };
        let with = |backfills| Convergence {
            backfills,
            ..convergence(Vec::new())
        };
        let complete = with(Vec::new());
        assert!(backfill_outcome(&complete).ok);
        assert_eq!(backfilled(&complete), None);

        let budgeted = backfill_outcome(&with(vec![backfill(Some(BackfillStop::Budget))]));
        assert_eq!(
            (budgeted.ok, budgeted.blocks_ready, budgeted.reason),
            (false, true, ConditionReason::Backfilling)
        );
        assert!(
            budgeted.message.contains(
                "host_process_metrics_hourly filled down to 2026-11-20T00:00:00+00:00 of \
                 2026-10-01T00:00:00+00:00"
            ),
            "{}",
            budgeted.message
        );

        let failed = backfill_outcome(&with(vec![backfill(Some(BackfillStop::Failed(
            "canceling statement due to lock timeout".into(),
        )))]));
        assert_eq!(
            (failed.ok, failed.blocks_ready, failed.reason),
            (false, false, ConditionReason::BackfillFailed)
        );
        assert!(
            failed
                .message
                .contains(": canceling statement due to lock timeout")
        );

        let mut finished = backfill(None);
        finished.reached = finished.from;
        let done = with(vec![finished]);
        assert!(backfill_outcome(&done).ok);
        assert!(
            backfilled(&done)
                .is_some_and(|note| note
                    .contains("host_process_metrics_hourly from 2026-10-01T00:00:00+00:00")),
            "{:?}",
            backfilled(&done)
        );
    }
}
