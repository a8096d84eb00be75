//! PEM files: certificate chains, CA bundles and private keys.

use std::path::Path;

use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::SecurityError;

fn file_error(what: &'static str, path: &Path, reason: impl ToString) -> SecurityError {
    SecurityError::File {
        what,
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

pub(crate) fn certificates(
    what: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, SecurityError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_error(what, path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(what, path, e))?;
    if certs.is_empty() {
        return Err(file_error(what, path, "it holds no PEM certificate"));
    }
    Ok(certs)
}

pub(crate) fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, SecurityError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| file_error("private key", path, e))
}

pub(crate) fn roots(what: &'static str, path: &Path) -> Result<RootCertStore, SecurityError> {
    let mut roots = RootCertStore::empty();
    for cert in certificates(what, path)? {
        roots.add(cert).map_err(|e| file_error(what, path, e))?;
    }
    Ok(roots)
}
