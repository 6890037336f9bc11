//! The `MetricsStack` custom resource: what a platform team declares, validated by the API
//! server at admission (schema bounds, enums, patterns and CEL rules across fields).

mod duration;
mod status;

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::DaemonSetUpdateStrategy;
use k8s_openapi::api::core::v1::{ResourceRequirements, Toleration};
use k8s_openapi::api::networking::v1::NetworkPolicyPeer;
use kube::{CustomResource, KubeSchema};
use metricsstack_common::config::limits;
use serde::{Deserialize, Serialize};

pub use duration::{DURATION_PATTERN, Duration, InvalidDuration, cel_seconds};
pub use status::{
    AppliedRevision, CollectorsStatus, ConditionReason, ConditionType, DatabaseStatus,
    MetricsStackStatus, PendingPlan, SidecarsStatus,
};

/// The API group of MetricsStack resources.
pub const GROUP: &str = "metricsstack.dev";
/// Pattern of an SQL identifier the operator accepts from a resource (lower case, no quoting
/// needed), such as a schema, aggregate or column name.
pub const IDENTIFIER_PATTERN: &str = "^[a-z_][a-z0-9_]{0,62}$";

/// A metrics stack: node collectors writing host, process and pod metrics to TimescaleDB,
/// the database's schema and storage policies, and a cached query service for dashboards.
#[derive(CustomResource, KubeSchema, Clone, Debug, PartialEq, Deserialize, Serialize)]
#[kube(
    group = "metricsstack.dev",
    version = "v1alpha1",
    kind = "MetricsStack",
    plural = "metricsstacks",
    shortname = "mstack",
    namespaced,
    status = "MetricsStackStatus",
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Collectors","type":"string","jsonPath":".status.collectors.summary"}"#,
    printcolumn = r#"{"name":"Policies","type":"integer","jsonPath":".status.database.policies"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct MetricsStackSpec {
    /// The PostgreSQL/TimescaleDB database the stack writes to and manages.
    pub database: DatabaseSpec,
    /// The node collectors (a DaemonSet).
    #[serde(default)]
    pub collector: CollectorSpec,
    /// Storage policy: hypertables, compression, retention and continuous aggregates.
    #[serde(default)]
    pub storage: StorageSpec,
    /// The cached query service that answers dashboards.
    #[serde(default)]
    pub query_service: QueryServiceSpec,
    /// The NetworkPolicies that limit who reaches the stack's pods.
    #[serde(default)]
    pub network_policy: NetworkPolicySpec,
    /// The collector injected as a sidecar into pods annotated
    /// `metricsstack.dev/inject: <this stack's name>` in the stack's namespace.
    #[serde(default)]
    pub sidecar: SidecarSpec,
    /// What happens to the database when this resource is deleted: `Retain` leaves it
    /// exactly as it is; `RemovePolicies` removes the compression, retention and refresh
    /// policies the operator created (tables, aggregates and data stay).
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,
    /// With `RemovePolicies`: how long after the deletion the operator keeps trying to
    /// remove the policies while it cannot (the Secret is gone, the database is down). Then
    /// it lets the resource go, leaving the policies, and a Warning event
    /// (`CleanupAbandoned`) says what stayed in the database, so that deleting a namespace
    /// always ends.
    #[serde(default = "default_cleanup_timeout")]
    #[x_kube(validation = kube::core::Rule::new(cleanup_timeout_rule()).message("cleanupTimeout must be between 0s and 24h"))]
    pub cleanup_timeout: Duration,
    /// How often the operator compares the live database with the plan (hypertables,
    /// compression settings, policies and their schedules, continuous aggregates and their
    /// definitions) and restores what was changed behind its back, with an event
    /// `DriftCorrected` naming what it changed. Between 10s and 24h.
    #[serde(default = "default_drift_check_interval")]
    #[x_kube(validation = kube::core::Rule::new(drift_check_interval_rule()).message("driftCheckInterval must be between 10s and 24h"))]
    pub drift_check_interval: Duration,
}

fn default_cleanup_timeout() -> Duration {
    Duration::parse("5m").expect("valid default")
}

fn default_drift_check_interval() -> Duration {
    Duration::parse("1m").expect("valid default")
}

fn drift_check_interval_rule() -> String {
    let seconds = cel_seconds("self");
    format!("{seconds} >= 10 && {seconds} <= 86400")
}

fn cleanup_timeout_rule() -> String {
    format!("{} <= 86400", cel_seconds("self"))
}

/// What happens to the database when the resource is deleted.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema,
)]
pub enum DeletionPolicy {
    /// Leave the database exactly as it is.
    #[default]
    Retain,
    /// Remove the policies (jobs) the operator created; keep tables, aggregates and data.
    RemovePolicies,
}

/// Where the database is and how to reach it.
#[derive(KubeSchema, Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new(CA_NEEDS_VERIFICATION_RULE).message(CA_NEEDS_VERIFICATION).field_path(".caRef"))]
pub struct DatabaseSpec {
    /// The Secret (in the resource's namespace) holding the connection URI,
    /// `postgres://user:password@host:port/database`.
    pub secret_ref: SecretKeyRef,
    /// TLS towards the database, for the operator, the collectors and the query service
    /// alike, unless the URI's `sslmode` asks for more (`require` or stronger). `VerifyCa`
    /// and `VerifyFull` check the server's certificate against `caRef` and the Mozilla roots
    /// built into the programs; `VerifyFull` also checks that it names the URI's host.
    #[serde(default)]
    pub tls_mode: TlsMode,
    /// The CA certificate (PEM) that signs the database server's certificate, from a key of
    /// a Secret or a ConfigMap in the resource's namespace; only with `tlsMode` `VerifyCa` or
    /// `VerifyFull`. The operator reads it for its own connections and mounts it read-only
    /// into the collector and query service pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_ref: Option<CaRef>,
    /// The schema that holds the metric tables. It cannot be changed once set: the data
    /// would stay behind in the old one.
    #[serde(default = "default_schema")]
    #[schemars(regex(pattern = IDENTIFIER_PATTERN))]
    #[x_kube(validation = kube::core::Rule::new("self == oldSelf").message("database.schema is immutable: create a new MetricsStack to use another schema"))]
    pub schema: String,
    /// Connection-pool settings, separately for each client of the database.
    #[serde(default)]
    pub pools: PoolsSpec,
    /// A connection pooler the collectors and the query service connect through; absent:
    /// they connect through `secretRef`, as the operator does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pooler: Option<PoolerSpec>,
}

/// A pooler in front of the database for the collectors and the query service. The
/// operator keeps the direct connection of `secretRef`: its advisory locks, session settings
/// and migrations need a session of their own.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PoolerSpec {
    /// The kind of pooler.
    pub kind: PoolerKind,
    /// The Secret (in the resource's namespace) holding the pooler's connection URI,
    /// `postgres://user:password@pgbouncer:6432/database`. The pods read it when they start.
    pub secret_ref: SecretKeyRef,
}

/// Kinds of connection pooler.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema)]
pub enum PoolerKind {
    /// PgBouncer in transaction mode (any version): every query and write runs in a
    /// transaction that sets itself up, and no prepared statement outlives it.
    PgBouncerTransaction,
}

impl From<PoolerKind> for metricsstack_common::database::Pooler {
    fn from(kind: PoolerKind) -> Self {
        match kind {
            PoolerKind::PgBouncerTransaction => Self::PgBouncerTransaction,
        }
    }
}

fn default_schema() -> String {
    "public".into()
}

/// A key of a Secret in the resource's namespace.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// The Secret's name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// The key whose value is the connection URI.
    #[serde(default = "default_secret_key")]
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

fn default_secret_key() -> String {
    DEFAULT_SECRET_KEY.into()
}

/// The key of the connection URI in a stack's Secret unless `secretRef.key` says otherwise.
pub const DEFAULT_SECRET_KEY: &str = "uri";

/// The CEL rule: a CA only with a mode that verifies the server's certificate.
const CA_NEEDS_VERIFICATION_RULE: &str =
    "!has(self.caRef) || (has(self.tlsMode) && self.tlsMode in ['VerifyCa', 'VerifyFull'])";
/// What [`CA_NEEDS_VERIFICATION_RULE`] says when it refuses a resource.
pub const CA_NEEDS_VERIFICATION: &str = "caRef is used only when the server's certificate is \
    verified: set spec.database.tlsMode to VerifyCa or VerifyFull, or remove spec.database.caRef";

/// Where the database server's CA certificate is: exactly one of a Secret's or a
/// ConfigMap's key, in the resource's namespace.
#[derive(KubeSchema, Clone, Debug, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new("has(self.secretKeyRef) != has(self.configMapKeyRef)").message(CA_REF_EXACTLY_ONE))]
pub struct CaRef {
    /// A key of a Secret holding the CA certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_key_ref: Option<CaKeyRef>,
    /// A key of a ConfigMap holding the CA certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_map_key_ref: Option<CaKeyRef>,
}

/// What the exactly-one rule of [`CaRef`] says when it refuses a resource.
pub const CA_REF_EXACTLY_ONE: &str =
    "set exactly one of spec.database.caRef.secretKeyRef and spec.database.caRef.configMapKeyRef";

/// A key of a Secret or ConfigMap whose value is a CA certificate (PEM).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CaKeyRef {
    /// The Secret's or ConfigMap's name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// The key whose value is the CA certificate.
    #[serde(default = "default_ca_key")]
    #[schemars(length(min = 1, max = 253), regex(pattern = r"^[-._a-zA-Z0-9]+$"))]
    pub key: String,
}

fn default_ca_key() -> String {
    DEFAULT_CA_KEY.into()
}

/// The key of the CA certificate unless `caRef.*.key` says otherwise (cert-manager's name).
pub const DEFAULT_CA_KEY: &str = "ca.crt";

/// Which kind of object holds a stack's database CA, and its key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CaSource<'a> {
    /// `caRef.secretKeyRef`.
    Secret(&'a CaKeyRef),
    /// `caRef.configMapKeyRef`.
    ConfigMap(&'a CaKeyRef),
}

impl CaRef {
    /// Where the CA is; `None` when not exactly one source is set (which admission refuses).
    pub fn source(&self) -> Option<CaSource<'_>> {
        match (&self.secret_key_ref, &self.config_map_key_ref) {
            (Some(secret), None) => Some(CaSource::Secret(secret)),
            (None, Some(config_map)) => Some(CaSource::ConfigMap(config_map)),
            _ => None,
        }
    }
}

impl<'a> CaSource<'a> {
    /// The field that names it, as `kubectl explain` spells it.
    pub fn field(self) -> &'static str {
        match self {
            Self::Secret(_) => "spec.database.caRef.secretKeyRef",
            Self::ConfigMap(_) => "spec.database.caRef.configMapKeyRef",
        }
    }

    /// The kind of object, as Kubernetes names it.
    pub fn kind(self) -> &'static str {
        match self {
            Self::Secret(_) => "Secret",
            Self::ConfigMap(_) => "ConfigMap",
        }
    }

    /// The object's name and key.
    pub fn key_ref(self) -> &'a CaKeyRef {
        match self {
            Self::Secret(r) | Self::ConfigMap(r) => r,
        }
    }
}

/// TLS towards the database, as PostgreSQL's `sslmode`.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Deserialize, Serialize, schemars::JsonSchema,
)]
pub enum TlsMode {
    /// No TLS.
    Disable,
    /// TLS when the server offers it.
    #[default]
    Prefer,
    /// TLS required, certificate not verified.
    Require,
    /// TLS required, certificate verified against the CA.
    VerifyCa,
    /// TLS required, certificate and host name verified.
    VerifyFull,
}

impl From<TlsMode> for metricsstack_common::database::TlsMode {
    fn from(mode: TlsMode) -> Self {
        match mode {
            TlsMode::Disable => Self::Disable,
            TlsMode::Prefer => Self::Prefer,
            TlsMode::Require => Self::Require,
            TlsMode::VerifyCa => Self::VerifyCa,
            TlsMode::VerifyFull => Self::VerifyFull,
        }
    }
}

/// Connection pools, one per client of the database.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PoolsSpec {
    /// The operator's own connections (schema and policy management).
    #[serde(default = "PoolSpec::operator_default")]
    pub operator: PoolSpec,
    /// Each collector's connections (batched inserts). The writer sends one batch at a
    /// time, so one connection (the default) is all it uses; it is held between samples
    /// rather than opened every interval.
    #[serde(default = "PoolSpec::collector_default")]
    pub collector: PoolSpec,
    /// Each query service replica's connections.
    #[serde(default = "PoolSpec::query_service_default")]
    pub query_service: PoolSpec,
}

impl Default for PoolsSpec {
    fn default() -> Self {
        Self {
            operator: PoolSpec::operator_default(),
            collector: PoolSpec::collector_default(),
            query_service: PoolSpec::query_service_default(),
        }
    }
}

/// Settings of one connection pool.
#[derive(KubeSchema, Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new("self.minConnections <= self.maxConnections").message("minConnections must not exceed maxConnections").field_path(".minConnections"))]
pub struct PoolSpec {
    /// Most connections open at once.
    #[schemars(range(min = limits::POOL_MAX_CONNECTIONS.min, max = limits::POOL_MAX_CONNECTIONS.max))]
    pub max_connections: u32,
    /// Connections kept open even when idle.
    #[serde(default)]
    #[schemars(range(min = limits::POOL_MIN_CONNECTIONS.min, max = limits::POOL_MIN_CONNECTIONS.max))]
    pub min_connections: u32,
    /// How long to wait for a free connection before failing.
    #[serde(default = "default_acquire_timeout")]
    pub acquire_timeout: Duration,
    /// Close connections idle for longer than this; absent: never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout: Option<Duration>,
    /// Replace connections older than this; absent: never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_lifetime: Option<Duration>,
    /// Check that a connection is alive before handing it out.
    #[serde(default)]
    pub test_before_acquire: bool,
}

fn default_acquire_timeout() -> Duration {
    Duration::parse("30s").expect("valid default")
}

impl PoolSpec {
    fn with_max(max_connections: u32) -> Self {
        Self {
            max_connections,
            min_connections: 0,
            acquire_timeout: default_acquire_timeout(),
            idle_timeout: Some(Duration::parse("10m").expect("valid default")),
            max_lifetime: Some(Duration::parse("30m").expect("valid default")),
            test_before_acquire: false,
        }
    }
    fn operator_default() -> Self {
        Self::with_max(2)
    }
    fn collector_default() -> Self {
        Self::with_max(1)
    }
    fn query_service_default() -> Self {
        Self::with_max(10)
    }
}

/// The node collectors.
#[derive(KubeSchema, Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CollectorSpec {
    /// The collector's container image. Unset: the operator's default (its
    /// `--collector-image`, which the chart sets to the collector of the operator's own
    /// release), so that upgrading the operator moves the collectors too. Set it only to pin
    /// an image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub image: Option<String>,
    /// When to pull the image.
    #[serde(default)]
    pub image_pull_policy: PullPolicy,
    /// How often each collector samples its node, between 1s and 1h.
    #[serde(default = "default_interval")]
    #[x_kube(validation = kube::core::Rule::new(interval_rule()).message("collector.interval must be between 1s and 1h"))]
    pub interval: Duration,
    /// Which processes are recorded on each node.
    #[serde(default)]
    pub processes: ProcessSelection,
    /// Attribute processes to their container and pod (from cgroups and a watch of the
    /// node's pods), writing them to `vm_process_metrics`.
    #[serde(default = "default_true")]
    pub pod_attribution: bool,
    /// Most rows sent to the database in one batch.
    #[serde(default = "default_batch_size")]
    #[schemars(range(min = limits::BATCH_ROWS.min, max = limits::BATCH_ROWS.max))]
    pub batch_size: u32,
    /// Most bytes of unsent batches kept on the node's disk while the database is away;
    /// beyond it the oldest are dropped (and counted).
    #[serde(default = "default_spool_megabytes")]
    #[schemars(range(min = limits::SPOOL_MEGABYTES.min, max = limits::SPOOL_MEGABYTES.max))]
    pub spool_megabytes: u32,
    /// Compute resources of the collector container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Run collectors only on nodes with these labels.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// Tolerations of the collector pods (for example to run on tainted control-plane nodes).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
    /// Priority class of the collector pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority_class_name: Option<String>,
    /// How the DaemonSet replaces collector pods on a change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update_strategy: Option<DaemonSetUpdateStrategy>,
}

/// The sidecar collector: injected by the operator's admission webhook into the annotated
/// pods of the stack's namespace, where it records the pod's own processes (no host metrics,
/// no node access). A change applies to pods created afterwards; `status.sidecars.outdated`
/// counts the running pods whose sidecar was injected with other settings, until they are
/// restarted.
#[derive(KubeSchema, Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SidecarSpec {
    /// The sidecar's container image. Unset: `collector.image`, else the operator's default
    /// collector image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub image: Option<String>,
    /// How often the sidecar samples its pod's processes, between 1s and 1h.
    #[serde(default = "default_sidecar_interval")]
    #[x_kube(validation = kube::core::Rule::new(interval_rule()).message("sidecar.interval must be between 1s and 1h"))]
    pub interval: Duration,
    /// Size limit of the sidecar's spool (an `emptyDir`), in MiB: unsent batches kept while
    /// the database is away; beyond it the oldest are dropped (and counted).
    #[serde(default = "default_sidecar_spool_megabytes")]
    #[schemars(range(min = limits::SIDECAR_SPOOL_MEGABYTES.min, max = limits::SIDECAR_SPOOL_MEGABYTES.max))]
    pub spool_megabytes: u32,
    /// Compute resources of the sidecar container. Unset: a small default (10m CPU and
    /// 32Mi requested, 64Mi limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Record the pod's pause (sandbox) process too.
    #[serde(default)]
    pub include_pause: bool,
}

fn default_sidecar_interval() -> Duration {
    Duration::parse("15s").expect("valid default")
}
fn default_sidecar_spool_megabytes() -> u32 {
    64
}

impl Default for SidecarSpec {
    fn default() -> Self {
        Self {
            image: None,
            interval: default_sidecar_interval(),
            spool_megabytes: default_sidecar_spool_megabytes(),
            resources: None,
            include_pause: false,
        }
    }
}

fn interval_rule() -> String {
    let seconds = cel_seconds("self");
    let bounds = limits::COLLECTOR_INTERVAL_SECONDS;
    format!("{seconds} >= {} && {seconds} <= {}", bounds.min, bounds.max)
}

fn default_interval() -> Duration {
    Duration::parse("5s").expect("valid default")
}
fn default_true() -> bool {
    true
}
fn default_batch_size() -> u32 {
    1000
}
fn default_spool_megabytes() -> u32 {
    256
}

impl Default for CollectorSpec {
    fn default() -> Self {
        Self {
            image: None,
            image_pull_policy: PullPolicy::default(),
            interval: default_interval(),
            processes: ProcessSelection::default(),
            pod_attribution: true,
            batch_size: default_batch_size(),
            spool_megabytes: default_spool_megabytes(),
            resources: None,
            node_selector: BTreeMap::new(),
            tolerations: Vec::new(),
            priority_class_name: None,
            update_strategy: None,
        }
    }
}

/// When the kubelet pulls an image.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema,
)]
pub enum PullPolicy {
    /// Always pull.
    Always,
    /// Pull when the node does not have the image.
    #[default]
    IfNotPresent,
    /// Never pull.
    Never,
}

impl PullPolicy {
    /// The policy as Kubernetes spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Always => "Always",
            Self::IfNotPresent => "IfNotPresent",
            Self::Never => "Never",
        }
    }
}

/// Longest process-name pattern, in characters.
pub const PATTERN_MAX_LENGTH: u32 = 256;

/// CEL: every pattern of the list compiles. CEL's `matches` uses RE2, whose syntax the
/// collector's Rust `regex` shares: a pattern that does not compile makes the rule fail with
/// the parser's error ("missing closing )"), so the API server refuses the resource when it
/// is applied rather than the operator later. (A runtime error cannot be absorbed here:
/// `size(...)` needs the value.)
const REGULAR_EXPRESSIONS_RULE: &str = "self.all(p, size(string(''.matches(p))) > 0)";
const REGULAR_EXPRESSIONS_MESSAGE: &str =
    "every pattern must be a regular expression (RE2/Rust regex syntax)";

/// Which processes each collector records: the top N by CPU plus the top N by memory, plus
/// every process whose name matches an include pattern, minus those matching an exclude
/// pattern.
#[derive(KubeSchema, Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ProcessSelection {
    /// How many of the busiest processes by CPU to record.
    #[serde(default = "default_top")]
    #[schemars(range(min = limits::TOP_PROCESSES.min, max = limits::TOP_PROCESSES.max))]
    pub top_by_cpu: u32,
    /// How many of the largest processes by resident memory to record.
    #[serde(default = "default_top")]
    #[schemars(range(min = limits::TOP_PROCESSES.min, max = limits::TOP_PROCESSES.max))]
    pub top_by_memory: u32,
    /// Regular expressions (Rust `regex` syntax) on the process name; matches are always
    /// recorded.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(max = PATTERN_MAX_LENGTH)))]
    #[x_kube(validation = kube::core::Rule::new(REGULAR_EXPRESSIONS_RULE).message(REGULAR_EXPRESSIONS_MESSAGE))]
    pub include: Vec<String>,
    /// Regular expressions on the process name; matches are never recorded.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(max = PATTERN_MAX_LENGTH)))]
    #[x_kube(validation = kube::core::Rule::new(REGULAR_EXPRESSIONS_RULE).message(REGULAR_EXPRESSIONS_MESSAGE))]
    pub exclude: Vec<String>,
    /// Longest command line stored, in characters. A redacted command line is cut after
    /// redaction.
    #[serde(default = "default_command_line_length")]
    #[schemars(range(min = limits::COMMAND_LINE_LENGTH.min, max = limits::COMMAND_LINE_LENGTH.max))]
    pub command_line_max_length: u32,
    /// How much of each command line is stored, decided on the node before anything is
    /// written or spooled: `Full`, `Redacted` (the default: the values of arguments that look
    /// like secrets, such as `--password=...`, `--token ...`, `*_KEY=...` or the password of
    /// a URL, replaced by `***`), or `None` (the process name only). Whoever may read the
    /// stack's data in the query service reads these command lines.
    #[serde(default)]
    pub command_lines: CommandLines,
}

/// How much of each process's command line the collectors store.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema,
)]
pub enum CommandLines {
    /// The command line as the process has it.
    Full,
    /// The command line with the values of secret-looking arguments replaced by `***`.
    #[default]
    Redacted,
    /// No command line, only the process name.
    None,
}

fn default_top() -> u32 {
    20
}
fn default_command_line_length() -> u32 {
    256
}

impl Default for ProcessSelection {
    fn default() -> Self {
        Self {
            top_by_cpu: default_top(),
            top_by_memory: default_top(),
            include: Vec::new(),
            exclude: Vec::new(),
            command_line_max_length: default_command_line_length(),
            command_lines: CommandLines::default(),
        }
    }
}

/// Storage policy of the metric tables and their aggregates.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StorageSpec {
    /// The metric tables the operator manages, each with its own policy. A table left out
    /// keeps its data, and the operator removes the policies it had created for it.
    #[serde(default = "default_tables")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["table"]))]
    #[schemars(length(max = 3))]
    pub tables: Vec<TableSpec>,
    /// Continuous aggregates (rollups) of the metric tables, each with its own refresh and
    /// retention policy. Unset: an hourly rollup of each table (`<table>_hourly`), kept a
    /// year, which the query service reads for windows longer than six hours.
    #[serde(default = "default_aggregates")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    #[schemars(length(max = 16))]
    pub aggregates: Vec<AggregateSpec>,
}

impl Default for StorageSpec {
    fn default() -> Self {
        Self {
            tables: default_tables(),
            aggregates: default_aggregates(),
        }
    }
}

/// The metric tables of the schema (see `migrations/`).
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Deserialize,
    Serialize,
    schemars::JsonSchema,
)]
#[serde(rename_all = "camelCase")]
pub enum MetricTable {
    /// `host_process_metrics`: one row per recorded process and sample.
    HostProcessMetrics,
    /// `host_overall_metrics`: one row per node and sample.
    HostOverallMetrics,
    /// `vm_process_metrics`: processes attributed to a pod (or VM).
    VmProcessMetrics,
}

impl MetricTable {
    /// Every metric table.
    pub const ALL: [MetricTable; 3] = [
        Self::HostProcessMetrics,
        Self::HostOverallMetrics,
        Self::VmProcessMetrics,
    ];

    /// The table's SQL name.
    pub fn table_name(self) -> &'static str {
        match self {
            Self::HostProcessMetrics => "host_process_metrics",
            Self::HostOverallMetrics => "host_overall_metrics",
            Self::VmProcessMetrics => "vm_process_metrics",
        }
    }
}

/// The storage policy of one metric table.
#[derive(KubeSchema, Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new(compress_before_drop_rule()).message("compression.after must be shorter than retention.dropAfter: data would be dropped before it is compressed").field_path(".compression.after"))]
#[x_kube(validation = kube::core::Rule::new(compression_columns_rule("segmentBy", "c")).message("compression.segmentBy names a column this table does not have (its columns: migrations/, or the operator's error once applied)").field_path(".compression.segmentBy"))]
#[x_kube(validation = kube::core::Rule::new(compression_columns_rule("orderBy", "c.split(' ')[0]")).message("compression.orderBy names a column this table does not have (its columns: migrations/, or the operator's error once applied)").field_path(".compression.orderBy"))]
pub struct TableSpec {
    /// Which table.
    pub table: MetricTable,
    /// Time range of one hypertable chunk (applies to chunks created after a change).
    #[serde(default = "default_chunk_interval")]
    pub chunk_interval: Duration,
    /// Compression of chunks older than a given age; absent: no compression.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compression: Option<CompressionSpec>,
    /// Dropping of chunks older than a given age; absent: data is kept forever.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention: Option<RetentionSpec>,
}

/// CEL: the columns of the table `self.table` names (see `migrations/`).
fn cel_table_columns() -> String {
    let list = |table: MetricTable| {
        let columns: Vec<String> = crate::database::table_columns(table)
            .iter()
            .map(|column| format!("'{column}'"))
            .collect();
        format!("[{}]", columns.join(", "))
    };
    let name = |table: MetricTable| {
        serde_json::to_value(table)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .expect("a table serialises as its name")
    };
    format!(
        "(self.table == '{}' ? {} : self.table == '{}' ? {} : {})",
        name(MetricTable::HostProcessMetrics),
        list(MetricTable::HostProcessMetrics),
        name(MetricTable::HostOverallMetrics),
        list(MetricTable::HostOverallMetrics),
        list(MetricTable::VmProcessMetrics),
    )
}

/// CEL: every entry of `compression.<list>` names (as `column` says, `c` being the entry) a
/// column of the table. TimescaleDB would refuse the compression settings, but only when
/// the operator applies them, long after the resource was accepted.
fn compression_columns_rule(list: &str, column: &str) -> String {
    format!(
        "!has(self.compression) || !has(self.compression.{list}) || \
         self.compression.{list}.all(c, {column} in {})",
        cel_table_columns()
    )
}

fn compress_before_drop_rule() -> String {
    format!(
        "!has(self.compression) || !has(self.retention) || {} < {}",
        cel_seconds("self.compression.after"),
        cel_seconds("self.retention.dropAfter")
    )
}

fn default_chunk_interval() -> Duration {
    Duration::parse("1d").expect("valid default")
}

fn default_tables() -> Vec<TableSpec> {
    MetricTable::ALL
        .into_iter()
        .map(|table| TableSpec {
            table,
            chunk_interval: default_chunk_interval(),
            compression: Some(default_compression(table)),
            retention: Some(RetentionSpec {
                drop_after: Duration::parse("90d").expect("valid default"),
            }),
        })
        .collect()
}

/// The default compression of a table, chosen with `scripts/bench-storage` (README,
/// "Storage"): each node's rows in their own batches (`host`, which the query service's
/// filters name), and inside them a process's samples one after another (ordered by its
/// identity, `pid, start_time`, then time), so that its slowly changing values and names
/// compress well; that order is also the ingest's conflict key, so a late row checks few
/// compressed batches. Over the benchmark's rows this is 24.8x on `host_process_metrics`
/// and 29.4x on `vm_process_metrics`, against 10.3x and 14.3x when ordered by time alone.
/// `host_overall_metrics` has one row per node and sample: ordered by time. Chunks are
/// compressed after 3 days, not the plan's 7: the newest days stay raw (about 25 times the
/// bytes of a compressed row), and over 90 days 7 days of them make 8.2x in all where the
/// plan's size (50 GB -> 5 GB) needs 10x; 3 days give 12.7x, and the query service's
/// windows up to 6 hours still read raw chunks (longer ones the hourly rollups).
fn default_compression(table: MetricTable) -> CompressionSpec {
    let order_by: &[&str] = match table {
        MetricTable::HostProcessMetrics | MetricTable::VmProcessMetrics => {
            &["pid", "start_time", "timestamp DESC"]
        }
        MetricTable::HostOverallMetrics => &["timestamp DESC"],
    };
    CompressionSpec {
        after: Duration::parse("3d").expect("valid default"),
        segment_by: vec!["host".into()],
        order_by: order_by.iter().map(|&entry| entry.to_owned()).collect(),
    }
}

/// Compression of a table's older chunks.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CompressionSpec {
    /// Compress chunks whose data is older than this.
    pub after: Duration,
    /// Columns whose values are kept apart in compressed batches (usually the columns
    /// queries filter on).
    #[serde(default)]
    #[schemars(
        length(max = 8),
        inner(regex(pattern = IDENTIFIER_PATTERN), length(max = 63))
    )]
    pub segment_by: Vec<String>,
    /// Order inside compressed batches: a column, optionally followed by ` ASC` or ` DESC`.
    #[serde(default)]
    #[schemars(
        length(max = 8),
        inner(
            regex(pattern = r"^[a-z_][a-z0-9_]{0,62}( (ASC|DESC))?$"),
            length(max = 68)
        )
    )]
    pub order_by: Vec<String>,
}

/// Dropping of old data.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RetentionSpec {
    /// Drop chunks whose data is older than this.
    pub drop_after: Duration,
}

/// A continuous aggregate: a rollup of a metric table into time buckets.
#[derive(KubeSchema, Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new(bucket_shorter_than_retention_rule()).message("bucket must be shorter than retention.dropAfter").field_path(".bucket"))]
#[x_kube(validation = kube::core::Rule::new(refresh_window_rule()).message("refresh.startOffset must exceed refresh.endOffset by at least two buckets").field_path(".refresh.startOffset"))]
pub struct AggregateSpec {
    /// The aggregate's name (a materialized view in the database's schema).
    #[schemars(regex(pattern = IDENTIFIER_PATTERN))]
    pub name: String,
    /// The table it rolls up. Fixed once created: changing it would replace the aggregate.
    #[x_kube(validation = kube::core::Rule::new("self == oldSelf").message("source is immutable: add a new aggregate instead"))]
    pub source: MetricTable,
    /// The bucket width, such as `1h` or `1d`. Fixed once created.
    #[x_kube(validation = kube::core::Rule::new("self == oldSelf").message("bucket is immutable: add a new aggregate instead"))]
    pub bucket: Duration,
    /// How the aggregate is kept up to date.
    #[serde(default)]
    pub refresh: RefreshSpec,
    /// Dropping of old buckets; absent: kept forever.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention: Option<RetentionSpec>,
}

fn bucket_shorter_than_retention_rule() -> String {
    format!(
        "!has(self.retention) || {} < {}",
        cel_seconds("self.bucket"),
        cel_seconds("self.retention.dropAfter")
    )
}

fn refresh_window_rule() -> String {
    let end = format!(
        "(has(self.refresh.endOffset) ? {} : 0)",
        cel_seconds("self.refresh.endOffset")
    );
    format!(
        "{} - {end} >= 2 * {}",
        cel_seconds("self.refresh.startOffset"),
        cel_seconds("self.bucket")
    )
}

/// The refresh policy of a continuous aggregate.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RefreshSpec {
    /// Refresh buckets from this far back.
    #[serde(default = "default_start_offset")]
    pub start_offset: Duration,
    /// Up to this long ago; absent: up to now.
    #[serde(
        default = "default_end_offset",
        skip_serializing_if = "Option::is_none"
    )]
    pub end_offset: Option<Duration>,
    /// How often the refresh runs.
    #[serde(default = "default_schedule")]
    pub schedule: Duration,
}

fn default_start_offset() -> Duration {
    Duration::parse("3h").expect("valid default")
}
fn default_end_offset() -> Option<Duration> {
    Some(Duration::parse("1h").expect("valid default"))
}
fn default_schedule() -> Duration {
    Duration::parse("1h").expect("valid default")
}

impl Default for RefreshSpec {
    fn default() -> Self {
        Self {
            start_offset: default_start_offset(),
            end_offset: default_end_offset(),
            schedule: default_schedule(),
        }
    }
}

fn default_aggregates() -> Vec<AggregateSpec> {
    MetricTable::ALL
        .into_iter()
        .map(|source| AggregateSpec {
            name: format!("{}_hourly", source.table_name()),
            source,
            bucket: Duration::parse("1h").expect("valid default"),
            refresh: RefreshSpec::default(),
            retention: Some(RetentionSpec {
                drop_after: Duration::parse("1y").expect("valid default"),
            }),
        })
        .collect()
}

/// The cached query service.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct QueryServiceSpec {
    /// The image running `metricsstack-operator query-service`. Unset: the operator's
    /// default (its `--query-service-image`, which the chart sets to the operator's own
    /// image), so that upgrading the operator moves the query service too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub image: Option<String>,
    /// How many replicas; with more than one, a PodDisruptionBudget keeps one available.
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 0, max = 50))]
    pub replicas: i32,
    /// Compute resources of the query service container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// How API callers are authenticated and authorized: `Kubernetes` (the default) checks a
    /// bearer token with a TokenReview and access with a SubjectAccessReview (`get` on
    /// `metricsstacks/data` of this stack); `None` answers anyone who can reach the service
    /// (the stack then shows a warning condition).
    #[serde(default)]
    pub authentication: QueryAuthentication,
    /// The HTTP port of the service.
    #[serde(default = "default_port")]
    #[schemars(range(min = 1024, max = 65535))]
    pub port: i32,
    /// The response cache.
    #[serde(default)]
    pub cache: CacheSpec,
    /// Run the query service only on nodes with these labels.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// Tolerations of the query service pods.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
}

fn default_replicas() -> i32 {
    1
}
fn default_port() -> i32 {
    8080
}

impl Default for QueryServiceSpec {
    fn default() -> Self {
        Self {
            image: None,
            replicas: default_replicas(),
            resources: None,
            authentication: QueryAuthentication::default(),
            port: default_port(),
            cache: CacheSpec::default(),
            node_selector: BTreeMap::new(),
            tolerations: Vec::new(),
        }
    }
}

/// NetworkPolicies of a stack: ingress rules only (egress is left open: collectors and the
/// query service reach the database and the API server wherever they are). They are
/// enforced only by a CNI plugin that implements NetworkPolicy.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NetworkPolicySpec {
    /// Render the NetworkPolicies; `false` deletes them and leaves the pods reachable by
    /// anyone the cluster's network lets through.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Who may reach the query service's HTTP port (its API and `/metrics` share it).
    /// Unset: the pods of the stack's own namespace; `[]`: nobody.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query_service_from: Option<Vec<NetworkPolicyPeer>>,
    /// Who may scrape the collectors' metrics port (for example the monitoring namespace's
    /// Prometheus). Empty: nobody; collectors take no other ingress.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub metrics_from: Vec<NetworkPolicyPeer>,
}

impl Default for NetworkPolicySpec {
    fn default() -> Self {
        Self {
            enabled: true,
            query_service_from: None,
            metrics_from: Vec::new(),
        }
    }
}

/// How the query service authenticates and authorizes API callers.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema,
)]
pub enum QueryAuthentication {
    /// A bearer token checked with a TokenReview, access with a SubjectAccessReview
    /// against RBAC, the way kube-rbac-proxy does.
    #[default]
    Kubernetes,
    /// No check: anyone who can reach the service reads the stack's data, command lines
    /// and user names included.
    None,
}

/// The query service's response cache.
#[derive(KubeSchema, Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CacheSpec {
    /// How long an answer is served without asking the database again.
    #[serde(default = "default_fresh_ttl")]
    pub fresh_ttl: Duration,
    /// After that, how long a stale answer is still served at once while one background
    /// refresh runs. Also how long an answer nobody asks for again keeps being refreshed
    /// ahead (once per freshTtl, whatever the number of clients).
    #[serde(default = "default_stale_while_revalidate")]
    pub stale_while_revalidate: Duration,
    /// How long a stale answer may be served while the database is failing.
    #[serde(default = "default_stale_if_error")]
    pub stale_if_error: Duration,
    /// Most cached answers (at most 100000: each costs bookkeeping beyond its bytes).
    #[serde(default = "default_max_entries")]
    #[schemars(range(min = limits::CACHE_ENTRIES.min, max = limits::CACHE_ENTRIES.max))]
    pub max_entries: u32,
    /// Most bytes of cached answers, in megabytes.
    #[serde(default = "default_cache_megabytes")]
    #[schemars(range(min = limits::CACHE_MEGABYTES.min, max = limits::CACHE_MEGABYTES.max))]
    pub max_megabytes: u32,
}

fn default_fresh_ttl() -> Duration {
    Duration::parse("4s").expect("valid default")
}
fn default_stale_while_revalidate() -> Duration {
    Duration::parse("30s").expect("valid default")
}
fn default_stale_if_error() -> Duration {
    Duration::parse("5m").expect("valid default")
}
fn default_max_entries() -> u32 {
    10_000
}
fn default_cache_megabytes() -> u32 {
    64
}

impl Default for CacheSpec {
    fn default() -> Self {
        Self {
            fresh_ttl: default_fresh_ttl(),
            stale_while_revalidate: default_stale_while_revalidate(),
            stale_if_error: default_stale_if_error(),
            max_entries: default_max_entries(),
            max_megabytes: default_cache_megabytes(),
        }
    }
}
