//! Clients of the CloudScoot API.
//!
//! * [`cloudscoot::Client`]: a CloudScoot connection that reconnects after errors.
//! * [`addr`]: where clients find the scheduler (`--addr`, `~/.cloudscootaddr$SCOOT_ID`).
//! * [`jobdef`]: scootcl's JSON job-definition files.
//! * [`scootcl`]: the `scootcl` command line; [`smoketest`]: `scootcl smoketest`.

pub mod addr;
pub mod cloudscoot;
pub mod jobdef;
pub mod scootcl;
pub mod smoketest;
