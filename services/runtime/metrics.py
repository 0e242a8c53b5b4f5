"""Prometheus metrics every service exposes, in a registry of its own (so tests can build many apps)."""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# Why a consumer waits and tries again (consumer_retries_total's `reason`): the database or broker away or refusing
# (retried without end), an error of the batch itself (retried a few times, then the batch is split and the event
# dead-lettered), or either for a tombstone.
RETRY_REASONS = ("dependency_down", "apply_failed", "tombstone_failed")
# What was wrong with a dead-lettered record (dead_letters_total's `kind`; the header dead_letter_reason says more):
# not an event at all (empty, not JSON, a field missing or invalid, a type no contract knows), an event on the wrong
# topic or under the wrong event_type header, a platform record or tombstone keyed otherwise than its contract says,
# or an event its handler kept failing on.
DEAD_LETTER_KINDS = ("not_an_event", "misrouted", "miskeyed", "handler_failed")
# Records a consumer passes over without applying (consumer_records_skipped_total's `why`): one its inbox has seen
# (a redelivery, or a producer reusing an event id), or another group's event on a topic it reads.
SKIP_REASONS = ("duplicate", "not_handled")


class Metrics:
    def __init__(self, service: str, groups: Iterable[str] = ()) -> None:
        self.registry = CollectorRegistry()
        # By method too: a route's GET and POST are different operations (an access history and a new invite).
        self.http_requests = Counter(
            "http_requests_total",
            "HTTP requests by method, route and status",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.http_latency = Histogram(
            "http_request_seconds",
            "HTTP request latency by method and route",
            ["method", "route"],
            registry=self.registry,
        )
        self.events_consumed = Counter(
            "events_consumed_total",
            "Events applied by consumer group and type",
            ["group", "event_type"],
            registry=self.registry,
        )
        self.dead_letters = Counter(
            "dead_letters_total",
            "Messages sent to the dead-letter topic, by group and what was wrong with them",
            ["group", "kind"],
            registry=self.registry,
        )
        self.records_skipped = Counter(
            "consumer_records_skipped_total",
            "Records a consumer passed over without applying them, by group and why",
            ["group", "why"],
            registry=self.registry,
        )
        # At 0 from the start: `increase()` needs a sample before the first dead letter, or it never sees it.
        groups = list(groups)
        _at_zero(self.dead_letters, groups, DEAD_LETTER_KINDS)
        _at_zero(self.records_skipped, groups, SKIP_REASONS)
        # Each wait before a consumer tries a batch (or a tombstone) again, by why. An error of the database being
        # away, refusing (a permission, a column missing: a schema behind the code) or timing out is retried
        # without end, so that nothing is lost: a group stuck on one owns its partitions and dead-letters nothing
        # (and its pods stay ready unless the database is away), and shows only here.
        self.consumer_retries = Counter(
            "consumer_retries_total",
            "Retries of a batch or tombstone a consumer could not apply, by group and why",
            ["group", "reason"],
            registry=self.registry,
        )
        _at_zero(self.consumer_retries, groups, RETRY_REASONS)
        # Read at each scrape: a consumer the broker refuses (a session timeout below the broker's minimum, an ACL)
        # never joins its group and owns nothing, while the pod stays ready and its HTTP API serves.
        self.partitions_assigned = Gauge(
            "kafka_partitions_assigned",
            "Partitions this pod's consumer of the group owns now (0: consuming nothing)",
            ["group"],
            registry=self.registry,
        )
        self.outbox_published = Counter(
            "outbox_published_total", "Events published from the outbox", registry=self.registry
        )
        self.outbox_pending = Gauge(
            "outbox_pending", "Events waiting in the outbox (outbox lag)", registry=self.registry
        )
        # Set once at start, from the files the process loaded then and keeps using (services/runtime/certificates.py).
        self.certificate_expiry = Gauge(
            "tls_certificate_expiry_timestamp_seconds",
            "When a certificate this process loaded at start (Kafka, PostgreSQL) expires, Unix time",
            ["file"],
            registry=self.registry,
        )
        self.service_info = Gauge(
            "service_info", "Always 1; labels name the service", ["service"], registry=self.registry
        )
        self.service_info.labels(service).set(1)


def _at_zero(counter: Counter, groups: Iterable[str], values: Iterable[str]) -> None:
    """Every (group, value) series exported from the start, at 0."""
    for group in groups:
        for value in values:
            counter.labels(group, value)
