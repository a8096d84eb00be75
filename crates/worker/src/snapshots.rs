//! Snapshot checkouts for the worker: a [`Filer`] over the git-backed snapshot database, with its
//! bundles in the bundlestore chosen by `-bundlestore`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use scoot_bundlestore::store::{FileStore, HttpStore, HttpStoreOptions, Store};
use scoot_core::exit_code;
use scoot_runner::filer::{Checkout, CheckoutError, Filer};
use scoot_security::ClientTls;
use scoot_snapshot_db::{GitDb, GitDbConfig};
use tokio::sync::OnceCell;

/// Where bundles come from, per `-bundlestore`: an absolute directory is a file store (Scoot
/// ignored the path and used a temp dir), anything else is an apiserver (`host:port` or URL).
/// Without the flag: the apiserver on the second line of `~/.cloudscootaddr$SCOOT_ID`, else a
/// private temporary file store (only snapshots ingested into it could be checked out).
pub enum BundlestoreChoice {
    Dir(PathBuf),
    Http(String),
    Temporary,
}

impl BundlestoreChoice {
    pub fn from_flag(flag: Option<&str>) -> BundlestoreChoice {
        match flag {
            Some(dir) if dir.starts_with('/') => BundlestoreChoice::Dir(PathBuf::from(dir)),
            Some(addr) => BundlestoreChoice::Http(addr.to_string()),
            None => match cloudscootaddr_apiserver() {
                Some(addr) => BundlestoreChoice::Http(addr),
                None => BundlestoreChoice::Temporary,
            },
        }
    }
}

fn cloudscootaddr_apiserver() -> Option<String> {
    let home = std::env::var_os("HOME")?;
    let id = std::env::var("SCOOT_ID").unwrap_or_default();
    let text =
        std::fs::read_to_string(Path::new(&home).join(format!(".cloudscootaddr{id}"))).ok()?;
    text.lines()
        .nth(1)
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
}

/// Checkouts through a data repository the worker creates at start-up.
pub struct GitFiler {
    store: Arc<dyn Store>,
    db: OnceCell<GitDb>,
    /// Keeps a temporary bundle directory alive as long as the filer.
    _temporary: Option<tempfile::TempDir>,
}

impl GitFiler {
    /// `tls`: the CA of an `https://` bundlestore.
    pub fn new(choice: BundlestoreChoice, tls: Option<ClientTls>) -> Result<GitFiler, String> {
        let (store, temporary): (Arc<dyn Store>, _) = match choice {
            BundlestoreChoice::Dir(dir) => {
                let store = FileStore::new(dir.clone())
                    .map_err(|e| format!("bundlestore {}: {e}", dir.display()))?;
                (Arc::new(store), None)
            }
            BundlestoreChoice::Http(addr) => (
                Arc::new(
                    HttpStore::with_options(
                        &addr,
                        HttpStoreOptions {
                            tls,
                            ..HttpStoreOptions::default()
                        },
                    )
                    .map_err(|e| format!("bundlestore {addr}: {e}"))?,
                ),
                None,
            ),
            BundlestoreChoice::Temporary => {
                let dir = tempfile::Builder::new()
                    .prefix("scoot-worker-bundles")
                    .tempdir()
                    .map_err(|e| format!("cannot create a temporary bundlestore: {e}"))?;
                let store = FileStore::new(dir.path().to_path_buf()).map_err(|e| e.to_string())?;
                (Arc::new(store), Some(dir))
            }
        };
        Ok(GitFiler {
            store,
            db: OnceCell::new(),
            _temporary: temporary,
        })
    }
}

#[async_trait]
impl Filer for GitFiler {
    async fn ready(&self) -> Result<(), String> {
        self.db
            .get_or_try_init(|| GitDb::init_temp(self.store.clone(), GitDbConfig::default()))
            .await
            .map(|_| ())
            .map_err(|e| format!("cannot create the snapshot data repository: {e}"))
    }

    async fn checkout(&self, snapshot_id: &str) -> Result<Box<dyn Checkout>, CheckoutError> {
        let db = self.db.get().ok_or_else(|| {
            CheckoutError::new(
                exit_code::DB_INIT_FAILURE,
                "the snapshot database is not initialised",
            )
        })?;
        let checkout = db
            .checkout(snapshot_id)
            .await
            .map_err(|e| CheckoutError::new(e.exit_code(), e.to_string()))?;
        Ok(Box::new(GitCheckout(checkout)))
    }
}

struct GitCheckout(scoot_snapshot_db::Checkout);

#[async_trait]
impl Checkout for GitCheckout {
    fn path(&self) -> &Path {
        self.0.path()
    }

    async fn release(self: Box<Self>) -> Result<(), CheckoutError> {
        self.0
            .release()
            .await
            .map_err(|e| CheckoutError::new(e.exit_code(), e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flag_choices() {
        assert!(
            matches!(BundlestoreChoice::from_flag(Some("/srv/bundles")), BundlestoreChoice::Dir(d) if d == Path::new("/srv/bundles"))
        );
        assert!(
            matches!(BundlestoreChoice::from_flag(Some("localhost:11100")), BundlestoreChoice::Http(a) if a == "localhost:11100")
        );
    }
}
