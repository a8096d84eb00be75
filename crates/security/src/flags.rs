//! The flags every binary shares for TLS and tokens, and what they build.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use crate::SecurityError;
use crate::client_tls::{ClientTls, Identity};
use crate::grpc::BearerToken;
use crate::server_tls::{Alpn, ServerTls, ServerTlsFiles};
use crate::tokens::Tokens;

/// What every scoot process uses when it connects to others (and, for servers, serves).
#[derive(clap::Args, Clone, Debug, Default, PartialEq, Eq)]
pub struct TransportFlags {
    /// PEM certificate chain served on this process's gRPC and HTTP ports (and Thrift port with
    /// -thrift_tls), and presented to servers that ask for a client certificate. Re-read when
    /// the file changes.
    #[arg(long = "tls_cert", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The PEM private key of -tls_cert.
    #[arg(long = "tls_key", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// PEM CA certificates that verify the servers this process connects to; connections to
    /// gRPC and HTTP ports use TLS when given (Thrift ones only with -thrift_tls).
    #[arg(long = "tls_ca")]
    pub tls_ca: Option<PathBuf>,
    /// Thrift ports and connections use TLS too; Scoot's own clients speak plaintext Thrift, so
    /// it is off unless asked for. Cluster-wide: a process given it serves its Thrift port over
    /// TLS (with -tls_cert/-tls_key, and client certificates required under -tls_client_ca)
    /// and makes its Thrift connections (scheduler to workers, scootcl to the scheduler) over
    /// TLS (with -tls_ca).
    #[arg(long = "thrift_tls")]
    pub thrift_tls: bool,
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
    /// `-thrift_tls`: Thrift connections use TLS too (see [`ClientSecurity::thrift`]).
    pub thrift_tls: bool,
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

    /// The TLS configuration of this process's Thrift connections, `None` for plaintext (no
    /// -thrift_tls). Only processes that make Thrift connections ask, at start-up, so a worker
    /// (which serves Thrift but connects to no Thrift port) needs no -tls_ca for -thrift_tls.
    pub fn thrift(&self) -> Result<Option<Arc<rustls::ClientConfig>>, SecurityError> {
        match (self.thrift_tls, &self.tls) {
            (false, _) => Ok(None),
            (true, Some(tls)) => Ok(Some(tls.rustls())),
            (true, None) => Err(SecurityError::Invalid(
                "-thrift_tls: Thrift connections over TLS need -tls_ca, the CA certificates \
                 that verify the servers connected to"
                    .into(),
            )),
        }
    }
}

/// What a server uses on its own ports.
#[derive(Clone, Debug, Default)]
pub struct ServerSecurity {
    pub grpc_tls: Option<ServerTls>,
    pub http_tls: Option<ServerTls>,
    /// TLS on the Thrift port: only with -thrift_tls.
    pub thrift_tls: Option<ServerTls>,
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
        Ok(ClientSecurity {
            tls,
            token,
            thrift_tls: self.thrift_tls,
        })
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
            if self.thrift_tls {
                return Err(SecurityError::Invalid(
                    "-thrift_tls: serving the Thrift port over TLS needs -tls_cert and -tls_key"
                        .into(),
                ));
            }
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
        let thrift_tls = if self.thrift_tls {
            Some(ServerTls::new(&files, Alpn::None)?)
        } else {
            None
        };
        Ok(ServerSecurity {
            grpc_tls: Some(ServerTls::new(&files, Alpn::Grpc)?),
            http_tls: Some(ServerTls::new(&files, Alpn::Http1)?),
            thrift_tls,
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
            // The flags that would turn TLS on, for the warning: a Thrift port stays plaintext
            // with a certificate unless -thrift_tls is given too.
            let (tls, flags) = match *port {
                "thrift" => (
                    self.thrift_tls.is_some(),
                    "-thrift_tls with -tls_cert/-tls_key",
                ),
                "http" => (self.http_tls.is_some(), "-tls_cert/-tls_key"),
                _ => (self.grpc_tls.is_some(), "-tls_cert/-tls_key"),
            };
            if !tls {
                tracing::warn!(
                    port,
                    %addr,
                    "listening beyond localhost without TLS: anyone on the network can read \
                     and alter this traffic ({flags})"
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_pki::pki;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        transport: TransportFlags,
        #[command(flatten)]
        access: AccessFlags,
    }

    fn parse(args: &[&str]) -> Cli {
        Cli::try_parse_from(std::iter::once("test").chain(args.iter().copied())).unwrap()
    }

    #[test]
    fn thrift_stays_plaintext_unless_asked() {
        let dir = tempfile::tempdir().unwrap();
        let files = pki(dir.path(), "cluster");
        let (cert, key, ca) = (
            files.cert.to_str().unwrap(),
            files.key.to_str().unwrap(),
            files.ca.to_str().unwrap(),
        );
        let cli = parse(&["--tls_cert", cert, "--tls_key", key, "--tls_ca", ca]);
        let server = cli.transport.server(&cli.access).unwrap();
        assert!(server.grpc_tls.is_some() && server.http_tls.is_some());
        assert!(server.thrift_tls.is_none());
        assert!(cli.transport.client().unwrap().thrift().unwrap().is_none());

        let cli = parse(&[
            "--tls_cert",
            cert,
            "--tls_key",
            key,
            "--tls_ca",
            ca,
            "--thrift_tls",
        ]);
        assert!(
            cli.transport
                .server(&cli.access)
                .unwrap()
                .thrift_tls
                .is_some()
        );
        assert!(cli.transport.client().unwrap().thrift().unwrap().is_some());
    }

    #[test]
    fn thrift_tls_needs_a_certificate_to_serve_and_a_ca_to_connect() {
        let dir = tempfile::tempdir().unwrap();
        let files = pki(dir.path(), "cluster");
        let ca = files.ca.to_str().unwrap();
        // scootcl's case: a CA and nothing to serve with.
        let cli = parse(&["--thrift_tls", "--tls_ca", ca]);
        assert!(cli.transport.client().unwrap().thrift().unwrap().is_some());
        let error = cli.transport.server(&cli.access).unwrap_err().to_string();
        assert!(error.contains("-tls_cert and -tls_key"), "{error}");
        // A worker's case: it serves Thrift and needs no CA for that, only to connect.
        let cli = parse(&[
            "--thrift_tls",
            "--tls_cert",
            files.cert.to_str().unwrap(),
            "--tls_key",
            files.key.to_str().unwrap(),
        ]);
        assert!(
            cli.transport
                .server(&cli.access)
                .unwrap()
                .thrift_tls
                .is_some()
        );
        let client = cli.transport.client().unwrap();
        let error = client.thrift().unwrap_err().to_string();
        assert!(error.contains("-tls_ca"), "{error}");
    }
}
