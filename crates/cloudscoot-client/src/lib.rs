//! Clients of the CloudScoot API.
//!
//! * [`cloudscoot::Client`]: a CloudScoot connection that reconnects after errors.
//! * [`addr`]: where clients find the scheduler (`--addr`, `~/.cloudscootaddr$SCOOT_ID`).
//! * [`jobdef`]: scootcl's JSON job-definition files.
//! * [`scootcl`]: the `scootcl` command line; [`smoketest`]: `scootcl smoketest`.
//! * [`goformat`]: what Scoot's scootcl printed (Go's JSON and `%+v` of the Thrift structs).

pub mod addr;
pub mod cloudscoot;
pub mod goformat;
pub mod jobdef;
pub mod scootcl;
pub mod smoketest;
