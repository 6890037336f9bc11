//! The observed state of a `MetricsStack`, written only by the operator.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use serde::{Deserialize, Serialize};

/// What the operator observed and did, for people and GitOps tools.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MetricsStackStatus {
    /// The generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Ready, CollectorsReady, DatabaseReady, PoliciesApplied, JobsHealthy,
    /// AggregatesBackfilled, QueryServiceReady and QueryServiceAuthenticated.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// Collector pods, from the DaemonSet's status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub collectors: Option<CollectorsStatus>,
    /// The database as the operator last saw it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database: Option<DatabaseStatus>,
    /// Pods of the stack's namespace running the injected sidecar collector.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sidecars: Option<SidecarsStatus>,
}

/// Pods with the sidecar collector, counted at each reconcile.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SidecarsStatus {
    /// Pods (not yet finished) whose sidecar this stack injected.
    pub injected: i32,
    /// Of those, the pods whose sidecar was built from other settings than
    /// `spec.sidecar` now gives: restart them (for example `kubectl rollout restart`) to
    /// apply the current settings.
    pub outdated: i32,
}

/// Collector pods desired and ready.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CollectorsStatus {
    /// Nodes that should run a collector.
    pub desired: i32,
    /// Collectors running and ready.
    pub ready: i32,
    /// `ready/desired`, for `kubectl get`.
    pub summary: String,
}

impl CollectorsStatus {
    /// The status for `ready` of `desired` collectors.
    pub fn new(desired: i32, ready: i32) -> Self {
        Self {
            desired,
            ready,
            summary: format!("{ready}/{desired}"),
        }
    }
}

/// The database's state as the operator last saw it.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DatabaseStatus {
    /// The TimescaleDB extension's version; absent on plain PostgreSQL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timescaledb_version: Option<String>,
    /// Policies (jobs) in force for this stack's tables and aggregates.
    pub policies: i32,
    /// What the spec asks that this database cannot do (for example compression on a
    /// PostgreSQL without TimescaleDB).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unsupported: Vec<String>,
    /// The last few storage revisions applied, newest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub applied_revisions: Vec<AppliedRevision>,
    /// A plan that can drop data, waiting for acknowledgement.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_plan: Option<PendingPlan>,
}

/// One storage revision the operator applied to the database.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AppliedRevision {
    /// The resource generation applied.
    pub generation: i64,
    /// Hash of the storage spec applied.
    pub spec_hash: String,
    /// The steps run, in order.
    pub steps: Vec<String>,
    /// When they were applied (RFC 3339).
    pub applied_at: String,
}

/// A plan that would drop data, held back until the resource acknowledges it.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PendingPlan {
    /// The plan's hash: put it in the `metricsstack.dev/acknowledge-data-loss` annotation
    /// to apply the plan.
    pub hash: String,
    /// The steps the plan would run.
    pub steps: Vec<String>,
    /// Chunks the plan would drop right away.
    pub chunks_to_drop: i64,
    /// Rows the plan would drop right away.
    pub rows_to_drop: i64,
    /// When the plan would start deleting data the current policies keep (RFC 3339): now,
    /// or later for a retention shortened over data not yet old enough.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub earliest_deletion: Option<String>,
}

/// The condition types a `MetricsStack` reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConditionType {
    /// Everything below holds.
    Ready,
    /// Every desired collector pod is ready.
    CollectorsReady,
    /// The database is reachable with the referenced credentials.
    DatabaseReady,
    /// The database's schema and policies match the spec.
    PoliciesApplied,
    /// No TimescaleDB job of the stack's policies failed on its last run. A warning when
    /// false: the stack serves, but rollups go stale, or data goes uncompressed or undropped.
    JobsHealthy,
    /// Every continuous aggregate holds the buckets of its source's rows older than its
    /// refresh window (the operator backfills those a new aggregate lacks).
    AggregatesBackfilled,
    /// The query service has its desired replicas available.
    QueryServiceReady,
    /// The query service checks who calls it (`queryService.authentication: Kubernetes`).
    /// A warning when false: it does not hold `Ready` back, the stack works as asked.
    QueryServiceAuthenticated,
}

impl ConditionType {
    /// The type as written in the condition.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ready => "Ready",
            Self::CollectorsReady => "CollectorsReady",
            Self::DatabaseReady => "DatabaseReady",
            Self::PoliciesApplied => "PoliciesApplied",
            Self::JobsHealthy => "JobsHealthy",
            Self::AggregatesBackfilled => "AggregatesBackfilled",
            Self::QueryServiceReady => "QueryServiceReady",
            Self::QueryServiceAuthenticated => "QueryServiceAuthenticated",
        }
    }
}

/// Reasons the operator gives in conditions (CamelCase, as `metav1.Condition` requires).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConditionReason {
    /// The condition holds.
    AsExpected,
    /// Pods or replicas are still starting.
    Progressing,
    /// The referenced Secret does not exist.
    SecretNotFound,
    /// The referenced Secret lacks the key, or its value is not a connection URI.
    SecretInvalid,
    /// The database cannot be reached or refused the credentials.
    DatabaseUnreachable,
    /// A database statement failed.
    DatabaseError,
    /// A plan that would drop data waits for acknowledgement.
    DataLossNotAcknowledged,
    /// The spec is invalid in a way the schema cannot express.
    InvalidSpec,
    /// The database is PostgreSQL without TimescaleDB: the schema applies, the policies do not.
    TimescaleDbMissing,
    /// Waiting on another condition.
    Waiting,
    /// Applying the stack's Kubernetes objects failed (for example forbidden by RBAC).
    ApplyFailed,
    /// The spec turns a safety check off (for example the query service's authentication).
    AuthenticationDisabled,
    /// The Secret or ConfigMap `spec.database.caRef` names does not exist.
    CaNotFound,
    /// The Secret or ConfigMap `spec.database.caRef` names has no PEM certificate at the key.
    CaInvalid,
    /// TLS towards the database failed: the certificate, or a server and a `tlsMode` that
    /// disagree on TLS.
    TlsFailed,
    /// Another stack manages the database schema this one names.
    Conflict,
    /// A metric table holds too many rows to be turned into a hypertable without blocking
    /// ingest; the message says how to convert it.
    MigrationNeeded,
    /// The collector DaemonSet cannot create its pods (for example refused by Pod Security
    /// admission).
    PodCreationFailed,
    /// A TimescaleDB job of the stack's policies failed on its last run.
    JobFailed,
    /// A continuous aggregate is being filled with the buckets of older rows; the next
    /// check carries on.
    Backfilling,
    /// Filling a continuous aggregate with the buckets of older rows failed; the next check
    /// tries again.
    BackfillFailed,
}

impl ConditionReason {
    /// The reason as written in the condition.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::AsExpected => "AsExpected",
            Self::Progressing => "Progressing",
            Self::SecretNotFound => "SecretNotFound",
            Self::SecretInvalid => "SecretInvalid",
            Self::DatabaseUnreachable => "DatabaseUnreachable",
            Self::DatabaseError => "DatabaseError",
            Self::DataLossNotAcknowledged => "DataLossNotAcknowledged",
            Self::InvalidSpec => "InvalidSpec",
            Self::TimescaleDbMissing => "TimescaleDBMissing",
            Self::Waiting => "Waiting",
            Self::ApplyFailed => "ApplyFailed",
            Self::AuthenticationDisabled => "AuthenticationDisabled",
            Self::CaNotFound => "CANotFound",
            Self::CaInvalid => "CAInvalid",
            Self::TlsFailed => "TLSFailed",
            Self::PodCreationFailed => "PodCreationFailed",
            Self::Conflict => "Conflict",
            Self::MigrationNeeded => "MigrationNeeded",
            Self::JobFailed => "JobFailed",
            Self::Backfilling => "Backfilling",
            Self::BackfillFailed => "BackfillFailed",
        }
    }
}
