"""The notifier's own Prometheus series, registered in the runtime's registry next to the shared ones."""

from __future__ import annotations

import weakref

from prometheus_client import CollectorRegistry, Counter, Histogram


class NotifierMetrics:
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


_METRICS: weakref.WeakKeyDictionary[CollectorRegistry, NotifierMetrics] = weakref.WeakKeyDictionary()


def metrics_for(registry: CollectorRegistry) -> NotifierMetrics:
    """One set per registry: a runtime started twice must not register the same names twice."""
    if registry not in _METRICS:
        _METRICS[registry] = NotifierMetrics(registry)
    return _METRICS[registry]
