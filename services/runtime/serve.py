"""Runs a service's HTTP app (and with it its consumers and relay) under uvicorn until SIGTERM/SIGINT."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

import uvicorn
from fastapi import FastAPI
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.runtime.head_limit import BoundedHeadProtocol
from services.runtime.logging import configure_logging
from services.runtime.service import DependencyUnavailable
from services.runtime.settings import RuntimeSettings, load_settings

S = TypeVar("S", bound=RuntimeSettings)


class QuietStartFailure:
    """Starlette hands uvicorn the traceback of whatever failed start-up, and uvicorn logs it: kilobytes in one JSON
    field. A dependency that did not answer has been named in one line already (service.start_failed), so its
    failure reaches uvicorn without the traceback, which says nothing more; any other failure keeps it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return
        held: list[Message] = []

        async def hold_start_failure(message: Message) -> None:
            if message["type"] == "lifespan.startup.failed":
                held.append(message)  # sent once it is known what failed: Starlette raises it right after
            else:
                await send(message)

        failure: BaseException | None = None
        try:
            await self.app(scope, receive, hold_start_failure)
        except BaseException as error:
            failure = error
            raise
        finally:
            for message in held:
                await send({**message, "message": ""} if isinstance(failure, DependencyUnavailable) else message)


# A stopping server's requests get this long past the longest deadline to answer before uvicorn cancels them.
_DRAIN_MARGIN_SECONDS = 5.0


def drain_seconds(app: FastAPI, settings: RuntimeSettings) -> float:
    """How long a SIGTERM waits for the requests in flight: the longest a route may take to answer (its deadline,
    `answers_within`, or the service's), and a margin. With 20 s, a roster still being written at a rolling
    update (it may take 60 s) was cancelled, and its staff member got a bare 500."""
    declared = [getattr(getattr(route, "endpoint", None), "deadline_seconds", 0.0) for route in _routes(app.routes)]
    return max([settings.request_deadline_seconds, *declared]) + _DRAIN_MARGIN_SECONDS


def _routes(routes: Iterable[BaseRoute]) -> Iterator[BaseRoute]:
    for route in routes:
        router = getattr(route, "original_router", None)  # an included router (FastAPI includes them lazily)
        if router is not None:
            yield from _routes(router.routes)
        else:
            yield route


def serve(create_app: Callable[[S], FastAPI], settings_class: type[S]) -> None:
    settings = load_settings(settings_class)
    configure_logging(settings.service_name, settings.log_level)
    app = create_app(settings)
    uvicorn.run(
        QuietStartFailure(app),
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=math.ceil(drain_seconds(app, settings)),
        # Longer than the idle timeout of the proxies in front (60 s for most load balancers): a server
        # closing an idle connection first races the proxy's next request on it (a dropped POST, a 502).
        timeout_keep_alive=75,
        http=BoundedHeadProtocol,  # httptools with a bound on the request's head
    )
