"""Free text from people, the one rule every service applies: which characters cannot be stored or sent."""

from __future__ import annotations

import re

# C0 controls other than tab, CR and LF, DEL, the C1 controls (U+0080-U+009F: NEL breaks lines in some readers)
# and lone surrogates: PostgreSQL cannot store NUL or unpaired surrogates, and none of them belongs in an email
# someone will read. Then the bidirectional embeddings,
# overrides and isolates (U+202A-U+202E, U+2066-U+2069): they make a note or a reason read, in the patient's
# email, otherwise than it was written ("Trojan Source"). The marks U+200E/U+200F that mixed Hebrew or Arabic
# text needs stay allowed.
UNSENDABLE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069\ud800-\udfff]")


def unsendable_character(text: str) -> str | None:
    """The first character of `text` that cannot be stored or sent, as `U+0000`; None when there is none."""
    found = UNSENDABLE.search(text)
    return None if found is None else f"U+{ord(found.group()):04X}"
