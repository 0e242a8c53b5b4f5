"""Composition root of the invitations service: the only place that names its concrete parts."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI

from services.invitations import api, batch_api, subscribers, sweeper
from services.invitations.api_support import roster_admission
from services.invitations.settings import InvitationsSettings
from services.runtime.logging import get_logger
from services.runtime.migrations import MigrationPlan
from services.runtime.service import ServiceRuntime, ServiceSpec
from services.runtime.settings import is_loopback_url

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
    runtime = ServiceRuntime(build_spec(settings), settings)
    # Built now, not at the first roster: /metrics shows the budget (and no refusal yet) from the start.
    roster_admission(runtime)
    return runtime


def create_app(settings: InvitationsSettings) -> FastAPI:
    if settings.identity_key_is_derived:
        # Development only: the digests then depend on JWT_SECRET; production sets its own key.
        log.warning("settings.identity_key_derived", hint="set IDENTITY_HMAC_KEY (at least 32 bytes)")
    if "public_base_url" not in settings.model_fields_set:
        # Development's default: every invite email would carry a link that works only on this machine.
        log.warning("settings.public_base_url_default", url=settings.public_base_url, hint="set PUBLIC_BASE_URL")
    elif not settings.public_base_url.startswith("https://") and not is_loopback_url(settings.public_base_url):
        log.warning("settings.public_base_url_plain_http", hint="invite tokens would cross the network in clear")
    return build_runtime(settings).http_app()
