//! Exit codes Scoot reserves for failures of the run mechanism rather than of the command.
//! They appear as a run's `exit_code` alongside a FAILED state (241 also ends a COMPLETE-less run).

/// A pre-processing hook failed.
pub const PRE_PROCESSING_FAILURE: i32 = 200;
/// Checking out the snapshot failed for a reason with no more specific code.
pub const CHECKOUT_FAILURE: i32 = 210;
/// `git clean` of a reused checkout failed.
pub const CLEAN_FAILURE: i32 = 211;
/// `git checkout` of the snapshot failed.
pub const GIT_CHECKOUT_FAILURE: i32 = 212;
/// Releasing a checkout failed.
pub const RELEASE_CHECKOUT_FAILURE: i32 = 213;
/// Uploading a bundle to the bundlestore failed.
pub const BUNDLE_UPLOAD_FAILURE: i32 = 214;
/// Reading a file from a snapshot failed.
pub const READ_FILE_FAILURE: i32 = 215;
/// Exporting a snapshot as a git commit failed.
pub const EXPORT_GIT_COMMIT_FAILURE: i32 = 216;
/// The snapshot database could not be initialised.
pub const DB_INIT_FAILURE: i32 = 217;
/// The stdout/stderr/stdlog files could not be created.
pub const LOG_REF_CREATION_FAILURE: i32 = 220;
/// A post-processing hook failed.
pub const POST_PROCESSING_FAILURE: i32 = 230;
/// The command could not be started (e.g. argv\[0\] not found).
pub const COULD_NOT_EXEC: i32 = 240;
/// The task's processes already used more memory than the cap right after starting; the
/// worker is marked unhealthy.
pub const HIGH_INITIAL_MEMORY_UTILIZATION: i32 = 241;
/// Something failed after the command was started.
pub const POST_EXEC_FAILURE: i32 = 250;
