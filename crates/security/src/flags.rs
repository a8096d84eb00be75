//! The flags every binary shares for TLS and tokens, and what they build.

use std::net::SocketAddr;
use std::path::PathBuf;

use crate::SecurityError;
use crate::client_tls::{ClientTls, Identity};
use crate::grpc::BearerToken;
use crate::server_tls::{Alpn, ServerTls, ServerTlsFiles};
use crate::tokens::Tokens;

/// What every scoot process uses when it connects to others (and, for servers, serves).
#[derive(clap::Args, Clone, Debug, Default, PartialEq, Eq)]
pub struct TransportFlags {
    /// PEM certificate chain served on this process's gRPC and HTTP ports, and presented to servers that ask for a client certificate. Re-read when
    /// the file changes.
    #[arg(long = "tls_cert", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The PEM private key of -tls_cert.
    #[arg(long = "tls_key", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// PEM CA certificates that verify the servers this process connects to; connections to
    /// gRPC and HTTP ports use TLS when given (Thrift stays plaintext, as Scoot's clients speak it).
    #[arg(long = "tls_ca")]
    pub tls_ca: Option<PathBuf>,
    /// A file holding the bearer token this process sends to REAPI servers.
    #[arg(long = "auth_token_file")]
    pub auth_token_file: Option<PathBuf>,
}

/// Who may use a server's ports.
#[derive(clap::Args, Clone, Debug, Default, PartialEq, Eq)]
pub struct AccessFlags {
    /// Require client certificates signed by one of these PEM CA certificates (mTLS).
    #[arg(long = "tls_client_ca", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,
    /// Bearer tokens accepted on REAPI calls, one `NAME SCOPES TOKEN [EXPIRES]` per line
    /// (scopes: cache-read, cache-write, execute, admin); re-read when it changes. Without it,
    /// calls are not authenticated.
    #[arg(long = "auth_tokens")]
    pub auth_tokens: Option<PathBuf>,
    /// A call that carries no token acts with the last valid one its connection carried. For
    /// Bazel before 3.0, which sends no --remote_header on ByteStream uploads; do not use it
    /// behind a proxy that puts several users' calls on one connection.
    #[arg(long = "auth_connection_tokens", requires = "auth_tokens")]
    pub auth_connection_tokens: bool,
}

/// What a process uses to connect to others.
#[derive(Clone, Debug, Default)]
pub struct ClientSecurity {
    pub tls: Option<ClientTls>,
    pub token: BearerToken,
}

impl ClientSecurity {
    /// The URL scheme of this process's HTTP connections.
    pub fn http_scheme(&self) -> &'static str {
        if self.tls.is_some() { "https" } else { "http" }
    }

    /// A reqwest client builder that trusts what this process trusts.
    pub fn reqwest(&self) -> reqwest::ClientBuilder {
        crate::client_tls::http_client(self.tls.as_ref())
    }
}

/// What a server uses on its own ports.
#[derive(Clone, Debug, Default)]
pub struct ServerSecurity {
    pub grpc_tls: Option<ServerTls>,
    pub http_tls: Option<ServerTls>,
    pub tokens: Option<Tokens>,
}

impl TransportFlags {
    fn identity(&self) -> Option<Identity> {
        Some(Identity {
            cert: self.tls_cert.clone()?,
            key: self.tls_key.clone()?,
        })
    }

    pub fn client(&self) -> Result<ClientSecurity, SecurityError> {
        let tls = match &self.tls_ca {
            Some(ca) => Some(ClientTls::new(ca, self.identity().as_ref())?),
            None => None,
        };
        let token = match &self.auth_token_file {
            Some(path) => BearerToken::from_file(path)?,
            None => BearerToken::none(),
        };
        Ok(ClientSecurity { tls, token })
    }

    pub fn server(&self, access: &AccessFlags) -> Result<ServerSecurity, SecurityError> {
        let tokens = match &access.auth_tokens {
            Some(path) => {
                let mut tokens = Tokens::from_file(path)?;
                tokens.connection_tokens = access.auth_connection_tokens;
                Some(tokens)
            }
            None => None,
        };
        let Some(identity) = self.identity() else {
            return Ok(ServerSecurity {
                tokens,
                ..ServerSecurity::default()
            });
        };
        let files = ServerTlsFiles {
            cert: identity.cert,
            key: identity.key,
            client_ca: access.tls_client_ca.clone(),
        };
        Ok(ServerSecurity {
            grpc_tls: Some(ServerTls::new(&files, Alpn::Grpc)?),
            http_tls: Some(ServerTls::new(&files, Alpn::Http1)?),
            tokens,
        })
    }
}

impl ServerSecurity {
    /// Warns about each of `ports` that is reachable from other machines while anyone who can
    /// reach it may use it: plaintext, or REAPI without tokens.
    pub fn warn_if_exposed(&self, ports: &[(&str, SocketAddr)]) {
        for (port, addr) in ports {
            if addr.ip().is_loopback() {
                continue;
            }
            let tls = match *port {
                "thrift" => false,
                "http" => self.http_tls.is_some(),
                _ => self.grpc_tls.is_some(),
            };
            if !tls {
                tracing::warn!(
                    port,
                    %addr,
                    "listening beyond localhost without TLS: anyone on the network can read \
                     and alter this traffic (-tls_cert/-tls_key)"
                );
            }
            if *port != "thrift" && self.tokens.is_none() {
                tracing::warn!(
                    port,
                    %addr,
                    "listening beyond localhost without tokens: anyone who reaches this port \
                     may read and write the cache, run commands and take workers offline \
                     (-auth_tokens)"
                );
            }
        }
    }
}
