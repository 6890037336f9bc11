//! The JSON error body every MetricsStack HTTP endpoint answers with: a stable code a
//! client can branch on, a short message for a person, and the input at fault where there
//! is one. Nothing from the database or the API server goes in it: that goes to the log.

use bytes::Bytes;
use warp::http::{HeaderValue, Response, StatusCode, header};

/// `{"code": code, "error": message, "field": field}` with `status`.
pub fn error_response(
    status: StatusCode,
    code: &str,
    message: &str,
    field: Option<&str>,
) -> Response<Bytes> {
    let body = match field {
        Some(field) => serde_json::json!({ "code": code, "error": message, "field": field }),
        None => serde_json::json!({ "code": code, "error": message }),
    };
    let mut response = Response::new(Bytes::from(
        serde_json::to_vec(&body).expect("JSON serialises"),
    ));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}
