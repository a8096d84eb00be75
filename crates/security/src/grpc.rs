//! Authorisation of gRPC calls: a server layer that checks each call's bearer token against the
//! scope its method needs, and the client interceptor that sends a token.

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::task::{Context, Poll};

use tonic::metadata::{AsciiMetadataValue, MetadataValue};

use crate::SecurityError;
use crate::session::Connection;
use crate::tokens::{Scope, Tokens};

/// The scope a gRPC method needs (`/package.Service/Method`); `None`: none at all. Reads of the
/// CAS and action cache need `cache-read`, writes `cache-write`, execution and operations
/// `execute`. Capabilities are open to anyone: they say only which digest function and limits
/// the server has, and Bazel 2.1 asks for them without the `--remote_header`s it sends on
/// every other call.
pub fn method_scope(path: &str) -> Option<Scope> {
    let (service, method) = path
        .trim_start_matches('/')
        .rsplit_once('/')
        .unwrap_or(("", ""));
    let service = service.rsplit('.').next().unwrap_or_default();
    match (service, method) {
        ("ContentAddressableStorage", "BatchUpdateBlobs")
        | ("ByteStream", "Write" | "QueryWriteStatus")
        | ("ActionCache", "UpdateActionResult") => Some(Scope::CacheWrite),
        ("ContentAddressableStorage" | "ByteStream" | "ActionCache", _) => Some(Scope::CacheRead),
        ("Execution" | "Operations", _) => Some(Scope::Execute),
        ("Capabilities", _) => None,
        // Nothing else is served; asking for it still needs the most trusted scope, so an
        // unknown method says nothing to someone without one.
        _ => Some(Scope::Admin),
    }
}

/// A tower layer for `tonic::transport::Server::layer`: with tokens, every call but
/// Capabilities is checked before any service sees it (so a refusal says nothing about the blobs or operations asked
/// for); without, calls pass untouched.
#[derive(Clone, Debug, Default)]
pub struct AuthLayer {
    tokens: Option<Tokens>,
}

impl AuthLayer {
    pub fn new(tokens: Option<Tokens>) -> AuthLayer {
        AuthLayer { tokens }
    }
}

impl<S> tower::Layer<S> for AuthLayer {
    type Service = Authorized<S>;

    fn layer(&self, inner: S) -> Authorized<S> {
        Authorized {
            inner,
            tokens: self.tokens.clone(),
        }
    }
}

#[derive(Clone, Debug)]
pub struct Authorized<S> {
    inner: S,
    tokens: Option<Tokens>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, ReqBody, ResBody> tower::Service<http::Request<ReqBody>> for Authorized<S>
where
    S: tower::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
    ResBody: Default + Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<ResBody>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let needed = method_scope(request.uri().path());
        if let (Some(tokens), Some(needed)) = (&self.tokens, needed) {
            let method = request.uri().path();
            let header = request
                .headers()
                .get(http::header::AUTHORIZATION)
                .map(|v| v.as_bytes());
            let connection = request
                .extensions()
                .get::<Connection>()
                .filter(|_| tokens.connection_tokens);
            let inherited = match (header, connection) {
                (None, Some(connection)) => connection.remembered(),
                _ => None,
            };
            match tokens.authorize(header.or(inherited.as_deref()), Some(needed)) {
                Ok(name) => {
                    if let (Some(header), Some(connection)) = (header, connection) {
                        connection.remember(header);
                    }
                    tracing::trace!(token = %name, %method, inherited = inherited.is_some(), "authorised");
                }
                Err(error) => {
                    tracing::info!(%method, %error, "refused a call");
                    let refusal = error.to_status().into_http();
                    return Box::pin(async move { Ok(refusal) });
                }
            }
        }
        Box::pin(self.inner.call(request))
    }
}

/// A client interceptor that sends `Authorization: Bearer <token>` on every call (or nothing).
#[derive(Clone, Debug, Default)]
pub struct BearerToken {
    header: Option<AsciiMetadataValue>,
}

impl BearerToken {
    pub fn none() -> BearerToken {
        BearerToken::default()
    }

    /// The token in `path` (surrounding white space ignored), read once.
    pub fn from_file(path: &Path) -> Result<BearerToken, SecurityError> {
        let text = std::fs::read_to_string(path).map_err(|e| SecurityError::File {
            what: "token file",
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        let token = text.trim();
        if token.is_empty() || token.contains(char::is_whitespace) {
            return Err(SecurityError::Invalid(format!(
                "{} must hold one token and nothing else",
                path.display()
            )));
        }
        let header = MetadataValue::try_from(format!("Bearer {token}")).map_err(|_| {
            SecurityError::Invalid(format!(
                "the token in {} has characters a header cannot carry",
                path.display()
            ))
        })?;
        Ok(BearerToken {
            header: Some(header),
        })
    }

    /// The header value, for clients that are not tonic's (HTTP).
    pub fn header(&self) -> Option<&str> {
        self.header.as_ref().and_then(|h| h.to_str().ok())
    }
}

impl tonic::service::Interceptor for BearerToken {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(header) = &self.header {
            request
                .metadata_mut()
                .insert("authorization", header.clone());
        }
        Ok(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reapi_method_has_the_scope_it_should() {
        let v2 = "/build.bazel.remote.execution.v2.";
        for (path, scope) in [
            (
                format!("{v2}ContentAddressableStorage/FindMissingBlobs"),
                Some(Scope::CacheRead),
            ),
            (
                format!("{v2}ContentAddressableStorage/BatchReadBlobs"),
                Some(Scope::CacheRead),
            ),
            (
                format!("{v2}ContentAddressableStorage/GetTree"),
                Some(Scope::CacheRead),
            ),
            (
                format!("{v2}ContentAddressableStorage/BatchUpdateBlobs"),
                Some(Scope::CacheWrite),
            ),
            (
                format!("{v2}ActionCache/GetActionResult"),
                Some(Scope::CacheRead),
            ),
            (
                format!("{v2}ActionCache/UpdateActionResult"),
                Some(Scope::CacheWrite),
            ),
            (format!("{v2}Execution/Execute"), Some(Scope::Execute)),
            (format!("{v2}Execution/WaitExecution"), Some(Scope::Execute)),
            (format!("{v2}Capabilities/GetCapabilities"), None),
            (
                "/google.bytestream.ByteStream/Read".into(),
                Some(Scope::CacheRead),
            ),
            (
                "/google.bytestream.ByteStream/Write".into(),
                Some(Scope::CacheWrite),
            ),
            (
                "/google.bytestream.ByteStream/QueryWriteStatus".into(),
                Some(Scope::CacheWrite),
            ),
            (
                "/google.longrunning.Operations/GetOperation".into(),
                Some(Scope::Execute),
            ),
            (
                "/grpc.reflection.v1.ServerReflection/Info".into(),
                Some(Scope::Admin),
            ),
            ("/nonsense".into(), Some(Scope::Admin)),
        ] {
            assert_eq!(method_scope(&path), scope, "{path}");
        }
    }

    #[test]
    fn a_token_file_holds_exactly_one_token() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "  abcdef0123456789\n").unwrap();
        assert_eq!(
            BearerToken::from_file(&path).unwrap().header(),
            Some("Bearer abcdef0123456789")
        );
        std::fs::write(&path, "one two").unwrap();
        assert!(BearerToken::from_file(&path).is_err());
        assert!(BearerToken::from_file(&dir.path().join("missing")).is_err());
    }
}
