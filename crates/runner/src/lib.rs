//! Runs Scoot commands on one machine.
//!
//! Layers, top to bottom:
//! * [`queue::QueueRunner`]: the single-slot runner a worker exposes (accept, refuse, abort,
//!   drain, health).
//! * [`invoker::Invoker`]: runs one command to a final status by driving the
//!   [`lifecycle`] state machine.
//! * [`execer`]: execution engines (real processes, simulated scripts) behind one trait.
//! * [`action`]: runs that are REAPI actions (the worker crate plugs in the implementation).
//! * [`filer`]: where a run's file tree comes from; [`output`]: where its output goes.
//! * [`status::StatusManager`]: the record of run statuses, with blocking queries.
//!
//! Architecture invariant: nothing here knows about Thrift or HTTP; the worker crate adapts.

pub mod action;
pub mod execer;
pub mod filer;
pub mod invoker;
pub mod lifecycle;
pub mod output;
pub mod queue;
pub mod stats;
pub mod status;
