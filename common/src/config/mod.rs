//! The configuration contract between the operator and its components: the operator
//! renders these structures into ConfigMaps, and the components read them back. Both sides
//! compile against this one definition, so the file format cannot drift.

pub mod collector;
pub mod query_service;

pub use collector::{CollectorConfig, ConfigError, ProcessConfig, SETTINGS};
pub use query_service::QueryServiceConfig;
