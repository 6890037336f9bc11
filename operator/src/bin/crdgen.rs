//! Prints the `MetricsStack` CustomResourceDefinition as YAML; `crds/` holds its output.

use kube::CustomResourceExt;
use metricsstack_operator::crd::MetricsStack;

fn main() -> anyhow::Result<()> {
    print!("{}", serde_yaml::to_string(&MetricsStack::crd())?);
    Ok(())
}
