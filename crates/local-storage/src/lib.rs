//! Building blocks of local caches and stores: [`Lru`], the index of a byte-bounded cache whose
//! entries can be pinned against eviction, and [`DirLock`], the `LOCK` file that keeps a
//! directory to one owner at a time.

mod dir_lock;
mod lru;

pub use dir_lock::{DirLock, LOCK_FILE, LockError};
pub use lru::{Generation, Lru, Pinned};
