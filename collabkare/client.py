"""A small client for the services' HTTP APIs, as a staff UI or patient app calls them (demo, benchmarks, e2e)."""

from __future__ import annotations

import time
import uuid
from typing import Any

import httpx

from services.runtime.auth import mint_token


class ApiError(RuntimeError):
    def __init__(self, response: httpx.Response) -> None:
        super().__init__(
            f"{response.request.method} {response.request.url.path} -> {response.status_code}: {response.text[:300]}"
        )
        self.response = response


class CollabKare:
    """Calls as a staff member of one practice, or as a patient, with development tokens."""

    def __init__(self, urls: dict[str, str], jwt_secret: str, practice_id: uuid.UUID, timeout: float = 30.0) -> None:
        self.urls = urls
        self.secret = jwt_secret
        self.practice_id = practice_id
        self.http = httpx.Client(timeout=timeout)
        self.staff_token = mint_token(jwt_secret, "demo-manager", ["practice_manager"], practice_id=practice_id)

    def close(self) -> None:
        self.http.close()

    def _call(self, service: str, method: str, path: str, token: str, expect: tuple[int, ...], **kw: Any) -> Any:
        headers = {"Authorization": f"Bearer {token}", **kw.pop("headers", {})}
        response = self.http.request(method, self.urls[service] + path, headers=headers, **kw)
        if response.status_code not in expect:
            raise ApiError(response)
        return response.json() if response.headers.get("content-type", "").startswith("application/") else response.text

    def staff(self, service: str, method: str, path: str, expect: tuple[int, ...] = (200,), **kw: Any) -> Any:
        return self._call(service, method, f"/v1/practices/{self.practice_id}{path}", self.staff_token, expect, **kw)

    def patient(self, patient_id: uuid.UUID, email: str, service: str, method: str, path: str, **kw: Any) -> Any:
        token = mint_token(self.secret, str(patient_id), ["patient"], email=email)
        return self._call(service, method, path, token, kw.pop("expect", (200, 201)), **kw)

    # --- invitations ---------------------------------------------------------------------------------------

    def preview(self, roster: str, default_note: str | None = None) -> dict[str, Any]:
        body = {"roster": roster, "default_note": default_note}
        return dict(self.staff("invitations", "POST", "/roster/preview", json=body))

    def send_roster(self, roster: str, default_note: str | None = None, key: str | None = None) -> dict[str, Any]:
        headers = {"Idempotency-Key": key} if key else {}
        body = {"roster": roster, "default_note": default_note}
        return dict(self.staff("invitations", "POST", "/invite-batches", (202,), json=body, headers=headers))

    def batch(self, batch_id: str) -> dict[str, Any]:
        return dict(self.staff("invitations", "GET", f"/invite-batches/{batch_id}"))

    def wait_until_done(self, batch_id: str, timeout: float = 120.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            progress = self.batch(batch_id)
            if progress["done"] or time.monotonic() > deadline:
                return progress
            time.sleep(0.2)

    def rows(self, batch_id: str) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = []
        cursor = None
        while True:
            params = {"limit": 200, **({"cursor": cursor} if cursor else {})}
            page = self.staff("invitations", "GET", f"/invite-batches/{batch_id}/rows", params=params)
            rows.extend(page["items"])
            cursor = page["next_cursor"]
            if not cursor:
                return rows

    def not_on_platform(self, batch_id: str) -> list[str]:
        text = self.staff("invitations", "GET", f"/invite-batches/{batch_id}/not-on-platform")
        return [line for line in str(text).splitlines() if line]

    def resend_not_on_platform(self, batch_id: str) -> dict[str, Any]:
        return dict(self.staff("invitations", "POST", f"/invite-batches/{batch_id}/resend-not-on-platform", (200, 202)))
