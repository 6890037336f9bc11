//! The ConfigMaps holding the collector's and the query service's configuration files.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::ResourceExt as _;
use metricsstack_common::config::{CollectorConfig, QueryServiceConfig, StackIdentity};
use sha2::{Digest, Sha256};

use super::{Component, owned_meta};
use crate::crd::{CaRef, MetricsStack};
use crate::validate::ValidSpec;

/// The key of the collector's configuration file.
pub const COLLECTOR_CONFIG_KEY: &str = "collector.yaml";
/// The key of the query service's configuration file.
pub const QUERY_SERVICE_CONFIG_KEY: &str = "query-service.yaml";

/// The collector's ConfigMap: the file the `collector` binary reads.
pub fn collector(stack: &MetricsStack, valid: &ValidSpec) -> ConfigMap {
    let config = CollectorConfig {
        stack: identity(stack),
        ..valid.collector.clone()
    };
    let yaml = serde_yaml::to_string(&config).expect("the collector config serialises");
    file(stack, Component::Collector, COLLECTOR_CONFIG_KEY, yaml)
}

/// The query service's ConfigMap: the file `metricsstack-operator query-service` reads.
pub fn query_service(stack: &MetricsStack, valid: &ValidSpec) -> ConfigMap {
    let config = QueryServiceConfig {
        stack: identity(stack),
        ..valid.query_service.clone()
    };
    let yaml = serde_yaml::to_string(&config).expect("the query service config serialises");
    file(
        stack,
        Component::QueryService,
        QUERY_SERVICE_CONFIG_KEY,
        yaml,
    )
}

/// The stack's namespace and name, for the components' spans and log lines.
fn identity(stack: &MetricsStack) -> StackIdentity {
    StackIdentity {
        namespace: stack.namespace().unwrap_or_default(),
        name: stack.name_any(),
    }
}

fn file(stack: &MetricsStack, component: Component, key: &str, yaml: String) -> ConfigMap {
    ConfigMap {
        metadata: owned_meta(stack, component.object_name(stack), component),
        data: Some(BTreeMap::from([(key.to_owned(), yaml)])),
        ..ConfigMap::default()
    }
}

/// A checksum of a ConfigMap's data, of the reference to the database's CA
/// (`spec.database.caRef`) and of the connection the pods use (`connection`, a digest of the
/// Secret's URI and the CA's certificate, when the operator could read them), put on the pod
/// template so that a change of any rolls the pods: a rotated password reaches collectors
/// whose `DATABASE_URL` was fixed when they started.
pub fn config_checksum(
    config_map: &ConfigMap,
    database_ca: Option<&CaRef>,
    connection: Option<&str>,
) -> String {
    let mut hasher = Sha256::new();
    for (key, value) in config_map.data.iter().flatten() {
        hasher.update(key.as_bytes());
        hasher.update([0]);
        hasher.update(value.as_bytes());
        hasher.update([0]);
    }
    if let Some(ca) = database_ca {
        hasher.update(serde_json::to_vec(ca).expect("the CA reference serialises"));
    }
    if let Some(connection) = connection {
        hasher.update([0]);
        hasher.update(connection.as_bytes());
    }
    format!("{:x}", hasher.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::fixtures;
    use metricsstack_common::config::CollectorConfig;

    #[test]
    fn renders_the_collector_config_the_collector_reads() {
        let (stack, valid) = fixtures::stack("production");
        let config_map = collector(&stack, &valid);
        let yaml = &config_map.data.as_ref().expect("data")[COLLECTOR_CONFIG_KEY];
        let parsed: CollectorConfig = serde_yaml::from_str(yaml).expect("the collector parses it");
        let names_its_stack = StackIdentity {
            namespace: "monitoring".into(),
            name: "fleet".into(),
        };
        assert_eq!(
            parsed,
            CollectorConfig {
                stack: names_its_stack,
                ..valid.collector.clone()
            }
        );
        assert_eq!(parsed.pool.max_connections, 3);
        assert_eq!(config_map.metadata.name.as_deref(), Some("fleet-collector"));
        assert_eq!(
            query_service(&stack, &valid).metadata.name.as_deref(),
            Some("fleet-query-service")
        );
    }

    #[test]
    fn checksum_changes_with_the_configuration() {
        let (stack, mut valid) = fixtures::stack("minimal");
        let before = config_checksum(&collector(&stack, &valid), None, None);
        assert_eq!(
            before,
            config_checksum(&collector(&stack, &valid), None, None)
        );
        valid.collector.interval_seconds += 1;
        assert_ne!(
            before,
            config_checksum(&collector(&stack, &valid), None, None)
        );
    }

    #[test]
    fn checksum_changes_with_the_database_ca_reference() {
        let (stack, valid) = fixtures::stack("production");
        let config = collector(&stack, &valid);
        let ca = stack
            .spec
            .database
            .ca_ref
            .clone()
            .expect("the fixture has a CA");
        let with_ca = config_checksum(&config, Some(&ca), None);
        assert_ne!(with_ca, config_checksum(&config, None, None));
        let mut other_key = ca.clone();
        other_key.secret_key_ref.as_mut().expect("a Secret").key = "bundle.pem".into();
        assert_ne!(with_ca, config_checksum(&config, Some(&other_key), None));
        let as_config_map = CaRef {
            secret_key_ref: None,
            config_map_key_ref: ca.secret_key_ref.clone(),
        };
        assert_ne!(
            with_ca,
            config_checksum(&config, Some(&as_config_map), None)
        );
    }

    #[test]
    fn checksum_changes_with_the_connection_read_from_the_secret() {
        let (stack, valid) = fixtures::stack("minimal");
        let config = collector(&stack, &valid);
        let first = config_checksum(&config, None, Some("digest-of-the-first-password"));
        assert_eq!(
            first,
            config_checksum(&config, None, Some("digest-of-the-first-password"))
        );
        assert_ne!(
            first,
            config_checksum(&config, None, Some("digest-of-a-rotated-password"))
        );
    }
}
