//! The collector's configuration file (YAML): what the operator renders into the collector
//! ConfigMap. Every field has a default, so an empty file is a valid configuration.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The collector's settings.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct CollectorConfig {
    /// Seconds between two samples of the node.
    pub interval_seconds: u64,
    /// Which processes are recorded.
    pub processes: ProcessConfig,
    /// Attribute processes to containers and pods and write them to `vm_process_metrics`.
    pub pod_attribution: bool,
    /// The database schema holding the metric tables.
    pub schema: String,
    /// Most rows per insert batch.
    pub batch_size: u32,
    /// Where unsent batches are kept while the database is away.
    pub spool_dir: PathBuf,
    /// Most bytes kept in the spool; beyond it the oldest batches are dropped (and counted).
    pub spool_max_bytes: u64,
    /// The connection pool towards the database.
    pub pool: PoolSettings,
    /// Address of the health and metrics endpoint.
    pub listen_address: String,
    /// Root of the host's `/proc` as mounted in the container.
    pub proc_root: PathBuf,
}

impl Default for CollectorConfig {
    fn default() -> Self {
        Self {
            interval_seconds: 5,
            processes: ProcessConfig::default(),
            pod_attribution: true,
            schema: "public".into(),
            batch_size: 1000,
            spool_dir: PathBuf::from("/var/lib/metricsstack/spool"),
            spool_max_bytes: 256 * 1024 * 1024,
            pool: PoolSettings::default(),
            listen_address: "0.0.0.0:9464".into(),
            proc_root: PathBuf::from("/proc"),
        }
    }
}

/// Which processes are recorded on the node.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct ProcessConfig {
    /// The busiest processes by CPU.
    pub top_by_cpu: u32,
    /// The largest processes by resident memory.
    pub top_by_memory: u32,
    /// Regular expressions on the process name that are always recorded.
    pub include: Vec<String>,
    /// Regular expressions on the process name that are never recorded.
    pub exclude: Vec<String>,
    /// Longest command line stored, in characters.
    pub command_line_max_length: u32,
}

impl Default for ProcessConfig {
    fn default() -> Self {
        Self {
            top_by_cpu: 20,
            top_by_memory: 20,
            include: Vec::new(),
            exclude: Vec::new(),
            command_line_max_length: 256,
        }
    }
}

/// Connection-pool settings of one database client (sqlx `PgPoolOptions`), as the
/// `MetricsStack` declares them for that client.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct PoolSettings {
    /// Most connections open at once.
    pub max_connections: u32,
    /// Connections kept open when idle.
    pub min_connections: u32,
    /// Seconds to wait for a free connection.
    pub acquire_timeout_seconds: u64,
    /// Seconds after which an idle connection is closed; absent: never.
    pub idle_timeout_seconds: Option<u64>,
    /// Seconds after which a connection is replaced; absent: never.
    pub max_lifetime_seconds: Option<u64>,
    /// Check a connection before handing it out.
    pub test_before_acquire: bool,
}

impl Default for PoolSettings {
    fn default() -> Self {
        Self {
            max_connections: 2,
            min_connections: 0,
            acquire_timeout_seconds: 30,
            idle_timeout_seconds: Some(600),
            max_lifetime_seconds: Some(1800),
            test_before_acquire: false,
        }
    }
}

impl PoolSettings {
    /// The settings as sqlx pool options.
    pub fn pool_options(&self) -> sqlx::postgres::PgPoolOptions {
        sqlx::postgres::PgPoolOptions::new()
            .max_connections(self.max_connections)
            .min_connections(self.min_connections)
            .acquire_timeout(Duration::from_secs(self.acquire_timeout_seconds))
            .idle_timeout(self.idle_timeout_seconds.map(Duration::from_secs))
            .max_lifetime(self.max_lifetime_seconds.map(Duration::from_secs))
            .test_before_acquire(self.test_before_acquire)
    }
}
