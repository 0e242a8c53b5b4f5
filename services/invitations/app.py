"""Composition root of the invitations service: the only place that names its concrete parts."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI

from services.invitations import api, batch_api, subscribers, sweeper
from services.invitations.settings import InvitationsSettings
from services.runtime.logging import get_logger
from services.runtime.migrations import MigrationPlan
from services.runtime.service import ServiceRuntime, ServiceSpec

MIGRATIONS = MigrationPlan(schema="invitations", directory=Path(__file__).parent / "migrations")
log = get_logger(__name__)


def build_spec(settings: InvitationsSettings) -> ServiceSpec:
    return ServiceSpec(
        name="invitations",
        title="CollabKare invitations API",
        description="Roster preview and bulk invites with per-row outcomes, individual invites, expiry and acceptance.",
        migrations=MIGRATIONS,
        routers=[batch_api.router, api.router],
        subscriptions=subscribers.ROUTES,
        background_jobs=(sweeper.sweep_expired_invites,),
    )


def build_runtime(settings: InvitationsSettings) -> ServiceRuntime:
    return ServiceRuntime(build_spec(settings), settings)


def create_app(settings: InvitationsSettings) -> FastAPI:
    if settings.identity_key_is_derived:
        # Development only: the digests then depend on JWT_SECRET; production sets its own key.
        log.warning("settings.identity_key_derived", hint="set IDENTITY_HMAC_KEY (at least 32 bytes)")
    return build_runtime(settings).http_app()
