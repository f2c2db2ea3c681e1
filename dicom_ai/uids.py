"""The one place that decides whether a UID (or AE title) is acceptable.

UIDs end up in file paths of the spool, so the check is strict: digits and dots only, components without leading
zeros, at most 64 characters (PS3.5 §9.1).
"""

from __future__ import annotations

import re

UID_MAX = 64
AE_TITLE_MAX = 16
_UID_PATTERN = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))+$")


class InvalidUID(ValueError):
    """A UID is missing or malformed."""


def is_valid_uid(value: object) -> bool:
    return isinstance(value, str) and len(value) <= UID_MAX and bool(_UID_PATTERN.match(value))


def require_uid(value: object, name: str) -> str:
    """Return `value` as a clean UID string or raise InvalidUID naming the attribute."""
    text = str(value).strip().rstrip("\x00") if value is not None else ""
    if not text:
        raise InvalidUID(f"{name} is missing")
    if not is_valid_uid(text):
        raise InvalidUID(f"{name} {text[:80]!r} is not a valid UID (digits and dots, at most {UID_MAX} characters)")
    return text
