//! TLS on a server's port: a reloading rustls configuration and an accept loop that completes
//! handshakes concurrently, for tonic (a stream of connections) and axum (a listener).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::ServerConfig;
use rustls::server::WebPkiClientVerifier;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use crate::reload::Reloading;
use crate::{SecurityError, pem, provider};

/// How long a client has to finish its handshake; one that stalls holds a task, never the
/// accept loop.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The application protocol a port speaks, announced through ALPN: gRPC clients (grpc-java in
/// Bazel among them) refuse a TLS server that does not agree to `h2`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Alpn {
    Grpc,
    Http1,
    /// Thrift has no ALPN name; nothing is announced.
    None,
}

impl Alpn {
    fn protocols(self) -> Vec<Vec<u8>> {
        match self {
            Alpn::Grpc => vec![b"h2".to_vec()],
            Alpn::Http1 => vec![b"http/1.1".to_vec()],
            Alpn::None => Vec::new(),
        }
    }
}

/// The files of a server's TLS.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerTlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// When set, clients must present a certificate this CA signed.
    pub client_ca: Option<PathBuf>,
}

/// A server's TLS configuration, rebuilt when its files change; cloning shares it.
#[derive(Clone)]
pub struct ServerTls {
    config: Arc<Reloading<ServerConfig>>,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ServerTls")
    }
}

impl ServerTls {
    pub fn new(files: &ServerTlsFiles, alpn: Alpn) -> Result<ServerTls, SecurityError> {
        let mut paths = vec![files.cert.clone(), files.key.clone()];
        paths.extend(files.client_ca.clone());
        let files = files.clone();
        let config = Reloading::new("TLS certificate", paths, move || build(&files, alpn))?;
        Ok(ServerTls {
            config: Arc::new(config),
        })
    }

    fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.config.current())
    }

    /// Completes the server side of a handshake on an accepted connection.
    pub async fn accept(&self, tcp: TcpStream) -> std::io::Result<TlsStream<TcpStream>> {
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, self.acceptor().accept(tcp)).await {
            Ok(result) => result,
            Err(_) => Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the TLS handshake did not finish in time",
            )),
        }
    }
}

fn build(files: &ServerTlsFiles, alpn: Alpn) -> Result<ServerConfig, SecurityError> {
    let certs = pem::certificates("TLS certificate", &files.cert)?;
    let key = pem::private_key(&files.key)?;
    let invalid = |e: rustls::Error| SecurityError::Invalid(format!("TLS set-up: {e}"));
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(invalid)?;
    let builder = match &files.client_ca {
        Some(ca) => {
            let roots = pem::roots("client CA", ca)?;
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                .build()
                .map_err(|e| SecurityError::Invalid(format!("client CA {}: {e}", ca.display())))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(certs, key).map_err(|e| {
        SecurityError::Invalid(format!(
            "{} and {} do not make a usable certificate and key: {e}",
            files.cert.display(),
            files.key.display()
        ))
    })?;
    config.alpn_protocols = alpn.protocols();
    Ok(config)
}

/// Connections accepted on a listener with their handshakes done. Dropping it stops accepting.
pub struct TlsIncoming {
    established: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local_addr: SocketAddr,
    accept_loop: tokio::task::JoinHandle<()>,
}

impl TlsIncoming {
    /// Starts accepting on `listener` (within a tokio runtime).
    pub fn new(listener: TcpListener, tls: ServerTls) -> std::io::Result<TlsIncoming> {
        let local_addr = listener.local_addr()?;
        let (sender, established) = mpsc::channel(64);
        let accept_loop = tokio::spawn(accept_loop(listener, tls, sender));
        Ok(TlsIncoming {
            established,
            local_addr,
            accept_loop,
        })
    }
}

impl Drop for TlsIncoming {
    fn drop(&mut self) {
        self.accept_loop.abort();
    }
}

async fn accept_loop(
    listener: TcpListener,
    tls: ServerTls,
    established: mpsc::Sender<(TlsStream<TcpStream>, SocketAddr)>,
) {
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of descriptors, most likely: give connections in flight time to close
                // rather than spinning.
                tracing::warn!(%error, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let tls = tls.clone();
        let established = established.clone();
        tokio::spawn(async move {
            match tls.accept(tcp).await {
                Ok(stream) => {
                    let _ = established.send((stream, peer)).await;
                }
                Err(error) => tracing::info!(%peer, %error, "TLS handshake failed"),
            }
        });
    }
}

/// For tonic's `serve_with_incoming*`.
impl futures_core::Stream for TlsIncoming {
    type Item = std::io::Result<TlsStream<TcpStream>>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.established
            .poll_recv(cx)
            .map(|next| next.map(|(stream, _)| Ok(stream)))
    }
}

/// For `axum::serve`.
impl axum::serve::Listener for TlsIncoming {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.established.recv().await {
            Some(established) => established,
            // The accept loop never ends by itself; if it died, this port accepts no more.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local_addr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client_tls::{ClientTls, Identity};
    use crate::test_pki::pki;
    use std::time::Instant;

    async fn serve(tls: ServerTls) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = axum::Router::new().route("/health", axum::routing::get(|| async { "ok" }));
        tokio::spawn(crate::http::serve(
            listener,
            Some(tls),
            app,
            std::future::pending(),
        ));
        format!("https://127.0.0.1:{}/health", addr.port())
    }

    async fn get(client: &ClientTls, url: &str) -> Result<String, String> {
        let client = crate::client_tls::http_client(Some(client))
            .no_proxy()
            .build()
            .unwrap();
        let response = client.get(url).send().await.map_err(|e| format!("{e:?}"))?;
        response.text().await.map_err(|e| e.to_string())
    }

    #[tokio::test]
    async fn serves_tls_to_clients_that_trust_its_ca_only() {
        let dir = tempfile::tempdir().unwrap();
        let good = pki(dir.path(), "good");
        let other = pki(dir.path(), "other");
        let files = ServerTlsFiles {
            cert: good.cert.clone(),
            key: good.key.clone(),
            client_ca: None,
        };
        let url = serve(ServerTls::new(&files, Alpn::Http1).unwrap()).await;
        let trusting = ClientTls::new(&good.ca, None).unwrap();
        assert_eq!(get(&trusting, &url).await.unwrap(), "ok");
        let wrong_ca = ClientTls::new(&other.ca, None).unwrap();
        let error = get(&wrong_ca, &url).await.unwrap_err();
        assert!(error.contains("UnknownIssuer"), "{error}");
        let plain = crate::client_tls::http_client(None)
            .no_proxy()
            .build()
            .unwrap();
        assert!(
            plain
                .get(url.replace("https", "http"))
                .send()
                .await
                .is_err()
        );
    }

    #[tokio::test]
    async fn with_a_client_ca_only_clients_with_its_certificates_get_in() {
        let dir = tempfile::tempdir().unwrap();
        let server = pki(dir.path(), "server");
        let clients = pki(dir.path(), "clients");
        let files = ServerTlsFiles {
            cert: server.cert.clone(),
            key: server.key.clone(),
            client_ca: Some(clients.ca.clone()),
        };
        let url = serve(ServerTls::new(&files, Alpn::Http1).unwrap()).await;
        let anonymous = ClientTls::new(&server.ca, None).unwrap();
        assert!(get(&anonymous, &url).await.is_err());
        let identity = Identity {
            cert: clients.cert.clone(),
            key: clients.key.clone(),
        };
        let known = ClientTls::new(&server.ca, Some(&identity)).unwrap();
        assert_eq!(get(&known, &url).await.unwrap(), "ok");
    }

    #[tokio::test]
    async fn a_replaced_certificate_is_served_without_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let first = pki(dir.path(), "first");
        let second = pki(dir.path(), "second");
        let live = ServerTlsFiles {
            cert: dir.path().join("live-cert.pem"),
            key: dir.path().join("live-key.pem"),
            client_ca: None,
        };
        std::fs::copy(&first.cert, &live.cert).unwrap();
        std::fs::copy(&first.key, &live.key).unwrap();
        let url = serve(ServerTls::new(&live, Alpn::Http1).unwrap()).await;
        let trusts_second = ClientTls::new(&second.ca, None).unwrap();
        assert!(get(&trusts_second, &url).await.is_err());
        // Rotation as tools do it: new files renamed over the old ones.
        std::fs::copy(&second.cert, dir.path().join("new-cert.pem")).unwrap();
        std::fs::copy(&second.key, dir.path().join("new-key.pem")).unwrap();
        std::fs::rename(dir.path().join("new-key.pem"), &live.key).unwrap();
        std::fs::rename(dir.path().join("new-cert.pem"), &live.cert).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while get(&trusts_second, &url).await.is_err() {
            assert!(
                Instant::now() < deadline,
                "the new certificate was never served"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    #[test]
    fn unusable_files_are_refused_with_their_names() {
        let dir = tempfile::tempdir().unwrap();
        let good = pki(dir.path(), "good");
        let other = pki(dir.path(), "other");
        let missing = ServerTlsFiles {
            cert: dir.path().join("nope.pem"),
            key: good.key.clone(),
            client_ca: None,
        };
        let error = ServerTls::new(&missing, Alpn::Grpc)
            .unwrap_err()
            .to_string();
        assert!(error.contains("nope.pem"), "{error}");
        let mismatched = ServerTlsFiles {
            cert: good.cert.clone(),
            key: other.key.clone(),
            client_ca: None,
        };
        let error = ServerTls::new(&mismatched, Alpn::Grpc)
            .unwrap_err()
            .to_string();
        assert!(error.contains("do not make a usable"), "{error}");
        let key_as_cert = ServerTlsFiles {
            cert: good.key.clone(),
            key: good.key.clone(),
            client_ca: None,
        };
        let error = ServerTls::new(&key_as_cert, Alpn::Grpc)
            .unwrap_err()
            .to_string();
        assert!(error.contains("no PEM certificate"), "{error}");
    }
}
