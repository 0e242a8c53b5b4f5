"""The staff console's server: settings from the environment, /config.json, the static page, its headers."""

from __future__ import annotations

import httpx
import pytest

from collabkare.console.app import ConsoleConfig, ConsoleConfigError, create_app

ENV = {"CONNECTIONS_URL": "http://127.0.0.1:8001/", "INVITATIONS_URL": "http://127.0.0.1:8002"}


def _client(env: dict[str, str]) -> httpx.AsyncClient:
    app = create_app(ConsoleConfig.from_env(env))
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1:8000")


def test_config_names_a_missing_or_malformed_url() -> None:
    with pytest.raises(ConsoleConfigError, match="INVITATIONS_URL"):
        ConsoleConfig.from_env({"CONNECTIONS_URL": "http://127.0.0.1:8001"})
    with pytest.raises(ConsoleConfigError, match="CONNECTIONS_URL='ftp://x'"):
        ConsoleConfig.from_env({**ENV, "CONNECTIONS_URL": "ftp://x"})


async def test_config_json_gives_the_apis_and_the_dev_token_only_when_set() -> None:
    async with _client(ENV) as client:
        body = (await client.get("/config.json")).json()
    assert body == {
        "connections_url": "http://127.0.0.1:8001",
        "invitations_url": "http://127.0.0.1:8002",
        "staff_token": None,
    }
    async with _client({**ENV, "CONSOLE_STAFF_TOKEN": "a.b.c"}) as client:
        response = await client.get("/config.json")
    assert response.json()["staff_token"] == "a.b.c"
    assert response.headers["cache-control"] == "no-store"


async def test_the_page_is_served_with_a_policy_that_allows_only_the_two_apis() -> None:
    async with _client(ENV) as client:
        page = await client.get("/")
        script = await client.get("/js/main.js")
        missing = await client.get("/nothing-here.js")
    assert page.status_code == 200 and "<title>CollabKare staff console</title>" in page.text
    policy = page.headers["content-security-policy"]
    assert "connect-src 'self' http://127.0.0.1:8001 http://127.0.0.1:8002;" in policy
    assert "frame-ancestors 'none'" in policy
    assert page.headers["x-content-type-options"] == "nosniff"
    assert script.headers["content-type"].startswith("text/javascript")
    assert missing.status_code == 404


async def test_another_host_name_is_refused() -> None:
    """DNS rebinding: a page served as evil.example, then resolved to 127.0.0.1, must not read the dev token."""
    async with _client({**ENV, "CONSOLE_STAFF_TOKEN": "a.b.c"}) as client:
        assert (await client.get("/config.json", headers={"Host": "evil.example:8000"})).status_code == 400
        assert (await client.get("/config.json", headers={"Host": "localhost:8000"})).status_code == 200
    async with _client({**ENV, "CONSOLE_HOSTS": "console.internal"}) as client:
        assert (await client.get("/healthz", headers={"Host": "console.internal"})).status_code == 200
        assert (await client.get("/healthz")).status_code == 200, "the loopback names stay (the stack checks them)"
        assert (await client.get("/healthz", headers={"Host": "evil.example"})).status_code == 400
