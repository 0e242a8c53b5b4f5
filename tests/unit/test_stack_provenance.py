"""What the local stack starts here and what the environment points at outside: the first line of `make demo`."""

from __future__ import annotations

import pytest

from collabkare.stack.errors import StackError
from collabkare.stack.infra import Plan, plan, provenance

EXTERNAL = {"DATABASE_URL": "postgresql://db.internal/x", "KAFKA_BOOTSTRAP_SERVERS": "kafka.internal:9092"}


def test_with_nothing_configured_everything_starts_here() -> None:
    assert provenance({}) == (["PostgreSQL", "Kafka-protocol broker", "SMTP catcher"], [])


def test_an_external_smtp_server_is_not_called_the_catcher() -> None:
    started, external = provenance({"SMTP_HOST": "mail.internal", "SMTP_PORT": "1025"})
    assert started == ["PostgreSQL", "Kafka-protocol broker"]
    assert external == ["SMTP server (SMTP_HOST)"]


def test_external_database_and_broker_and_containers() -> None:
    assert provenance(EXTERNAL) == (
        ["SMTP catcher"],
        ["PostgreSQL (DATABASE_URL)", "Kafka-protocol broker (KAFKA_BOOTSTRAP_SERVERS)"],
    )
    assert provenance({"TEST_INFRA": "containers"}) == (
        ["PostgreSQL (container)", "Kafka-protocol broker (container)", "SMTP catcher"],
        [],
    )
    # Containers replace only what the environment does not point at; SMTP stays the embedded catcher.
    assert provenance({"TEST_INFRA": "containers", "DATABASE_URL": EXTERNAL["DATABASE_URL"]}) == (
        ["Kafka-protocol broker (container)", "SMTP catcher"],
        ["PostgreSQL (DATABASE_URL)"],
    )


def test_the_plan_is_what_both_starting_and_describing_read() -> None:
    assert plan({}) == Plan(database="embedded", kafka="embedded", smtp="embedded")
    assert plan(EXTERNAL | {"TEST_INFRA": "containers", "SMTP_HOST": "mail.internal"}) == Plan(
        database="external", kafka="external", smtp="external"
    )
    assert plan({"TEST_INFRA": "containers"}) == Plan(database="container", kafka="container", smtp="embedded")
    with pytest.raises(StackError, match="TEST_INFRA=docker: expected 'embedded' or 'containers'"):
        plan({"TEST_INFRA": "docker"})
