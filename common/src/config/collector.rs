//! The collector's configuration file (YAML): what the operator renders into the collector
//! ConfigMap. Every field has a default, so an empty file is a valid configuration; each
//! top-level setting can be overridden by an environment variable (see [`SETTINGS`]).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{DatabaseConfig, StackIdentity, limits};
use crate::database::PoolSettings;

/// The collector's settings.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct CollectorConfig {
    /// The MetricsStack this collector serves.
    pub stack: StackIdentity,
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
    /// How the database is reached beside the connection URI (TLS).
    pub database: DatabaseConfig,
    /// Address of the health and metrics endpoint.
    pub listen_address: String,
    /// Root of the host's `/proc` as mounted in the container.
    pub proc_root: PathBuf,
}

impl Default for CollectorConfig {
    fn default() -> Self {
        Self {
            stack: StackIdentity::default(),
            interval_seconds: 5,
            processes: ProcessConfig::default(),
            pod_attribution: true,
            schema: "public".into(),
            batch_size: 1000,
            spool_dir: PathBuf::from("/var/lib/metricsstack/spool"),
            spool_max_bytes: 256 * 1024 * 1024,
            // The writer sends one batch at a time: a second connection would only idle.
            pool: PoolSettings {
                max_connections: 1,
                ..PoolSettings::default()
            },
            database: DatabaseConfig::default(),
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
    /// Longest command line stored, in characters (cut after redaction).
    pub command_line_max_length: u32,
    /// How much of each command line is stored.
    pub command_lines: CommandLinePolicy,
}

/// How much of a process's command line the collector stores (and spools).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CommandLinePolicy {
    /// The command line as the process has it.
    Full,
    /// The command line with the values of arguments that look like secrets (`--password=`,
    /// `--token`, `*_KEY=`, credentials in URLs, ...) replaced.
    #[default]
    Redacted,
    /// No command line: only the process name.
    None,
}

impl Default for ProcessConfig {
    fn default() -> Self {
        Self {
            top_by_cpu: 20,
            top_by_memory: 20,
            include: Vec::new(),
            exclude: Vec::new(),
            command_line_max_length: 256,
            command_lines: CommandLinePolicy::default(),
        }
    }
}

/// A setting that cannot be used: which one, and the form it expects. Displayed as one line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read the configuration file {path}: {reason}")]
    Unreadable {
        /// The file.
        path: String,
        /// The operating system's answer.
        reason: String,
    },
    /// The file is not valid YAML for this configuration (unknown setting, wrong type).
    #[error("invalid configuration file {path}: {reason}")]
    Syntax {
        /// The file.
        path: String,
        /// What the YAML parser found, naming the setting.
        reason: String,
    },
    /// A setting has a value outside what it accepts.
    #[error("invalid setting {setting}: expected {expected}, got {got}")]
    Invalid {
        /// The setting, as in the file (`processes.topByCpu`) or its environment variable.
        setting: String,
        /// The form or range it accepts.
        expected: String,
        /// The value given.
        got: String,
    },
}

fn invalid(setting: &str, expected: &str, got: impl ToString) -> ConfigError {
    ConfigError::Invalid {
        setting: setting.into(),
        expected: expected.into(),
        got: got.to_string(),
    }
}

/// Every top-level setting: its name in the file, its environment variable, and what it is.
/// `--help` prints this table, and [`CollectorConfig::apply_env`] reads the variables.
pub const SETTINGS: &[(&str, &str, &str)] = &[
    (
        "intervalSeconds",
        "COLLECTOR_INTERVAL_SECONDS",
        "seconds between samples, 1..=3600 (default 5)",
    ),
    (
        "processes.topByCpu",
        "COLLECTOR_TOP_BY_CPU",
        "busiest processes by CPU recorded, 0..=1000 (default 20)",
    ),
    (
        "processes.topByMemory",
        "COLLECTOR_TOP_BY_MEMORY",
        "largest processes by RSS recorded, 0..=1000 (default 20)",
    ),
    (
        "processes.include",
        "",
        "regular expressions on process names always recorded",
    ),
    (
        "processes.exclude",
        "",
        "regular expressions on process names never recorded",
    ),
    (
        "processes.commandLineMaxLength",
        "",
        "longest command line stored, 16..=8192 characters (default 256)",
    ),
    (
        "processes.commandLines",
        "",
        "command lines stored: full, redacted (secret-looking values replaced; default) or none",
    ),
    (
        "podAttribution",
        "COLLECTOR_POD_ATTRIBUTION",
        "attribute processes to pods (true/false, default true; needs NODE_NAME)",
    ),
    (
        "schema",
        "COLLECTOR_SCHEMA",
        "database schema of the metric tables (default public)",
    ),
    (
        "batchSize",
        "COLLECTOR_BATCH_SIZE",
        "most rows per insert, 1..=50000 (default 1000)",
    ),
    (
        "spoolDir",
        "COLLECTOR_SPOOL_DIR",
        "directory of unsent batches (default /var/lib/metricsstack/spool)",
    ),
    (
        "spoolMaxBytes",
        "COLLECTOR_SPOOL_MAX_BYTES",
        "most bytes spooled, 1 MiB to 100 GiB (default 256 MiB)",
    ),
    (
        "pool.maxConnections",
        "COLLECTOR_POOL_MAX_CONNECTIONS",
        "database connections, 1..=100 (default 1: the writer sends one batch at a time)",
    ),
    (
        "pool.minConnections",
        "",
        "idle connections kept, at most maxConnections (default 0)",
    ),
    (
        "pool.acquireTimeoutSeconds",
        "",
        "seconds to wait for a connection (default 30)",
    ),
    (
        "pool.idleTimeoutSeconds",
        "",
        "close idle connections after this (default 600)",
    ),
    (
        "pool.maxLifetimeSeconds",
        "",
        "replace connections after this (default 1800)",
    ),
    (
        "pool.testBeforeAcquire",
        "",
        "check a connection before use (default false)",
    ),
    (
        "database.tls.mode",
        "",
        "Disable, Prefer, Require, VerifyCa or VerifyFull (default: DATABASE_URL's sslmode)",
    ),
    (
        "database.tls.caFile",
        "",
        "PEM file of the database server's CA, with VerifyCa or VerifyFull",
    ),
    (
        "database.pooler",
        "",
        "None, or PgBouncerTransaction when DATABASE_URL is a PgBouncer in transaction mode",
    ),
    (
        "listenAddress",
        "COLLECTOR_LISTEN_ADDRESS",
        "address of /metrics, /healthz, /readyz (default 0.0.0.0:9464)",
    ),
    (
        "procRoot",
        "COLLECTOR_PROC_ROOT",
        "the host's /proc as mounted (default /proc)",
    ),
];

impl CollectorConfig {
    /// Reads and validates a configuration file, then applies environment overrides.
    pub fn load(
        path: &std::path::Path,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Unreadable {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        let mut config: Self = if text.trim().is_empty() {
            Self::default()
        } else {
            serde_yaml::from_str(&text).map_err(|e| ConfigError::Syntax {
                path: path.display().to_string(),
                reason: e.to_string(),
            })?
        };
        config.apply_env(env)?;
        config.validate()?;
        Ok(config)
    }

    /// Overrides settings from `COLLECTOR_*` environment variables (see [`SETTINGS`]).
    pub fn apply_env(&mut self, env: impl Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        fn number<T: std::str::FromStr>(var: &str, value: String) -> Result<T, ConfigError> {
            value
                .trim()
                .parse()
                .map_err(|_| invalid(var, "a whole number", value))
        }
        if let Some(v) = env("COLLECTOR_INTERVAL_SECONDS") {
            self.interval_seconds = number("COLLECTOR_INTERVAL_SECONDS", v)?;
        }
        if let Some(v) = env("COLLECTOR_TOP_BY_CPU") {
            self.processes.top_by_cpu = number("COLLECTOR_TOP_BY_CPU", v)?;
        }
        if let Some(v) = env("COLLECTOR_TOP_BY_MEMORY") {
            self.processes.top_by_memory = number("COLLECTOR_TOP_BY_MEMORY", v)?;
        }
        if let Some(v) = env("COLLECTOR_POD_ATTRIBUTION") {
            self.pod_attribution = match v.trim() {
                "true" => true,
                "false" => false,
                _ => return Err(invalid("COLLECTOR_POD_ATTRIBUTION", "true or false", v)),
            };
        }
        if let Some(v) = env("COLLECTOR_SCHEMA") {
            self.schema = v;
        }
        if let Some(v) = env("COLLECTOR_BATCH_SIZE") {
            self.batch_size = number("COLLECTOR_BATCH_SIZE", v)?;
        }
        if let Some(v) = env("COLLECTOR_SPOOL_DIR") {
            self.spool_dir = v.into();
        }
        if let Some(v) = env("COLLECTOR_SPOOL_MAX_BYTES") {
            self.spool_max_bytes = number("COLLECTOR_SPOOL_MAX_BYTES", v)?;
        }
        if let Some(v) = env("COLLECTOR_POOL_MAX_CONNECTIONS") {
            self.pool.max_connections = number("COLLECTOR_POOL_MAX_CONNECTIONS", v)?;
        }
        if let Some(v) = env("COLLECTOR_LISTEN_ADDRESS") {
            self.listen_address = v;
        }
        if let Some(v) = env("COLLECTOR_PROC_ROOT") {
            self.proc_root = v.into();
        }
        Ok(())
    }

    /// Checks every setting's range and form.
    pub fn validate(&self) -> Result<(), ConfigError> {
        limits::COLLECTOR_INTERVAL_SECONDS.check(
            "intervalSeconds",
            "a whole number of seconds",
            self.interval_seconds,
        )?;
        let p = &self.processes;
        limits::TOP_PROCESSES.check("processes.topByCpu", "a count", p.top_by_cpu.into())?;
        limits::TOP_PROCESSES.check("processes.topByMemory", "a count", p.top_by_memory.into())?;
        for (list, patterns) in [("include", &p.include), ("exclude", &p.exclude)] {
            for (i, pattern) in patterns.iter().enumerate() {
                if let Err(e) = regex::Regex::new(pattern) {
                    let reason = e.to_string().lines().last().unwrap_or_default().to_owned();
                    return Err(invalid(
                        &format!("processes.{list}[{i}]"),
                        &format!("a regular expression ({reason})"),
                        format!("{pattern:?}"),
                    ));
                }
            }
        }
        limits::COMMAND_LINE_LENGTH.check(
            "processes.commandLineMaxLength",
            "a length",
            p.command_line_max_length.into(),
        )?;
        let identifier = regex::Regex::new("^[a-z_][a-z0-9_]{0,62}$").expect("a valid pattern");
        if !identifier.is_match(&self.schema) {
            return Err(invalid(
                "schema",
                "a lower-case SQL identifier",
                format!("{:?}", self.schema),
            ));
        }
        limits::BATCH_ROWS.check("batchSize", "a row count", self.batch_size.into())?;
        limits::check_megabytes(
            "spoolMaxBytes",
            limits::SPOOL_MEGABYTES,
            self.spool_max_bytes,
        )?;
        limits::check_pool("pool", &self.pool)?;
        self.database.validate()?;
        if self.listen_address.parse::<SocketAddr>().is_err() {
            return Err(invalid(
                "listenAddress",
                "an IP address and port such as 0.0.0.0:9464",
                format!("{:?}", self.listen_address),
            ));
        }
        Ok(())
    }

    /// The sampling interval.
    pub fn interval(&self) -> Duration {
        Duration::from_secs(self.interval_seconds)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn the_defaults_are_valid() {
        assert_eq!(CollectorConfig::default().validate(), Ok(()));
    }

    #[test]
    fn environment_overrides_the_file_and_is_checked() {
        let mut config = CollectorConfig::default();
        let env = |name: &str| (name == "COLLECTOR_INTERVAL_SECONDS").then(|| "12".to_owned());
        config.apply_env(env).expect("a number");
        assert_eq!(config.interval_seconds, 12);
        let env = |name: &str| (name == "COLLECTOR_BATCH_SIZE").then(|| "many".to_owned());
        let error = config.apply_env(env).expect_err("not a number");
        assert_eq!(
            error.to_string(),
            "invalid setting COLLECTOR_BATCH_SIZE: expected a whole number, got many"
        );
        config.apply_env(no_env).expect("nothing to override");
    }

    #[test]
    fn command_lines_are_redacted_unless_the_file_says_otherwise() {
        assert_eq!(
            CollectorConfig::default().processes.command_lines,
            CommandLinePolicy::Redacted
        );
        for (text, policy) in [
            ("full", CommandLinePolicy::Full),
            ("redacted", CommandLinePolicy::Redacted),
            ("none", CommandLinePolicy::None),
        ] {
            let config: CollectorConfig =
                serde_yaml::from_str(&format!("processes: {{commandLines: {text}}}"))
                    .expect("a valid policy");
            assert_eq!(config.processes.command_lines, policy);
        }
        let error = serde_yaml::from_str::<CollectorConfig>("processes: {commandLines: some}")
            .expect_err("not a policy")
            .to_string();
        assert!(
            error.contains("processes.commandLines")
                && error.contains("`full`, `redacted`, `none`"),
            "{error}"
        );
    }

    #[test]
    fn each_bad_setting_is_named() {
        type Breaker = Box<dyn Fn(&mut CollectorConfig)>;
        let cases: Vec<(&str, Breaker)> = vec![
            ("intervalSeconds", Box::new(|c| c.interval_seconds = 0)),
            (
                "processes.topByCpu",
                Box::new(|c| c.processes.top_by_cpu = 5000),
            ),
            (
                "processes.exclude[0]",
                Box::new(|c| c.processes.exclude = vec!["(".into()]),
            ),
            ("schema", Box::new(|c| c.schema = "Metrics; DROP".into())),
            ("batchSize", Box::new(|c| c.batch_size = 0)),
            ("spoolMaxBytes", Box::new(|c| c.spool_max_bytes = 10)),
            (
                "pool.minConnections",
                Box::new(|c| c.pool.min_connections = 9),
            ),
            (
                "database.tls.caFile",
                Box::new(|c| {
                    c.database.tls = Some(crate::config::TlsConfig {
                        mode: crate::database::TlsMode::Require,
                        ca_file: Some("/etc/ca.crt".into()),
                    })
                }),
            ),
            (
                "listenAddress",
                Box::new(|c| c.listen_address = "localhost".into()),
            ),
        ];
        for (setting, break_it) in cases {
            let mut config = CollectorConfig::default();
            break_it(&mut config);
            let error = config.validate().expect_err(setting);
            assert!(
                error
                    .to_string()
                    .starts_with(&format!("invalid setting {setting}: expected ")),
                "{error}"
            );
        }
    }
}
