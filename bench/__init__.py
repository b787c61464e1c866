"""Benchmarks of statekeeper against the bare gRPC limit and its peers (see README.md)."""
