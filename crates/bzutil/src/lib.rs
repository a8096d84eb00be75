//! `bzutil`, Scoot's REAPI command line: put commands, actions and whole input directories into
//! a CAS, move blobs in batches, ask which blobs are missing, and execute actions and follow or
//! cancel their operations ([`exec`]). Digests are printed as
//! `<hash>/<size>`. Every call to the CAS, and turning a directory into `Directory` messages,
//! goes through [`scoot_cas_client`]; this crate builds the other messages and formats output.

pub mod cli;
pub mod exec;
