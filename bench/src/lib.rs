//! Shared fixtures for kxdp benchmarks.
