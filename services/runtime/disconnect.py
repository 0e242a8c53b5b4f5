"""Work a client no longer waits for: stopped when its connection closes, instead of finished for nobody."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine
from typing import Any, TypeVar

from fastapi import Request

T = TypeVar("T")
# What access logs and metrics show for it (nginx's convention): not a server error, and nobody reads the answer.
CLIENT_CLOSED_REQUEST = 499


class ClientGone(Exception):
    """The client closed the connection before the answer was ready; the work was cancelled."""


async def unless_client_leaves(request: Request, work: Coroutine[Any, Any, T]) -> T:
    """`work`'s result, or ClientGone once the client has disconnected (the work is then cancelled).

    Only for work that changes nothing (a preview): cancelled half-way it leaves nothing behind. Call it after the
    body has been read: from then on the server's next message for this request is its disconnect."""
    working = asyncio.ensure_future(work)
    gone = asyncio.ensure_future(_disconnect(request))
    try:
        await asyncio.wait({working, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
        working.cancel()  # nothing, if it has finished
    if working.done():
        return working.result()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await working  # its cancellation ends here, not behind our back
    raise ClientGone


async def _disconnect(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass
