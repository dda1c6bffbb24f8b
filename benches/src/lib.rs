//! Benchmarks of numaproc: latency, throughput and a NUMA memory matrix,
//! each measured beside baselines in the same run (see `benches/README.md`).
//!
//! The `numaproc-bench` binary drives everything; this library holds the
//! pieces it and the criterion micro-benchmarks share:
//! - [`stats`]: HDR-histogram summaries (percentiles, calls per second);
//! - [`sys`]: pinning, CPU lists, anonymous shared mappings, futex calls;
//! - [`peers`]: the baselines' other side (a forked process spinning or
//!   sleeping on a shared line, pipe and Unix-socket echo processes, a
//!   crossbeam thread, an iceoryx2 server process) and the caller's side;
//! - [`libs`]: the example procedure libraries the start and library jobs
//!   load;
//! - [`numa`]: memory placed on a node, sequential-read bandwidth and
//!   pointer-chase latency, run as registered procedures on pinned workers;
//! - [`spec`]: what one measurement job asks for and what it returns;
//! - [`report`]: the markdown summary, CSV, JSON and plots.
#![deny(unsafe_op_in_unsafe_fn)]

pub mod libs;
pub mod numa;
pub mod peers;
pub mod report;
pub mod spec;
pub mod stats;
pub mod sys;
