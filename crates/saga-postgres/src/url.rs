//! The database URL: `postgresql://user[:password]@host[:port]/database[?key=value&…]`.
//!
//! The driver understands every key except the TLS ones that need certificates, which libpq
//! has and it lacks: `sslmode=verify-ca`/`verify-full`, `sslrootcert`, `sslcert`, `sslkey`.
//! Those are taken out here and become a rustls configuration; the rest goes to the driver.

use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use percent_encoding::percent_decode_str;
use scoot_security::client_tls::{Identity, ServerCheck, client_config};
use tokio_postgres::config::{Host, SslMode};

use crate::OpenError;

/// How long a connection attempt may take when the URL sets no `connect_timeout`.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a session may sit inside a transaction without sending anything. Ours send their
/// statements back to back, so only a stalled client reaches it.
const IDLE_IN_TRANSACTION: Duration = Duration::from_secs(3);

/// A parsed URL: the driver's settings and the TLS client configuration.
pub(crate) struct Target {
    pub config: tokio_postgres::Config,
    pub tls: Arc<rustls::ClientConfig>,
}

impl Target {
    /// `user@host:port/database`, without the password: for messages and logs.
    pub fn describe(&self) -> String {
        let hosts: Vec<String> = self
            .config
            .get_hosts()
            .iter()
            .zip(
                self.config
                    .get_ports()
                    .iter()
                    .chain(std::iter::repeat(&5432)),
            )
            .map(|(host, port)| match host {
                Host::Tcp(name) => format!("{name}:{port}"),
                Host::Unix(path) => format!("{}:{port}", path.display()),
            })
            .collect();
        format!(
            "{}@{}/{}",
            self.config.get_user().unwrap_or(""),
            hosts.join(","),
            self.config.get_dbname().unwrap_or("")
        )
    }
}

fn bad(reason: impl Into<String>) -> OpenError {
    OpenError::Url(reason.into())
}

pub(crate) fn parse(url: &str) -> Result<Target, OpenError> {
    if !(url.starts_with("postgresql://") || url.starts_with("postgres://")) {
        return Err(bad("it must begin with postgresql:// (or postgres://)"));
    }
    let (base, query) = url.split_once('?').unwrap_or((url, ""));
    let (mut mode, mut root, mut cert, mut key) = (None, None, None, None);
    let mut kept = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let decoded = || {
            percent_decode_str(value)
                .decode_utf8()
                .map(|v| v.into_owned())
                .map_err(|_| bad(format!("{name}: not UTF-8 once decoded")))
        };
        match name {
            "sslmode" => mode = Some(decoded()?),
            "sslrootcert" => root = Some(PathBuf::from(decoded()?)),
            "sslcert" => cert = Some(PathBuf::from(decoded()?)),
            "sslkey" => key = Some(PathBuf::from(decoded()?)),
            _ => kept.push(pair),
        }
    }
    let driver_url = if kept.is_empty() {
        base.to_string()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    let mut config =
        tokio_postgres::Config::from_str(&driver_url).map_err(|e| bad(e.to_string()))?;
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(CONNECT_TIMEOUT);
    }
    // A transaction whose client stalls (a stopped process) would hold its locks, the lease
    // row's among them, for as long as its connection lives: the server ends it instead.
    let options = format!(
        "{} -c idle_in_transaction_session_timeout={}",
        config.get_options().unwrap_or(""),
        IDLE_IN_TRANSACTION.as_millis()
    );
    config.options(options.trim_start());
    if config.get_hosts().is_empty() {
        return Err(bad("it names no host"));
    }

    let identity = match (cert, key) {
        (Some(cert), Some(key)) => Some(Identity { cert, key }),
        (None, None) => None,
        _ => return Err(bad("sslcert and sslkey go together")),
    };
    let needs_ca = |mode: &str| {
        root.is_some()
            .then_some(())
            .ok_or_else(|| bad(format!("sslmode={mode} needs sslrootcert=<CA file>")))
    };
    // libpq's meanings: `prefer` (its default) encrypts when the server can, checking nothing;
    // `require` checks the chain only when given a CA.
    let (ssl, check) = match mode.as_deref().unwrap_or("prefer") {
        "disable" => (SslMode::Disable, ServerCheck::EncryptOnly),
        "prefer" => (SslMode::Prefer, ServerCheck::EncryptOnly),
        "require" if root.is_some() => (SslMode::Require, ServerCheck::ChainOnly),
        "require" => (SslMode::Require, ServerCheck::EncryptOnly),
        "verify-ca" => {
            needs_ca("verify-ca")?;
            (SslMode::Require, ServerCheck::ChainOnly)
        }
        "verify-full" => {
            needs_ca("verify-full")?;
            (SslMode::Require, ServerCheck::Full)
        }
        other => {
            return Err(bad(format!(
                "sslmode={other} is not one of disable, prefer, require, verify-ca, verify-full"
            )));
        }
    };
    config.ssl_mode(ssl);
    // Built even for `disable`, where the driver never uses it: one connector type for all.
    let tls = client_config(root.as_deref(), identity.as_ref(), check).map_err(OpenError::Tls)?;
    Ok(Target { config, tls })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(url: &str) -> String {
        match parse(url) {
            Ok(_) => panic!("{url} was accepted"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn plain_urls_keep_the_driver_settings() {
        let target = parse(
            "postgresql://scoot:secret@db.example:6543/jobs?application_name=s&connect_timeout=3",
        )
        .unwrap();
        assert_eq!(target.describe(), "scoot@db.example:6543/jobs");
        assert_eq!(target.config.get_ssl_mode(), SslMode::Prefer);
        assert_eq!(target.config.get_application_name(), Some("s"));
        assert_eq!(
            target.config.get_connect_timeout(),
            Some(&Duration::from_secs(3))
        );
        let target = parse("postgres://u@h/d?sslmode=disable").unwrap();
        assert_eq!(target.config.get_ssl_mode(), SslMode::Disable);
        assert_eq!(target.config.get_connect_timeout(), Some(&CONNECT_TIMEOUT));
        assert!(!target.describe().contains("secret"));
    }

    #[test]
    fn tls_settings_are_ours() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca dir/ca.pem");
        std::fs::create_dir_all(ca.parent().unwrap()).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["db".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        std::fs::write(&ca, cert.pem()).unwrap();
        let encoded = ca.to_str().unwrap().replace(' ', "%20");
        let target = parse(&format!(
            "postgresql://u@db/d?sslmode=verify-full&sslrootcert={encoded}"
        ))
        .unwrap();
        assert_eq!(target.config.get_ssl_mode(), SslMode::Require);
        assert!(parse("postgresql://u@db/d?sslmode=require").is_ok());
    }

    #[test]
    fn bad_urls_say_what_is_wrong() {
        for (url, needle) in [
            ("host=db user=u", "must begin with postgresql://"),
            (
                "postgresql://u@db/d?sslmode=verify-full",
                "needs sslrootcert",
            ),
            ("postgresql://u@db/d?sslmode=verify-ca", "needs sslrootcert"),
            (
                "postgresql://u@db/d?sslmode=allow",
                "sslmode=allow is not one of",
            ),
            ("postgresql://u@db/d?sslcert=/c", "go together"),
            (
                "postgresql://u@db/d?sslmode=verify-full&sslrootcert=/no/such/ca.pem",
                "/no/such/ca.pem",
            ),
            ("postgresql://u@db/d?port=notaport", "invalid"),
        ] {
            let e = err(url);
            assert!(e.contains(needle), "{url}: {e}");
        }
    }
}
