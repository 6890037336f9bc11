//! One reconcile of a MetricsStack, as a sequence of named steps: read the connection
//! Secret (dereference) -> validate the spec (pure) -> build the desired objects (pure) ->
//! apply them -> converge the database -> write the status. The finalizer is the one
//! top-level action: it runs the pipeline while the stack lives and the clean-up once it is
//! deleted.

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::rbac::v1::ClusterRoleBinding;
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::runtime::reflector::ObjectRef;
use kube::{Api, Resource, ResourceExt};
use serde_json::json;

use super::Context;
use super::apply::{Applied, FIELD_MANAGER, apply_all};
use super::conditions::{Outcome, conditions};
use super::database::{DatabaseOutcome, reconcile_database, remove_stack_policies, with_history};
use super::pod_creation::failed_pod_creation;
use super::secret::{Connection, SecretError, read_connection};
use crate::crd::{
    CollectorsStatus, ConditionReason, ConditionType, DeletionPolicy, MetricsStack,
    MetricsStackStatus, QueryAuthentication,
};
use crate::database::DatabaseError;
use crate::resources::{self, Component, DesiredObjects, desired_objects};
use crate::validate::{SpecError, ValidSpec, validate};

/// The finalizer that lets the operator clean up what lives outside the namespace's garbage
/// collection: database policies and the cluster-scoped ClusterRoleBindings.
pub const FINALIZER: &str = "metricsstack.dev/cleanup";
/// Annotation acknowledging a plan that drops data, by its hash.
pub const ACKNOWLEDGE_ANNOTATION: &str = "metricsstack.dev/acknowledge-data-loss";
/// How often a converged stack is checked again for changes made outside Kubernetes (the
/// database is checked more often, every `spec.driftCheckInterval`).
pub(super) const RESYNC: Duration = Duration::from_secs(300);
/// How often a converged stack is checked again when the operator does not watch Secrets
/// (cluster-wide, where it may only `get` them): the longest a rotated database Secret
/// goes unnoticed.
pub(super) const SECRET_RECHECK: Duration = Duration::from_secs(60);
/// How often a stack that is still converging (pods starting, Secret missing) is checked.
const PROGRESS_CHECK: Duration = Duration::from_secs(30);

/// Why a reconcile failed; each is retried with backoff.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// The API server refused or failed a request.
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// The database failed in a way worth retrying.
    #[error("database: {0}")]
    Database(#[from] DatabaseError),
    /// Adding or removing the finalizer failed.
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<ReconcileError>>),
    /// Clean-up cannot proceed (for example the database Secret is gone).
    #[error("clean-up: {0}")]
    Cleanup(String),
    /// The object has no namespace (MetricsStack is namespaced, so this is a broken object).
    #[error("the MetricsStack has no namespace")]
    NoNamespace,
}

impl ReconcileError {
    /// A short label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Kube(_) => "kubernetes",
            Self::Database(_) => "database",
            Self::Finalizer(_) => "finalizer",
            Self::Cleanup(_) => "cleanup",
            Self::NoNamespace => "no_namespace",
        }
    }
}

/// Reconciles one stack; a converged stack is checked again after `converged_requeue`.
#[tracing::instrument(skip_all, fields(
    namespace = stack.metadata.namespace.as_deref(),
    name = stack.metadata.name.as_deref(),
))]
pub async fn reconcile(
    stack: Arc<MetricsStack>,
    ctx: Arc<Context>,
    converged_requeue: Duration,
) -> Result<Action, ReconcileError> {
    let started = Instant::now();
    let namespace = stack.namespace().ok_or(ReconcileError::NoNamespace)?;
    let stacks: Api<MetricsStack> = Api::namespaced(ctx.client.clone(), &namespace);
    let result = finalizer(&stacks, FINALIZER, stack.clone(), |event| async {
        match event {
            Finalizer::Apply(stack) => apply(&stack, &namespace, &ctx, converged_requeue).await,
            Finalizer::Cleanup(stack) => cleanup(&stack, &ctx).await,
        }
    })
    .await
    .map_err(|e| ReconcileError::Finalizer(Box::new(e)));
    ctx.metrics.reconciled(started.elapsed());
    if result.is_ok() {
        ctx.failures
            .lock()
            .expect("the failure map is not poisoned")
            .remove(&ObjectRef::from_obj(&*stack));
    }
    result
}

/// The pipeline of a living stack. A Secret that is missing or holds no URI fails no step
/// before the database's: the objects are applied all the same. A read the API server
/// failed is retried with backoff before anything is applied, so that the pods' checksum,
/// which covers the connection, does not change with a passing failure.
async fn apply(
    stack: &MetricsStack,
    namespace: &str,
    ctx: &Context,
    converged_requeue: Duration,
) -> Result<Action, ReconcileError> {
    let secret = match read_connection(&ctx.client, stack).await {
        Err(SecretError::Api(error)) => return Err(error.into()),
        secret => secret,
    };
    let valid = match validate_spec(stack) {
        Ok(valid) => valid,
        Err(error) => return report_invalid_spec(ctx, stack, &error).await,
    };
    let connection = secret.as_ref().ok().map(Connection::digest);
    let desired = desired_objects(
        stack,
        &valid,
        &ctx.images,
        &ctx.cluster_roles,
        connection.as_deref(),
    );
    let applied = apply_objects(ctx, stack, namespace, &desired).await?;
    let database = reconcile_database(&ctx.pools, stack, &valid, secret).await?;
    if let Some(note) = &database.drift_corrected {
        publish(
            ctx,
            stack,
            EventType::Normal,
            "DriftCorrected",
            note.clone(),
        )
        .await;
    }
    if let Some(note) = &database.backfilled {
        publish(ctx, stack, EventType::Normal, "Backfilled", note.clone()).await;
    }
    if let Some(failing) = database.failing_jobs {
        ctx.metrics
            .failing_jobs(namespace, &stack.name_any(), failing);
    }
    let converged = write_status(ctx, stack, &applied, &database).await?;
    next_action(
        converged,
        database.retry,
        converged_requeue.min(valid.drift_check_interval),
    )
}

/// Checks the spec and converts it to the settings the later steps use (pure).
#[tracing::instrument(skip_all, fields(
    namespace = stack.metadata.namespace.as_deref(),
    name = stack.metadata.name.as_deref(),
))]
fn validate_spec(stack: &MetricsStack) -> Result<ValidSpec, SpecError> {
    validate(&stack.spec)
}

/// Says on the stack that its spec is invalid; nothing to retry: the spec must change, and a
/// change wakes the controller.
#[tracing::instrument(skip_all, fields(
    namespace = stack.metadata.namespace.as_deref(),
    name = stack.metadata.name.as_deref(),
))]
async fn report_invalid_spec(
    ctx: &Context,
    stack: &MetricsStack,
    error: &SpecError,
) -> Result<Action, ReconcileError> {
    publish(
        ctx,
        stack,
        EventType::Warning,
        "InvalidSpec",
        error.to_string(),
    )
    .await;
    let outcome = Outcome::failed(
        ConditionType::PoliciesApplied,
        ConditionReason::InvalidSpec,
        error.to_string(),
    );
    update_status(ctx, stack, &[outcome], None, None, None).await?;
    Ok(Action::await_change())
}

/// Applies the desired objects, with an event naming those that changed; a failure is
/// reported on the stack before it is returned.
#[tracing::instrument(skip_all, fields(
    namespace = stack.metadata.namespace.as_deref(),
    name = stack.metadata.name.as_deref(),
))]
async fn apply_objects(
    ctx: &Context,
    stack: &MetricsStack,
    namespace: &str,
    desired: &DesiredObjects,
) -> Result<Applied, ReconcileError> {
    let applied = match apply_all(&ctx.client, namespace, desired).await {
        Ok(applied) => applied,
        Err(error) => {
            report_apply_failure(ctx, stack, &error).await?;
            return Err(error.into());
        }
    };
    if !applied.changed.is_empty() {
        let note = format!("applied {}", applied.changed.join(", "));
        publish(ctx, stack, EventType::Normal, "Applied", note).await;
    }
    Ok(applied)
}

/// Writes the conditions and counts the objects and the database showed, with a warning
/// event for each failing condition when the status changed; returns whether every
/// condition holds.
#[tracing::instrument(skip_all, fields(
    namespace = stack.metadata.namespace.as_deref(),
    name = stack.metadata.name.as_deref(),
))]
async fn write_status(
    ctx: &Context,
    stack: &MetricsStack,
    applied: &Applied,
    database: &DatabaseOutcome,
) -> Result<bool, kube::Error> {
    let collectors = applied.daemon_set.as_ref().map(collectors_status);
    let creation_failure = match &applied.daemon_set {
        Some(daemon_set) => failed_pod_creation(&ctx.client, daemon_set).await,
        None => None,
    };
    let outcomes = [
        collectors_outcome(collectors.as_ref(), creation_failure.as_deref()),
        database.ready.clone(),
        database.policies.clone(),
        database.jobs.clone(),
        database.backfill.clone(),
        query_service_outcome(applied.deployment.as_ref()),
        authentication_outcome(stack.spec.query_service.authentication),
    ];
    let sidecars = super::sidecars::count(ctx, stack).await;
    let changed = update_status(
        ctx,
        stack,
        &outcomes,
        collectors,
        database.status.clone(),
        sidecars,
    )
    .await?;
    if changed {
        for outcome in outcomes.iter().filter(|o| !o.ok) {
            let reason = outcome.reason.as_str();
            publish(
                ctx,
                stack,
                EventType::Warning,
                reason,
                outcome.message.clone(),
            )
            .await;
        }
    }
    Ok(outcomes.iter().all(|o| o.ok || !o.blocks_ready))
}

/// Whether the query service checks its callers; a warning when the spec turned it off.
fn authentication_outcome(authentication: QueryAuthentication) -> Outcome {
    match authentication {
        QueryAuthentication::Kubernetes => Outcome::ok(
            ConditionType::QueryServiceAuthenticated,
            "API callers need a bearer token allowed `get` on this stack's metricsstacks/data",
        ),
        QueryAuthentication::None => Outcome::warning(
            ConditionType::QueryServiceAuthenticated,
            ConditionReason::AuthenticationDisabled,
            "spec.queryService.authentication is None: anyone who can reach the query service \
             reads this stack's data, command lines and user names included; set it to \
             Kubernetes and grant readers `get` on metricsstacks/data",
        ),
    }
}

/// Retries a transient database failure with backoff; otherwise checks again soon while
/// the stack converges, and after `converged_requeue` once it has (never later than that).
fn next_action(
    converged: bool,
    retry: Option<DatabaseError>,
    converged_requeue: Duration,
) -> Result<Action, ReconcileError> {
    match retry {
        Some(error) => Err(error.into()),
        None if converged => Ok(Action::requeue(converged_requeue)),
        None => Ok(Action::requeue(PROGRESS_CHECK.min(converged_requeue))),
    }
}

/// Says on the stack why its objects could not be applied (once per distinct failure: an
/// unchanged status writes nothing and publishes no event).
async fn report_apply_failure(
    ctx: &Context,
    stack: &MetricsStack,
    error: &kube::Error,
) -> Result<(), kube::Error> {
    let hint = match error {
        kube::Error::Api(status) if status.code == 403 => {
            "; the operator's RBAC lacks this right: upgrade the chart or grant what its \
             ClusterRole lists"
        }
        _ => "; retrying with backoff",
    };
    let message = format!("applying the stack's Kubernetes objects failed: {error}{hint}");
    let outcomes = [
        ConditionType::CollectorsReady,
        ConditionType::QueryServiceReady,
    ]
    .map(|kind| Outcome::failed(kind, ConditionReason::ApplyFailed, message.clone()));
    if update_status(ctx, stack, &outcomes, None, None, None).await? {
        publish(ctx, stack, EventType::Warning, "ApplyFailed", message).await;
    }
    Ok(())
}

fn collectors_status(daemon_set: &DaemonSet) -> CollectorsStatus {
    let status = daemon_set.status.clone().unwrap_or_default();
    CollectorsStatus::new(status.desired_number_scheduled, status.number_ready)
}

/// The collectors' condition; `creation_failure` is why the DaemonSet could not create a
/// pod, from its events.
fn collectors_outcome(
    collectors: Option<&CollectorsStatus>,
    creation_failure: Option<&str>,
) -> Outcome {
    if let (Some(c), Some(failure)) = (collectors, creation_failure) {
        let hint = if failure.contains("PodSecurity") {
            ". The collector needs the Pod Security level `privileged` (hostPID, the \
             SYS_PTRACE capability, root and hostPath volumes): label the namespace \
             pod-security.kubernetes.io/enforce=privileged, or run the stack in a namespace \
             that has it"
        } else {
            ""
        };
        return Outcome::failed(
            ConditionType::CollectorsReady,
            ConditionReason::PodCreationFailed,
            format!(
                "{} collectors ready: the DaemonSet cannot create collector pods \
                 (FailedCreate): {failure}{hint}",
                c.summary
            ),
        );
    }
    match collectors {
        Some(c) if c.desired > 0 && c.ready == c.desired => Outcome::ok(
            ConditionType::CollectorsReady,
            format!("{} collectors ready", c.summary),
        ),
        Some(c) if c.desired == 0 => Outcome::failed(
            ConditionType::CollectorsReady,
            ConditionReason::Progressing,
            "no node runs a collector yet: check collector.nodeSelector and collector.tolerations",
        ),
        Some(c) => Outcome::failed(
            ConditionType::CollectorsReady,
            ConditionReason::Progressing,
            format!("{} collectors ready", c.summary),
        ),
        None => Outcome::failed(
            ConditionType::CollectorsReady,
            ConditionReason::Progressing,
            "the collector DaemonSet has no status yet",
        ),
    }
}

fn query_service_outcome(deployment: Option<&Deployment>) -> Outcome {
    let desired = deployment
        .and_then(|d| d.spec.as_ref())
        .and_then(|s| s.replicas)
        .unwrap_or(1);
    let status = deployment
        .and_then(|d| d.status.clone())
        .unwrap_or_default();
    let available = status.available_replicas.unwrap_or(0);
    let updated = status.updated_replicas.unwrap_or(0);
    if available >= desired && updated >= desired {
        Outcome::ok(
            ConditionType::QueryServiceReady,
            format!("{available}/{desired} replicas available"),
        )
    } else {
        Outcome::failed(
            ConditionType::QueryServiceReady,
            ConditionReason::Progressing,
            format!("{available}/{desired} replicas available, {updated} updated"),
        )
    }
}

/// Writes the status when it differs from the stored one; returns whether it did. The write
/// is conditional on the object's `resourceVersion`: when the watch cache lagged behind the
/// operator's own last write, the status is built again over the live one and written once
/// more, so that nothing built on the stale copy (the applied revisions) overwrites newer.
async fn update_status(
    ctx: &Context,
    stack: &MetricsStack,
    outcomes: &[Outcome],
    collectors: Option<CollectorsStatus>,
    database: Option<crate::crd::DatabaseStatus>,
    sidecars: Option<crate::crd::SidecarsStatus>,
) -> Result<bool, kube::Error> {
    let api: Api<MetricsStack> =
        Api::namespaced(ctx.client.clone(), &stack.namespace().unwrap_or_default());
    let build = |over: &MetricsStack| {
        let previous = over.status.clone().unwrap_or_default();
        let status = MetricsStackStatus {
            observed_generation: stack.meta().generation,
            conditions: conditions(
                outcomes,
                &previous.conditions,
                stack.meta().generation,
                Timestamp::now(),
            ),
            collectors: collectors.clone().or(previous.collectors.clone()),
            database: match database.clone() {
                Some(database) => Some(with_history(database, previous.database.as_ref())),
                None => previous.database.clone(),
            },
            sidecars: sidecars.clone().or(previous.sidecars.clone()),
        };
        (status != previous).then(|| {
            json!({
                "apiVersion": MetricsStack::api_version(&()),
                "kind": MetricsStack::kind(&()),
                "metadata": { "resourceVersion": over.resource_version() },
                "status": status,
            })
        })
    };
    let Some(patch) = build(stack) else {
        return Ok(false);
    };
    let params = PatchParams::apply(FIELD_MANAGER).force();
    match api
        .patch_status(&stack.name_any(), &params, &Patch::Apply(&patch))
        .await
    {
        Err(kube::Error::Api(response)) if response.code == 409 => {
            let live = api.get_status(&stack.name_any()).await?;
            let Some(patch) = build(&live) else {
                return Ok(false);
            };
            api.patch_status(&stack.name_any(), &params, &Patch::Apply(&patch))
                .await?;
            Ok(true)
        }
        written => written.map(|_| true),
    }
}

/// Removes what garbage collection cannot: the cluster-scoped ClusterRoleBindings and, with
/// `deletionPolicy: RemovePolicies`, the database policies the operator created (tables,
/// aggregates and data stay). An unreachable database keeps the finalizer until it answers;
/// setting `deletionPolicy: Retain` lets the deletion finish without it.
#[tracing::instrument(skip_all, fields(
    namespace = stack.metadata.namespace.as_deref(),
    name = stack.metadata.name.as_deref(),
))]
async fn cleanup(stack: &MetricsStack, ctx: &Context) -> Result<Action, ReconcileError> {
    let removed_policies = clean_up_database(ctx, stack).await?;
    let bindings: Api<ClusterRoleBinding> = Api::all(ctx.client.clone());
    let mut removed = Vec::new();
    for component in [Component::Collector, Component::QueryService] {
        let name = resources::cluster_role_binding_name(stack, component);
        if bindings.get_metadata_opt(&name).await?.is_some() {
            bindings.delete(&name, &DeleteParams::default()).await?;
            removed.push(format!("ClusterRoleBinding {name}"));
        }
    }
    ctx.pools.remove(stack).await;
    ctx.metrics
        .forget_stack(&stack.namespace().unwrap_or_default(), &stack.name_any());
    let removed = if removed.is_empty() {
        "no ClusterRoleBinding to remove".to_owned()
    } else {
        format!("removed {}", removed.join(", "))
    };
    let note = format!("{removed}; {removed_policies}");
    publish(ctx, stack, EventType::Normal, "Deleted", note).await;
    Ok(Action::await_change())
}

/// The database part of the clean-up, as the deletion policy says; returns what it did, for
/// the `Deleted` event. A database that cannot be cleaned up is reported in an event and
/// fails the clean-up, to be retried.
#[tracing::instrument(skip_all, fields(
    namespace = stack.metadata.namespace.as_deref(),
    name = stack.metadata.name.as_deref(),
))]
async fn clean_up_database(ctx: &Context, stack: &MetricsStack) -> Result<String, ReconcileError> {
    let valid = match (stack.spec.deletion_policy, validate_spec(stack)) {
        (DeletionPolicy::Retain, _) => {
            return Ok("database left as it is (deletionPolicy Retain)".to_owned());
        }
        (DeletionPolicy::RemovePolicies, Err(error)) => {
            return Ok(format!(
                "database policies not removed: the spec is invalid ({error})"
            ));
        }
        (DeletionPolicy::RemovePolicies, Ok(valid)) => valid,
    };
    let secret = read_connection(&ctx.client, stack).await;
    match remove_stack_policies(&ctx.pools, stack, &valid, secret).await? {
        Ok(steps) => Ok(format!("removed {} database policies", steps.len())),
        Err(outcome) => {
            // An unreadable timeout (stored before a schema change) gives up at once rather
            // than never.
            let timeout = stack.spec.cleanup_timeout.to_std().unwrap_or_default();
            let deleted_at = (stack.metadata.deletion_timestamp.as_ref()).map(|time| time.0);
            if cleanup_timed_out(deleted_at, Timestamp::now(), timeout) {
                let note = abandoned_cleanup_note(stack, &outcome.ready.message);
                publish(
                    ctx,
                    stack,
                    EventType::Warning,
                    "CleanupAbandoned",
                    note.clone(),
                )
                .await;
                return Ok(note);
            }
            publish(
                ctx,
                stack,
                EventType::Warning,
                outcome.ready.reason.as_str(),
                outcome.ready.message.clone(),
            )
            .await;
            Err(match outcome.retry {
                Some(error) => error.into(),
                None => ReconcileError::Cleanup(outcome.ready.message),
            })
        }
    }
}

/// Whether a clean-up that keeps failing has been tried for `timeout` since the stack was
/// deleted (at `deleted_at`), so that the finalizer is released (pure).
fn cleanup_timed_out(deleted_at: Option<Timestamp>, now: Timestamp, timeout: Duration) -> bool {
    let Some(deleted_at) = deleted_at else {
        return false;
    };
    let waited = now.duration_since(deleted_at);
    !waited.is_negative() && waited.unsigned_abs() >= timeout
}

/// For a deleted stack, how long its clean-up may still be retried before it is abandoned
/// (so that a retry with backoff does not overshoot `spec.cleanupTimeout` by minutes);
/// `None` for a living stack.
pub(super) fn cleanup_time_left(stack: &MetricsStack, now: Timestamp) -> Option<Duration> {
    let deleted_at = stack.metadata.deletion_timestamp.as_ref()?.0;
    let timeout = stack.spec.cleanup_timeout.to_std().unwrap_or_default();
    let waited = now.duration_since(deleted_at);
    let waited = if waited.is_negative() {
        Duration::ZERO
    } else {
        waited.unsigned_abs()
    };
    Some(timeout.saturating_sub(waited))
}

/// What a Warning event says when the operator gives up removing the database policies:
/// why, and what stayed in the database, with how to remove it by hand.
fn abandoned_cleanup_note(stack: &MetricsStack, why: &str) -> String {
    let schema = &stack.spec.database.schema;
    format!(
        "gave up removing the database policies {} after the deletion ({why}); left in the \
         database: the compression, retention and refresh policies (TimescaleDB jobs) of the \
         tables and aggregates in schema {schema:?}; remove them by hand with `SELECT \
         delete_job(job_id) FROM timescaledb_information.jobs WHERE hypertable_schema = \
         '{schema}'` (and the aggregates' materialization hypertables)",
        stack.spec.cleanup_timeout
    )
}

/// Publishes an event about the stack; a failure to publish is logged, never fatal.
async fn publish(
    ctx: &Context,
    stack: &MetricsStack,
    type_: EventType,
    reason: &str,
    note: String,
) {
    let event = Event {
        type_,
        reason: reason.into(),
        note: Some(note),
        action: "Reconcile".into(),
        secondary: None,
    };
    if let Err(error) = ctx.recorder.publish(&event, &stack.object_ref(&())).await {
        tracing::warn!(%error, "publishing an event failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failing_cleanup_is_abandoned_once_the_timeout_has_passed_since_the_deletion() {
        let at = |seconds| Timestamp::from_second(seconds).expect("a valid time");
        let five_minutes = Duration::from_secs(300);
        assert!(!cleanup_timed_out(None, at(1_000), five_minutes));
        assert!(!cleanup_timed_out(Some(at(1_000)), at(1_299), five_minutes));
        assert!(cleanup_timed_out(Some(at(1_000)), at(1_300), five_minutes));
        assert!(cleanup_timed_out(
            Some(at(1_000)),
            at(1_000),
            Duration::ZERO
        ));
        // A clock behind the API server's is no reason to give up.
        assert!(!cleanup_timed_out(Some(at(1_000)), at(900), Duration::ZERO));
    }
}
