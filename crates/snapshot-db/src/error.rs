//! Errors of the snapshot database, each carrying the Scoot exit code a run reports for it.

use std::fmt;
use std::io;

use scoot_bundlestore::id::IdError;
use scoot_bundlestore::store::StoreError;
use scoot_core::exit_code;

use crate::git::GitError;

/// The operation that failed; it decides the exit code (Scoot's 210–217).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    /// Opening or creating the data repository (217).
    Init,
    /// Ingesting a directory or commit and uploading its bundle (214: Scoot has no separate code
    /// for the local part of an ingest, whose result is always uploaded).
    Ingest,
    /// Checking out a snapshot, except the two steps below (210).
    Checkout,
    /// `git clean` of the data repository's work tree before a commit checkout (211).
    Clean,
    /// `git checkout` of a commit into the data repository's work tree (212).
    GitCheckout,
    /// Releasing a checkout (213).
    Release,
    /// Reading a file from a snapshot (215).
    ReadFile,
    /// Exporting a snapshot as a commit into another repository (216).
    Export,
}

impl Op {
    pub fn exit_code(self) -> i32 {
        match self {
            Op::Init => exit_code::DB_INIT_FAILURE,
            Op::Ingest => exit_code::BUNDLE_UPLOAD_FAILURE,
            Op::Checkout => exit_code::CHECKOUT_FAILURE,
            Op::Clean => exit_code::CLEAN_FAILURE,
            Op::GitCheckout => exit_code::GIT_CHECKOUT_FAILURE,
            Op::Release => exit_code::RELEASE_CHECKOUT_FAILURE,
            Op::ReadFile => exit_code::READ_FILE_FAILURE,
            Op::Export => exit_code::EXPORT_GIT_COMMIT_FAILURE,
        }
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Op::Init => "cannot open the snapshot database",
            Op::Ingest => "cannot ingest the snapshot",
            Op::Checkout => "cannot check out the snapshot",
            Op::Clean => "cannot clean the checkout",
            Op::GitCheckout => "git checkout of the snapshot failed",
            Op::Release => "cannot release the checkout",
            Op::ReadFile => "cannot read from the snapshot",
            Op::Export => "cannot export the snapshot",
        })
    }
}

/// What went wrong.
#[derive(Debug, thiserror::Error)]
pub enum Cause {
    #[error(transparent)]
    InvalidId(#[from] IdError),
    #[error("invalid path {path:?}: {reason}")]
    InvalidPath { path: String, reason: &'static str },
    #[error("bundle {0} is not in the bundlestore")]
    BundleNotFound(String),
    #[error("bundle {bundle} does not contain {object}")]
    BundleIncomplete { bundle: String, object: String },
    #[error("{0} is not in the repository")]
    NotFound(String),
    /// A `stream-` or `tags-` snapshot, but this database has no such backend.
    #[error("{0} backend not initialized")]
    BackendNotInitialized(&'static str),
    #[error("bundlestore: {0}")]
    Store(#[from] StoreError),
    #[error(transparent)]
    Git(#[from] GitError),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("{0}")]
    Unsupported(String),
    /// Reported by a remote backend.
    #[error("{0}")]
    Backend(String),
}

impl Cause {
    pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(io::Error) -> Cause {
        let what = what.into();
        move |source| Cause::Io { what, source }
    }
}

/// A failed snapshot operation: what was being done and why it failed.
#[derive(Debug, thiserror::Error)]
#[error("{op}: {cause}")]
pub struct GitDbError {
    pub op: Op,
    pub cause: Cause,
}

impl GitDbError {
    pub fn new(op: Op, cause: impl Into<Cause>) -> GitDbError {
        GitDbError {
            op,
            cause: cause.into(),
        }
    }

    /// Scoot's exit code for this failure (210–217).
    pub fn exit_code(&self) -> i32 {
        self.op.exit_code()
    }

    /// Whether a git command ran out of time.
    pub fn is_timeout(&self) -> bool {
        matches!(&self.cause, Cause::Git(err) if err.is_timeout())
    }
}

/// Tags a `Result<_, Cause>` with the operation it belongs to.
pub(crate) trait InOp<T> {
    fn in_op(self, op: Op) -> Result<T, GitDbError>;
}

impl<T, E: Into<Cause>> InOp<T> for Result<T, E> {
    fn in_op(self, op: Op) -> Result<T, GitDbError> {
        self.map_err(|cause| GitDbError::new(op, cause))
    }
}
