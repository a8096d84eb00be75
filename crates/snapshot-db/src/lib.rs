//! Scoot's git-backed snapshot database ("gitdb").
//!
//! A snapshot is a git object in a data repository: a tree (`fs` snapshots, a directory's files)
//! or a commit (`gc` snapshots). Snapshots travel between machines as git bundles in a
//! bundlestore ([`scoot_bundlestore::store::Store`]): ingesting uploads `bs-<key>.bundle`, checking
//! out a snapshot that is not in the repository downloads and unbundles it. Ids follow
//! [`scoot_bundlestore::id`].
//!
//! * [`GitDb`]: ingest (a directory, a commit, HEAD plus the working directory), publish a bundle,
//!   check out, read a file, export a commit to another repository. The CLI opens the current
//!   directory's repository ([`GitDb::open`]); a worker owns a fresh one ([`GitDb::init_temp`]).
//! * [`git`]: how git is run: no shell, fixed environment and identity, a deadline per command
//!   (Scoot's 10 minutes by default) after which git and its helpers are killed.
//! * [`GitDbError`]: every failure carries Scoot's exit code (210–217) through its [`Op`].
//! * [`verify_bundle`]: whether a bundle holds what its name promises (for bundlestores).
//! * [`cli`]: the `scoot-snapshot-db` command line.

pub mod cli;
mod db;
mod error;
pub mod git;
mod verify;

pub use db::{
    BUNDLE_TEMP_REF, CHECKOUT_BRANCH, Checkout, EXPORT_TEMP_REF, FS_COMMIT_MESSAGE, GitDb,
    GitDbConfig, PublishedBundle, RemoteBackend, WORKING_DIR_COMMIT_MESSAGE,
};
pub use error::{Cause, GitDbError, Op};
pub use verify::{BundleCheckError, verify_bundle};

#[cfg(test)]
mod tests;
