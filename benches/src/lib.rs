//! Benchmarks of numaproc (see README.md).
