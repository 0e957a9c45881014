"""Clocks: the one source of "now" for the domain (ports.Clock implementations)."""

from __future__ import annotations

import math
import os
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path


class SystemClock:
    """The wall clock, in aware UTC."""

    def now(self) -> datetime:
        return datetime.now(UTC)


class FakeClock:
    """A clock that moves only when told to; for tests.

    ``FakeClock(start)`` starts at ``start`` (aware UTC; default: the real now) and ``advance(seconds)`` moves it.
    """

    def __init__(self, start: datetime | None = None) -> None:
        self._now = start or datetime.now(UTC)

    def now(self) -> datetime:
        return self._now

    def advance(self, seconds: float) -> datetime:
        self._now += timedelta(seconds=seconds)
        return self._now

    def set(self, moment: datetime) -> datetime:
        """Jump to ``moment`` (aware), e.g. a Monday morning in some time zone."""
        if moment.tzinfo is None:
            raise ValueError("FakeClock.set needs an aware datetime")
        self._now = moment
        return self._now


class OffsetFileClock:
    """The wall clock shifted by a number of seconds read from a file (``GRANTBOT_CLOCK_OFFSET_FILE``).

    For tests that drive a real ``grantbot`` process: they move its time by rewriting the file instead of
    sleeping. The file holds one number (seconds, may be fractional); a missing file means 0.

    The file is read on every call, not cached by modification time: a rewrite within one mtime tick (same
    ``st_mtime_ns``, even the same size) would otherwise go unseen, and the process would keep an old time. A
    writer should replace the file atomically (write a temporary file beside it, then ``os.replace``), so a
    reader sees the old number or the new one. A writer that rewrites it in place can be caught between
    truncate and write: an empty file, or anything that is not a finite number, is not taken as 0 but leaves
    the last good offset in force.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self._path = Path(path)
        self._offset = 0.0

    def _read_offset(self) -> float:
        try:
            offset = float(self._path.read_text())
        except FileNotFoundError:
            return 0.0
        except ValueError:  # empty (caught mid-rewrite) or garbage: keep the last good value
            return self._offset
        if math.isfinite(offset):
            self._offset = offset
        return self._offset

    def now(self) -> datetime:
        return datetime.fromtimestamp(time.time() + self._read_offset(), UTC)
