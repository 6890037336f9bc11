//! Logging setup shared by the programs: JSON lines on standard output, filtered by
//! `RUST_LOG` when it is set.

/// Installs the global subscriber: JSON lines, `RUST_LOG` or else `default_filter` (for
/// example `info,kube=warn`).
pub fn init(default_filter: &str) {
    tracing_subscriber::fmt()
        .json()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| default_filter.into()),
        )
        .init();
}
