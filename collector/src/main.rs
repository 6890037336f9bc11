//! The `collector` binary. For now it loads and checks its configuration file; sampling and
//! ingest follow in the collector issue.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use metricsstack_collector::config::CollectorConfig;

/// MetricsStack node collector.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// The configuration file (YAML) that the operator renders into the collector ConfigMap.
    #[arg(long, env = "COLLECTOR_CONFIG")]
    config: Option<PathBuf>,
    /// Validate the configuration and exit.
    #[arg(long)]
    check_config: bool,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let config = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading the configuration file {}", path.display()))?;
            serde_yaml::from_str::<CollectorConfig>(&text)
                .with_context(|| format!("{}: invalid configuration", path.display()))?
        }
        None => CollectorConfig::default(),
    };
    if args.check_config {
        println!(
            "configuration is valid: sampling every {} s",
            config.interval_seconds
        );
    }
    Ok(())
}
