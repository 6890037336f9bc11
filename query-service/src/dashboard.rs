//! The web dashboard's files, embedded in the binary: `/` (index.html, never cached without
//! asking again) and `/assets/<name>-<hash>.<ext>` (named by their content, so cached for a
//! year), each in the encoding the client accepts (brotli, gzip, or none: compressed once
//! at build time), with a strict Content-Security-Policy.
//!
//! The files come from `dashboard/` (TypeScript), built by `scripts/build-dashboard` into
//! `dashboard-dist/`, which is committed so that building the service needs no Node.js;
//! `dashboard-dist/manifest.rs`, generated with them, lists them and is included here. This
//! module does not build or compress anything, and holds no data: the page asks the API
//! for it, with the caller's token.
//!
//! These routes are open whatever `authentication` says: the files are the same for
//! everyone and hold nothing of the stack's data, and the page must load before it can ask
//! a person for the token the API wants (when the API answers 401 or 403).

use bytes::Bytes;
use warp::http::{HeaderValue, Response, StatusCode, header};

use crate::http::error_json;

/// One embedded file.
pub(crate) struct Asset {
    /// The path it is served at.
    pub(crate) path: &'static str,
    /// Its `Content-Type`.
    pub(crate) content_type: &'static str,
    /// SHA-256 of `bytes`, hex: its ETag (quoted), checked by the tests.
    pub(crate) sha256: &'static str,
    /// The file as built.
    pub(crate) bytes: &'static [u8],
    /// The file compressed, when that makes it smaller.
    pub(crate) variants: &'static [Variant],
}

/// One embedded file, compressed.
pub(crate) struct Variant {
    /// Its `Content-Encoding`: `br` or `gzip`.
    pub(crate) encoding: &'static str,
    /// SHA-256 of `bytes`, hex: its ETag (quoted), checked by the tests.
    pub(crate) sha256: &'static str,
    /// The compressed bytes.
    pub(crate) bytes: &'static [u8],
}

include!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/dashboard-dist/manifest.rs"
));

/// What the page may load: its own scripts, styles and API, nothing inline, nothing from
/// elsewhere, and it may not be framed.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; \
    style-src 'self'; img-src 'self' data:; connect-src 'self'; object-src 'none'; \
    base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// `Cache-Control` of `/`: always asked again (with its ETag), so a new release is seen at
/// once.
pub const INDEX_CACHE_CONTROL: &str = "no-cache";

/// `Cache-Control` of a hashed asset: its name changes with its content.
pub const ASSET_CACHE_CONTROL: &str = "public, max-age=31536000, immutable";

/// The answer to `GET path`: the file in the best encoding `accept_encoding` allows, `304`
/// when `if_none_match` names it, `404` for a path the dashboard does not have.
pub(crate) fn respond(
    path: &str,
    accept_encoding: Option<&str>,
    if_none_match: Option<&str>,
) -> Response<Bytes> {
    let Some(asset) = ASSETS.iter().find(|asset| asset.path == path) else {
        return secured(error_json(
            StatusCode::NOT_FOUND,
            "not_found",
            "not found",
            None,
        ));
    };
    let variant = choose(asset.variants, accept_encoding.unwrap_or(""));
    // Each encoding is a representation of its own, with a strong ETag of its own: the
    // hash of the bytes sent.
    let etag = format!("\"{}\"", variant.map_or(asset.sha256, |v| v.sha256));
    let not_modified = if_none_match.is_some_and(|inm| {
        inm.split(',')
            .map(str::trim)
            .any(|tag| tag == "*" || tag.strip_prefix("W/").unwrap_or(tag) == etag)
    });
    let mut builder = Response::builder()
        .status(if not_modified {
            StatusCode::NOT_MODIFIED
        } else {
            StatusCode::OK
        })
        .header(header::ETAG, &etag)
        .header(
            header::CACHE_CONTROL,
            if asset.path == "/" {
                INDEX_CACHE_CONTROL
            } else {
                ASSET_CACHE_CONTROL
            },
        )
        .header(header::CONTENT_TYPE, asset.content_type);
    if !asset.variants.is_empty() {
        builder = builder.header(header::VARY, "Accept-Encoding");
    }
    if let Some(variant) = variant {
        builder = builder.header(header::CONTENT_ENCODING, variant.encoding);
    }
    let body = match (not_modified, variant) {
        (true, _) => Bytes::new(),
        (false, Some(variant)) => Bytes::from_static(variant.bytes),
        (false, None) => Bytes::from_static(asset.bytes),
    };
    secured(builder.body(body).expect("a valid response"))
}

/// Adds the headers every dashboard answer carries.
fn secured(mut response: Response<Bytes>) -> Response<Bytes> {
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}

/// The compressed variant to send for `accept_encoding` (RFC 9110, 12.5.3): the one with the
/// highest quality value above zero, brotli before gzip on a tie; none when neither is
/// accepted, or when the uncompressed file is preferred.
fn choose(variants: &'static [Variant], accept_encoding: &str) -> Option<&'static Variant> {
    let quality = |coding: &str| -> f32 {
        let mut wildcard = None;
        for item in accept_encoding.split(',') {
            let mut params = item.split(';').map(str::trim);
            let name = params.next().unwrap_or("");
            let q = params
                .find_map(|param| param.strip_prefix("q=").or(param.strip_prefix("Q=")))
                .map_or(Some(1.0), |q| q.parse::<f32>().ok())
                .unwrap_or(0.0);
            if name.eq_ignore_ascii_case(coding) {
                return q;
            }
            if name == "*" {
                wildcard = Some(q);
            }
        }
        // Identity is acceptable unless refused; other codings only when named or by `*`.
        wildcard.unwrap_or(if coding == "identity" { 1.0 } else { 0.0 })
    };
    let identity = quality("identity");
    ["br", "gzip"]
        .iter()
        .filter_map(|encoding| {
            let variant = variants.iter().find(|v| v.encoding == *encoding)?;
            let q = quality(encoding);
            (q > 0.0).then_some((q, variant))
        })
        // `max_by` keeps the last of equals: reversed, so brotli wins a tie.
        .rev()
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .filter(|(q, _)| *q >= identity || identity <= 0.0)
        .map(|(_, variant)| variant)
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use sha2::{Digest as _, Sha256};

    use super::*;

    fn hex(bytes: &[u8]) -> String {
        format!("{:x}", Sha256::digest(bytes))
    }

    /// The files `dashboard/build.mjs` hashes into `SOURCES_SHA256`, in its order.
    fn sources(root: &Path) -> Vec<String> {
        fn walk(root: &Path, dir: &str, found: &mut Vec<String>) {
            for entry in std::fs::read_dir(root.join(dir)).expect("a sources directory") {
                let entry = entry.expect("a directory entry");
                let name = format!("{dir}/{}", entry.file_name().to_string_lossy());
                if entry.file_type().expect("a file type").is_dir() {
                    walk(root, &name, found);
                } else {
                    found.push(name);
                }
            }
        }
        let mut found = [
            "build.mjs",
            "package-lock.json",
            "package.json",
            "tsconfig.json",
        ]
        .map(str::to_owned)
        .to_vec();
        walk(root, "src", &mut found);
        // JavaScript's default sort compares UTF-16 code units; for these ASCII names, bytes.
        found.sort();
        found
    }

    #[test]
    fn the_committed_bundle_was_built_from_the_committed_sources() {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../dashboard");
        let mut hash = Sha256::new();
        for path in sources(&root) {
            hash.update(path.as_bytes());
            hash.update([0]);
            hash.update(std::fs::read(root.join(&path)).expect("a source file"));
            hash.update([0]);
        }
        assert_eq!(
            format!("{:x}", hash.finalize()),
            SOURCES_SHA256,
            "dashboard/ changed since query-service/dashboard-dist/ was built: run \
             scripts/build-dashboard and commit what it writes"
        );
        for asset in ASSETS {
            assert_eq!(
                hex(asset.bytes),
                asset.sha256,
                "{} differs from the build: run scripts/build-dashboard",
                asset.path
            );
            for variant in asset.variants {
                assert_eq!(hex(variant.bytes), variant.sha256, "{}", asset.path);
                assert!(variant.bytes.len() < asset.bytes.len());
            }
        }
    }

    #[test]
    fn index_html_names_assets_that_are_embedded() {
        let index = ASSETS.iter().find(|a| a.path == "/").expect("index.html");
        let text = std::str::from_utf8(index.bytes).expect("UTF-8");
        let linked: Vec<&str> = text
            .split('"')
            .filter(|part| part.starts_with("/assets/"))
            .collect();
        assert_eq!(linked.len(), 2, "one script and one style sheet in {text}");
        for path in linked {
            assert!(ASSETS.iter().any(|a| a.path == path), "{path} is embedded");
        }
        assert!(!text.contains("<script>"), "no inline script");
    }

    fn header(response: &Response<Bytes>, name: header::HeaderName) -> &str {
        response
            .headers()
            .get(&name)
            .unwrap_or_else(|| panic!("no {name}"))
            .to_str()
            .expect("text")
    }

    #[test]
    fn the_page_is_revalidated_and_hashed_assets_are_cached_for_a_year() {
        let index = respond("/", None, None);
        assert_eq!(index.status(), StatusCode::OK);
        assert_eq!(header(&index, header::CACHE_CONTROL), "no-cache");
        assert_eq!(
            header(&index, header::CONTENT_TYPE),
            "text/html; charset=utf-8"
        );
        let script = ASSETS
            .iter()
            .find(|a| a.path.ends_with(".js"))
            .expect("a script");
        let asset = respond(script.path, None, None);
        assert_eq!(
            header(&asset, header::CACHE_CONTROL),
            "public, max-age=31536000, immutable"
        );
        assert_eq!(
            header(&asset, header::CONTENT_TYPE),
            "text/javascript; charset=utf-8"
        );
        assert_eq!(asset.body().as_ref(), script.bytes);
        for response in [&index, &asset, &respond("/assets/nothing.js", None, None)] {
            assert_eq!(
                header(response, header::CONTENT_SECURITY_POLICY),
                CONTENT_SECURITY_POLICY
            );
            assert_eq!(header(response, header::X_CONTENT_TYPE_OPTIONS), "nosniff");
            assert_eq!(header(response, header::REFERRER_POLICY), "no-referrer");
        }
        let csp = CONTENT_SECURITY_POLICY;
        assert!(csp.contains("default-src 'self'") && csp.contains("style-src 'self';"));
        assert!(!csp.contains("unsafe"), "{csp}");
    }

    #[test]
    fn unknown_paths_are_404() {
        for path in [
            "/assets/main-XXXXXXXX.js",
            "/assets/",
            "/index.html",
            "/manifest.rs",
        ] {
            let response = respond(path, Some("gzip"), None);
            assert_eq!(response.status(), StatusCode::NOT_FOUND, "{path}");
        }
    }

    #[test]
    fn the_encoding_follows_accept_encoding() {
        let script = ASSETS
            .iter()
            .find(|a| a.path.ends_with(".js") && a.variants.len() == 2)
            .expect("a compressed script");
        let encoded = |accept: Option<&str>| {
            let response = respond(script.path, accept, None);
            assert_eq!(header(&response, header::VARY), "Accept-Encoding");
            let encoding = response
                .headers()
                .get(header::CONTENT_ENCODING)
                .map(|v| v.to_str().expect("text").to_owned());
            let expected = match encoding.as_deref() {
                None => script.bytes,
                Some(name) => {
                    script
                        .variants
                        .iter()
                        .find(|v| v.encoding == name)
                        .expect("an embedded variant")
                        .bytes
                }
            };
            assert_eq!(response.body().as_ref(), expected, "{accept:?}");
            encoding
        };
        let br = Some("br".to_owned());
        let gzip = Some("gzip".to_owned());
        assert_eq!(encoded(Some("gzip, deflate, br, zstd")), br);
        assert_eq!(encoded(Some("gzip, deflate")), gzip);
        assert_eq!(encoded(Some("br;q=0.5, gzip")), gzip);
        assert_eq!(encoded(Some("br;q=0, gzip;q=0")), None);
        assert_eq!(encoded(Some("*")), br);
        assert_eq!(encoded(Some("gzip;q=0.5, identity")), None);
        assert_eq!(encoded(Some("GZIP")), gzip);
        assert_eq!(encoded(Some("identity;q=0, gzip;q=0.1")), gzip);
        assert_eq!(encoded(Some("deflate")), None);
        assert_eq!(encoded(Some("")), None);
        assert_eq!(encoded(None), None);
    }

    #[test]
    fn a_matching_etag_gets_304_per_encoding() {
        let first = respond("/", Some("gzip"), None);
        let etag = header(&first, header::ETAG).to_owned();
        let index = ASSETS.iter().find(|a| a.path == "/").expect("index.html");
        let gzip = index.variants.iter().find(|v| v.encoding == "gzip");
        assert_eq!(etag, format!("\"{}\"", gzip.expect("gzipped").sha256));
        let again = respond("/", Some("gzip"), Some(&etag));
        assert_eq!(again.status(), StatusCode::NOT_MODIFIED);
        assert!(again.body().is_empty());
        assert_eq!(header(&again, header::CACHE_CONTROL), "no-cache");
        let other_encoding = respond("/", Some("br"), Some(&etag));
        assert_eq!(other_encoding.status(), StatusCode::OK);
    }
}
