"""Signed calls to grantbot's HTTP API with bounded retries (DESIGN.md "The pipeline client").

A call is retried when grantbot cannot answer it yet: a connection refused, reset or dropped (a restart, a deploy),
a read that timed out, and 429, 502, 503 and 504 answers, whose ``Retry-After`` (RFC 9110 §10.2.3, seconds or an
HTTP date) is honoured. Every attempt is authenticated afresh (a new timestamp and nonce, or a new CI token); the
caller keeps the body and its ``Idempotency-Key``, so a retried ``POST`` creates one request. Retrying stops
``retry_for`` seconds after the call's first failure, with :class:`~bot.client.exits.Stop` (exit 4). Any other
answer, 401 included, goes back to the caller at once.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import aiohttp
from multidict import CIMultiDictProxy
from yarl import URL

from bot.client.credentials import Credentials
from bot.client.exits import ExitCode, Stop, Transient

RETRYABLE_STATUSES = frozenset({429, 502, 503, 504})
FIRST_BACKOFF_SECONDS = 0.5
MAX_BACKOFF_SECONDS = 10.0
CONNECT_TIMEOUT_SECONDS = 10.0


@dataclass
class Answer:
    """An HTTP answer: status, JSON body (``{"detail": text}`` when it was not JSON) and when the server sent it."""

    status: int
    body: dict[str, Any]
    server_time: datetime | None = None  # from the Date header (RFC 9110 §6.6.1)


def retry_after_seconds(headers: CIMultiDictProxy[str] | dict[str, str]) -> float | None:
    """``Retry-After`` as seconds from now, or None when absent or unreadable (RFC 9110 §10.2.3)."""
    value = headers.get("Retry-After")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, (parsedate_to_datetime(value) - datetime.now(UTC)).total_seconds())
    except (TypeError, ValueError, IndexError):
        return None


def _detail(status: int, body: dict[str, Any]) -> str:
    detail = body.get("detail") if isinstance(body.get("detail"), str) else None
    return f"HTTP {status}" + (f": {detail}" if detail else "")


def _describe(exc: BaseException) -> str:
    if isinstance(exc, Transient):
        return str(exc)
    if isinstance(exc, asyncio.TimeoutError):
        return "no answer in time"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "the connection was closed before an answer"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return f"cannot connect ({exc.os_error.strerror or exc.os_error})"
    if isinstance(exc, aiohttp.ClientPayloadError):
        return "the answer was cut off"
    return f"{type(exc).__name__}: {exc}"


class Transport:
    """Calls ``base_url`` with ``credentials``; ``say`` reports each retry (one line, no secrets)."""

    def __init__(self, base_url: str, credentials: Credentials, http: aiohttp.ClientSession, *, retry_for: float,
                 say: Callable[[str], None]) -> None:
        self.base_url = base_url.rstrip("/")
        self.credentials = credentials
        self.http = http
        self.retry_for = retry_for
        self.say = say

    def within(self, seconds: float) -> Transport:
        """The same calls, retried for at most ``seconds`` (a command on its way out has little time)."""
        return Transport(self.base_url, self.credentials, self.http, retry_for=min(seconds, self.retry_for),
                         say=self.say)

    async def call(self, method: str, path_qs: str, body: dict | None = None, *, idempotency_key: str | None = None,
                   read_timeout: float = 60.0) -> Answer:
        """One call, retried as the module says; returns the first answer that is not worth retrying.

        Raises :class:`Stop` (exit 4) when grantbot gave no such answer within ``retry_for`` of the first failure.
        """
        raw = json.dumps(body).encode() if body is not None else b""
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=CONNECT_TIMEOUT_SECONDS, sock_read=read_timeout)
        url = URL(self.base_url + path_qs, encoded=True)  # exactly the path and query that are signed
        headers = {"Content-Type": "application/json"} if body is not None else {}
        if idempotency_key is not None:
            headers["Idempotency-Key"] = idempotency_key

        async def sign(request: aiohttp.ClientRequest, handler: aiohttp.ClientHandlerType) -> aiohttp.ClientResponse:
            # A client middleware, so that aiohttp's own resend of a GET over a keep-alive connection that turned
            # out closed (RFC 9112 §9.3.1) is signed afresh too, not refused by grantbot as a replay.
            request.headers.update(await self.credentials.headers(self.http, method, path_qs, raw))
            return await handler(request)

        give_up_at: float | None = None
        backoff = FIRST_BACKOFF_SECONDS
        while True:
            wait: float | None = None
            try:
                async with self.http.request(method, url, data=raw, headers=headers, timeout=timeout,
                                             middlewares=(sign,)) as resp:
                    text = await resp.read()
                    answer = Answer(resp.status, _json(text), _date(resp.headers.get("Date")))
                if answer.status not in RETRYABLE_STATUSES:
                    return answer
                why = _detail(answer.status, answer.body)
                wait = retry_after_seconds(resp.headers)
            except (aiohttp.ClientError, asyncio.TimeoutError, Transient) as exc:
                why = _describe(exc)
            now = time.monotonic()
            give_up_at = give_up_at or now + self.retry_for
            left = give_up_at - now
            if left <= 0:
                raise Stop(ExitCode.UNREACHABLE, f"grantbot at {self.base_url} did not answer {method} {url.path} "
                           f"within --retry-for {self.retry_for:g} s (last: {why}).")
            pause = min(left, wait if wait is not None else backoff * random.uniform(0.8, 1.2))
            backoff = min(backoff * 2, MAX_BACKOFF_SECONDS)
            self.say(f"grantbot: {method} {url.path}: {why}; retrying in {pause:.1f} s "
                     f"(giving up in {left:.0f} s)")
            await asyncio.sleep(pause)


def _json(text: bytes) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError:
        return {"detail": text.decode("utf-8", "replace").strip()[:300]}
    return value if isinstance(value, dict) else {"detail": str(value)[:300]}


def _date(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        return parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
