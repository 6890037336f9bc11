//! The cached query service that answers dashboards from the metric tables: one batch
//! request for the whole dashboard (and the four parts on their own), answered from a
//! bounded, single-flight, refresh-ahead cache so that database load does not grow with the
//! viewers.
//! The API is written down in `openapi.yaml`, served at `/openapi.yaml`.

pub mod cache;
pub mod filters;
pub mod metrics;
pub mod queries;
pub mod server;

pub use server::{QueryService, ServiceError};
