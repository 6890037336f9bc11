//! The shutdown signal the programs stop on.

/// Completes on SIGTERM (how Kubernetes stops a pod) or Ctrl-C.
///
/// # Panics
/// If the SIGTERM handler cannot be installed (no Tokio runtime with signal support).
pub async fn signal() {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing the SIGTERM handler");
    tokio::select! {
        _ = terminate.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
