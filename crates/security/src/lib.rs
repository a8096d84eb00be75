//! Who may talk to a scoot server, and over what.
//!
//! * [`server_tls`]: rustls on a server port (gRPC, HTTP, Thrift with `-thrift_tls`), with certificates re-read when
//!   their files change and, optionally, client certificates required (mTLS).
//! * [`client_tls`]: the CA a client trusts and the certificate it presents, for tonic, reqwest
//!   and blocking (Thrift) connections.
//! * [`tokens`]: bearer tokens with scopes, from a file re-read when it changes.
//! * [`grpc`]: the tower layer that authorises every gRPC call by its method, and the client
//!   interceptor that sends a token.
//! * [`flags`]: the flags every binary shares for all of the above.
//!
//! Everything is off unless its flags are given: a localhost-only cluster runs as it always did.

pub mod client_tls;
pub mod flags;
pub mod grpc;
pub mod http;
mod pem;
mod reload;
pub mod server_tls;
pub mod session;
#[cfg(test)]
mod test_pki;
pub mod tokens;

pub use client_tls::{ClientTls, http_client};
pub use flags::{AccessFlags, ClientSecurity, ServerSecurity, TransportFlags};
pub use server_tls::{Alpn, ServerTls, TlsIncoming};
pub use tokens::{AuthError, Scope, Tokens};

use std::path::PathBuf;

/// Why a certificate, key or token file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum SecurityError {
    #[error("cannot read {what} {path}: {reason}")]
    File {
        what: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error("{0}")]
    Invalid(String),
}

/// The crypto provider of every TLS configuration here: ring, which tonic's TLS uses too.
/// (rustls now prefers aws-lc-rs for its post-quantum key exchange; that would add a CMake and
/// C build to every build of scoot for a change of key exchange only.)
#[allow(deprecated)]
fn provider() -> std::sync::Arc<rustls::crypto::CryptoProvider> {
    std::sync::Arc::new(rustls::crypto::ring::default_provider())
}
