//! The query service's Service.

use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{Component, owned_meta, selector_labels};
use crate::crd::MetricsStack;

/// A ClusterIP Service in front of the query service pods.
pub fn build(stack: &MetricsStack) -> Service {
    Service {
        metadata: owned_meta(
            stack,
            Component::QueryService.object_name(stack),
            Component::QueryService,
        ),
        spec: Some(ServiceSpec {
            selector: Some(selector_labels(stack, Component::QueryService)),
            ports: Some(vec![ServicePort {
                name: Some("http".into()),
                port: stack.spec.query_service.port,
                target_port: Some(IntOrString::String("http".into())),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::fixtures;

    #[test]
    fn selects_the_query_service_pods_on_the_spec_port() {
        let (stack, _) = fixtures::stack("minimal");
        let service = build(&stack);
        let spec = service.spec.expect("spec");
        let selector = spec.selector.expect("selector");
        assert_eq!(
            selector
                .get("app.kubernetes.io/component")
                .map(String::as_str),
            Some("query-service")
        );
        assert_eq!(spec.ports.expect("ports")[0].port, 8080);
    }
}
