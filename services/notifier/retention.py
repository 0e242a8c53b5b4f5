"""The retention job: decided deliveries (a patient's address, the server's reply) and the addresses of deleted
patients forgotten once their time is up."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import asyncpg

from services.notifier import directory_repository, repository
from services.notifier.settings import NotifierSettings
from services.runtime.database import TRANSIENT_ERRORS
from services.runtime.logging import get_logger
from services.runtime.service import ServiceRuntime

log = get_logger(__name__)

PURGE_SECONDS = 3600.0


async def purge_decided_deliveries(runtime: ServiceRuntime) -> None:
    """Background job: hourly, delete deliveries decided, and deleted patients' addresses kept, more than
    DELIVERY_RETENTION_DAYS ago."""
    settings = runtime.settings
    assert isinstance(settings, NotifierSettings) and runtime.pool is not None, "started before the database pool"
    while True:
        horizon = datetime.now(UTC) - timedelta(days=settings.delivery_retention_days)
        try:
            purged = await repository.purge_decided(runtime.pool, horizon)
            departed = await directory_repository.purge_departed(runtime.pool, horizon)
        except (asyncpg.PostgresError, *TRANSIENT_ERRORS) as error:  # the database is away: next time
            log.warning("delivery.purge_failed", error=repr(error)[:300])
        else:
            if purged:
                log.info("delivery.purged", count=purged, decided_before=horizon.isoformat())
            if departed:
                log.info("directory.departed_purged", count=departed, deleted_before=horizon.isoformat())
        await asyncio.sleep(PURGE_SECONDS)
