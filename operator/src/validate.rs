//! Validation of a `MetricsStack` spec beyond what the API server checks at admission
//! (regular expressions, and values from objects stored before a schema change), turning it
//! into the settings each component is configured with. Pure: no I/O.

use metricsstack_common::access::Authentication;
use metricsstack_common::config::{
    CollectorConfig, CommandLinePolicy, DatabaseConfig, ProcessConfig, TlsConfig, limits,
};
use metricsstack_common::database::{PoolSettings, Pooler};

use crate::crd::{
    CA_NEEDS_VERIFICATION, CA_REF_EXACTLY_ONE, CommandLines, DatabaseSpec, Duration,
    IDENTIFIER_PATTERN, MetricTable, MetricsStackSpec, PoolSpec, QueryAuthentication, StorageSpec,
};
use crate::database::{
    DesiredAggregate, DesiredCompression, DesiredRefresh, DesiredStorage, DesiredTable,
    table_columns,
};
use metricsstack_common::config::QueryServiceConfig;

/// Where the collector container sees the host's `/proc`.
pub const HOST_PROC_MOUNT: &str = "/host/proc";
/// Where the collector container keeps its spool (a host directory, so it survives restarts).
pub const SPOOL_MOUNT: &str = "/var/lib/metricsstack/spool";
/// Where the collector and query service containers see the database's CA certificate
/// (`spec.database.caRef`), read-only.
pub const DATABASE_CA_MOUNT: &str = "/etc/metricsstack-database-ca";
/// The CA certificate's file name under [`DATABASE_CA_MOUNT`].
pub const DATABASE_CA_FILE_NAME: &str = "ca.crt";
/// The port of the collector's health and metrics endpoint.
pub const COLLECTOR_METRICS_PORT: u16 = 9464;

/// A field of the spec that cannot be used, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("spec.{field}: {message}")]
pub struct SpecError {
    /// The field's path below `spec`, as `kubectl explain` spells it.
    pub field: String,
    /// What is wrong and what would be right.
    pub message: String,
}

impl SpecError {
    fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// The settings every component gets, derived from a valid spec.
#[derive(Clone, Debug, PartialEq)]
pub struct ValidSpec {
    /// The collector's configuration file.
    pub collector: CollectorConfig,
    /// The query service's configuration file.
    pub query_service: QueryServiceConfig,
    /// The operator's own pool towards the database.
    pub operator_pool: PoolSettings,
    /// The storage the database should have.
    pub storage: DesiredStorage,
    /// How often the live database is compared with the plan.
    pub drift_check_interval: std::time::Duration,
}

/// Checks the spec and derives each component's settings.
pub fn validate(spec: &MetricsStackSpec) -> Result<ValidSpec, SpecError> {
    let identifier =
        regex::Regex::new(IDENTIFIER_PATTERN).expect("the identifier pattern compiles");
    if !identifier.is_match(&spec.database.schema) {
        return Err(SpecError::new(
            "database.schema",
            format!(
                "{:?} is not a lower-case SQL identifier ({IDENTIFIER_PATTERN})",
                spec.database.schema
            ),
        ));
    }
    let processes = &spec.collector.processes;
    for (list, patterns) in [
        ("include", &processes.include),
        ("exclude", &processes.exclude),
    ] {
        for (i, pattern) in patterns.iter().enumerate() {
            regex::Regex::new(pattern).map_err(|e| {
                SpecError::new(
                    format!("collector.processes.{list}[{i}]"),
                    format!("not a valid regular expression: {e}"),
                )
            })?;
        }
    }
    let pools = &spec.database.pools;
    let database = database_config(&spec.database)?;
    let collector = CollectorConfig {
        stack: Default::default(),
        interval_seconds: seconds(&spec.collector.interval, "collector.interval")?,
        processes: ProcessConfig {
            top_by_cpu: processes.top_by_cpu,
            top_by_memory: processes.top_by_memory,
            include: processes.include.clone(),
            exclude: processes.exclude.clone(),
            command_line_max_length: processes.command_line_max_length,
            command_lines: match processes.command_lines {
                CommandLines::Full => CommandLinePolicy::Full,
                CommandLines::Redacted => CommandLinePolicy::Redacted,
                CommandLines::None => CommandLinePolicy::None,
            },
        },
        pod_attribution: spec.collector.pod_attribution,
        schema: spec.database.schema.clone(),
        batch_size: spec.collector.batch_size,
        spool_dir: SPOOL_MOUNT.into(),
        spool_max_bytes: u64::from(spec.collector.spool_megabytes) * 1024 * 1024,
        pool: pool_settings(&pools.collector, "database.pools.collector")?,
        database: database.clone(),
        listen_address: format!("0.0.0.0:{COLLECTOR_METRICS_PORT}"),
        proc_root: HOST_PROC_MOUNT.into(),
    };
    let cache = &spec.query_service.cache;
    let query_service = QueryServiceConfig {
        stack: Default::default(),
        authentication: match spec.query_service.authentication {
            QueryAuthentication::Kubernetes => Authentication::Kubernetes,
            QueryAuthentication::None => Authentication::None,
        },
        listen_address: format!("0.0.0.0:{}", spec.query_service.port),
        schema: spec.database.schema.clone(),
        pool: pool_settings(&pools.query_service, "database.pools.queryService")?,
        database,
        fresh_ttl_seconds: seconds(&cache.fresh_ttl, "queryService.cache.freshTtl")?,
        stale_while_revalidate_seconds: seconds(
            &cache.stale_while_revalidate,
            "queryService.cache.staleWhileRevalidate",
        )?,
        stale_if_error_seconds: seconds(&cache.stale_if_error, "queryService.cache.staleIfError")?,
        max_entries: cache.max_entries,
        max_bytes: u64::from(cache.max_megabytes) * 1024 * 1024,
    };
    sidecar_spool_megabytes(spec.sidecar.spool_megabytes)?;
    Ok(ValidSpec {
        collector,
        query_service,
        operator_pool: pool_settings(&pools.operator, "database.pools.operator")?,
        storage: desired_storage(&spec.storage, &identifier)?,
        drift_check_interval: drift_check_interval(&spec.drift_check_interval)?,
    })
}

/// The sidecar's spool size within its bounds (as the CRD says; checked again for objects
/// stored before the bound existed).
fn sidecar_spool_megabytes(megabytes: u32) -> Result<(), SpecError> {
    let bounds = limits::SIDECAR_SPOOL_MEGABYTES;
    if bounds.contains(megabytes.into()) {
        return Ok(());
    }
    Err(SpecError::new(
        "sidecar.spoolMegabytes",
        format!(
            "{megabytes} is outside {}..{}: the size limit of the sidecar's spool, in MiB",
            bounds.min, bounds.max
        ),
    ))
}

/// The interval of the drift check, between 10 seconds and a day (as the CRD's rule says;
/// checked again for objects stored before the rule existed).
fn drift_check_interval(interval: &Duration) -> Result<std::time::Duration, SpecError> {
    const FIELD: &str = "driftCheckInterval";
    let seconds = seconds(interval, FIELD)?;
    if !(10..=86_400).contains(&seconds) {
        return Err(SpecError::new(
            FIELD,
            format!(
                "{interval} is outside 10s..24h: the database is compared with the plan this often"
            ),
        ));
    }
    Ok(std::time::Duration::from_secs(seconds))
}

/// How the components reach the database as their configuration states it: the stack's
/// TLS mode, the mounted CA when `caRef` names one, and the pooler they connect through.
fn database_config(database: &DatabaseSpec) -> Result<DatabaseConfig, SpecError> {
    let mode = database.tls_mode.into();
    let ca_file = match &database.ca_ref {
        None => None,
        Some(ca_ref) if ca_ref.source().is_none() => {
            return Err(SpecError::new("database.caRef", CA_REF_EXACTLY_ONE));
        }
        Some(_) if !metricsstack_common::database::TlsMode::verifies_certificate(mode) => {
            return Err(SpecError::new("database.caRef", CA_NEEDS_VERIFICATION));
        }
        Some(_) => Some(format!("{DATABASE_CA_MOUNT}/{DATABASE_CA_FILE_NAME}").into()),
    };
    Ok(DatabaseConfig {
        tls: Some(TlsConfig { mode, ca_file }),
        pooler: database
            .pooler
            .as_ref()
            .map_or(Pooler::None, |pooler| pooler.kind.into()),
    })
}

/// The storage the spec asks for, with every identifier checked: aggregate names must be
/// SQL identifiers, and segment-by and order-by entries columns of their table.
fn desired_storage(
    storage: &StorageSpec,
    identifier: &regex::Regex,
) -> Result<DesiredStorage, SpecError> {
    let mut tables = Vec::new();
    for (i, table) in storage.tables.iter().enumerate() {
        let field = format!("storage.tables[{i}]");
        let columns = table_columns(table.table);
        let compression = match &table.compression {
            None => None,
            Some(c) => {
                for (j, column) in c.segment_by.iter().enumerate() {
                    if !columns.contains(&column.as_str()) {
                        return Err(unknown_column(
                            &format!("{field}.compression.segmentBy[{j}]"),
                            column,
                            columns,
                        ));
                    }
                }
                for (j, entry) in c.order_by.iter().enumerate() {
                    let (column, direction) = entry.split_once(' ').unwrap_or((entry, "ASC"));
                    if !columns.contains(&column) || !["ASC", "DESC"].contains(&direction) {
                        return Err(unknown_column(
                            &format!("{field}.compression.orderBy[{j}]"),
                            entry,
                            columns,
                        ));
                    }
                }
                Some(DesiredCompression {
                    after: signed(seconds(&c.after, &format!("{field}.compression.after"))?),
                    segment_by: c.segment_by.clone(),
                    order_by: c.order_by.clone(),
                })
            }
        };
        tables.push(DesiredTable {
            table: table.table,
            chunk_interval: signed(seconds(
                &table.chunk_interval,
                &format!("{field}.chunkInterval"),
            )?),
            compression,
            retention: table
                .retention
                .as_ref()
                .map(|r| {
                    seconds(&r.drop_after, &format!("{field}.retention.dropAfter")).map(signed)
                })
                .transpose()?,
        });
    }
    let mut aggregates = Vec::new();
    for (i, aggregate) in storage.aggregates.iter().enumerate() {
        let field = format!("storage.aggregates[{i}]");
        if !identifier.is_match(&aggregate.name)
            || MetricTable::ALL
                .iter()
                .any(|t| t.table_name() == aggregate.name)
        {
            return Err(SpecError::new(
                format!("{field}.name"),
                format!(
                    "{:?} must be a lower-case SQL identifier other than a metric table's name",
                    aggregate.name
                ),
            ));
        }
        let refresh = &aggregate.refresh;
        aggregates.push(DesiredAggregate {
            name: aggregate.name.clone(),
            source: aggregate.source,
            bucket: signed(seconds(&aggregate.bucket, &format!("{field}.bucket"))?),
            refresh: DesiredRefresh {
                start_offset: signed(seconds(
                    &refresh.start_offset,
                    &format!("{field}.refresh.startOffset"),
                )?),
                end_offset: refresh
                    .end_offset
                    .as_ref()
                    .map(|d| seconds(d, &format!("{field}.refresh.endOffset")).map(signed))
                    .transpose()?,
                schedule: signed(seconds(
                    &refresh.schedule,
                    &format!("{field}.refresh.schedule"),
                )?),
            },
            retention: aggregate
                .retention
                .as_ref()
                .map(|r| {
                    seconds(&r.drop_after, &format!("{field}.retention.dropAfter")).map(signed)
                })
                .transpose()?,
        });
    }
    Ok(DesiredStorage { tables, aggregates })
}

fn unknown_column(field: &str, entry: &str, columns: &[&str]) -> SpecError {
    SpecError::new(
        field,
        format!(
            "{entry:?} is not a column of the table (optionally followed by ASC or DESC); columns: {}",
            columns.join(", ")
        ),
    )
}

/// Seconds as the database compares them (durations are at most 7 digits of years).
fn signed(seconds: u64) -> i64 {
    i64::try_from(seconds).unwrap_or(i64::MAX)
}

fn seconds(duration: &Duration, field: &str) -> Result<u64, SpecError> {
    duration
        .seconds()
        .map_err(|e| SpecError::new(field, e.to_string()))
}

/// The pool settings a `PoolSpec` declares.
fn pool_settings(pool: &PoolSpec, field: &str) -> Result<PoolSettings, SpecError> {
    if pool.min_connections > pool.max_connections {
        return Err(SpecError::new(
            format!("{field}.minConnections"),
            "must not exceed maxConnections",
        ));
    }
    // The components' own bounds (a stored object may predate the CRD's).
    for (name, bounds, value) in [
        (
            "maxConnections",
            limits::POOL_MAX_CONNECTIONS,
            pool.max_connections,
        ),
        (
            "minConnections",
            limits::POOL_MIN_CONNECTIONS,
            pool.min_connections,
        ),
    ] {
        if !bounds.contains(value.into()) {
            return Err(SpecError::new(
                format!("{field}.{name}"),
                format!("{value} is outside {}..{}", bounds.min, bounds.max),
            ));
        }
    }
    let optional = |d: &Option<Duration>, name: &str| {
        d.as_ref()
            .map(|d| seconds(d, &format!("{field}.{name}")))
            .transpose()
    };
    Ok(PoolSettings {
        max_connections: pool.max_connections,
        min_connections: pool.min_connections,
        acquire_timeout_seconds: seconds(
            &pool.acquire_timeout,
            &format!("{field}.acquireTimeout"),
        )?,
        idle_timeout_seconds: optional(&pool.idle_timeout, "idleTimeout")?,
        max_lifetime_seconds: optional(&pool.max_lifetime, "maxLifetime")?,
        test_before_acquire: pool.test_before_acquire,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::MetricsStack;

    fn spec(yaml: &str) -> MetricsStackSpec {
        serde_yaml::from_str::<MetricsStack>(yaml)
            .expect("the fixture is a MetricsStack")
            .spec
    }

    #[test]
    fn derives_each_components_settings() {
        let valid = validate(&spec(include_str!("../tests/fixtures/production.yaml")))
            .expect("the production example is valid");
        assert_eq!(valid.collector.interval_seconds, 10);
        assert_eq!(valid.collector.processes.top_by_cpu, 30);
        assert_eq!(valid.collector.schema, "metrics");
        assert_eq!(valid.collector.pool.max_connections, 3);
        assert_eq!(valid.collector.pool.idle_timeout_seconds, Some(300));
        assert_eq!(valid.collector.spool_max_bytes, 512 * 1024 * 1024);
        assert_eq!(valid.query_service.pool.max_connections, 20);
        assert_eq!(valid.query_service.fresh_ttl_seconds, 4);
        assert_eq!(valid.query_service.listen_address, "0.0.0.0:8080");
        assert_eq!(valid.operator_pool.max_connections, 2);
    }

    #[test]
    fn the_drift_check_runs_every_minute_unless_the_spec_says_otherwise_within_bounds() {
        let mut spec = spec(include_str!("../tests/fixtures/minimal.yaml"));
        let interval = |spec: &MetricsStackSpec| validate(spec).map(|v| v.drift_check_interval);
        assert_eq!(interval(&spec), Ok(std::time::Duration::from_secs(60)));
        spec.drift_check_interval = Duration::parse("10s").expect("a duration");
        assert_eq!(interval(&spec), Ok(std::time::Duration::from_secs(10)));
        spec.drift_check_interval = Duration::parse("5s").expect("a duration");
        let error = interval(&spec).expect_err("5s is too often");
        assert!(
            error.to_string().starts_with("spec.driftCheckInterval:"),
            "{error}"
        );
    }

    #[test]
    fn command_lines_are_redacted_unless_the_spec_says_otherwise() {
        let mut spec = spec(include_str!("../tests/fixtures/minimal.yaml"));
        let policy = |spec: &MetricsStackSpec| {
            validate(spec)
                .expect("valid")
                .collector
                .processes
                .command_lines
        };
        assert_eq!(policy(&spec), CommandLinePolicy::Redacted);
        for (given, rendered) in [
            (CommandLines::Full, CommandLinePolicy::Full),
            (CommandLines::Redacted, CommandLinePolicy::Redacted),
            (CommandLines::None, CommandLinePolicy::None),
        ] {
            spec.collector.processes.command_lines = given;
            assert_eq!(policy(&spec), rendered);
        }
    }

    #[test]
    fn gives_the_components_the_tls_mode_and_the_mounted_ca() {
        let valid = validate(&spec(include_str!("../tests/fixtures/production.yaml")))
            .expect("the production example is valid");
        let tls = TlsConfig {
            mode: metricsstack_common::database::TlsMode::VerifyFull,
            ca_file: Some("/etc/metricsstack-database-ca/ca.crt".into()),
        };
        assert_eq!(valid.collector.database.tls.as_ref(), Some(&tls));
        assert_eq!(valid.query_service.database.tls.as_ref(), Some(&tls));
        let minimal = validate(&spec(include_str!("../tests/fixtures/minimal.yaml")))
            .expect("the minimal example is valid");
        let prefer = TlsConfig {
            mode: metricsstack_common::database::TlsMode::Prefer,
            ca_file: None,
        };
        assert_eq!(minimal.collector.database.tls, Some(prefer));
    }

    #[test]
    fn tells_the_data_plane_and_not_the_operator_about_a_pooler() {
        let mut spec = spec(include_str!("../tests/fixtures/minimal.yaml"));
        let none = validate(&spec).expect("valid");
        assert_eq!(none.collector.database.pooler, Pooler::None);
        spec.database.pooler = serde_yaml::from_str(
            "{kind: PgBouncerTransaction, secretRef: {name: pgbouncer, key: uri}}",
        )
        .expect("a pooler");
        let pooled = validate(&spec).expect("valid");
        assert_eq!(
            pooled.collector.database.pooler,
            Pooler::PgBouncerTransaction
        );
        assert_eq!(
            pooled.query_service.database.pooler,
            Pooler::PgBouncerTransaction
        );
    }

    #[test]
    fn refuses_a_ca_the_tls_mode_would_not_use_or_that_names_no_single_source() {
        let mut spec = spec(include_str!("../tests/fixtures/production.yaml"));
        spec.database.tls_mode = crate::crd::TlsMode::Require;
        let error = validate(&spec).expect_err("Require checks no certificate");
        assert_eq!(error.field, "database.caRef");
        assert_eq!(error.message, CA_NEEDS_VERIFICATION);
        spec.database.tls_mode = crate::crd::TlsMode::VerifyCa;
        let ca_ref = spec.database.ca_ref.as_mut().expect("the fixture has a CA");
        ca_ref.config_map_key_ref = ca_ref.secret_key_ref.clone();
        let error = validate(&spec).expect_err("two sources");
        assert_eq!(error.message, CA_REF_EXACTLY_ONE);
    }

    #[test]
    fn names_the_pattern_that_is_no_regular_expression() {
        let mut spec = spec(include_str!("../tests/fixtures/minimal.yaml"));
        spec.collector.processes.exclude = vec!["ok".into(), "(unclosed".into()];
        let error = validate(&spec).expect_err("the pattern is invalid");
        assert_eq!(error.field, "collector.processes.exclude[1]");
        assert!(error.message.contains("regular expression"), "{error}");
    }

    #[test]
    fn converts_storage_to_seconds() {
        let valid = validate(&spec(include_str!("../tests/fixtures/production.yaml")))
            .expect("the production example is valid");
        let overall = &valid.storage.tables[1];
        assert_eq!(overall.chunk_interval, 7 * 86_400);
        assert_eq!(overall.retention, Some(365 * 86_400));
        let daily = &valid.storage.aggregates[1];
        assert_eq!(
            (
                daily.bucket,
                daily.refresh.start_offset,
                daily.refresh.end_offset
            ),
            (86_400, 3 * 86_400, Some(86_400))
        );
    }

    #[test]
    fn names_a_segment_by_column_the_table_lacks() {
        let mut spec = spec(include_str!("../tests/fixtures/minimal.yaml"));
        let compression = spec.storage.tables[1]
            .compression
            .as_mut()
            .expect("compression");
        compression.segment_by = vec!["pod_name".into()];
        let error = validate(&spec).expect_err("host_overall_metrics has no pod_name");
        assert_eq!(error.field, "storage.tables[1].compression.segmentBy[0]");
        assert!(
            error.message.contains("columns: timestamp, host"),
            "{error}"
        );
    }

    #[test]
    fn refuses_a_stored_pool_with_min_over_max() {
        let mut spec = spec(include_str!("../tests/fixtures/minimal.yaml"));
        spec.database.pools.operator.min_connections = 9;
        let error = validate(&spec).expect_err("min over max is invalid");
        assert_eq!(
            error.to_string(),
            "spec.database.pools.operator.minConnections: must not exceed maxConnections"
        );
    }
}
