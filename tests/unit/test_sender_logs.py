"""What the sender tells an operator when it cannot send: the reason once, the recovery once, the retries' reply."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry
from structlog.testing import capture_logs

from services.notifier.domain import Attempt, SendResult
from services.notifier.mailer import Mailer
from services.notifier.messages import Renderer
from services.notifier.metrics import metrics_for
from services.notifier.sender import Sender, _Run
from services.notifier.settings import NotifierSettings

SETTINGS = NotifierSettings(
    database_url="postgresql://x@127.0.0.1/x",
    kafka_bootstrap_servers="127.0.0.1:9092",
    jwt_secret="a-development-secret-of-32-bytes-at-least",
)


def _run() -> _Run:
    sender = Sender(SETTINGS, Mailer(SETTINGS), Renderer(SETTINGS.smtp_from))
    pool: Any = None  # the state bookkeeping under test never touches the database
    return _Run(sender, pool, metrics_for(CollectorRegistry()))


def test_an_unusable_server_is_logged_once_with_its_reply_and_its_recovery_once() -> None:
    """The notifier's log said nothing while a wrong password or a dead server stopped every email."""
    run = _run()
    with capture_logs() as logs:
        for _ in range(5):  # eight connections failing again and again: one line
            run._note_smtp_state(SendResult(Attempt.UNREACHABLE, "535 5.7.8 Authentication credentials invalid"))
        run._note_smtp_state(SendResult(Attempt.TRANSIENT, "451 4.3.0 later"))  # reachable, not yet sending
        run._note_smtp_state(SendResult(Attempt.SENT, "250 OK"))
        run._note_smtp_state(SendResult(Attempt.SENT, "250 OK"))
    assert [(e["event"], e["log_level"]) for e in logs] == [
        ("smtp.unavailable", "warning"),
        ("smtp.available_again", "info"),
    ]
    assert logs[0]["smtp_reply"].startswith("535 5.7.8") and logs[1]["after"].startswith("535")
