//! The apiserver's HTTP routes.
//!
//! `/bundle/<name>`, Scoot's bundlestore, with Scoot's rules and messages plus some checks of
//! our own:
//!
//! * the name must be exactly `bs-<40 of [a-z0-9]>.bundle` (Scoot did not anchor the end of its
//!   pattern), else 400;
//! * `POST` stores the body: 200 "Bundle <name> already exists, no-op and return" when the name
//!   is taken (the body is not read); the expiry comes from `x-scoot-expires` (RFC 1123, header
//!   name case-insensitive) or is now + the default TTL. Refused with 400: an unparsable expiry
//!   (Scoot answered 500, but it is the client's mistake), a body that ends before its
//!   `Content-Length`, a body that is not a git bundle (`# v2 git bundle` / `# v3 git bundle`
//!   header), a bundle that does not hold what its name promises (checked with git by
//!   [`scoot_snapshot_db::verify_bundle`]: the commit `<key>` with its whole history, or the commits of
//!   a published bundle whose key is `<key>`; names are first-come, so one squatted by the wrong
//!   bundle would fail every later snapshot that needs it). Refused with 413: a body over the
//!   upload limit. Nothing is stored in these cases. 200 "Successfully wrote bundle <name>" once
//!   stored; 500 when the store fails or git cannot run;
//! * `GET` → 200 with the bytes (`application/octet-stream`) or 404; `HEAD` → 200 or 404;
//! * any other method → 405.
//!
//! `/view/<snapshot id>/<path>`: one file of a snapshot, as text/plain. 400 without a path or
//! when the path is not a plain relative one (`..`, `.`, empty segments, a leading `/`); 404 when
//! no viewer is configured or the snapshot or file does not exist; 500 with the error otherwise.
//!
//! `/groupcacheapiserver/<name>`: `GET`/`HEAD` of this apiserver's own bundles (never its
//! peers'), for the cluster's other apiservers, which ask here when a bundle is not theirs
//! (`-peers`; Scoot's apiservers did the same through groupcache).
//!
//! `/health`: 200 `ok`.

use std::pin::Pin;
use std::time::SystemTime;

use axum::Router;
use axum::body::{Body, HttpBody};
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use bytes::{Bytes, BytesMut};
use scoot_bundlestore::store::StoreError;
use scoot_bundlestore::store::http::{EXPIRES_HEADER, parse_http_date};
use scoot_snapshot_db::{GitDbConfig, verify_bundle};

use crate::ApiServerConfig;
use crate::stats;

/// What a bundle name must look like (anchored at both ends).
pub const BUNDLE_NAME_PATTERN: &str = r"^bs-[a-z0-9]{40}\.bundle$";

/// The first line of every git bundle this server accepts.
const BUNDLE_SIGNATURES: [&[u8]; 2] = [b"# v2 git bundle\n", b"# v3 git bundle\n"];

/// Bodies announced as larger than this are still read into a buffer that grows as data comes,
/// rather than one allocated up front on the client's word.
const MAX_PREALLOCATION: u64 = 64 << 20;

pub fn router(config: ApiServerConfig) -> Router {
    Router::new()
        .route("/", get(scoot_metrics::scoot_root))
        .route("/health", get(health))
        .route("/bundle", any(bundle_without_name))
        .route("/bundle/", any(bundle_without_name))
        .route("/bundle/{*name}", any(bundle))
        .route("/groupcacheapiserver/{name}", get(peer_bundle))
        .route("/view", get(view_without_path))
        .route("/view/", get(view_without_path))
        .route("/view/{*rest}", get(view))
        // Uploads are bounded by `max_upload_bytes` in the handler instead.
        .layer(DefaultBodyLimit::disable())
        .with_state(config)
        .merge(scoot_metrics::routes())
}

async fn health() -> &'static str {
    "ok"
}

/// A peer asks for one of this apiserver's own bundles (GET, and HEAD through axum's `get`).
async fn peer_bundle(State(config): State<ApiServerConfig>, Path(name): Path<String>) -> Response {
    if !is_bundle_name(&name) {
        return text(
            StatusCode::BAD_REQUEST,
            format!("invalid bundle name {name:?}"),
        );
    }
    match config.own_store.read(&name).await {
        Ok(Some(data)) => {
            ([(header::CONTENT_TYPE, "application/octet-stream")], data).into_response()
        }
        Ok(None) => text(StatusCode::NOT_FOUND, format!("no bundle {name}")),
        Err(err) => text(StatusCode::INTERNAL_SERVER_ERROR, err.to_string()),
    }
}

/// Whether `name` matches [`BUNDLE_NAME_PATTERN`].
pub fn is_bundle_name(name: &str) -> bool {
    name.strip_prefix("bs-")
        .and_then(|rest| rest.strip_suffix(".bundle"))
        .is_some_and(|key| {
            key.len() == 40
                && key
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        })
}

fn text(status: StatusCode, message: impl Into<String>) -> Response {
    (status, message.into()).into_response()
}

async fn bundle_without_name(
    State(config): State<ApiServerConfig>,
    method: Method,
    headers: HeaderMap,
    body: Body,
) -> Response {
    handle_bundle(config, method, String::new(), headers, body).await
}

async fn bundle(
    State(config): State<ApiServerConfig>,
    method: Method,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let started = std::time::Instant::now();
    stats::SERVE_REQUESTS.inc();
    let (count, ok, took) = match method {
        Method::POST => (&stats::UPLOADS, &stats::UPLOADS_OK, &stats::UPLOAD_LATENCY),
        Method::HEAD => (&stats::CHECKS, &stats::CHECKS_OK, &stats::CHECK_LATENCY),
        _ => (
            &stats::DOWNLOADS,
            &stats::DOWNLOADS_OK,
            &stats::DOWNLOAD_LATENCY,
        ),
    };
    count.inc();
    let response = handle_bundle(config, method, name, headers, body).await;
    // A HEAD that finds nothing answered its question too.
    if response.status().is_success() || response.status() == StatusCode::NOT_FOUND {
        ok.inc();
        stats::SERVE_OK.inc();
    }
    took.record(started.elapsed());
    response
}

async fn handle_bundle(
    config: ApiServerConfig,
    method: Method,
    name: String,
    headers: HeaderMap,
    body: Body,
) -> Response {
    if method != Method::GET && method != Method::HEAD && method != Method::POST {
        let mut response = text(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("method {method} not allowed; use GET, HEAD or POST"),
        );
        response
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD, POST"));
        return response;
    }
    if !is_bundle_name(&name) {
        return text(
            StatusCode::BAD_REQUEST,
            format!("invalid bundle name {name:?}: it must match {BUNDLE_NAME_PATTERN}"),
        );
    }
    if method == Method::POST {
        upload(&config, &name, &headers, body).await
    } else if method == Method::HEAD {
        match config.store.exists(&name).await {
            Ok(true) => StatusCode::OK.into_response(),
            Ok(false) => StatusCode::NOT_FOUND.into_response(),
            Err(e) => store_failure("checking", &name, e),
        }
    } else {
        download(&config, &name).await
    }
}

fn store_failure(doing: &str, name: &str, error: StoreError) -> Response {
    tracing::warn!(bundle = %name, error = %error, "bundlestore failed {doing} a bundle");
    let status = match error {
        StoreError::InvalidName(_) => StatusCode::BAD_REQUEST,
        StoreError::Io(_) => StatusCode::INTERNAL_SERVER_ERROR,
    };
    text(status, format!("error {doing} bundle {name}: {error}"))
}

async fn download(config: &ApiServerConfig, name: &str) -> Response {
    match config.store.read(name).await {
        Ok(Some(data)) => {
            tracing::debug!(bundle = %name, bytes = data.len(), "serving bundle");
            ([(header::CONTENT_TYPE, "application/octet-stream")], data).into_response()
        }
        Ok(None) => text(StatusCode::NOT_FOUND, format!("bundle {name} not found")),
        Err(e) => store_failure("reading", name, e),
    }
}

async fn upload(config: &ApiServerConfig, name: &str, headers: &HeaderMap, body: Body) -> Response {
    match config.store.exists(name).await {
        Ok(true) => {
            tracing::debug!(bundle = %name, "bundle already stored");
            return text(
                StatusCode::OK,
                format!("Bundle {name} already exists, no-op and return"),
            );
        }
        Ok(false) => {}
        Err(e) => return store_failure("checking", name, e),
    }
    let expiry = match headers.get(EXPIRES_HEADER) {
        None => SystemTime::now() + config.default_ttl,
        Some(value) => match value.to_str().ok().and_then(parse_http_date) {
            Some(expiry) => expiry,
            None => {
                return text(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "cannot parse {EXPIRES_HEADER} {value:?}: expected an RFC 1123 date such as \"Mon, 02 Jan 2006 15:04:05 GMT\""
                    ),
                );
            }
        },
    };
    let declared = match headers.get(header::CONTENT_LENGTH) {
        None => None,
        Some(value) => match value.to_str().ok().and_then(|v| v.parse::<u64>().ok()) {
            Some(length) => Some(length),
            None => return text(StatusCode::BAD_REQUEST, "invalid Content-Length"),
        },
    };
    let too_large = || {
        text(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "bundle {name} is larger than the upload limit of {} bytes",
                config.max_upload_bytes
            ),
        )
    };
    if declared.is_some_and(|length| length > config.max_upload_bytes) {
        return too_large();
    }
    let data = match read_body(body, config.max_upload_bytes, declared).await {
        Ok(data) => data,
        Err(UploadError::TooLarge) => return too_large(),
        Err(UploadError::Incomplete(why)) => {
            tracing::info!(bundle = %name, reason = %why, "incomplete bundle upload");
            return text(
                StatusCode::BAD_REQUEST,
                format!("incomplete upload of bundle {name}: {why}"),
            );
        }
    };
    if let Some(length) = declared
        && length != data.len() as u64
    {
        return text(
            StatusCode::BAD_REQUEST,
            format!(
                "incomplete upload of bundle {name}: got {} of {length} bytes",
                data.len()
            ),
        );
    }
    if !BUNDLE_SIGNATURES.iter().any(|sig| data.starts_with(sig)) {
        return text(
            StatusCode::BAD_REQUEST,
            format!(
                "{name} is not a git bundle (it must start with \"# v2 git bundle\" or \"# v3 git bundle\")"
            ),
        );
    }
    let key = name
        .strip_prefix("bs-")
        .and_then(|rest| rest.strip_suffix(".bundle"))
        .unwrap_or_default();
    if let Err(err) = verify_bundle(&GitDbConfig::default(), key, &data).await {
        if err.is_bad_bundle() {
            tracing::info!(bundle = %name, error = %err, "refused a bundle");
            return text(StatusCode::BAD_REQUEST, err.to_string());
        }
        tracing::warn!(bundle = %name, error = %err, "cannot check a bundle");
        return text(StatusCode::INTERNAL_SERVER_ERROR, err.to_string());
    }
    let size = data.len();
    match config.store.write(name, data, Some(expiry)).await {
        Ok(()) => {
            tracing::info!(bundle = %name, bytes = size, "stored bundle");
            text(StatusCode::OK, format!("Successfully wrote bundle {name}"))
        }
        Err(e) => store_failure("writing", name, e),
    }
}

enum UploadError {
    TooLarge,
    Incomplete(String),
}

/// Reads a request body of at most `limit` bytes.
async fn read_body(
    mut body: Body,
    limit: u64,
    declared: Option<u64>,
) -> Result<Bytes, UploadError> {
    let capacity = declared.unwrap_or(0).min(limit).min(MAX_PREALLOCATION);
    let mut data = BytesMut::with_capacity(usize::try_from(capacity).unwrap_or(0));
    loop {
        let frame = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await;
        match frame {
            None => return Ok(data.freeze()),
            Some(Err(e)) => return Err(UploadError::Incomplete(e.to_string())),
            Some(Ok(frame)) => {
                // Trailers carry no data.
                let Ok(chunk) = frame.into_data() else {
                    continue;
                };
                if (data.len() + chunk.len()) as u64 > limit {
                    return Err(UploadError::TooLarge);
                }
                data.extend_from_slice(&chunk);
            }
        }
    }
}

async fn view_without_path() -> Response {
    text(
        StatusCode::BAD_REQUEST,
        "expected /view/<snapshot id>/<path>",
    )
}

/// Why a `/view/` path is refused, if it is.
fn check_view_path(path: &str) -> Result<(), &'static str> {
    if path.is_empty() {
        return Err("no file path given: expected /view/<snapshot id>/<path>");
    }
    for segment in path.split('/') {
        match segment {
            "" => return Err("the file path must be relative, without empty segments"),
            "." | ".." => return Err("the file path may not contain . or .. segments"),
            _ => {}
        }
    }
    Ok(())
}

async fn view(State(config): State<ApiServerConfig>, Path(rest): Path<String>) -> Response {
    let (snapshot_id, path) = rest.split_once('/').unwrap_or((rest.as_str(), ""));
    if snapshot_id.is_empty() {
        return text(StatusCode::BAD_REQUEST, "no snapshot id given");
    }
    if let Err(why) = check_view_path(path) {
        return text(StatusCode::BAD_REQUEST, why);
    }
    let Some(viewer) = &config.view else {
        return text(StatusCode::NOT_FOUND, "snapshot viewer not configured");
    };
    match viewer.read_file(snapshot_id, path).await {
        Ok(Some(data)) => ([(header::CONTENT_TYPE, "text/plain")], data).into_response(),
        Ok(None) => text(
            StatusCode::NOT_FOUND,
            format!("no file {path} in snapshot {snapshot_id}"),
        ),
        Err(e) => {
            tracing::warn!(snapshot = %snapshot_id, path = %path, error = %e, "cannot read a snapshot file");
            text(StatusCode::INTERNAL_SERVER_ERROR, e)
        }
    }
}

#[cfg(test)]
mod tests;
