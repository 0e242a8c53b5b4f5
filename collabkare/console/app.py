"""The console's web server: the static page, /config.json (where the APIs are; the dev token) and /healthz."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

STATIC_DIR = Path(__file__).resolve().parent / "static"


LOOPBACK_NAMES = ("127.0.0.1", "localhost")


def host_names(env: Mapping[str, str]) -> tuple[str, ...]:
    """The names the console answers to: the loopback names, and those CONSOLE_HOSTS adds (comma-separated).

    More names, never fewer: the local stack's own health check uses 127.0.0.1."""
    added = (name.strip() for name in env.get("CONSOLE_HOSTS", "").split(","))
    return tuple(dict.fromkeys([*LOOPBACK_NAMES, *(name for name in added if name)]))


class ConsoleConfigError(ValueError):
    """A missing or malformed setting, named in one line."""


@dataclass(frozen=True)
class ConsoleConfig:
    connections_url: str
    invitations_url: str
    # Development only: a staff token minted by the local stack, so the page works without pasting one.
    staff_token: str | None = None
    # The names this server answers to: any other Host is refused, so a page on a rebound DNS name cannot read
    # /config.json (and its token) from a browser on this machine.
    hosts: tuple[str, ...] = LOOPBACK_NAMES

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> ConsoleConfig:
        urls = {}
        for name in ("CONNECTIONS_URL", "INVITATIONS_URL"):
            value = env.get(name, "").rstrip("/")
            if not value.startswith(("http://", "https://")):
                raise ConsoleConfigError(f"{name}={value!r}: expected the service's http(s) base URL")
            urls[name] = value
        token = env.get("CONSOLE_STAFF_TOKEN") or None
        return cls(urls["CONNECTIONS_URL"], urls["INVITATIONS_URL"], token, host_names(env))

    def security_headers(self) -> dict[str, str]:
        # The page may only talk to itself and the two APIs; no inline script, no framing.
        policy = (
            "default-src 'self'; "
            f"connect-src 'self' {self.connections_url} {self.invitations_url}; "
            "img-src 'self' data:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'none'"
        )
        return {
            "Content-Security-Policy": policy,
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer",
        }


class _HeadersMiddleware:
    """Adds fixed headers to every HTTP response."""

    def __init__(self, app: ASGIApp, headers: Mapping[str, str]) -> None:
        self.app = app
        self.raw = [(key.lower().encode(), value.encode()) for key, value in headers.items()]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *self.raw]
            await send(message)

        await self.app(scope, receive, send_with_headers)


def create_app(config: ConsoleConfig) -> Starlette:
    async def config_json(request: Request) -> JSONResponse:
        body = {
            "connections_url": config.connections_url,
            "invitations_url": config.invitations_url,
            "staff_token": config.staff_token,
        }
        return JSONResponse(body, headers={"Cache-Control": "no-store"})

    async def healthz(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    routes = [
        Route("/config.json", config_json),
        Route("/healthz", healthz),
        Mount("/", StaticFiles(directory=STATIC_DIR, html=True)),
    ]
    middleware = [
        Middleware(TrustedHostMiddleware, allowed_hosts=list(config.hosts)),
        Middleware(_HeadersMiddleware, headers=config.security_headers()),
    ]
    return Starlette(routes=routes, middleware=middleware)
