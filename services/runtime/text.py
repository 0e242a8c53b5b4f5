"""Free text from people, the one rule every service applies: which characters cannot be stored or sent."""

from __future__ import annotations

import re

# C0 controls other than tab, CR and LF, then DEL and lone surrogates: PostgreSQL cannot store NUL or unpaired
# surrogates, and none of them belongs in an email someone will read.
UNSENDABLE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ud800-\udfff]")


def unsendable_character(text: str) -> str | None:
    """The first character of `text` that cannot be stored or sent, as `U+0000`; None when there is none."""
    found = UNSENDABLE.search(text)
    return None if found is None else f"U+{ord(found.group()):04X}"
