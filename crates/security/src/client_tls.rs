//! The client side: which servers a scoot process trusts (`-tls_ca`) and the certificate it
//! presents to servers that ask for one (`-tls_cert`/`-tls_key`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::ClientConfig;

use crate::{SecurityError, pem, provider};

/// A client certificate and its key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// TLS for connections this process makes. Read once, when the process starts: certificates
/// a client presents are short-lived only in the sense that a restart picks up new ones.
#[derive(Clone)]
pub struct ClientTls {
    ca_pem: Vec<u8>,
    identity_pem: Option<(Vec<u8>, Vec<u8>)>,
    config: Arc<ClientConfig>,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClientTls")
    }
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, SecurityError> {
    std::fs::read(path).map_err(|e| SecurityError::File {
        what,
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

impl ClientTls {
    pub fn new(ca: &Path, identity: Option<&Identity>) -> Result<ClientTls, SecurityError> {
        let roots = pem::roots("CA certificate", ca)?;
        let builder = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| SecurityError::Invalid(format!("TLS set-up: {e}")))?
            .with_root_certificates(roots);
        let config = match identity {
            Some(identity) => builder
                .with_client_auth_cert(
                    pem::certificates("TLS certificate", &identity.cert)?,
                    pem::private_key(&identity.key)?,
                )
                .map_err(|e| {
                    SecurityError::Invalid(format!(
                        "{} and {} do not make a usable client certificate: {e}",
                        identity.cert.display(),
                        identity.key.display()
                    ))
                })?,
            None => builder.with_no_client_auth(),
        };
        let identity_pem = match identity {
            Some(identity) => Some((
                read("TLS certificate", &identity.cert)?,
                read("private key", &identity.key)?,
            )),
            None => None,
        };
        Ok(ClientTls {
            ca_pem: read("CA certificate", ca)?,
            identity_pem,
            config: Arc::new(config),
        })
    }

    /// For blocking connections (Thrift): no application protocol is negotiated.
    pub fn rustls(&self) -> Arc<ClientConfig> {
        self.config.clone()
    }

    /// For tonic channels (which negotiate `h2` themselves).
    pub fn tonic(&self) -> tonic::transport::ClientTlsConfig {
        let config = tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(&self.ca_pem));
        match &self.identity_pem {
            Some((cert, key)) => config.identity(tonic::transport::Identity::from_pem(cert, key)),
            None => config,
        }
    }
}

/// A reqwest client builder for scoot's HTTP ports (HTTP/1.1): trusting `tls`'s CA when given,
/// no server at all otherwise (plain `http://` only). Every HTTP client in scoot is built here,
/// so TLS has one configuration and one crypto provider.
pub fn http_client(tls: Option<&ClientTls>) -> reqwest::ClientBuilder {
    let mut config = match tls {
        Some(tls) => (*tls.config).clone(),
        None => match ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
        {
            Ok(builder) => builder
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth(),
            // The provider's defaults always include a protocol version; should that ever
            // change, reqwest reports a TLS error when the client is built.
            Err(_) => return reqwest::Client::builder(),
        },
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    reqwest::Client::builder().tls_backend_preconfigured(config)
}
