//! The configuration contract between the operator and its components: the operator
//! renders these structures into ConfigMaps, and the components read them back. Both sides
//! compile against this one definition, so the file format cannot drift.

pub mod collector;
pub mod limits;
pub mod query_service;

pub use collector::{CollectorConfig, CommandLinePolicy, ConfigError, ProcessConfig, SETTINGS};
pub use query_service::QueryServiceConfig;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use sqlx::postgres::PgConnectOptions;

use crate::database::{CaCertificate, DatabaseTls, Pooler, TlsMode};

/// Which MetricsStack a component serves, as the operator renders it into the component's
/// configuration: the fields of the component's spans and log lines. Empty when the
/// component runs outside the operator (a hand-written configuration).
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct StackIdentity {
    /// The MetricsStack's namespace.
    pub namespace: String,
    /// The MetricsStack's name.
    pub name: String,
}

/// How a component reaches the database, beside the connection URI (which comes from the
/// environment, `DATABASE_URL`, because it holds the password): TLS, and whether a
/// transaction-mode pooler stands in between.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct DatabaseConfig {
    /// TLS towards the database; absent: as the URI's `sslmode` and `sslrootcert` say.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsConfig>,
    /// What stands between the component and PostgreSQL; absent: `None`.
    #[serde(skip_serializing_if = "Pooler::is_none")]
    pub pooler: Pooler,
}

/// TLS towards the database, as a component's configuration file states it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TlsConfig {
    /// How much TLS is required and checked.
    pub mode: TlsMode,
    /// A PEM file with the CA that signs the server's certificate, trusted beside the
    /// built-in roots; only with `VerifyCa` or `VerifyFull`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
}

impl DatabaseConfig {
    /// The connection options of the URI, with the TLS this configuration states.
    pub fn connect_options(&self, uri_options: PgConnectOptions) -> PgConnectOptions {
        match &self.tls {
            None => uri_options,
            Some(tls) => DatabaseTls {
                mode: tls.mode,
                ca: tls.ca_file.clone().map(CaCertificate::File),
            }
            .apply(uri_options),
        }
    }

    /// Checks that a CA file comes with a mode that verifies the certificate.
    pub fn validate(&self) -> Result<(), ConfigError> {
        match &self.tls {
            Some(TlsConfig {
                mode,
                ca_file: Some(ca_file),
            }) if !mode.verifies_certificate() => Err(ConfigError::Invalid {
                setting: "database.tls.caFile".into(),
                expected: "no CA file unless database.tls.mode is VerifyCa or VerifyFull (the \
                           other modes check no certificate)"
                    .into(),
                got: ca_file.display().to_string(),
            }),
            _ => Ok(()),
        }
    }
}
