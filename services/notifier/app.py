"""Composition root of the notifier service: the only place that names its concrete parts."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI

from services.notifier.settings import NotifierSettings
from services.runtime.migrations import MigrationPlan
from services.runtime.service import ServiceRuntime, ServiceSpec

MIGRATIONS = MigrationPlan(schema="notifier", directory=Path(__file__).parent / "migrations")


def build_spec(settings: NotifierSettings) -> ServiceSpec:
    return ServiceSpec(
        name="notifier",
        title="CollabKare notifier API",
        description="Turns connection and invite events into emails and reports each delivery outcome.",
        migrations=MIGRATIONS,
    )


def build_runtime(settings: NotifierSettings) -> ServiceRuntime:
    return ServiceRuntime(build_spec(settings), settings)


def create_app(settings: NotifierSettings) -> FastAPI:
    return build_runtime(settings).http_app()
