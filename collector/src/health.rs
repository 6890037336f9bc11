//! The collector's HTTP endpoint: `/healthz` (the process answers), `/readyz` (the first
//! sample is taken) and `/metrics`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use warp::Filter;
use warp::http::StatusCode;

use crate::metrics::Metrics;

/// Serves the endpoint until the process ends.
pub async fn serve(address: SocketAddr, metrics: Arc<Metrics>, ready: Arc<AtomicBool>) {
    let healthz = warp::path!("healthz").map(|| "ok".to_owned());
    let readyz = warp::path!("readyz").map(move || {
        if ready.load(Ordering::SeqCst) {
            warp::reply::with_status("ready".to_owned(), StatusCode::OK)
        } else {
            warp::reply::with_status("no sample yet".to_owned(), StatusCode::SERVICE_UNAVAILABLE)
        }
    });
    let metrics = warp::path!("metrics").map(move || metrics.render());
    warp::serve(warp::get().and(healthz.or(readyz).or(metrics)))
        .run(address)
        .await;
}
