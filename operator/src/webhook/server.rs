//! The webhook's HTTPS server: TLS by rustls with the certificate of the moment, HTTP/1.1
//! by hyper, one route ([`super::MUTATE_PODS_PATH`], POST). Its connections belong to the
//! serving future, so dropping it closes them all.

use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use k8s_openapi::api::core::v1::Pod;
use kube::core::admission::AdmissionReview;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

use super::{CurrentCertificate, Injector, MUTATE_PODS_PATH};

/// The largest review read: the API server's request limit (3 MiB) with room to spare.
const BODY_LIMIT: usize = 8 * 1024 * 1024;
/// How long a client has to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves until dropped.
pub(super) async fn serve(
    listener: TcpListener,
    certificate: Arc<CurrentCertificate>,
    injector: Arc<Injector>,
) {
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("ring supports the default TLS versions")
    .with_no_client_auth()
    .with_cert_resolver(certificate);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        tracing::warn!(%error, "cannot accept a webhook connection");
                        continue;
                    }
                };
                let (acceptor, injector) = (acceptor.clone(), injector.clone());
                connections.spawn(async move {
                    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => tls,
                        Ok(Err(error)) => {
                            tracing::debug!(%peer, %error, "webhook TLS handshake failed");
                            return;
                        }
                        Err(_) => return,
                    };
                    let service = service_fn(move |request| {
                        let injector = injector.clone();
                        async move { Ok::<_, std::convert::Infallible>(answer(&injector, request).await) }
                    });
                    if let Err(error) = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), service)
                        .await
                    {
                        tracing::debug!(%peer, %error, "webhook connection ended");
                    }
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// The response to one request.
async fn answer(injector: &Injector, request: Request<Incoming>) -> Response<Full<Bytes>> {
    let plain = |status: StatusCode, text: &str| {
        let mut response = Response::new(Full::new(Bytes::from(text.to_owned())));
        *response.status_mut() = status;
        response
    };
    if request.uri().path() != MUTATE_PODS_PATH {
        return plain(StatusCode::NOT_FOUND, "not found\n");
    }
    if request.method() != Method::POST {
        return plain(StatusCode::METHOD_NOT_ALLOWED, "POST an AdmissionReview\n");
    }
    let body = match Limited::new(request.into_body(), BODY_LIMIT)
        .collect()
        .await
    {
        Ok(body) => body.to_bytes(),
        Err(error) => return plain(StatusCode::BAD_REQUEST, &format!("{error}\n")),
    };
    let review: AdmissionReview<Pod> = match serde_json::from_slice(&body) {
        Ok(review) => review,
        Err(error) => {
            return plain(
                StatusCode::BAD_REQUEST,
                &format!("not an AdmissionReview of a pod: {error}\n"),
            );
        }
    };
    let answer = injector.review(review).await;
    let mut response = Response::new(Full::new(Bytes::from(
        serde_json::to_vec(&answer).expect("an AdmissionReview serialises"),
    )));
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    response
}
