//! The shutdown signal the programs stop on.

use std::future::Future;

/// Installs the SIGTERM handler now (so that a SIGTERM arriving before the first poll is
/// not fatal) and returns a future that completes on SIGTERM (how Kubernetes stops a pod)
/// or Ctrl-C.
///
/// # Panics
/// Outside a Tokio runtime with signal support, or if the handler cannot be installed.
pub fn signal() -> impl Future<Output = ()> + Send + 'static {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing the SIGTERM handler");
    async move {
        tokio::select! {
            _ = terminate.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    }
}
