"""The staff console's browser tests: the real local stack with its console, driven by Debian's Chromium."""

from __future__ import annotations

import asyncio
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from collabkare.seeding import patient_registered, publish
from collabkare.services import SERVICES
from collabkare.stack.local import DEMO_PRACTICE_ID, local_stack, seed_demo_practice
from collabkare.stack.ports import free_port
from tests.browser.support import ARTIFACTS, CHROMIUM, CHROMIUM_ARGS, REGISTERED, ROOT, ConsoleStack


@pytest.fixture(scope="package")
def chromium() -> Path:
    """Debian's Chromium, or a skip that says why (make test installs it: tests/browser/install-chromium.sh)."""
    if not CHROMIUM.exists():
        pytest.skip(
            f"BROWSER TESTS SKIPPED: no Chromium at {CHROMIUM}. `make test` installs Debian's package as root "
            "(tests/browser/install-chromium.sh); elsewhere run `apt-get install chromium` or set CHROMIUM"
        )
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError as error:
        pytest.skip(f"BROWSER TESTS SKIPPED: the playwright package is not installed ({error}): run `make install`")
    return CHROMIUM


@pytest.fixture(scope="package")
def console_stack(chromium: Path) -> Iterator[ConsoleStack]:
    env = {
        "COLLABKARE_STACK_DIR": str(ROOT / "var" / f"browser-{uuid.uuid4().hex[:8]}"),
        **{service.port_variable: str(free_port()) for service in SERVICES},
    }
    with pytest.MonkeyPatch.context() as patch:
        for key, value in env.items():
            patch.setenv(key, value)
        with local_stack(console_port=free_port()) as stack:
            assert stack.console_url is not None
            seed_demo_practice(stack)
            events = [patient_registered(email) for email in REGISTERED]
            asyncio.run(publish(stack.infra.kafka_bootstrap, stack.topic_prefix, list(events)))
            asyncio.run(_wait_for_directory(stack.service_env["notifier"]["DATABASE_URL"], timeout=60))
            patients = {event.payload.email: event.payload.patient_id for event in events}
            yield ConsoleStack(stack, stack.console_url, patients)


async def _wait_for_directory(notifier_database_url: str, timeout: float) -> None:
    """Until the notifier knows the practice and every registered patient (else their invites are not sent)."""
    deadline = time.monotonic() + timeout
    connection = await asyncpg.connect(notifier_database_url)
    try:
        while True:
            patients = await connection.fetchval(
                "SELECT count(*) FROM notifier.patients WHERE email = ANY($1::text[])", REGISTERED
            )
            practices = await connection.fetchval(
                "SELECT count(*) FROM notifier.practices WHERE practice_id = $1", DEMO_PRACTICE_ID
            )
            if patients == len(REGISTERED) and practices == 1:
                return
            assert time.monotonic() < deadline, f"the notifier knows {patients} of {len(REGISTERED)} patients"
            await asyncio.sleep(0.2)
    finally:
        await connection.close()


@pytest.fixture(scope="package")
def browser_context(console_stack: ConsoleStack, chromium: Path) -> Iterator[Any]:
    from playwright.sync_api import expect, sync_playwright

    # expect() waits 5 s by default, not the page's default timeout: an API round trip through a loaded
    # machine's stack (a preview, an approve, a revoke) can take longer. Results waits keep their own timeout.
    expect.set_options(timeout=15_000)
    with tempfile.TemporaryDirectory(prefix="console-chromium-") as profile, sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            profile,
            executable_path=str(chromium),
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1280, "height": 900},
            locale="en-US",
            timezone_id="UTC",
        )
        context.grant_permissions(["clipboard-read", "clipboard-write"], origin=console_stack.url)
        try:
            yield context
        finally:
            context.close()


@pytest.fixture
def page(browser_context: Any, console_stack: ConsoleStack, request: pytest.FixtureRequest) -> Iterator[Any]:
    """A fresh tab on the console, its configuration loaded; a screenshot is kept when the test fails."""
    tab = browser_context.new_page()
    script_errors: list[str] = []
    tab.on("pageerror", lambda error: script_errors.append(str(error)))
    tab.set_default_timeout(15_000)
    tab.goto(console_stack.url + "/")
    tab.wait_for_selector("body[data-ready=true]")
    yield tab
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        tab.screenshot(path=str(ARTIFACTS / f"FAILED-{request.node.name}.png"), full_page=True)
    tab.close()
    assert script_errors == [], "uncaught errors in the console's JavaScript"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report
