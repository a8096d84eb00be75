//! End-to-end tests: each starts the real binaries on free ports, drives them as a user's client
//! would, and stops them (even when the test fails).

// Test code panics on any unexpected failure: that is how a test reports it.
#![allow(clippy::unwrap_used)]

mod bazel;
mod buildstream;
mod bzutil;
mod cluster;
mod metrics;
mod multihost;
mod postgres;
mod reapi;
mod sandbox;
mod scheduler;
mod scoot_dropin;
mod scootcl;
mod security;
mod sharded_cas;
mod snapshots;
mod support;
mod task_processes;
mod thrift_ports;
mod thrift_tls;
mod ui;
mod worker;
