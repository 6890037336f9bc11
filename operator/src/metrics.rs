//! The operator's Prometheus metrics: reconciles, failures by reason, how long a reconcile
//! takes, stored MetricsStacks the operator cannot read, and each stack's failing
//! TimescaleDB policy jobs.

use std::sync::Mutex;
use std::time::Duration;

use metricsstack_common::access::KubernetesAccess;
use metricsstack_common::admin::RenderMetrics;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// The operator's metrics and the registry that exposes them.
pub struct Metrics {
    registry: Mutex<Registry>,
    reconciles: Counter,
    failures: Family<Vec<(String, String)>, Counter>,
    duration: Histogram,
    unreadable: Counter,
    failing_jobs: Family<Vec<(String, String)>, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("metricsstack_operator");
        let reconciles = Counter::default();
        let failures = Family::<Vec<(String, String)>, Counter>::default();
        let duration = Histogram::new(exponential_buckets(0.005, 2.0, 14));
        registry.register("reconciles", "Reconciles run", reconciles.clone());
        registry.register(
            "reconcile_failures",
            "Reconciles that failed, by reason",
            failures.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Time one reconcile took",
            duration.clone(),
        );
        let unreadable = Counter::default();
        registry.register(
            "unreadable_objects",
            "MetricsStack versions in the watch that do not match the operator's types, skipped",
            unreadable.clone(),
        );
        let failing_jobs = Family::<Vec<(String, String)>, Gauge>::default();
        registry.register(
            "failing_jobs",
            "TimescaleDB policy jobs of a stack whose last run failed, as the last reconcile that read them saw",
            failing_jobs.clone(),
        );
        Self {
            registry: Mutex::new(registry),
            reconciles,
            failures,
            duration,
            unreadable,
            failing_jobs,
        }
    }
}

impl Metrics {
    /// Adds the API-server reviews `access` sends (for `/metrics`) to what it shows.
    pub fn register_access(&self, access: &KubernetesAccess) {
        access.register(&mut self.registry.lock().unwrap_or_else(|e| e.into_inner()));
    }

    /// Records a finished reconcile.
    pub fn reconciled(&self, took: Duration) {
        self.reconciles.inc();
        self.duration.observe(took.as_secs_f64());
    }

    /// Records a failed reconcile.
    pub fn reconcile_failed(&self, reason: &str) {
        self.failures
            .get_or_create(&vec![("reason".to_owned(), reason.to_owned())])
            .inc();
    }

    /// Records a MetricsStack the operator skipped because it cannot read it.
    pub fn unreadable_object(&self) {
        self.unreadable.inc();
    }
}

impl Metrics {
    /// Records how many policy jobs of the stack `namespace/name` failed on their last run.
    pub fn failing_jobs(&self, namespace: &str, name: &str, failing: usize) {
        self.failing_jobs
            .get_or_create(&stack_labels(namespace, name))
            .set(i64::try_from(failing).unwrap_or(i64::MAX));
    }

    /// Forgets a deleted stack's series.
    pub fn forget_stack(&self, namespace: &str, name: &str) {
        self.failing_jobs.remove(&stack_labels(namespace, name));
    }
}

fn stack_labels(namespace: &str, name: &str) -> Vec<(String, String)> {
    vec![
        ("namespace".to_owned(), namespace.to_owned()),
        ("name".to_owned(), name.to_owned()),
    ]
}

impl RenderMetrics for Metrics {
    fn render(&self) -> String {
        self.registry.render()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_reconciles_and_failures_by_reason() {
        let metrics = Metrics::default();
        metrics.reconciled(Duration::from_millis(20));
        metrics.reconcile_failed("database");
        metrics.unreadable_object();
        metrics.failing_jobs("monitoring", "stack", 2);
        metrics.failing_jobs("monitoring", "gone", 1);
        metrics.forget_stack("monitoring", "gone");
        let text = metrics.render();
        assert!(
            text.contains("metricsstack_operator_reconciles_total 1"),
            "{text}"
        );
        assert!(
            text.contains("metricsstack_operator_reconcile_failures_total{reason=\"database\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("metricsstack_operator_reconcile_duration_seconds_count 1"),
            "{text}"
        );
        assert!(
            text.contains("metricsstack_operator_unreadable_objects_total 1"),
            "{text}"
        );
        assert!(
            text.contains(
                "metricsstack_operator_failing_jobs{namespace=\"monitoring\",name=\"stack\"} 2"
            ),
            "{text}"
        );
        assert!(!text.contains("name=\"gone\""), "{text}");
    }
}
