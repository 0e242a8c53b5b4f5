"""A batch's resend beside the sweeper and the outcome writer (real PostgreSQL; found by a review of the day's
changes: requests no longer expire the practice's overdue invites, and the resend locks chunk after chunk)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest

from collabkare.stack.infra import Infrastructure
from tests.integration.invitations_harness import Service, running_service, staff


@pytest.fixture(scope="module")
async def service(infra: Infrastructure, template_database: str) -> AsyncIterator[Service]:
    # No sweeper: the window between an invite's expiry and the sweeper's next pass (a minute in service).
    async with running_service(infra, template_database, consuming=False, sweeping=False) as running:
        yield running


async def _not_on_platform(service: Service, practice: uuid.UUID, roster: str) -> tuple[uuid.UUID, str]:
    """A batch whose rows all came back not_on_platform; (its id, its URL)."""
    batch_id = uuid.UUID((await service.submit(practice, roster))["batch_id"])
    await service.admin.execute(
        "UPDATE invitations.invites SET delivery = 'not_on_platform' WHERE batch_id = $1", batch_id
    )
    await service.admin.execute(
        "UPDATE invitations.batch_rows SET outcome = 'not_on_platform' WHERE batch_id = $1", batch_id
    )
    return batch_id, f"/v1/practices/{practice}/invite-batches/{batch_id}"


async def _resend(service: Service, practice: uuid.UUID, base: str) -> dict[str, int]:
    response = await service.http.post(f"{base}/resend-not-on-platform", headers=staff(practice, "admin", "admin-2"))
    assert response.status_code == 202, response.text
    answer: dict[str, int] = response.json()
    return answer


async def test_a_resend_expires_an_invite_past_its_time_rather_than_revoke_it(service: Service) -> None:
    """The resend used to expire the practice's overdue invites first; now the one it replaces may still be
    `pending` past its time, and was recorded as revoked by the staff member (with an InviteRevoked naming them)."""
    practice = uuid.uuid4()
    batch_id, base = await _not_on_platform(service, practice, "ann@example.com")
    old = await service.fetchval("SELECT id FROM invitations.invites WHERE batch_id = $1", batch_id)
    await service.admin.execute(
        "UPDATE invitations.invites SET expires_at = now() - interval '1 second' WHERE id = $1", old
    )
    assert (await _resend(service, practice, base))["resent"] == 1
    row = await service.admin.fetchrow(
        "SELECT status, revoked_by, replaced_by FROM invitations.invites WHERE id = $1", old
    )
    assert (row["status"], row["revoked_by"]) == ("expired", None) and row["replaced_by"] is not None
    expired = [e["payload"]["invite_id"] for e in await service.events(practice, "InviteExpired")]
    revoked = [e["payload"]["invite_id"] for e in await service.events(practice, "InviteRevoked")]
    assert expired == [str(old)] and revoked == []


async def test_a_resend_does_not_wait_for_a_patients_other_invite_another_transaction_holds(
    service: Service,
) -> None:
    """The resend once locked the patients' other invites chunk after chunk, not in the id order the outcome writer
    locks in: the two deadlocked (the resend's 100,000-row transaction rolled back, a 503). It replaces only the rows'
    own invites now, and reads the others (which only flag a row) without waiting for them."""
    practice = uuid.uuid4()
    batch_id, base = await _not_on_platform(service, practice, "ann@example.com\nbob@example.com")
    # The invites ran out (a resend takes them up), and a later roster invited Bob again: his new invite is on its way.
    await service.admin.execute(
        "UPDATE invitations.invites SET status = 'expired', expired_at = now() WHERE batch_id = $1", batch_id
    )
    later = uuid.UUID((await service.submit(practice, "bob@example.com"))["batch_id"])
    bobs = await service.fetchval("SELECT id FROM invitations.invites WHERE batch_id = $1", later)
    async with service.admin.acquire() as writer, writer.transaction():
        await writer.execute("SELECT 1 FROM invitations.invites WHERE id = $1 FOR UPDATE", bobs)  # its outcome
        async with asyncio.timeout(20):  # it waited here, for the writer: the test's transaction
            resent = await _resend(service, practice, base)
    rows = {
        r["email"]: r["outcome"]
        for r in await service.fetch("SELECT email, outcome FROM invitations.batch_rows WHERE batch_id = $1", batch_id)
    }
    assert (resent["resent"], resent["already_invited"]) == (1, 1), "Ann resent, Bob flagged: his later invite"
    assert rows == {"ann@example.com": "queued", "bob@example.com": "already_invited"}


async def test_an_older_batchs_resend_leaves_a_newer_rosters_invite_alone(service: Service) -> None:
    """Found by a black-box probe: the older batch's not-on-CollabKare list left out a patient a newer roster had
    invited again (her invite expired meanwhile), but its resend took her up all the same, and revoked the newer
    roster's undelivered invite (its row then read `already_invited`). The list, the resend and its count now agree."""
    practice = uuid.uuid4()
    older, older_url = await _not_on_platform(service, practice, "ann@example.com")
    await service.admin.execute(
        "UPDATE invitations.invites SET expires_at = now() - interval '1 second' WHERE batch_id = $1", older
    )
    newer, _ = await _not_on_platform(service, practice, "ann@example.com")
    listed = await service.http.get(f"{older_url}/not-on-platform", headers=staff(practice))
    assert listed.text == "", "Ann holds a newer invite: another batch's list tells of her"
    resent = await _resend(service, practice, older_url)
    assert (resent["resent"], resent["already_invited"]) == (0, 1)
    newer_invite = await service.admin.fetchrow(
        "SELECT status, replaced_by FROM invitations.invites WHERE batch_id = $1", newer
    )
    assert dict(newer_invite) == {"status": "pending", "replaced_by": None}
    row = await service.fetchval("SELECT outcome FROM invitations.batch_rows WHERE batch_id = $1", newer)
    assert row == "not_on_platform"
