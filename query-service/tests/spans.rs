//! Each request and each database query of the query service has a span naming what it
//! serves. A test binary of its own: the spans are recorded by a thread-local default
//! subscriber, and tests running beside it on other threads raced it for tracing's
//! per-callsite interest (the request spans went unrecorded in about one run in four with
//! eight test threads).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use metricsstack_common::access::{AccessPolicy, Authentication};
use metricsstack_common::config::{QueryServiceConfig, StackIdentity};
use metricsstack_common::database::PoolSettings;
use metricsstack_query_service::QueryService;
use reqwest::StatusCode;
use tokio::net::TcpListener;
use tracing::field::{Field, Visit};
use tracing::{Event, Metadata, Subscriber, span};

/// Starts a service for `stack` whose database refuses connections, on a free port; gives
/// its base URL.
async fn without_a_database(stack: StackIdentity) -> String {
    let config = QueryServiceConfig {
        stack,
        authentication: Authentication::None,
        listen_address: "127.0.0.1:0".into(),
        schema: "public".into(),
        database: Default::default(),
        pool: PoolSettings {
            acquire_timeout_seconds: 1,
            ..PoolSettings::default()
        },
        fresh_ttl_seconds: 1,
        stale_while_revalidate_seconds: 0,
        stale_if_error_seconds: 0,
        max_entries: 1,
        max_bytes: 1024,
    };
    let refused = "postgres://nobody@127.0.0.1:1/nothing";
    let service =
        QueryService::new(&config, refused, AccessPolicy::Open).expect("the service starts");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("address"));
    tokio::spawn(service.run(listener, std::future::pending()));
    base
}

/// A subscriber that keeps every span opened while it is the default: its metadata and
/// the fields it was opened with. (It cannot answer `Span::current()`: that takes
/// tracing-core's `Current`, which `tracing` does not re-export.)
#[derive(Clone, Default)]
struct RecordedSpans(Arc<Mutex<Vec<RecordedSpan>>>);

struct RecordedSpan {
    metadata: &'static Metadata<'static>,
    fields: BTreeMap<&'static str, String>,
}

impl Visit for RecordedSpan {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.fields.insert(field.name(), value.to_owned());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.fields.insert(field.name(), format!("{value:?}"));
    }
}

impl RecordedSpans {
    fn lock(&self) -> MutexGuard<'_, Vec<RecordedSpan>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The fields of this crate's spans called `name`, in the order they were opened.
    fn named(&self, name: &str) -> Vec<BTreeMap<&'static str, String>> {
        self.lock()
            .iter()
            .filter(|span| span.metadata.name() == name)
            .filter(|span| {
                span.metadata
                    .target()
                    .starts_with("metricsstack_query_service")
            })
            .map(|span| span.fields.clone())
            .collect()
    }
}

impl Subscriber for RecordedSpans {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }

    fn new_span(&self, attributes: &span::Attributes<'_>) -> span::Id {
        let mut span = RecordedSpan {
            metadata: attributes.metadata(),
            fields: BTreeMap::new(),
        };
        attributes.record(&mut span);
        let mut spans = self.lock();
        spans.push(span);
        span::Id::from_u64(spans.len() as u64)
    }

    fn record(&self, _: &span::Id, _: &span::Record<'_>) {}

    fn record_follows_from(&self, _: &span::Id, _: &span::Id) {}

    fn event(&self, _: &Event<'_>) {}

    fn enter(&self, _: &span::Id) {}

    fn exit(&self, _: &span::Id) {}
}

#[tokio::test]
async fn each_request_and_each_database_query_has_a_span_naming_what_it_serves() {
    let spans = RecordedSpans::default();
    let _default = tracing::subscriber::set_default(spans.clone());
    let stack = StackIdentity {
        namespace: "monitoring".into(),
        name: "main".into(),
    };
    let base = without_a_database(stack).await;
    let http = reqwest::Client::new();
    let part = http.get(format!("{base}/api/vm-metrics")).send().await;
    assert_eq!(
        part.expect("answered").status(),
        StatusCode::SERVICE_UNAVAILABLE
    );
    let healthz = http.get(format!("{base}/healthz")).send().await;
    assert_eq!(healthz.expect("answered").status(), StatusCode::OK);
    let elsewhere = http.post(format!("{base}/nothing")).send().await;
    assert_eq!(elsewhere.expect("answered").status(), StatusCode::NOT_FOUND);

    let fields = |pairs: &[(&'static str, &str)]| {
        pairs
            .iter()
            .map(|(name, value)| (*name, (*value).to_owned()))
            .collect::<BTreeMap<_, _>>()
    };
    // The endpoint and the status are recorded later, into `Span::current()`.
    let request = |method| {
        fields(&[
            ("method", method),
            ("stack.namespace", "monitoring"),
            ("stack.name", "main"),
        ])
    };
    assert_eq!(
        spans.named("request"),
        [request("GET"), request("GET"), request("POST")]
    );
    assert_eq!(
        spans.named("database_query"),
        [fields(&[("part", "vm_metrics"), ("source", "raw")])]
    );
}
