//! The client side: which servers a scoot process trusts (`-tls_ca`) and the certificate it
//! presents to servers that ask for one (`-tls_cert`/`-tls_key`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{WantsClientCert, WebPkiServerVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, ConfigBuilder, DigitallySignedStruct, SignatureScheme,
};

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
        let config = with_identity(builder, identity)?;
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

/// How much of a server's certificate a client checks: PostgreSQL's `sslmode` levels, for
/// connections to servers that are not scoot's (a database).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServerCheck {
    /// Signed by the CA and issued for the name connected to (`verify-full`).
    Full,
    /// Signed by the CA, whatever name it is for (`verify-ca`).
    ChainOnly,
    /// Nothing: the channel is encrypted but the server is not authenticated (libpq's
    /// `require` and `prefer` without a CA). The handshake signature is still checked, so the
    /// peer holds the key of the certificate it sent.
    EncryptOnly,
}

/// A client configuration that checks servers as `check` says, trusting `ca` (needed for
/// [`ServerCheck::Full`] and [`ServerCheck::ChainOnly`]) and presenting `identity` if given.
pub fn client_config(
    ca: Option<&Path>,
    identity: Option<&Identity>,
    check: ServerCheck,
) -> Result<Arc<ClientConfig>, SecurityError> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| SecurityError::Invalid(format!("TLS set-up: {e}")))?;
    let roots = || match ca {
        Some(ca) => pem::roots("CA certificate", ca).map(Arc::new),
        None => Err(SecurityError::Invalid(format!(
            "checking the server's certificate ({check:?}) needs a CA certificate"
        ))),
    };
    let builder = match check {
        ServerCheck::Full => builder.with_root_certificates(roots()?),
        ServerCheck::ChainOnly => {
            let verifier = WebPkiServerVerifier::builder_with_provider(roots()?, provider())
                .build()
                .map_err(|e| SecurityError::Invalid(format!("TLS set-up: {e}")))?;
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyName(verifier)))
        }
        ServerCheck::EncryptOnly => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider()))),
    };
    with_identity(builder, identity).map(Arc::new)
}

fn with_identity(
    builder: ConfigBuilder<ClientConfig, WantsClientCert>,
    identity: Option<&Identity>,
) -> Result<ClientConfig, SecurityError> {
    match identity {
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
            }),
        None => Ok(builder.with_no_client_auth()),
    }
}

/// [`ServerCheck::ChainOnly`]: the WebPKI checks, less the name.
#[derive(Debug)]
struct AnyName(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for AnyName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// [`ServerCheck::EncryptOnly`]: any certificate, but a valid handshake signature by its key.
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
