"""The series the alerts in deploy/README.md read exist at 0 from the start: `increase()` sees the first event."""

from __future__ import annotations

import re
from typing import get_args

import httpx

from collabkare.docs import runtimes
from services.notifier.domain import Kind, Outcome
from services.notifier.metrics import RECLAIM_REASONS
from services.runtime.metrics import DEAD_LETTER_KINDS, RETRY_REASONS, SKIP_REASONS
from services.runtime.service import ServiceRuntime


async def _scrape(runtime: ServiceRuntime) -> str:
    """/metrics of a runtime that has not started: building one does no I/O, and neither does this."""
    transport = httpx.ASGITransport(app=runtime.http_app())
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        return (await http.get("/metrics")).text


def _value(text: str, series: str) -> float | None:
    match = re.search(rf"^{re.escape(series)} (\S+)$", text, re.MULTILINE)
    return None if match is None else float(match.group(1))


async def test_every_consumer_groups_dead_letters_and_retries_are_at_zero_before_the_first() -> None:
    for name, runtime in runtimes().items():
        groups = [subscription.group for subscription in runtime.spec.subscriptions]
        assert groups, f"{name} consumes nothing?"
        text = await _scrape(runtime)
        for group in groups:
            for kind in DEAD_LETTER_KINDS:
                assert _value(text, f'dead_letters_total{{group="{group}",kind="{kind}"}}') == 0.0, (name, kind)
            for why in SKIP_REASONS:
                skipped = f'consumer_records_skipped_total{{group="{group}",why="{why}"}}'
                assert _value(text, skipped) == 0.0, (name, group, why)
            for reason in RETRY_REASONS:
                retries = f'consumer_retries_total{{group="{group}",reason="{reason}"}}'
                assert _value(text, retries) == 0.0, (name, group, reason)


async def test_every_email_kind_and_outcome_is_at_zero_before_the_first() -> None:
    text = await _scrape(runtimes()["notifier"])
    for kind in get_args(Kind):
        assert _value(text, f'email_retries_total{{kind="{kind}"}}') == 0.0, kind
        for outcome in get_args(Outcome):
            assert _value(text, f'emails_total{{kind="{kind}",outcome="{outcome}"}}') == 0.0, (kind, outcome)
    assert "error" in get_args(Outcome), "the error-share alert reads outcome=error"
    for reason in RECLAIM_REASONS:
        assert _value(text, f'emails_reclaimed_total{{reason="{reason}"}}') == 0.0, reason


async def test_every_roster_work_s_refusals_are_at_zero_before_the_first() -> None:
    text = await _scrape(runtimes()["invitations"])
    for work in ("preview", "submit", "resend"):
        assert _value(text, f'roster_admissions_refused_total{{work="{work}"}}') == 0.0, work
    assert _value(text, 'roster_lines_budget{lane="large"}') == 200_000.0
