//! The HTTP details of the answers: a cached answer's ETag, its freshness headers and
//! `304 Not Modified`, reading a request body up to the limit, and the JSON error bodies.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BufMut as _, Bytes, BytesMut};
use futures::{Stream, StreamExt as _};
use sha2::{Digest as _, Sha256};
use warp::http::{HeaderValue, Response, StatusCode, header};

use crate::cache::{CacheError, Lookup, Policy, Status, Weigh};
use crate::filters::InvalidInput;
use metricsstack_common::http::error_response;

/// Largest batch request body, in bytes.
pub const MAX_BODY_BYTES: usize = 16 * 1024;

/// One cached part answer: its JSON body and strong ETag (quoted).
#[derive(Clone, Debug)]
pub struct Answer {
    pub(crate) body: Bytes,
    pub(crate) etag: Arc<str>,
}

impl Answer {
    /// The answer with `body`, its ETag the body's SHA-256.
    pub(crate) fn new(body: Vec<u8>) -> Self {
        let etag = format!("\"{:x}\"", Sha256::digest(&body));
        Self {
            body: body.into(),
            etag: etag.into(),
        }
    }
}

impl Weigh for Answer {
    fn weight(&self) -> u64 {
        (self.body.len() + self.etag.len()) as u64
    }
}

/// How fresh an answer is, for its headers.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Freshness {
    status: Status,
    age: Duration,
}

impl Freshness {
    /// The freshness of a looked-up answer.
    pub(crate) fn of(lookup: &Lookup<Answer>) -> Self {
        Self {
            status: lookup.status,
            age: lookup.age,
        }
    }

    /// The freshness of an answer composed of two: the staler status, the older age.
    pub(crate) fn worst(self, other: Self) -> Self {
        let rank = |s: Status| match s {
            Status::Hit => 0,
            Status::Miss => 1,
            Status::Stale => 2,
        };
        Self {
            status: if rank(other.status) > rank(self.status) {
                other.status
            } else {
                self.status
            },
            age: self.age.max(other.age),
        }
    }
}

/// A cacheable JSON answer with its validators, or `304 Not Modified` when the client's
/// `If-None-Match` names its ETag. `max-age` is the whole freshness lifetime and `Age` the
/// seconds since the answer was fetched (RFC 9111), so an HTTP cache in front counts what
/// remains of it, and sees a stale answer (age at least `max-age`) as stale.
pub(crate) fn cached(
    etag: &str,
    body: Bytes,
    freshness: Freshness,
    policy: Policy,
    if_none_match: Option<&str>,
) -> Response<Bytes> {
    let not_modified = if_none_match.is_some_and(|inm| etag_matches(inm, etag));
    let mut builder = Response::builder()
        .status(if not_modified {
            StatusCode::NOT_MODIFIED
        } else {
            StatusCode::OK
        })
        .header(header::ETAG, etag)
        .header(
            header::CACHE_CONTROL,
            format!(
                "max-age={}, stale-while-revalidate={}, stale-if-error={}",
                policy.fresh.as_secs(),
                policy.stale_while_revalidate.as_secs(),
                policy.stale_if_error.as_secs()
            ),
        )
        .header(
            "x-cache",
            HeaderValue::from_static(freshness.status.as_str()),
        )
        .header(header::AGE, freshness.age.as_secs());
    if not_modified {
        return builder.body(Bytes::new()).expect("a valid response");
    }
    builder = builder.header(header::CONTENT_TYPE, "application/json");
    builder.body(body).expect("a valid response")
}

/// Whether an `If-None-Match` value (`*` or a list of entity tags) matches `etag`, by the
/// weak comparison RFC 9110 prescribes for it.
fn etag_matches(if_none_match: &str, etag: &str) -> bool {
    if_none_match
        .split(',')
        .map(str::trim)
        .any(|tag| tag == "*" || tag.strip_prefix("W/").unwrap_or(tag) == etag)
}

/// Reads a request body of at most [`MAX_BODY_BYTES`]: one announced larger is refused
/// without reading it, and one sent in chunks is refused as soon as it grows larger.
pub(crate) async fn read_body(
    content_length: Option<&str>,
    body: impl Stream<Item = Result<impl Buf, warp::Error>>,
) -> Result<Bytes, InvalidInput> {
    let too_large = || InvalidInput {
        error: format!("the body is larger than the limit of {MAX_BODY_BYTES} bytes"),
        field: "body".to_owned(),
    };
    if content_length
        .and_then(|length| length.trim().parse::<u64>().ok())
        .is_some_and(|length| length > MAX_BODY_BYTES as u64)
    {
        return Err(too_large());
    }
    let mut body = std::pin::pin!(body);
    let mut read = BytesMut::new();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|error| InvalidInput {
            error: format!("reading the body failed: {error}"),
            field: "body".to_owned(),
        })?;
        if read.len() + chunk.remaining() > MAX_BODY_BYTES {
            return Err(too_large());
        }
        read.put(chunk);
    }
    Ok(read.freeze())
}

/// A JSON error body with its stable `code` (see `metricsstack_common::http`), naming the
/// offending `field` when there is one.
pub(crate) fn error_json(
    status: StatusCode,
    code: &str,
    message: &str,
    field: Option<&str>,
) -> Response<Bytes> {
    error_response(status, code, message, field)
}

/// `400 Bad Request` naming the invalid input.
pub(crate) fn bad_request(invalid: &InvalidInput) -> Response<Bytes> {
    error_json(
        StatusCode::BAD_REQUEST,
        "invalid_parameter",
        &invalid.error,
        Some(&invalid.field),
    )
}

/// What a client is told when a part could not be answered: the database's own error
/// (relation names, user and host names) goes to the log and to the query metrics' bounded
/// `outcome` label, never to the client.
pub const DATABASE_UNAVAILABLE: &str =
    "the database did not answer and no cached answer can stand in; retry later";

/// `503 Service Unavailable` for a part the database could not answer (and no stale answer
/// could stand in): never cached. The error itself was logged where the query failed.
pub(crate) fn unavailable() -> Response<Bytes> {
    let mut response = error_json(
        StatusCode::SERVICE_UNAVAILABLE,
        "database_unavailable",
        DATABASE_UNAVAILABLE,
        None,
    );
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// What a client is told when its request was shed: too many database queries were running
/// (or waiting for a connection) and no cached answer could stand in.
pub const OVERLOADED: &str = "too many database queries are running and no cached answer can stand in; retry after the Retry-After seconds";

/// The seconds a shed client is asked to wait (`Retry-After`).
pub const RETRY_AFTER_SECONDS: u32 = 1;

/// `503 Service Unavailable` with `Retry-After` for a request shed under load: never cached.
pub(crate) fn overloaded() -> Response<Bytes> {
    let mut response = error_json(
        StatusCode::SERVICE_UNAVAILABLE,
        "overloaded",
        OVERLOADED,
        None,
    );
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECONDS));
    response
}

/// The answer to a part that could not be looked up: shed under load, or unavailable.
pub(crate) fn failed<E>(error: &CacheError<E>) -> Response<Bytes> {
    match error {
        CacheError::Overloaded => overloaded(),
        CacheError::Fetch(_) | CacheError::Panicked => unavailable(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn if_none_match_compares_weakly_and_accepts_lists_and_star() {
        let etag = "\"abc\"";
        assert!(etag_matches("\"abc\"", etag));
        assert!(etag_matches("W/\"abc\"", etag));
        assert!(etag_matches("\"x\", \"abc\"", etag));
        assert!(etag_matches("*", etag));
        assert!(!etag_matches("\"abd\"", etag));
        assert!(!etag_matches("abc", etag));
    }

    #[tokio::test]
    async fn bodies_are_read_up_to_the_limit_whether_announced_or_chunked() {
        let chunks = |sizes: &[usize]| {
            let chunks: Vec<Result<Bytes, warp::Error>> = sizes
                .iter()
                .map(|size| Ok(Bytes::from(vec![b' '; *size])))
                .collect();
            futures::stream::iter(chunks)
        };
        let limit = MAX_BODY_BYTES;
        let whole = read_body(Some(&limit.to_string()), chunks(&[limit / 2, limit / 2])).await;
        assert_eq!(whole.expect("within the limit").len(), limit);
        let chunked = read_body(None, chunks(&[limit, 0])).await;
        assert_eq!(chunked.expect("within the limit").len(), limit);

        let announced = read_body(Some(&(limit + 1).to_string()), chunks(&[])).await;
        let chunked = read_body(None, chunks(&[limit / 2, limit / 2, 1])).await;
        for refused in [announced, chunked] {
            let invalid = refused.expect_err("larger than the limit");
            assert_eq!(invalid.field, "body");
            assert!(invalid.error.contains("16384 bytes"), "{}", invalid.error);
        }
    }

    #[test]
    fn a_composed_answer_is_as_stale_as_its_stalest_part() {
        let part = |status, age| Freshness {
            status,
            age: Duration::from_secs(age),
        };
        let worst = [
            part(Status::Hit, 3),
            part(Status::Miss, 0),
            part(Status::Hit, 1),
        ]
        .into_iter()
        .reduce(Freshness::worst)
        .unwrap();
        assert_eq!((worst.status, worst.age.as_secs()), (Status::Miss, 3));
        let stale = worst.worst(part(Status::Stale, 9));
        assert_eq!((stale.status, stale.age.as_secs()), (Status::Stale, 9));
    }

    #[test]
    fn headers_carry_freshness_and_a_matching_etag_gets_304() {
        let policy = Policy {
            fresh: Duration::from_secs(4),
            stale_while_revalidate: Duration::from_secs(30),
            stale_if_error: Duration::from_secs(300),
            max_entries: 1,
            max_bytes: 1,
            max_fetches: 1,
        };
        let freshness = Freshness {
            status: Status::Hit,
            age: Duration::from_millis(2500),
        };
        let ok = cached(
            "\"e\"",
            Bytes::from_static(b"{}"),
            freshness,
            policy,
            Some("\"other\""),
        );
        assert_eq!(ok.status(), StatusCode::OK);
        assert_eq!(
            ok.headers()[header::CACHE_CONTROL],
            "max-age=4, stale-while-revalidate=30, stale-if-error=300"
        );
        assert_eq!(ok.headers()["x-cache"], "HIT");
        assert_eq!(ok.headers()[header::AGE], "2");
        assert_eq!(ok.body().as_ref(), b"{}");
        let not_modified = cached(
            "\"e\"",
            Bytes::from_static(b"{}"),
            freshness,
            policy,
            Some("\"e\""),
        );
        assert_eq!(not_modified.status(), StatusCode::NOT_MODIFIED);
        assert_eq!(not_modified.headers()[header::ETAG], "\"e\"");
        assert_eq!(not_modified.headers()[header::AGE], "2");
        assert!(not_modified.body().is_empty());
    }
}
