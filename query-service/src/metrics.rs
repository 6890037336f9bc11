//! The query service's Prometheus metrics: requests by endpoint and status, cache lookups by
//! result, coalesced waiters, and database queries with their latency.

use std::sync::Mutex;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::cache::Status;
use crate::queries::Statement;
use metricsstack_common::access::KubernetesAccess;
use metricsstack_common::admin::RenderMetrics;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    endpoint: &'static str,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LookupLabels {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QueryLabels {
    part: &'static str,
    source: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    part: &'static str,
    source: &'static str,
    outcome: &'static str,
}

/// The query service's metrics and the registry that exposes them.
pub struct Metrics {
    registry: Mutex<Registry>,
    requests: Family<RequestLabels, Counter>,
    lookups: Family<LookupLabels, Counter>,
    coalesced: Counter,
    queries: Family<OutcomeLabels, Counter>,
    query_duration: Family<QueryLabels, Histogram>,
    database_up: Gauge,
    queries_running: Gauge,
    shed: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("metricsstack_query_service");
        let requests = Family::<RequestLabels, Counter>::default();
        let lookups = Family::<LookupLabels, Counter>::default();
        let coalesced = Counter::default();
        let queries = Family::<OutcomeLabels, Counter>::default();
        let query_duration = Family::<QueryLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.001, 2.0, 14))
        });
        registry.register(
            "requests",
            "HTTP requests answered, by endpoint and status",
            requests.clone(),
        );
        registry.register(
            "cache_lookups",
            "Cache lookups of dashboard parts, by result (hit, stale, miss)",
            lookups.clone(),
        );
        registry.register(
            "coalesced_waiters",
            "Cache misses that waited for a database query another request or a refresh had started",
            coalesced.clone(),
        );
        registry.register(
            "database_queries",
            "Database queries run, by part, source and outcome (ok, or the kind of failure)",
            queries.clone(),
        );
        registry.register(
            "database_query_duration_seconds",
            "Time one database query took, by part and source",
            query_duration.clone(),
        );
        let database_up = Gauge::default();
        registry.register(
            "database_up",
            "Whether the database answered the last readiness probe (1) or not (0)",
            database_up.clone(),
        );
        let queries_running = Gauge::default();
        registry.register(
            "database_queries_running",
            "Database queries of answers running or waiting for a connection; at the limit, requests needing one more are shed",
            queries_running.clone(),
        );
        let shed = Counter::default();
        registry.register(
            "shed_lookups",
            "Lookups of parts shed (503 overloaded) because as many database queries as allowed were running and no stale answer could stand in",
            shed.clone(),
        );
        Self {
            database_up,
            queries_running,
            shed,
            registry: Mutex::new(registry),
            requests,
            lookups,
            coalesced,
            queries,
            query_duration,
        }
    }
}

impl Metrics {
    /// Adds the API-server reviews `access` sends to what `/metrics` shows.
    pub fn register_access(&self, access: &KubernetesAccess) {
        access.register(&mut self.registry.lock().unwrap_or_else(|e| e.into_inner()));
    }

    /// Records whether the database answered the readiness probe.
    pub fn database_up(&self, up: bool) {
        self.database_up.set(i64::from(up));
    }

    /// Records that a database query of an answer starts (`true`) or ends (`false`).
    pub fn query_running(&self, running: bool) {
        if running {
            self.queries_running.inc();
        } else {
            self.queries_running.dec();
        }
    }

    /// Records a lookup shed under load.
    pub fn shed(&self) {
        self.shed.inc();
    }

    /// Records an answered request.
    pub fn request(&self, endpoint: &'static str, status: u16) {
        self.requests
            .get_or_create(&RequestLabels { endpoint, status })
            .inc();
    }

    /// Records a cache lookup, and whether it waited for another request's query.
    pub fn lookup(&self, status: Status, coalesced: bool) {
        let result = match status {
            Status::Hit => "hit",
            Status::Stale => "stale",
            Status::Miss => "miss",
        };
        self.lookups.get_or_create(&LookupLabels { result }).inc();
        if coalesced {
            self.coalesced.inc();
        }
    }

    /// Records a database query, how long it took and its outcome: `ok` or the kind of
    /// failure (`crate::service::failure_kind`).
    pub fn query(&self, statement: Statement, took: Duration, outcome: &'static str) {
        let part = statement.part.name();
        let source = statement.source.as_str();
        self.queries
            .get_or_create(&OutcomeLabels {
                part,
                source,
                outcome,
            })
            .inc();
        self.query_duration
            .get_or_create(&QueryLabels { part, source })
            .observe(took.as_secs_f64());
    }
}

impl RenderMetrics for Metrics {
    fn render(&self) -> String {
        self.registry.render()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::filters::Part;
    use crate::queries::Source;

    #[test]
    fn renders_requests_lookups_and_queries() {
        let metrics = Metrics::default();
        metrics.request("batch", 200);
        metrics.lookup(Status::Miss, true);
        metrics.lookup(Status::Hit, false);
        metrics.query(
            Statement {
                part: Part::TopProcesses,
                source: Source::Raw,
            },
            Duration::from_millis(3),
            "ok",
        );
        let text = metrics.render();
        for expected in [
            "metricsstack_query_service_requests_total{endpoint=\"batch\",status=\"200\"} 1",
            "metricsstack_query_service_cache_lookups_total{result=\"miss\"} 1",
            "metricsstack_query_service_cache_lookups_total{result=\"hit\"} 1",
            "metricsstack_query_service_coalesced_waiters_total 1",
            "metricsstack_query_service_database_queries_total{part=\"top_processes\",source=\"raw\",outcome=\"ok\"} 1",
            "metricsstack_query_service_database_query_duration_seconds_count{part=\"top_processes\",source=\"raw\"} 1",
        ] {
            assert!(text.contains(expected), "{expected} in\n{text}");
        }
    }
}
