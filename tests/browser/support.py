"""What the staff console's browser tests share: the running stack's handles, Chromium's flags, screenshots."""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from collabkare.stack.local import DEMO_PRACTICE_ID, RunningStack, demo_staff_token
from services.runtime.auth import mint_token

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = Path(os.environ.get("CHROMIUM", "/usr/bin/chromium"))
ARTIFACTS = ROOT / "var" / "test-artifacts" / "console"
# Headless, as root, and never reaching for the network (there is none to reach).
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# Patients with a CollabKare account; anyone else in a roster ends as not_on_platform.
REGISTERED = ["ana@example.com", "bruno@example.com", "erin@example.com", "frank@example.com", "ivy@example.com"]


@dataclass
class ConsoleStack:
    stack: RunningStack
    url: str
    patients: dict[str, uuid.UUID]

    def staff_token(
        self, role: str = "practice_manager", subject: str = "demo-manager", practice_id: uuid.UUID = DEMO_PRACTICE_ID
    ) -> str:
        return mint_token(self.stack.jwt_secret, subject, [role], practice_id=practice_id)

    def staff(self, service: str, method: str, path: str, **kw: Any) -> Any:
        url = f"{self.stack.urls[service]}/v1/practices/{DEMO_PRACTICE_ID}{path}"
        headers = {"Authorization": f"Bearer {demo_staff_token(self.stack.jwt_secret)}"}
        response = httpx.request(method, url, headers=headers, timeout=30, **kw)
        response.raise_for_status()
        return response.json()

    def ask_to_connect(self, email: str, message: str) -> dict[str, Any]:
        token = mint_token(self.stack.jwt_secret, str(self.patients[email]), ["patient"], email=email)
        response = httpx.post(
            f"{self.stack.urls['connections']}/v1/connection-requests",
            json={"practice_id": str(DEMO_PRACTICE_ID), "message": message},
            headers={"Authorization": f"Bearer {token}"},
            timeout=30,
        )
        assert response.status_code == 201, response.text
        return dict(response.json())


def screenshot(tab: Any, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    tab.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)
