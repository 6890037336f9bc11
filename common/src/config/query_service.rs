//! The query service's configuration file (YAML), rendered by the operator into a ConfigMap.

use super::{ConfigError, DatabaseConfig, StackIdentity, limits};
use crate::access::Authentication;
use crate::database::PoolSettings;
use serde::{Deserialize, Serialize};

/// The query service's settings.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct QueryServiceConfig {
    /// The MetricsStack this query service serves.
    #[serde(default)]
    pub stack: StackIdentity,
    /// Who may read the API and `/metrics` (absent: `kubernetes`).
    #[serde(default)]
    pub authentication: Authentication,
    /// Address the HTTP server listens on.
    pub listen_address: String,
    /// The database schema holding the metric tables.
    pub schema: String,
    /// The connection pool towards the database.
    pub pool: PoolSettings,
    /// How the database is reached beside the connection URI (TLS).
    #[serde(default)]
    pub database: DatabaseConfig,
    /// Seconds an answer is served from the cache without asking the database.
    pub fresh_ttl_seconds: u64,
    /// Seconds after that during which a stale answer is served while one refresh runs; an
    /// answer requested within this long is refreshed ahead of turning stale.
    pub stale_while_revalidate_seconds: u64,
    /// Seconds a stale answer may be served while the database is failing.
    pub stale_if_error_seconds: u64,
    /// Most cached answers, within [`limits::CACHE_ENTRIES`].
    pub max_entries: u32,
    /// Most bytes of cached answers.
    pub max_bytes: u64,
}

impl QueryServiceConfig {
    /// Checks every setting against what the query service accepts, naming the first one
    /// that is out of range.
    pub fn validate(&self) -> Result<(), ConfigError> {
        limits::check_pool("pool", &self.pool)?;
        limits::CACHE_ENTRIES.check("maxEntries", "a count", self.max_entries.into())?;
        limits::check_megabytes("maxBytes", limits::CACHE_MEGABYTES, self.max_bytes)?;
        self.database.validate()
    }
}
