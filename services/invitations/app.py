"""Composition root of the invitations service: the only place that names its concrete parts."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI

from services.invitations.settings import InvitationsSettings
from services.runtime.migrations import MigrationPlan
from services.runtime.service import ServiceRuntime, ServiceSpec

MIGRATIONS = MigrationPlan(schema="invitations", directory=Path(__file__).parent / "migrations")


def build_spec(settings: InvitationsSettings) -> ServiceSpec:
    return ServiceSpec(
        name="invitations",
        title="CollabKare invitations API",
        description="Roster preview and bulk invites with per-row outcomes, individual invites, expiry and acceptance.",
        migrations=MIGRATIONS,
    )


def build_runtime(settings: InvitationsSettings) -> ServiceRuntime:
    return ServiceRuntime(build_spec(settings), settings)


def create_app(settings: InvitationsSettings) -> FastAPI:
    return build_runtime(settings).http_app()
