"""Runs a service's HTTP app (and with it its consumers and relay) under uvicorn until SIGTERM/SIGINT."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import uvicorn
from fastapi import FastAPI

from services.runtime.logging import configure_logging
from services.runtime.settings import RuntimeSettings, load_settings

S = TypeVar("S", bound=RuntimeSettings)


def serve(create_app: Callable[[S], FastAPI], settings_class: type[S]) -> None:
    settings = load_settings(settings_class)
    configure_logging(settings.service_name, settings.log_level)
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=20,
        # Longer than the idle timeout of the proxies in front (60 s for most load balancers): a server
        # closing an idle connection first races the proxy's next request on it (a dropped POST, a 502).
        timeout_keep_alive=75,
    )
