"""Logging set-up: JSON lines (python-json-logger) or text, and the HTTP request id carried into every line logged
while that request is served.

``GRANTBOT_LOG_FORMAT``: ``json`` or ``text``; by default ``json`` when standard error is not a terminal (a
container, a service manager, a pipe to a log shipper) and ``text`` on a terminal. A JSON line is one object:
``{"time": "2026-12-02T09:30:00.123456+00:00", "level": "INFO", "logger": "bot.web.access", "message": "…",
"request_id": "…", …}`` with the structured fields a call passes as ``extra={…}``; an exception's traceback is its
``exc_info`` field (one line of JSON, never several lines of text).
"""

from __future__ import annotations

import logging
import sys
from contextvars import ContextVar

from pythonjsonlogger.json import JsonFormatter

# The id of the HTTP request being served in this task (set by bot.web.observability), or None outside one.
REQUEST_ID: ContextVar[str | None] = ContextVar("grantbot_request_id", default=None)

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def current_request_id() -> str | None:
    return REQUEST_ID.get()


class _RequestId(logging.Filter):
    """Adds ``request_id`` to records logged while a request is served (asyncio tasks copy the context)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "request_id", None) is None and (request_id := REQUEST_ID.get()) is not None:
            record.request_id = request_id
        return True


def log_format(setting: str | None) -> str:
    """``json`` or ``text``: the setting when given, else json unless standard error is a terminal."""
    if setting:
        return setting
    return "text" if sys.stderr.isatty() else "json"


def setup_logging(level: str, fmt: str) -> None:
    """Configure the root logger once, for a command: ``level`` (INFO, WARNING…) and ``fmt`` (json or text)."""
    handler = logging.StreamHandler()
    if fmt == "json":
        handler.setFormatter(JsonFormatter(
            ["levelname", "name", "message"], rename_fields={"levelname": "level", "name": "logger"},
            timestamp="time", json_ensure_ascii=False,
        ))
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    handler.addFilter(_RequestId())
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(level.upper())
