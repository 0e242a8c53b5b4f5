"""The staff console in Debian's Chromium against the real local stack: the help articles' pages, end to end."""

from __future__ import annotations

import re
import uuid
from typing import Any

import httpx
import pytest

from tests.browser.support import ConsoleStack, screenshot

sync_api = pytest.importorskip("playwright.sync_api", reason="BROWSER TESTS SKIPPED: playwright is not installed")
expect = sync_api.expect

pytestmark = pytest.mark.timeout(300)  # the first test also starts the stack
RESULTS_TIMEOUT_MS = 90_000

ROSTER = """\
# Spring outreach: comment lines and blank lines are ignored
ana@example.com, Welcome to Riverside, Ana, and see you on Monday
bruno@example.com

not-an-email
ANA@example.com
gina@example.com
hank@example.com, Please join, we miss you
"""


def test_invite_patients_preview_send_results_and_copy_the_missing(page: Any, console_stack: ConsoleStack) -> None:
    page.get_by_role("link", name="Invite Patients").click()
    expect(page.get_by_role("heading", level=1, name="Invite Patients")).to_be_focused()

    page.get_by_label("Patient roster").fill(ROSTER)
    page.get_by_label("Default note").fill("Your care team at Riverside invites you to connect.")
    expect(page.locator("#ready-counter")).to_have_text("4 patients ready")
    problems = page.locator("#preview-problems li")
    expect(problems).to_have_count(2)
    expect(problems.nth(0)).to_contain_text("Line 5 not-an-email: invalid")
    expect(problems.nth(1)).to_contain_text("Line 6 ANA@example.com: duplicate (duplicate of line 2")
    screenshot(page, "invite-patients-preview")

    page.get_by_role("button", name="Send invites").click()
    expect(page.locator("#results-progress")).to_have_text(re.compile(r"^Done: all 6 rows"), timeout=RESULTS_TIMEOUT_MS)
    counts = {
        outcome: page.locator(f"#results-counts [data-outcome={outcome}] dd").inner_text()
        for outcome in ("sent", "not_on_platform", "invalid", "duplicate")
    }
    assert counts == {"sent": "2", "not_on_platform": "2", "invalid": "1", "duplicate": "1"}
    expect(page.locator("#results-counts > div")).to_have_count(4)
    rows = page.locator("#result-rows tbody tr")
    expect(rows).to_have_count(6)
    outcomes = {row.get_attribute("data-line"): row.get_attribute("data-outcome") for row in rows.all()}
    assert outcomes == {
        "2": "sent",
        "3": "sent",
        "5": "invalid",
        "6": "duplicate",
        "7": "not_on_platform",
        "8": "not_on_platform",
    }
    expect(rows.nth(0)).to_contain_text("Welcome to Riverside, Ana, and see you on Monday")
    statuses = [row.locator("[data-invite-status]").get_attribute("data-invite-status") for row in rows.all()]
    assert statuses == ["pending", "pending", "", "", "pending", "pending"], "what became of each row's invite"
    expect(page.get_by_role("status")).to_contain_text("All rows have an outcome: 2 sent, 2 not on CollabKare yet")
    # A second click sends nothing twice: the same roster and note find the batch already sent (it made a second
    # batch in which every patient was "already invited", and the first one's results were gone).
    page.get_by_role("button", name="Send invites").click()
    expect(page.get_by_role("status")).to_contain_text("This roster and note were already sent")
    expect(page.locator("#results-progress")).to_have_text(re.compile(r"^Done: all 6 rows"), timeout=RESULTS_TIMEOUT_MS)
    expect(page.locator("#results-counts [data-outcome=sent] dd")).to_have_text("2")

    page.get_by_role("button", name="Copy not-on-CollabKare list").click()
    expect(page.get_by_role("status")).to_contain_text("Copied 2 emails to the clipboard")
    assert page.evaluate("navigator.clipboard.readText()") == "gina@example.com\nhank@example.com\n"
    screenshot(page, "invite-patients-results")


def test_patient_connections_approve_and_reject(page: Any, console_stack: ConsoleStack) -> None:
    erin = console_stack.ask_to_connect("erin@example.com", "I am a patient of Dr. Lee")
    frank = console_stack.ask_to_connect("frank@example.com", "Please link my record")
    page.get_by_role("link", name="Patient Connections").click()
    page.get_by_role("button", name="Refresh").click()
    expect(page.get_by_role("status")).to_have_text("2 pending requests.")
    requests = page.locator("#requests tbody tr")
    expect(requests).to_have_count(2)
    screenshot(page, "patient-connections-pending")

    # Approve with the keyboard: the button's name says whom it approves.
    page.get_by_role("button", name="Approve erin@example.com").focus()
    page.keyboard.press("Enter")
    expect(page.get_by_role("status")).to_contain_text("Approved erin@example.com")
    expect(requests).to_have_count(1)
    expect(page.get_by_role("button", name="Approve frank@example.com")).to_be_focused()

    page.get_by_role("button", name="Reject frank@example.com").click()
    reason = page.get_by_label("Reason (optional)")
    expect(reason).to_be_focused()
    reason.fill("We are not taking new patients this season.")
    screenshot(page, "patient-connections-confirm-reject")
    page.get_by_role("button", name="Confirm Reject").click()
    expect(page.get_by_role("status")).to_contain_text("Rejected frank@example.com's request with your reason")
    expect(page.get_by_text("No pending requests.")).to_be_visible()
    screenshot(page, "patient-connections-decided")

    decided = {
        item["id"]: item
        for status in ("approved", "rejected")
        for item in console_stack.staff("connections", "GET", "/connection-requests", params={"status": status})[
            "items"
        ]
    }
    assert decided[erin["id"]]["status"] == "approved"
    assert decided[frank["id"]]["status"] == "rejected"
    assert decided[frank["id"]]["reason"] == "We are not taking new patients this season."

    # Another staff member rejected it meanwhile: the 409 says so, and the request leaves the list (its buttons stayed).
    bruno = console_stack.ask_to_connect("bruno@example.com", "Hello")
    page.get_by_role("button", name="Refresh").click()
    expect(requests).to_have_count(1)
    console_stack.staff("connections", "POST", f"/connection-requests/{bruno['id']}/reject", json={})
    page.get_by_role("button", name="Approve bruno@example.com").click()
    expect(page.locator("#requests-error")).to_contain_text("already rejected")
    expect(page.get_by_text("No pending requests.")).to_be_visible()


def test_access_history_invite_revoke_and_resend(page: Any, console_stack: ConsoleStack) -> None:
    page.get_by_role("link", name="Patient access history").click()
    page.get_by_label("Patient email").fill("ivy@example.com")
    page.get_by_label("Patient email").press("Enter")
    expect(page.get_by_text("No invites for this patient yet.")).to_be_visible()

    page.get_by_text("Enable Patient Access (send an invite)").click()
    page.get_by_role("button", name="Send invite").click()
    error = page.locator("#invite-one-error")
    expect(error).to_contain_text("Missing: SSN, or date of birth and phone.")  # the form's words, not the API's
    expect(error).to_contain_text("SSN: required unless date of birth and phone are given")

    page.get_by_label("Date of birth").fill("1984-03-02")
    page.get_by_label("Phone").fill("+1 555 010 7788")
    page.get_by_role("button", name="Send invite").click()
    invites = page.locator("#history tbody tr")
    expect(invites).to_have_count(1)
    expect(invites.nth(0)).to_have_attribute("data-status", "pending")
    expect(invites.nth(0)).to_contain_text("Sent by demo-manager")

    invites.nth(0).get_by_role("button", name=re.compile("^Revoke")).click()
    expect(invites.nth(0)).to_have_attribute("data-status", "revoked")
    expect(invites.nth(0)).to_contain_text("Revoked by demo-manager")

    invites.nth(0).get_by_role("button", name=re.compile("^Resend")).click()
    expect(invites).to_have_count(2)
    expect(invites.nth(0)).to_have_attribute("data-status", "pending")
    expect(invites.nth(1)).to_have_attribute("data-status", "revoked")
    expect(invites.nth(1)).to_contain_text("Resent by demo-manager")
    # The delivery outcome fills in by itself: the new invite's email went out.
    expect(invites.nth(0).locator("td").nth(2)).to_have_text("Sent", timeout=RESULTS_TIMEOUT_MS)
    screenshot(page, "patient-access-history")
    # A refusal leaves no earlier success in the status line to contradict the red box.
    expect(page.get_by_role("status")).not_to_have_text("")
    page.get_by_role("button", name="Send invite", exact=True).click()
    expect(page.locator("#invite-one-error")).to_be_visible()
    expect(page.get_by_role("status")).to_have_text("")

    # Revoked, then invited anew from the form: the revoked invite offers no Resend, which would only be refused.
    invites.nth(0).get_by_role("button", name=re.compile("^Revoke")).click()
    expect(invites.nth(0)).to_have_attribute("data-status", "revoked")
    # The refusal before it goes with it (a probe saw "Missing: SSN…" stay beside "Revoked the invite…").
    expect(page.locator("#invite-one-error")).to_be_hidden()
    expect(invites.nth(0).get_by_role("button", name=re.compile("^Resend"))).to_have_count(1)
    page.get_by_label("Date of birth").fill("1984-03-02")
    page.get_by_label("Phone").fill("+1 555 010 7788")
    page.get_by_role("button", name="Send invite", exact=True).click()
    expect(page.get_by_role("status")).to_contain_text("Invite sent to ivy@example.com; it is valid until")
    expect(invites).to_have_count(3)
    expect(invites.nth(0)).to_have_attribute("data-status", "pending")
    expect(invites.nth(1)).to_have_attribute("data-status", "revoked")
    for revoked in (invites.nth(1), invites.nth(2)):
        expect(revoked.get_by_role("button", name=re.compile("^Resend"))).to_have_count(0)
    expect(invites.nth(0).get_by_role("button", name=re.compile("^Resend"))).to_have_count(1)  # the pending one may

    # A lookup that fails takes the earlier patient off the screen: Enable Patient Access then invited ivy again,
    # though the box said "ivy@example".
    page.get_by_label("Patient email").fill("ivy@example")
    page.get_by_label("Patient email").press("Enter")
    expect(page.locator("#history-error")).to_contain_text("not an email address")
    expect(page.locator("#history-result")).to_be_hidden()


def test_a_pasted_token_is_used_and_errors_read_in_words(page: Any, console_stack: ConsoleStack) -> None:
    page.get_by_role("link", name="Staff token").click()
    forged = console_stack.staff_token().rsplit(".", 1)[0] + ".c2lnbmVkLWJ5LW5vYm9keQ"
    page.get_by_label("Paste a staff token").fill(forged)
    page.get_by_role("button", name="Use this token").click()
    alert = page.get_by_role("alert")
    expect(alert).to_contain_text("The token is not valid")
    expect(alert).to_contain_text("Paste a fresh staff token")
    expect(alert.locator("p, li")).to_have_count(1)  # the detail, and no field errors for a token
    screenshot(page, "error-in-words")

    page.get_by_role("link", name="Staff token").click()
    page.get_by_label("Paste a staff token").fill(console_stack.staff_token("front_desk", "front-desk-1"))
    page.get_by_role("button", name="Use this token").click()
    expect(page.locator("#who")).to_contain_text("front-desk-1 · front_desk")
    expect(page.get_by_role("heading", level=1, name="Pending Patient Connections")).to_be_focused()
    expect(page.locator("#requests-error")).to_be_hidden()
    page.get_by_role("link", name="Staff token").click()
    expect(page.locator("#token-details")).to_contain_text("pasted in this tab")
    screenshot(page, "staff-token")

    page.get_by_role("link", name="Staff token").click()
    page.get_by_role("button", name="Use the development token").click()
    expect(page.locator("#who")).to_contain_text("demo-manager · practice_manager")


def test_another_staff_token_previews_the_roster_again_for_its_own_practice(
    page: Any, console_stack: ConsoleStack
) -> None:
    """The preview stayed the earlier practice's: its patients' verdicts and invite dates, shown to whoever held the
    tab with another practice's token, and a counter the send then contradicted."""
    dora = f"dora-{uuid.uuid4().hex[:8]}@example.com"
    console_stack.staff("invitations", "POST", "/invites", json={"email": dora, "ssn": "123-45-6789"})
    page.get_by_role("link", name="Invite Patients").click()
    page.get_by_label("Patient roster").fill(dora)
    expect(page.locator("#ready-count")).to_have_text("0")
    expect(page.locator("#preview-problems")).to_contain_text(dora)

    page.get_by_role("link", name="Staff token").click()
    other = console_stack.staff_token("front_desk", "front-desk-2", practice_id=uuid.uuid4())
    page.get_by_label("Paste a staff token").fill(other)
    page.get_by_role("button", name="Use this token").click()
    page.get_by_role("link", name="Invite Patients").click()
    expect(page.locator("#ready-count")).to_have_text("1")  # nobody invited her at that practice
    expect(page.locator("#preview-problems")).to_be_hidden()


def test_only_the_console_origin_may_call_the_apis(console_stack: ConsoleStack) -> None:
    config = httpx.get(f"{console_stack.url}/config.json", timeout=10)
    assert config.json()["invitations_url"] == console_stack.stack.urls["invitations"]
    assert console_stack.stack.urls["invitations"] in config.headers["content-security-policy"]
    preflight = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization"}
    for service in ("connections", "invitations"):
        url = f"{console_stack.stack.urls[service]}/healthz"
        allowed = httpx.options(url, headers={"Origin": console_stack.url, **preflight}, timeout=10)
        assert allowed.headers.get("access-control-allow-origin") == console_stack.url
        typed = console_stack.url.replace("127.0.0.1", "localhost")  # the same page, opened as localhost
        also = httpx.options(url, headers={"Origin": typed, **preflight}, timeout=10)
        assert also.headers.get("access-control-allow-origin") == typed
        refused = httpx.options(url, headers={"Origin": "http://127.0.0.1:1", **preflight}, timeout=10)
        assert "access-control-allow-origin" not in refused.headers
        # The console (any browser client) may read what the API documents: a batch's Location, a replayed
        # submit's Idempotent-Replayed, a 503's Retry-After; only X-Correlation-ID was readable.
        answer = httpx.get(url, headers={"Origin": console_stack.url}, timeout=10)
        exposed = {name.strip().lower() for name in answer.headers["access-control-expose-headers"].split(",")}
        assert exposed == {"x-correlation-id", "location", "idempotent-replayed", "retry-after"}
