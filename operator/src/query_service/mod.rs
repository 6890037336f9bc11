//! The cached query service that answers dashboards from the metric tables.

mod config;

pub use config::QueryServiceConfig;
