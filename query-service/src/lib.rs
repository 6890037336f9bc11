//! The cached query service that answers dashboards from the metric tables: one batch
//! request for the whole dashboard (and the four parts on their own; a process search over
//! command lines, a pod's processes and a process's history across restarts beside them),
//! answered from a bounded, single-flight, refresh-ahead cache so that database load does not
//! grow with the viewers.
//! The API is written down in `openapi.yaml`, served at `/openapi.yaml`; the web dashboard
//! that reads it is served at `/` (`dashboard`).
//!
//! `service` holds the service (the database pool, the hourly-aggregate look-ups, serving
//! until shutdown), `routes` the HTTP routes and their handlers, and `http` the HTTP
//! details of the answers (ETag, freshness headers and 304, the body limit, JSON errors).

pub mod cache;
pub mod dashboard;
pub mod filters;
pub mod http;
pub mod metrics;
pub mod queries;
pub mod routes;
pub mod service;

pub use service::{QueryService, ServiceError};
