//! The MetricsStack operator: the `MetricsStack` API, the reconciler that turns it into
//! Kubernetes objects and TimescaleDB policies, and the cached query service.

pub mod crd;
