"""The expiry sweeper: a background job that expires pending invites past their time and announces it."""

from __future__ import annotations

import asyncio
import random

from services.invitations import handlers
from services.invitations.settings import InvitationsSettings
from services.runtime.database import TRANSIENT_ERRORS
from services.runtime.logging import get_logger
from services.runtime.service import ServiceRuntime

log = get_logger(__name__)


async def sweep_expired_invites(runtime: ServiceRuntime) -> None:
    """Runs until cancelled; a failed sweep is logged and retried at the next tick, never fatal."""
    settings = runtime.settings
    assert isinstance(settings, InvitationsSettings)
    while True:
        if runtime.pool is not None:
            try:
                await handlers.expire_due(runtime.pool)
            except TRANSIENT_ERRORS as error:
                log.warning("invite.expiry_sweep_failed", error=repr(error)[:300], transient=True)
            except Exception as error:
                log.error("invite.expiry_sweep_failed", error=repr(error)[:300], transient=False)
        # Jitter keeps several instances from sweeping in lockstep (SKIP LOCKED makes it safe either way).
        await asyncio.sleep(settings.expiry_sweep_seconds * random.uniform(0.9, 1.1))
