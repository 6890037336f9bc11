//! The configuration contract between the operator and its components: the operator
//! renders these structures into ConfigMaps, and the components read them back. Both sides
//! compile against this one definition, so the file format cannot drift.

pub mod collector;
pub mod query_service;

pub use collector::{CollectorConfig, CommandLinePolicy, ConfigError, ProcessConfig, SETTINGS};
pub use query_service::QueryServiceConfig;

use serde::{Deserialize, Serialize};

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
