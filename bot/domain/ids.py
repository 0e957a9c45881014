"""Identifiers: requests and grants are named by UUIDs (RFC 9562); anything else names nothing, except where people
type them: a unique prefix of at least :data:`SHORT_ID_LENGTH` characters, as lists print them."""

from __future__ import annotations

import re
import uuid

SHORT_ID_LENGTH = 8  # what /access list and pending print, and the shortest prefix /access show and revoke take
_PREFIX = re.compile(r"[0-9a-f][0-9a-f-]{%d,35}" % (SHORT_ID_LENGTH - 1))


def is_uuid(value: object) -> bool:
    """True for the canonical text form of a UUID (what grantbot hands out), False for anything else."""
    if not isinstance(value, str) or len(value) != 36:
        return False
    try:
        return str(uuid.UUID(value)) == value
    except ValueError:
        return False


def short_id(value: str) -> str:
    """The first :data:`SHORT_ID_LENGTH` characters of an id, as people read and type it."""
    return value[:SHORT_ID_LENGTH]


def id_prefix(value: str) -> str | None:
    """``value`` as the start of an id (lower case), when it can be one: at least :data:`SHORT_ID_LENGTH` of the
    characters a UUID's text form has; else None."""
    value = value.lower()
    return value if _PREFIX.fullmatch(value) else None
