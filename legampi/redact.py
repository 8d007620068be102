"""Removing secrets from text that legampi did not write itself.

legampi's own messages never contain a secret, so they are never scrubbed: scrubbing a whole message
turned `(wrong legacy password?)` into `(*** legacy password?)` when the legacy password was `wrong`.
What can contain a secret is text from outside (a child's stderr, an exception string, an HTTP reason
phrase); it goes through `redact` BEFORE it is combined with legampi's own words. There, any occurrence
counts, however short or common the secret: a child echoing a weak password must not publish it.
"""

from __future__ import annotations

from collections.abc import Iterable

MASK = "***"


def redact(text: str, secrets: Iterable[str | None]) -> str:
    """TEXT (from outside legampi) with every occurrence of every non-empty secret replaced by ***."""
    # longest first, so a secret that contains another is removed whole
    for s in sorted({s for s in secrets if s}, key=len, reverse=True):
        text = text.replace(s, MASK)
    return text
