"""The data of `make demo`'s scenario: the roster staff paste, how each line must end, the registered patients."""

from __future__ import annotations

DEFAULT_NOTE = "Your care team at Riverside invites you to connect your health record."
ROSTER = """\
# Spring outreach. Comment lines and blank lines are ignored.
ana@example.com, Welcome to Riverside, Ana, and see you on Monday, 9:30
bruno@example.com

carla@example.com, Hi Carla: your new portal is ready
not-an-email
ANA@example.com
dev@example.com
gina@example.com
hank@example.com, Please join, we miss you
"""
# What every roster line must end as; a resend later turns gina (now registered) into sent.
EXPECTED_OUTCOMES = {
    2: "sent",
    3: "sent",
    5: "sent",
    6: "invalid",
    7: "duplicate",
    8: "already_connected",
    9: "not_on_platform",
    10: "not_on_platform",
}
REGISTERED = {
    "ana@example.com": "en",
    "bruno@example.com": "es",
    "carla@example.com": "en",
    "dev@example.com": "en",
    "erin@example.com": "en",
    "frank@example.com": "es",
    "ivy@example.com": "en",
}
# Who the scenario emails: invites to ana, bruno, carla, gina (after the resend) and ivy; "you are connected" to dev,
# erin and ivy; frank's rejection.
EXPECTED_RECIPIENTS = frozenset(
    f"{name}@example.com" for name in ("ana", "bruno", "carla", "gina", "dev", "erin", "frank", "ivy")
)
# The individual invite: date of birth and phone, the identity factors accepting asks for again.
IVY = {"email": "ivy@example.com", "date_of_birth": "1984-03-02", "phone": "+1 555 010 7788"}
