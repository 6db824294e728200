"""Latency benchmarks -- ``online_tsm.benchmarks``."""
