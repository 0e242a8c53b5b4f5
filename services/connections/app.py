"""Composition root of the connections service: the only place that names its concrete parts."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI

from services.connections import api, subscribers
from services.connections.settings import ConnectionsSettings
from services.runtime.migrations import MigrationPlan
from services.runtime.service import ServiceRuntime, ServiceSpec

MIGRATIONS = MigrationPlan(schema="connections", directory=Path(__file__).parent / "migrations")


def build_spec(settings: ConnectionsSettings) -> ServiceSpec:
    return ServiceSpec(
        name="connections",
        title="CollabKare connections API",
        description="Patients ask to connect to a practice; staff approve or reject; connections and their audit.",
        migrations=MIGRATIONS,
        routers=[api.router],
        subscriptions=subscribers.ROUTES,
    )


def build_runtime(settings: ConnectionsSettings) -> ServiceRuntime:
    return ServiceRuntime(build_spec(settings), settings)


def create_app(settings: ConnectionsSettings) -> FastAPI:
    return build_runtime(settings).http_app()
