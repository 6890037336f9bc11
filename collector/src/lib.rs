//! The MetricsStack collector: samples host, process and pod metrics on a node and writes
//! them in batches to TimescaleDB, spooling to disk while the database is away.

#[cfg(test)]
mod busy_child;
pub mod cgroup;
pub mod command_line;
pub mod cpu_clock;
pub mod ingest;
pub mod metrics;
pub mod network;
pub mod pod_scope;
pub mod pods;
pub mod procfs;
pub mod rows;
pub mod sample;
pub mod spool;
pub mod writer;
