"""Identifiers: requests and grants are named by UUIDs (RFC 9562); anything else names nothing."""

from __future__ import annotations

import uuid


def is_uuid(value: object) -> bool:
    """True for the canonical text form of a UUID (what grantbot hands out), False for anything else."""
    if not isinstance(value, str) or len(value) != 36:
        return False
    try:
        return str(uuid.UUID(value)) == value
    except ValueError:
        return False
