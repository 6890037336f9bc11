//! What several integration tests of the query service share.

use metricsstack_common::access::{AccessPolicy, Authentication};
use metricsstack_common::config::QueryServiceConfig;
use metricsstack_common::database::PoolSettings;
use metricsstack_query_service::QueryService;
use tokio::net::TcpListener;

/// Starts a query service without authentication on `database_url`'s `public` schema, its
/// answers fresh for a minute, on a free loopback port; gives its base URL.
pub async fn start_open_service(database_url: &str) -> String {
    let config = QueryServiceConfig {
        stack: Default::default(),
        authentication: Authentication::None,
        listen_address: "127.0.0.1:0".into(),
        schema: "public".into(),
        database: Default::default(),
        pool: PoolSettings::default(),
        fresh_ttl_seconds: 60,
        stale_while_revalidate_seconds: 60,
        stale_if_error_seconds: 60,
        max_entries: 1000,
        max_bytes: 64 * 1024 * 1024,
    };
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("address"));
    let service =
        QueryService::new(&config, database_url, AccessPolicy::Open).expect("the service starts");
    tokio::spawn(service.run(listener, std::future::pending()));
    base
}
