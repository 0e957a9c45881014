"""IANA time zone names, checked once for the policy's ``when`` and for ``GRANTBOT_TIMEZONE``."""

from __future__ import annotations

from zoneinfo import ZoneInfo, ZoneInfoNotFoundError


def check_zone(name: str) -> str:
    """``name`` if it is an IANA time zone this machine knows (e.g. "Europe/Berlin", "UTC"), else ValueError with
    a sentence saying so."""
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown timezone {name!r}; use an IANA name such as 'Europe/Berlin' or 'UTC'") from None
    return name
