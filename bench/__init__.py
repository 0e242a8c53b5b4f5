"""Benchmarks run by `make bench`: each module starts what it needs, prints a table and writes JSON to var/bench/."""

import logging

import structlog

# The library code a benchmark drives in its own process (migrations, the outbox relay) logs through structlog,
# whose default prints every debug line: the tables would drown in them. Warnings and errors still show.
structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
