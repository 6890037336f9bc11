//! The MetricsStack collector: samples host, process and pod metrics on a node and writes
//! them in batches to TimescaleDB.

pub mod config;
