"""`make demo`: the help articles' scenario on the real stack, printed as it goes; exit 0 only if all is as expected."""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections import Counter
from email.message import EmailMessage
from typing import Any

from collabkare.client import ApiError, CollabKare
from collabkare.demo_data import DEFAULT_NOTE, EXPECTED_OUTCOMES, EXPECTED_RECIPIENTS, IVY, REGISTERED, ROSTER
from collabkare.seeding import patient_registered, publish
from collabkare.stack import mailbox
from collabkare.stack.infra import provenance
from collabkare.stack.local import DEMO_PRACTICE_ID, DEMO_PRACTICE_NAME, RunningStack, local_stack, seed_demo_practice


class Scenario:
    def __init__(self, stack: RunningStack) -> None:
        self.stack = stack
        self.api = CollabKare(stack.urls, stack.jwt_secret, DEMO_PRACTICE_ID)
        self.patients: dict[str, uuid.UUID] = {}
        self.problems: list[str] = []
        self.mail_before = _caught_count(stack)  # the mbox only grows: what comes after these is the demo's

    def check(self, what: str, got: Any, expected: Any) -> None:
        mark = "ok " if got == expected else "BAD"
        print(f"   [{mark}] {what}: {got}" + ("" if got == expected else f" (expected {expected})"), flush=True)
        if got != expected:
            self.problems.append(what)

    def register(self, emails: dict[str, str]) -> None:
        events = [patient_registered(address, locale=locale) for address, locale in emails.items()]
        asyncio.run(publish(self.stack.infra.kafka_bootstrap, self.stack.topic_prefix, list(events)))
        self.patients.update({e.payload.email: e.payload.patient_id for e in events})

    def connect(self, address: str) -> dict[str, Any]:
        """The patient asks to connect; returns the pending request."""
        body = {"practice_id": str(DEMO_PRACTICE_ID), "message": "I am a patient of Dr. Lee"}
        return dict(
            self.api.patient(
                self.patients[address], address, "connections", "POST", "/v1/connection-requests", json=body
            )
        )

    def run(self) -> None:
        seed_demo_practice(self.stack)
        self.register(REGISTERED)
        print(f"== practice {DEMO_PRACTICE_NAME} and {len(REGISTERED)} registered patients seeded", flush=True)

        print("== dev@example.com asks to connect; staff approve (so the roster finds dev already connected)")
        request = self.connect("dev@example.com")
        self.api.staff("connections", "POST", f"/connection-requests/{request['id']}/approve")
        self._wait_for(
            "dev shows as already connected", lambda: self._verdict("dev@example.com") == "already_connected"
        )

        print("== roster preview")
        preview = self.api.preview(ROSTER, DEFAULT_NOTE)
        self.check('"patients ready" counter', preview["patients_ready"], 5)
        self.check(
            "verdicts",
            dict(sorted(Counter(r["verdict"] for r in preview["rows"]).items())),
            {"already_connected": 1, "duplicate": 1, "invalid": 1, "ready": 5},
        )
        batch = self.api.send_roster(ROSTER, DEFAULT_NOTE, key=str(uuid.uuid4()))
        print(f"== sent: batch {batch['batch_id']} accepted (202); waiting for every row to be final", flush=True)
        progress = self.api.wait_until_done(batch["batch_id"])
        self._print_rows(batch["batch_id"])
        self.check("batch done", progress["done"], True)
        self.check(
            "counts",
            {k: v for k, v in sorted(progress["counts"].items()) if v},
            {"already_connected": 1, "duplicate": 1, "invalid": 1, "not_on_platform": 2, "sent": 3},
        )
        missing = self.api.not_on_platform(batch["batch_id"])
        print("== not on CollabKare yet (copy list):\n   " + "\n   ".join(missing))
        self.check("not-on-platform list", sorted(missing), ["gina@example.com", "hank@example.com"])

        print("== gina registers; staff re-send to the not-on-platform rows")
        self.register({"gina@example.com": "en"})
        time.sleep(1.0)  # the notifier learns of gina from the platform topic (an invite first waits out the grace)
        self.api.resend_not_on_platform(batch["batch_id"])
        self.api.wait_until_done(batch["batch_id"])
        outcomes = {row["email"]: row["outcome"] for row in self.api.rows(batch["batch_id"])}
        self.check("gina after re-send", outcomes.get("gina@example.com"), "sent")
        self.check("hank after re-send", outcomes.get("hank@example.com"), "not_on_platform")

        print("== erin and frank ask to connect; staff approve erin and reject frank with a reason")
        erin, frank = self.connect("erin@example.com"), self.connect("frank@example.com")
        pending = self.api.staff("connections", "GET", "/connection-requests", params={"status": "pending"})
        self.check(
            "pending requests listed",
            sorted(i["patient_email"] for i in pending["items"]),
            ["erin@example.com", "frank@example.com"],
        )
        approved = self.api.staff("connections", "POST", f"/connection-requests/{erin['id']}/approve")
        rejected = self.api.staff(
            "connections",
            "POST",
            f"/connection-requests/{frank['id']}/reject",
            json={"reason": "We are not taking new patients this season."},
        )
        self.check("erin", approved["status"], "approved")
        self.check("frank", rejected["status"], "rejected")

        self._individual_invite()
        self._print_mail()

    def _individual_invite(self) -> None:
        print("== individual invite for ivy@example.com (date of birth + phone): send, revoke, resend")
        first = self.api.staff("invitations", "POST", "/invites", (201,), json=IVY)
        self.api.staff("invitations", "POST", f"/invites/{first['id']}/revoke")
        resent = self.api.staff("invitations", "POST", f"/invites/{first['id']}/resend", (201,))
        self.check("access history", self._show_history(), ["pending", "revoked"])
        self.check("resend gives a new invite", resent["invite"]["id"] != first["id"], True)
        self._accept_invite()

    def _accept_invite(self) -> None:
        """ivy opens the resent invite's email and accepts with her own login and the same identity factors."""
        if self.stack.infra.mailbox is None:
            print("== ivy's accept link is in the external SMTP server's mailbox: acceptance not shown")
            return
        print("== ivy accepts the resent invite: the link's token, her login, date of birth + phone")
        self._wait_for("the resent invite's email sent", lambda: self._history()[0]["delivery"] == "sent")
        to_ivy = [m for m in _caught_since(self.stack, self.mail_before) if str(m["To"]) == IVY["email"]]
        # Newest first: the first invite's email, if it went out before the revoke, carries a dead link.
        tokens = [token for m in reversed(to_ivy) if (token := mailbox.accept_token(m))]
        answers = {"date_of_birth": IVY["date_of_birth"], "phone": IVY["phone"]}
        for token in tokens:
            try:
                self.api.patient(
                    self.patients[IVY["email"]], IVY["email"], "invitations", "POST", "/v1/invites/accept",
                    json={"token": token, **answers}, expect=(200,),
                )  # fmt: skip
                break
            except ApiError:
                continue

        def connected() -> dict[str, Any] | None:
            items = self.api.staff("connections", "GET", "/connections")["items"]
            return next((c for c in items if c["patient_email"] == IVY["email"]), None)

        connection = self._wait_for("ivy connected", connected) or {}
        self.check(
            "ivy's connection (via, approved by)",
            (connection.get("via"), connection.get("approved_by")),
            ("invite", "demo-manager"),
        )
        self.check("access history after accepting", self._show_history(), ["accepted", "revoked"])

    def _history(self) -> list[dict[str, Any]]:
        """ivy's access history, newest invite first."""
        return list(self.api.staff("invitations", "GET", "/invites", params={"email": IVY["email"]})["items"])

    def _show_history(self) -> list[str]:
        """Prints ivy's access history (one read); returns its statuses, newest first."""
        history = self._history()
        for item in history:
            print(f"   invite {item['id']}  {item['status']:<8} {_history_line(item)}")
        return [item["status"] for item in history]

    def _verdict(self, address: str) -> str:
        rows = self.api.preview(address)["rows"]
        return str(rows[0]["verdict"]) if rows else ""

    def _wait_for(self, what: str, condition: Any, timeout: float = 30.0) -> Any:
        """The condition's first truthy value; None (and a BAD line) when it never came."""
        deadline = time.monotonic() + timeout
        while not (value := condition()):
            if time.monotonic() > deadline:
                self.check(what, False, True)
                return None
            time.sleep(0.2)
        return value

    def _print_rows(self, batch_id: str) -> None:
        print("   line  email                  outcome            reason")
        for row in sorted(self.api.rows(batch_id), key=lambda r: r["line_number"]):
            reason = (row.get("reason") or "")[:60]
            print(f"   {row['line_number']:>4}  {row['email']:<22} {row['outcome']:<18} {reason}")
            expected = EXPECTED_OUTCOMES.get(row["line_number"])
            if expected and row["outcome"] != expected:
                self.problems.append(f"line {row['line_number']} is {row['outcome']}, expected {expected}")

    def _print_mail(self) -> None:
        if self.stack.infra.mailbox is None:
            print("== emails: the SMTP server is external; see its own mailbox")
            return
        # Every recipient, not a count: ivy gets two or three emails (her first invite can go out before staff revoke
        # it), and frank's rejection waits 2 s at the notifier, so a count could be reached without it.
        self._wait_for(
            "every recipient's email caught",
            lambda: EXPECTED_RECIPIENTS.issubset(str(m["To"]) for m in _caught_since(self.stack, self.mail_before)),
        )
        messages = _caught_since(self.stack, self.mail_before)
        print(f"== emails caught by the SMTP catcher ({len(messages)}):")
        recipients = []
        for message in messages:
            recipients.append(str(message["To"]))
            print(f"   to {message['To']!s:<22} {message['Subject']}")
        self.check("recipients", sorted(set(recipients)), sorted(EXPECTED_RECIPIENTS))


def _history_line(item: dict[str, Any]) -> str:
    line = f"sent by {item['sent_by']} at {item['sent_at'][:19]}"
    if item.get("revoked_by"):
        line += f"; revoked by {item['revoked_by']} at {item['revoked_at'][:19]}"
    if item.get("accepted_at"):
        line += f"; accepted at {item['accepted_at'][:19]}"
    if item.get("resends"):
        line += f"; resend of {str(item['resends'])[:8]}"
    return line


def _caught_count(stack: RunningStack) -> int:
    return mailbox.count(stack.infra.mailbox) if stack.infra.mailbox else 0


def _caught_since(stack: RunningStack, before: int) -> list[EmailMessage]:
    """The messages caught after the first `before` (the file keeps earlier runs' mail too)."""
    return mailbox.read_caught(stack.infra.mailbox, since=before) if stack.infra.mailbox else []


def run_demo() -> int:
    started, external = provenance(os.environ)
    line = f"== starting the local stack ({', '.join([*started, '3 services'])})"
    print(f"{line}; external: {', '.join(external)}" if external else line, flush=True)
    with local_stack() as stack:
        for name, url in stack.urls.items():
            print(f"   {name:<12} {url:<24} ready", flush=True)
        scenario = Scenario(stack)
        try:
            scenario.run()
        finally:
            scenario.api.close()
        print("== stopping", flush=True)
    if scenario.problems:
        print(f"== FAILED: {len(scenario.problems)} outcome(s) not as expected: {'; '.join(scenario.problems)}")
        return 1
    print("== done: every outcome as expected; every process stopped", flush=True)
    return 0
