//! End-to-end tests: each starts the real binaries on free ports, drives them as a user's client
//! would, and stops them (even when the test fails).

mod support;
mod worker;
