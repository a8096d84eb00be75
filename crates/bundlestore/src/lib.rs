//! Scoot snapshots: immutable file trees that tasks run against.
//!
//! * [`id`]: the snapshot-id grammar (`local-`, `stream-`, `tags-`, `bs-` backends; `fs`, `gc` kinds).
//! * [`store`]: where git bundles live: the [`store::Store`] trait and its file, HTTP and caching
//!   implementations.

pub mod id;
pub mod store;
