//! What the three MetricsStack programs (operator, collector, query service) share, and
//! nothing else: the configuration contract the operator renders for its components, the
//! one way every client connects to the stack's database, the admin server (`/healthz`,
//! `/readyz`, `/metrics`), who may read what they serve (Kubernetes token and access
//! reviews), their JSON error body, logging setup and the shutdown signal.

pub mod access;
pub mod admin;
pub mod config;
pub mod database;
pub mod http;
pub mod logging;
pub mod shutdown;
