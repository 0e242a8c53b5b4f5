"""The three services as the local stack and the CLI know them: module, default port, migrations."""

from __future__ import annotations

from dataclasses import dataclass

from services.connections.app import MIGRATIONS as CONNECTIONS
from services.invitations.app import MIGRATIONS as INVITATIONS
from services.notifier.app import MIGRATIONS as NOTIFIER
from services.runtime.migrations import MigrationPlan

MIGRATION_PLANS: dict[str, MigrationPlan] = {
    "connections": CONNECTIONS,
    "invitations": INVITATIONS,
    "notifier": NOTIFIER,
}


@dataclass(frozen=True)
class ServiceProcess:
    name: str
    module: str
    default_port: int

    @property
    def port_variable(self) -> str:
        return f"{self.name.upper()}_PORT"


SERVICES = (
    ServiceProcess("connections", "services.connections", 8001),
    ServiceProcess("invitations", "services.invitations", 8002),
    ServiceProcess("notifier", "services.notifier", 8003),
)
