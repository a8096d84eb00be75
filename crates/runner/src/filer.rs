//! Snapshot filers: how a run gets the file tree it executes in.

use std::path::Path;

use async_trait::async_trait;
use scoot_core::exit_code;

/// Why a checkout failed, with the Scoot exit code (210-217) the run reports.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct CheckoutError {
    pub exit_code: i32,
    pub message: String,
}

impl CheckoutError {
    pub fn new(exit_code: i32, message: impl Into<String>) -> CheckoutError {
        CheckoutError {
            exit_code,
            message: message.into(),
        }
    }
}

/// A directory holding a snapshot's files, owned by one run until released.
#[async_trait]
pub trait Checkout: Send {
    fn path(&self) -> &Path;
    async fn release(self: Box<Self>) -> Result<(), CheckoutError>;
}

#[async_trait]
pub trait Filer: Send + Sync {
    /// Completes once checkouts can be served; an error keeps the worker uninitialised.
    async fn ready(&self) -> Result<(), String>;
    async fn checkout(&self, snapshot_id: &str) -> Result<Box<dyn Checkout>, CheckoutError>;
}

/// The checkout of the empty snapshot: a fresh temporary directory, removed on release.
pub struct EmptyCheckout(tempfile::TempDir);

impl EmptyCheckout {
    pub fn create() -> Result<EmptyCheckout, CheckoutError> {
        tempfile::Builder::new()
            .prefix("invoke_nop_checkout")
            .tempdir()
            .map(EmptyCheckout)
            .map_err(|err| {
                CheckoutError::new(
                    exit_code::CHECKOUT_FAILURE,
                    format!("cannot create an empty checkout directory: {err}"),
                )
            })
    }
}

#[async_trait]
impl Checkout for EmptyCheckout {
    fn path(&self) -> &Path {
        self.0.path()
    }

    async fn release(self: Box<Self>) -> Result<(), CheckoutError> {
        let dir = self.0;
        tokio::task::spawn_blocking(move || dir.close())
            .await
            .map_err(std::io::Error::other)
            .and_then(|closed| closed)
            .map_err(|err| {
                CheckoutError::new(
                    exit_code::RELEASE_CHECKOUT_FAILURE,
                    format!("cannot remove checkout: {err}"),
                )
            })
    }
}
