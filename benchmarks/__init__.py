"""Benchmarks: speed is measured here, with wrk against real servers, never in unit tests."""
