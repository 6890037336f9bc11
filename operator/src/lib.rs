//! The MetricsStack operator: the `MetricsStack` API, the reconciler that turns it into
//! Kubernetes objects and TimescaleDB policies.

pub mod controller;
pub mod crd;
pub mod database;
pub mod leader;
pub mod metrics;
pub mod resources;
pub mod validate;
pub mod webhook;
