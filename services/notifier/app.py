"""Composition root of the notifier service: the only place that names its concrete parts."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI

from services.notifier import retention, subscribers
from services.notifier.mailer import Mailer
from services.notifier.messages import Renderer
from services.notifier.metrics import metrics_for
from services.notifier.sender import Sender
from services.notifier.settings import NotifierSettings
from services.runtime.migrations import MigrationPlan
from services.runtime.service import ServiceRuntime, ServiceSpec

MIGRATIONS = MigrationPlan(schema="notifier", directory=Path(__file__).parent / "migrations")


def build_spec(settings: NotifierSettings) -> ServiceSpec:
    mailer = Mailer(settings)
    sender = Sender(settings, mailer, Renderer(settings.smtp_from))

    async def smtp_ready(_: ServiceRuntime) -> bool:
        return await mailer.reachable()

    return ServiceSpec(
        name="notifier",
        title="CollabKare notifier API",
        description="Turns connection and invite events into emails and reports each delivery outcome.",
        migrations=MIGRATIONS,
        subscriptions=subscribers.routes(settings),
        background_jobs=(sender.run, retention.purge_decided_deliveries),
        readiness={"smtp": smtp_ready},
        jobs_stop_seconds=45.0,  # the sender ends what is on the wire, records it, lets go of its slot: 42 s at most
    )


def build_runtime(settings: NotifierSettings) -> ServiceRuntime:
    runtime = ServiceRuntime(build_spec(settings), settings)
    # Registered now, not when the sender first runs: /metrics shows the email series (at 0) from the start.
    metrics_for(runtime.metrics.registry)
    return runtime


def create_app(settings: NotifierSettings) -> FastAPI:
    return build_runtime(settings).http_app()
