"""The notifier's own Prometheus series, registered in the runtime's registry next to the shared ones."""

from __future__ import annotations

import weakref
from typing import get_args

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from services.notifier.domain import Kind, Outcome

# Why deliveries were claimed again (emails_reclaimed_total's `reason`): taken back by the restart of a killed run in
# its slot, or their lease expired (a run without a slot, or one frozen past it).
RECLAIM_REASONS = ("earlier_run", "lease_expired")


class NotifierMetrics:
    """emails_total{kind,outcome}, email_retries_total{kind}, emails_reclaimed_total{reason}, email_send_seconds,
    email_backlog."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.emails = Counter(
            "emails_total", "Deliveries by kind and final outcome", ["kind", "outcome"], registry=registry
        )
        self.retries = Counter("email_retries_total", "SMTP attempts to be tried again", ["kind"], registry=registry)
        self.send_seconds = Histogram(
            "email_send_seconds",
            "One SMTP transaction, MAIL FROM to the reply after DATA",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
            registry=registry,
        )
        self.backlog = Gauge(
            "email_backlog",
            "Deliveries not yet final (pending or being sent) across every notifier process, counted every 5 s",
            registry=registry,
        )
        # Deliveries claimed by a run that ended without recording them (killed, out of memory, frozen past its
        # lease) and queued again: each may have reached the relay already, so may reach the patient twice.
        self.reclaimed = Counter(
            "emails_reclaimed_total",
            "Deliveries queued again after the run that claimed them ended or froze without recording them",
            ["reason"],
            registry=registry,
        )
        for reason in RECLAIM_REASONS:
            self.reclaimed.labels(reason)
        # labels() takes a lock and builds a key on every call; a handful of children serve every email.
        self._emails: dict[tuple[str, str], Counter] = {}
        self._retries: dict[str, Counter] = {}
        # Every series at 0 from the start: `increase()` and the error share need a sample before the first
        # email of a kind and outcome, or that first one (a pod's first error) never shows.
        for kind in get_args(Kind):
            self._retries[kind] = self.retries.labels(kind)
            for outcome in get_args(Outcome):
                self._emails[kind, outcome] = self.emails.labels(kind, outcome)

    def email(self, kind: str, outcome: str) -> None:
        child = self._emails.get((kind, outcome))
        if child is None:
            child = self._emails[kind, outcome] = self.emails.labels(kind, outcome)
        child.inc()

    def retry(self, kind: str) -> None:
        child = self._retries.get(kind)
        if child is None:
            child = self._retries[kind] = self.retries.labels(kind)
        child.inc()


_METRICS: weakref.WeakKeyDictionary[CollectorRegistry, NotifierMetrics] = weakref.WeakKeyDictionary()


def metrics_for(registry: CollectorRegistry) -> NotifierMetrics:
    """One set per registry: a runtime started twice must not register the same names twice."""
    if registry not in _METRICS:
        _METRICS[registry] = NotifierMetrics(registry)
    return _METRICS[registry]
