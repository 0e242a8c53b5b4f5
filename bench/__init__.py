"""Benchmarks run by `make bench`: each module starts what it needs, prints a table and writes JSON to var/bench/."""
