"""Test helpers written from the specs, independently of grantbot's code: HMAC signing (DESIGN.md), Slack's
request signing (REFERENCE.md), and payloads built from the captured fixtures in tests/fixtures/slack/."""

from __future__ import annotations

import asyncio
import base64
import copy
import hashlib
import hmac
import json
import os
import re
import struct
import tempfile
import time
import urllib.parse
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import aiohttp

FIXTURES = Path(__file__).parent / "fixtures"
SECRETS = {"deploy-bot": "deploy-bot-test-secret", "other-bot": "other-bot-test-secret"}
SIGNING_SECRET = "test-signing-secret-0123456789abcdef"
BOT_TOKEN = "xoxb-test-token"
CHANNEL = "C0SANDBOX"


# What must never be logged: a JWT (an access token or a CI identity token), an HMAC or Slack signature, a secret.
_SECRET_SHAPES = re.compile(r"eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]+|v[01]=[0-9a-f]{64}")


# Every credential secret grantbot handed over through ``Api`` in this test process (passwords, private keys):
# no later log may hold one either.
HANDED_OVER: set[str] = set()
_SECRET_FIELDS = ("password", "private_key")


def remember_handed_over(answer: Any) -> None:
    """Note the secrets of the credentials in an API answer (``grant.credentials[*]``, DESIGN.md)."""
    grant = answer.get("grant") if isinstance(answer, dict) else None
    for credential in (grant or {}).get("credentials") or []:
        for field in _SECRET_FIELDS:
            if isinstance(value := credential.get(field), str) and len(value) >= 16:
                HANDED_OVER.add(value)


def assert_no_secrets(text: str) -> None:
    """``text`` (logs) holds no token, signature, test secret or handed-over credential secret."""
    found = _SECRET_SHAPES.search(text)
    assert found is None, f"a token or signature was logged: {text[max(found.start() - 200, 0):found.end()]}"
    for secret in (*SECRETS.values(), SIGNING_SECRET, BOT_TOKEN, "rs-secret"):
        assert secret not in text, f"the secret {secret!r} was logged"
    for secret in HANDED_OVER:
        assert secret not in text, "a handed-over credential secret was logged"


def hmac_headers(identity: str, method: str, path_qs: str, body: bytes, *, secret: str | None = None,
                 timestamp: int | None = None, nonce: str | None = None) -> dict[str, str]:
    """DESIGN.md's HMAC headers; with ``nonce`` it is sent as X-Grantbot-Nonce and signed after the timestamp."""
    ts = str(int(time.time()) if timestamp is None else timestamp)
    signed = f"{ts}:{nonce}" if nonce is not None else ts
    message = f"v1:{signed}:{method.upper()}:{path_qs}:".encode() + body
    digest = hmac.new((secret or SECRETS[identity]).encode(), message, hashlib.sha256).hexdigest()
    headers = {"X-Grantbot-Identity": identity, "X-Grantbot-Timestamp": ts, "X-Grantbot-Signature": f"v1={digest}"}
    return headers if nonce is None else {**headers, "X-Grantbot-Nonce": nonce}


def slack_signed(body: str, *, secret: str = SIGNING_SECRET, timestamp: int | None = None) -> dict[str, str]:
    ts = str(int(time.time()) if timestamp is None else timestamp)
    digest = hmac.new(secret.encode(), f"v0:{ts}:{body}".encode(), hashlib.sha256).hexdigest()
    return {"X-Slack-Request-Timestamp": ts, "X-Slack-Signature": f"v0={digest}",
            "Content-Type": "application/x-www-form-urlencoded"}


def block_actions_body(message: dict, action_id: str, user_id: str, channel: str = CHANNEL) -> str:
    """A block_actions payload in Slack's shape (fixture), clicking ``action_id`` on ``message``, form-encoded."""
    payload = json.loads((FIXTURES / "slack" / "block_actions.json").read_text())
    payload = copy.deepcopy(payload)
    button = next(
        dict(element, block_id=block.get("block_id"))
        for block in message["blocks"] if block["type"] == "actions"
        for element in block["elements"] if element["action_id"] == action_id
    )
    payload["user"] = {"id": user_id, "username": user_id.lower(), "name": user_id.lower(), "team_id": "T0ACME"}
    payload["container"].update(message_ts=message["ts"], channel_id=channel)
    payload["channel"] = {"id": channel, "name": "access-requests"}
    payload["message"] = {"type": "message", "ts": message["ts"], "text": message.get("text", ""),
                          "blocks": message["blocks"], "user": "U0GRANTBOT", "bot_id": "B0GRANTBOT"}
    payload["actions"] = [{**button, "action_ts": f"{time.time():.6f}"}]
    return "payload=" + urllib.parse.quote(json.dumps(payload))


class Api:
    """A pipeline's view of a running grantbot: signed calls to its HTTP API."""

    def __init__(self, http: aiohttp.ClientSession, base_url: str, now=time.time) -> None:
        self.http = http
        self.base_url = base_url.rstrip("/")
        self.now = now  # the caller's clock, in unix seconds: grantbot's (injected) clock in tests

    async def call(self, method: str, path: str, body: Any = None, **kw) -> tuple[int, dict]:
        """A signed call (see :meth:`exchange`); returns (status, JSON body, or ``{"_raw": text}``)."""
        status, _, answer = await self.exchange(method, path, body, **kw)
        return status, answer

    async def exchange(self, method: str, path: str, body: Any = None, *, identity: str = "deploy-bot",
                       raw: bytes | None = None, headers: dict[str, str] | None = None, sign: bool = True,
                       timestamp: int | None = None, secret: str | None = None,
                       nonce: str | None = None) -> tuple[int, Mapping[str, str], dict]:
        """A call signed as ``identity`` (unless ``sign`` is False), with ``nonce`` if given; returns (status,
        headers, JSON body)."""
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else b"")
        all_headers = {"Content-Type": "application/json"}
        if sign:
            timestamp = int(self.now()) if timestamp is None else timestamp
            all_headers.update(hmac_headers(identity, method, path, data, secret=secret, timestamp=timestamp,
                                            nonce=nonce))
        all_headers.update(headers or {})
        async with self.http.request(method, self.base_url + path, data=data, headers=all_headers) as resp:
            text = await resp.text()
            try:
                answer = json.loads(text)
                remember_handed_over(answer)
                return resp.status, resp.headers, answer
            except json.JSONDecodeError:
                return resp.status, resp.headers, {"_raw": text}

    async def request_access(self, body: dict, **kw) -> tuple[int, dict]:
        return await self.call("POST", "/v1/access-requests", body, **kw)

    async def get_request(self, request_id: str, wait: int | None = None, **kw) -> tuple[int, dict]:
        path = f"/v1/access-requests/{request_id}" + (f"?wait={wait}" if wait is not None else "")
        return await self.call("GET", path, **kw)

    async def introspect(self, token: str, client: tuple[str, str] = ("rs", "rs-secret")) -> tuple[int, dict]:
        basic = base64.b64encode(f"{client[0]}:{client[1]}".encode()).decode()
        async with self.http.post(self.base_url + "/oauth/introspect", data={"token": token},
                                  headers={"Authorization": f"Basic {basic}"}) as resp:
            return resp.status, await resp.json()

    async def click(self, message: dict, action_id: str, user_id: str, *, secret: str = SIGNING_SECRET,
                    timestamp: int | None = None) -> int:
        body = block_actions_body(message, action_id, user_id)
        async with self.http.post(self.base_url + "/slack/events", data=body.encode(),
                                  headers=slack_signed(body, secret=secret, timestamp=timestamp)) as resp:
            return resp.status


def read_clock_offset(path: Path) -> float:
    """The seconds a clock offset file (GRANTBOT_CLOCK_OFFSET_FILE) adds to a grantbot process's clock."""
    return float(path.read_text())


def write_clock_offset(path: Path, seconds: float) -> None:
    """Set a clock offset file atomically: a temporary file beside it, then ``os.replace``. A running grantbot
    reads the file at any moment; rewritten in place, it could be read empty between truncate and write."""
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as file:
            file.write(repr(float(seconds)))
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def advance_clock_offset(path: Path, seconds: float) -> float:
    """Move the clock of the processes reading ``path`` on by ``seconds``; returns the new offset."""
    offset = read_clock_offset(path) + seconds
    write_clock_offset(path, offset)
    return offset


async def eventually(check, timeout: float = 10.0, interval: float = 0.05):
    """Wait for an asynchronous side effect (a Slack post by the outbox worker) and return ``check()``'s value."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = check()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(interval)


def cards(sandbox) -> list[dict]:
    """Top-level messages with blocks (approval cards), newest last."""
    return [m for m in sandbox.messages if m.get("blocks") and not m.get("thread_ts")]


def buttons(message: dict) -> list[str]:
    return [e["action_id"] for b in message.get("blocks") or [] if b["type"] == "actions" for e in b["elements"]]


def message_text(message: dict) -> str:
    """All visible text of a message: its text and every text in its blocks."""
    parts = [message.get("text") or ""]

    def walk(node):
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "text" and isinstance(value, str):
                    parts.append(value)
                else:
                    walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(message.get("blocks") or [])
    return "\n".join(parts)


class TcpProxy:
    """A TCP relay in front of a server (the database) that a test can break and mend, like a network:

    - :meth:`cut`: every open connection is reset and new ones are refused (the server went away);
    - :meth:`blackhole`: connections stay open and new ones are accepted, but no byte gets through either way
      (packets dropped: the peer hears nothing, not even a reset). What is sent meanwhile is held, as TCP keeps
      unacknowledged data for retransmission; a connection whose sender closes it loses what it held;
    - :meth:`restart`: open connections are reset and new ones are refused as PostgreSQL refuses them while it
      starts up (an ErrorResponse with SQLSTATE 57P03, "the database system is starting up");
    - :meth:`restore`: bytes flow again, held ones first (new connections reach the server).
    """

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.up = True
        self.silent = False
        self.starting_up = False
        self._server: asyncio.base_events.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._held: dict[asyncio.StreamWriter, bytearray] = {}  # destination -> bytes the blackhole swallowed
        self._relays: set[asyncio.Task] = set()
        self._flowing = asyncio.Event()
        self._flowing.set()
        self.port = 0

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        relay = asyncio.current_task()
        self._relays.add(relay)
        relay.add_done_callback(self._relays.discard)
        if not self.up:
            writer.close()
            return
        if self.starting_up:
            await _refuse_as_starting_up(reader, writer)
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        self._writers.update((writer, up_writer))

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    if self.silent:
                        self._held.setdefault(dst, bytearray()).extend(data)
                        continue
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                # The sender is gone: what the network held for it is lost, and the other end hears of it only
                # once the network carries packets again.
                self._held.pop(dst, None)
                await self._flowing.wait()
                dst.close()
                self._writers.discard(dst)

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    def cut(self) -> None:
        """Drop every open connection and refuse new ones."""
        self.up = False
        self.silent = False
        self._held.clear()
        self._flowing.set()
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    def blackhole(self) -> None:
        """Keep every connection open and accept new ones, but let no byte through (see the class)."""
        self.silent = True
        self._flowing.clear()

    def restart(self) -> None:
        """Reset every open connection and answer new ones as a PostgreSQL that is starting up (see the class)."""
        self.cut()
        self.up = True
        self.starting_up = True

    def restore(self) -> None:
        self.up = True
        self.silent = False
        self.starting_up = False
        for dst, data in list(self._held.items()):
            if not dst.transport.is_closing():
                dst.write(bytes(data))
        self._held.clear()
        self._flowing.set()

    async def stop(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        await asyncio.gather(*self._relays, return_exceptions=True)  # each ends once its connections are dropped


SSL_REQUEST = 80877103  # PostgreSQL frontend/backend protocol: the code of an SSLRequest


async def _refuse_as_starting_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Answer a client as PostgreSQL does while it starts up: 'N' to an SSLRequest, then, to the StartupMessage, an
    ErrorResponse (FATAL, SQLSTATE 57P03) and the end of the connection (postgresql.org/docs/current/protocol-flow.html)."""
    try:
        length, code = struct.unpack("!ii", await reader.readexactly(8))
        if (length, code) == (8, SSL_REQUEST):
            writer.write(b"N")
            length, _ = struct.unpack("!ii", await reader.readexactly(8))
        await reader.readexactly(length - 8)  # the rest of the StartupMessage
        fields = b"SFATAL\0VFATAL\0C57P03\0Mthe database system is starting up\0\0"
        writer.write(b"E" + struct.pack("!i", 4 + len(fields)) + fields)
        await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


async def open_modal(sandbox, card: dict, action_id: str, user_id: str) -> dict:
    """Click ``action_id`` on ``card`` as ``user_id`` through the sandbox (a trigger_id it issued) and return the
    modal grantbot opened for them ({"id", "user", "view", "errors"})."""
    before = set(sandbox.views)
    assert await sandbox.click(channel=card["channel"], ts=card["ts"], action_id=action_id, user_id=user_id) == 200
    return await eventually(lambda: next((v for k, v in sandbox.views.items() if k not in before), None))


async def deny_with_reason(sandbox, card: dict, user_id: str, reason: str = "not now") -> tuple[int, Any]:
    """Deny as an approver does in Slack: the Deny button, then the reason modal's submission."""
    view = await open_modal(sandbox, card, "deny", user_id)
    return await sandbox.submit_view(view["id"], {"reason": reason})
