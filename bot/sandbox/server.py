"""A local fake of Slack, served over real HTTP, for development and end-to-end tests.

grantbot talks to it exactly as it talks to Slack: its ``AsyncWebClient`` is pointed at
``SlackSandbox.api_url``, and button clicks reach grantbot's ``/slack/events`` as signed
``block_actions`` requests. A browser on ``GET /`` shows the channel and lets a person click.
"""

from __future__ import annotations

import asyncio
import copy
import json
import math
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import aiohttp
from aiohttp import web
from slack_sdk.signature import SignatureVerifier

# Slack's documented limits (api.slack.com/reference/block-kit, chat.postMessage).
MAX_BLOCKS = 50
MAX_VIEW_BLOCKS = 100  # views (App Home, modals): views.publish
MAX_PRIVATE_METADATA, MAX_CALLBACK_ID = 3_000, 255
MAX_TEXT = 40_000
MAX_SECTION_TEXT = 3_000
MAX_FIELDS, MAX_FIELD_TEXT = 10, 2_000
# Modals (api.slack.com/reference/surfaces/views, views.open): a trigger_id is good for 3 s and once; a modal
# title, submit and close are at most 24 characters, private_metadata 3,000, callback_id 255; 100 blocks.
TRIGGER_SECONDS = 3.0
MAX_VIEW_TITLE = 24
MAX_PRIVATE_METADATA = 3_000
MAX_CALLBACK_ID = 255
MAX_VIEW_BLOCKS = 100
MAX_HEADER_TEXT = 150
MAX_ACTION_ELEMENTS = 25
# A response_url works five times within 30 minutes.
RESPONSE_URL_USES = 5
# How long a "hang" fault holds a call before answering 504 (unless the sandbox stops first): longer than any
# client timeout a test uses, so the client gives up first, as it would against a Slack that never answers.
HANG_SECONDS = 120.0
FAULTS = ("ratelimited", "server_error", "bad_gateway", "empty", "hang")

BOT_ID = "B0GRANTBOT"
APP_ID = "A0GRANTBOT"
_PAGE = Path(__file__).with_name("page.html")

Args = dict[str, Any]


def _err(error: str, **extra: Any) -> dict:
    return {"ok": False, "error": error, **extra}


@dataclass
class Fault:
    """A failure the sandbox answers instead of doing ``method``'s work (see :meth:`SlackSandbox.inject`).

    ``channel`` None matches every channel; ``remaining`` counts the calls still to fail (None: until
    ``until``, a ``time.monotonic()`` deadline).
    """

    method: str
    kind: str
    channel: str | None
    retry_after: int
    remaining: int | None
    until: float | None

    def matches(self, method: str, channel: Any, now: float) -> bool:
        if method != self.method or (self.channel is not None and channel != self.channel):
            return False
        return self.remaining > 0 if self.remaining is not None else now < (self.until or 0)


@dataclass
class _Bucket:
    tokens: float
    at: float


def _handle(display_name: str, fallback: str) -> str:
    """The @handle Slack would show for a display name: "dana (approver)" -> "dana"."""
    return (display_name.split() or [fallback])[0].lower()


def _text_of(obj: Any) -> str:
    return str(obj.get("text", "")) if isinstance(obj, dict) else ""


def _check_blocks(blocks: Any, most_blocks: int = MAX_BLOCKS) -> list[str]:
    """Slack's Block Kit validation, reduced to the limits a card can hit; the messages mimic Slack's
    ``response_metadata.messages`` so a failure reads the same as in production."""
    if not isinstance(blocks, list):
        return ["must be an array [json-pointer:/blocks]"]
    problems: list[str] = []

    def at_most(count: int, most: int, at: str, unit: str = "characters") -> None:
        if count > most:
            problems.append(f"must be no more than {most} {unit} [json-pointer:{at}]")

    at_most(len(blocks), most_blocks, "/blocks", "items")
    block_ids = set()
    for i, block in enumerate(blocks):
        at = f"/blocks/{i}"
        if not isinstance(block, dict) or not isinstance(block.get("type"), str):
            problems.append(f"missing required field: type [json-pointer:{at}]")
            continue
        if "block_id" in block:
            if block["block_id"] in block_ids:
                problems.append(f"duplicate block_id [json-pointer:{at}/block_id]")
            block_ids.add(block["block_id"])
        if block["type"] == "section":
            fields = block.get("fields") or []
            if not block.get("text") and not fields:
                problems.append(f"must provide either text or fields [json-pointer:{at}]")
            at_most(len(_text_of(block.get("text"))), MAX_SECTION_TEXT, f"{at}/text/text")
            at_most(len(fields), MAX_FIELDS, f"{at}/fields", "items")
            for j, field in enumerate(fields):
                at_most(len(_text_of(field)), MAX_FIELD_TEXT, f"{at}/fields/{j}/text")
        elif block["type"] == "header":
            at_most(len(_text_of(block.get("text"))), MAX_HEADER_TEXT, f"{at}/text/text")
        elif block["type"] == "actions":
            at_most(len(block.get("elements") or []), MAX_ACTION_ELEMENTS, f"{at}/elements", "items")
    return problems


def _buttons(blocks: list[dict]):
    """(block, button) for every button, in actions blocks and as section accessories."""
    for block in blocks:
        for element in block.get("elements", []) if block["type"] == "actions" else [block.get("accessory")]:
            if isinstance(element, dict) and element.get("type") == "button":
                yield block, element


def _with_ids(blocks: list[dict]) -> list[dict]:
    """Slack fills in a random block_id and action_id where the app gave none, and echoes them back in
    payloads; doing the same here catches code that relies on ids it never set."""
    blocks = copy.deepcopy(blocks)
    for block in blocks:
        block.setdefault("block_id", secrets.token_hex(3))
    for _, button in _buttons(blocks):
        button.setdefault("action_id", secrets.token_hex(3))
    return blocks



def _check_view(view: Any) -> list[str]:
    """Slack's view validation for views.open, reduced to what a modal can get wrong: type, title, callback_id,
    private_metadata, and the blocks (the message limits plus input blocks' label and element)."""
    if not isinstance(view, dict) or view.get("type") != "modal":
        return ["must be a modal view [json-pointer:/view/type]"]
    problems = []
    for key in ("title", "submit", "close"):
        if key in view or key == "title":
            text = _text_of(view.get(key))
            if not text:
                problems.append(f"missing required field: text [json-pointer:/view/{key}]")
            elif len(text) > MAX_VIEW_TITLE:
                problems.append(f"must be less than {MAX_VIEW_TITLE + 1} characters [json-pointer:/view/{key}/text]")
    if len(str(view.get("private_metadata") or "")) > MAX_PRIVATE_METADATA:
        problems.append(f"must be no more than {MAX_PRIVATE_METADATA} characters [json-pointer:/view/private_metadata]")
    if len(str(view.get("callback_id") or "")) > MAX_CALLBACK_ID:
        problems.append(f"must be no more than {MAX_CALLBACK_ID} characters [json-pointer:/view/callback_id]")
    blocks = view.get("blocks")
    if isinstance(blocks, list) and len(blocks) > MAX_VIEW_BLOCKS:
        problems.append(f"must be no more than {MAX_VIEW_BLOCKS} items [json-pointer:/view/blocks]")
    problems += [p for p in _check_blocks(blocks) if "[json-pointer:/blocks]" not in p or not isinstance(blocks, list)]
    for i, block in enumerate(blocks if isinstance(blocks, list) else []):
        if isinstance(block, dict) and block.get("type") == "input":
            if not _text_of(block.get("label")):
                problems.append(f"missing required field: label [json-pointer:/view/blocks/{i}/label]")
            element = block.get("element")
            if not isinstance(element, dict) or not element.get("action_id"):
                problems.append(f"missing required field: element.action_id [json-pointer:/view/blocks/{i}/element]")
    return problems

class SlackSandbox:
    """A local stand-in for Slack's Web API, response_urls and interactivity, as one aiohttp server.

    Web API (``POST``/``GET /api/{method}``, JSON, form or query arguments, Slack's wire format: always
    HTTP 200 with ``{"ok": true, ...}`` or ``{"ok": false, "error": ...}``, ``Content-Type: application/json``):
    ``auth.test``, ``chat.postMessage`` (with ``metadata``), ``chat.update``, ``chat.postEphemeral``,
    ``users.info``, ``conversations.history``, ``conversations.replies``, ``usergroups.users.list`` (groups
    from the ``usergroups`` argument or :meth:`set_usergroup`) and ``views.publish`` (App Home, up to 100
    blocks, kept in ``home_views`` per user); anything
    else is ``unknown_method``. Calls need ``Authorization: Bearer <bot_token>`` (or a ``token`` argument),
    else ``invalid_auth``. A user id as ``channel`` posts into the bot's DM with that user (``D...``).

    Limits enforced like Slack: 50 blocks, 3,000 characters per section text, 10 fields of 2,000, 150 per
    header, 25 elements per actions block, unique block_ids (``invalid_blocks``, with Slack's
    ``response_metadata.messages``); missing block_id/action_id are filled in; ``text`` over 40,000
    characters (``msg_too_long``); neither text nor blocks (``no_text``); unknown channel
    (``channel_not_found``) or message (``message_not_found``); a response_url works 5 times.
    Not enforced: scopes, channel membership. Rate limits only when asked:
    ``post_rate_limit = (per_second, burst)`` answers ``chat.postMessage`` with 429 and ``Retry-After`` when a
    channel gets more than ``burst`` posts at once or more than ``per_second`` sustained (a token bucket per
    channel, wall clock), as Slack does ("1 message per second per channel, short bursts allowed"); off (None)
    by default.

    Faults, for tests of what grantbot does when Slack misbehaves: :meth:`inject` makes the next N calls of a
    method (or those during a number of seconds), optionally only for one channel, answer 429 with
    ``Retry-After``, 500, a 502 HTML page, an empty 503, or nothing at all (hang).

    Modals: ``views.open`` takes a ``trigger_id`` this sandbox issued in a payload, once, within
    ``trigger_seconds`` (3 s; set it to 0 to make every trigger arrive expired): else ``expired_trigger_id``,
    ``exchanged_trigger_id`` or ``invalid_trigger_id``. Open modals are in ``views`` (view id -> {"id", "user",
    "view", "errors"}); :meth:`submit_view` sends their ``view_submission``; ``POST /sandbox/submit`` backs the
    page's modal form.

    Interactivity: ``click()`` sends a Slack block_actions payload to ``events_url``, signed with the
    signing secret, and returns grantbot's HTTP status. Each payload's ``response_url`` points at
    ``POST /response/{token}`` here.

    Slash commands: ``slash_command()`` posts Slack's signed form payload to ``events_url`` with a response_url
    here; answers (to the response_url, or in the HTTP answer itself) are recorded in ``ephemerals``.
    ``click_ephemeral()`` clicks a button of an ephemeral message (``is_ephemeral`` container, no ``message``);
    its response_url can replace or delete that ephemeral.

    Browser: ``GET /`` renders the channels; ``GET /sandbox/state``, ``POST /sandbox/click`` (``"ephemeral": true``
    for an ephemeral's button) and ``POST /sandbox/command`` back it.

    Events API: ``open_home(user)`` sends a signed ``app_home_opened`` event_callback (JSON) to ``events_url``,
    ``verify_url()`` Slack's ``url_verification`` challenge; ``home_click()`` a click in a user's Home tab.

    Browser: ``GET /`` renders the channels and a "Home" tab; ``GET /sandbox/state``, ``POST /sandbox/click``,
    ``GET /sandbox/home/{user}``, ``POST /sandbox/home/{user}/open`` and ``POST /sandbox/home/{user}/click``
    back it.

    Recorded for tests: ``messages`` ({"channel", "ts", "thread_ts", "text", "blocks", "user",
    "updated_count"}), ``ephemerals`` ({"channel", "user", "text", "blocks", "ts"}) and ``calls``
    ({"method", "args"}, every Web API call in order).
    """

    # Slack shows the clicking user an error if the app does not answer within 3 seconds.
    ack_timeout: float = 3.0

    def __init__(self, *, bot_token: str, signing_secret: str, events_url: str | None = None,
                 team_id: str = "T0SANDBOX", bot_user_id: str = "U0GRANTBOT",
                 channels: dict[str, str] | None = None, users: dict[str, str] | None = None,
                 app_token: str | None = None, usergroups: dict[str, list[str]] | None = None):
        self.bot_token = bot_token
        self.app_token = app_token  # Socket Mode: apps.connections.open takes this xapp- token
        self._sockets: list[web.WebSocketResponse] = []
        self._acks: dict[str, asyncio.Future] = {}
        self.signing_secret = signing_secret
        self.events_url = events_url
        self.team_id = team_id
        self.bot_user_id = bot_user_id
        self.channels = dict(channels if channels is not None else {"C0SANDBOX": "access-requests"})
        self.users = dict(users if users is not None else
                          {"U0APPROVER": "dana (approver)", "U0OTHER": "sam (not an approver)"})
        # Slack user groups: id ("S...") -> member user IDs; groups in disabled_usergroups are disabled.
        self.usergroups: dict[str, list[str]] = {k: list(v) for k, v in (usergroups or {}).items()}
        self.disabled_usergroups: set[str] = set()
        self.messages: list[dict] = []
        self.ephemerals: list[dict] = []
        self.calls: list[dict] = []
        self.faults: list[Fault] = []
        self.post_rate_limit: tuple[float, int] | None = None
        self.rate_limited = 0
        self._buckets: dict[str, _Bucket] = {}
        self._unhang = asyncio.Event()
        self.base_url: str | None = None  # set by start()
        self._hooks: dict[str, dict] = {}  # response_url token -> {"channel", "ts", "user", "uses"}
        self._last_us = 0
        self._runner: web.AppRunner | None = None
        # Modals: issued trigger ids -> {"user", "issued" (monotonic seconds), "used"}; open views by id.
        self.trigger_seconds = TRIGGER_SECONDS
        self._triggers: dict[str, dict] = {}
        self.views: dict[str, dict] = {}
        self._methods = {
            "auth.test": self._auth_test, "chat.postMessage": self._post_message,
            "chat.update": self._update, "chat.postEphemeral": self._post_ephemeral,
            "users.info": self._users_info, "conversations.history": self._history,
            "conversations.replies": self._replies, "usergroups.users.list": self._usergroup_members,
            "views.open": self._views_open,
            "views.publish": self._views_publish,
        }
        # App Home: user id -> the view last published for that user (as views.publish answers it).
        self.home_views: dict[str, dict] = {}
        self.home_publishes: dict[str, int] = {}  # user id -> how many times views.publish succeeded for them

    # ----- server -----

    def web_app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/api/{method}", self._api)
        app.router.add_post("/sandbox/submit", self._submit_route)
        app.router.add_post("/response/{token}", self._response_url)
        app.router.add_get("/", self._page)
        app.router.add_get("/sandbox/state", self._state)
        app.router.add_post("/sandbox/click", self._click_route)
        app.router.add_post("/sandbox/command", self._command_route)
        app.router.add_get("/socket-mode", self._socket)
        app.router.add_get("/sandbox/home/{user}", self._home_route)
        app.router.add_post("/sandbox/home/{user}/open", self._home_open_route)
        app.router.add_post("/sandbox/home/{user}/click", self._home_click_route)
        return app

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Serve on host:port (0 = any free port); returns the base URL, e.g. "http://127.0.0.1:54321"."""
        self._runner = web.AppRunner(self.web_app())
        await self._runner.setup()
        await web.TCPSite(self._runner, host, port).start()
        bound_port = self._runner.addresses[0][1]
        self.base_url = f"http://{f'[{host}]' if ':' in host else host}:{bound_port}"
        return self.base_url

    async def stop(self) -> None:
        self._unhang.set()  # calls held by a "hang" fault end now instead of holding up the shutdown
        await self.drop_sockets()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @property
    def api_url(self) -> str:
        """What ``AsyncWebClient(base_url=...)`` takes: the base URL plus "/api/"."""
        if self.base_url is None:
            raise RuntimeError("SlackSandbox is not started")
        return self.base_url + "/api/"

    # ----- Web API -----

    async def _api(self, request: web.Request) -> web.Response:
        args: Args = dict(request.query)
        try:
            if request.method == "POST" and request.can_read_body:
                if request.content_type == "application/json":
                    body = await request.json()
                    if not isinstance(body, dict):
                        raise ValueError("JSON body is not an object")
                    args.update(body)
                else:
                    args.update(await request.post())
        except ValueError:
            return web.json_response(_err("invalid_json"))
        token = args.pop("token", None)
        authorization = request.headers.get("Authorization", "")
        if authorization.startswith("Bearer "):
            token = authorization.removeprefix("Bearer ")
        method = request.match_info["method"]
        call = {"method": method, "args": args, "channel": args.get("channel"), "at": time.time(), "status": 200}
        self.calls.append(call)
        if method == "apps.connections.open":
            return web.json_response(self._connections_open(token))
        if token != self.bot_token:
            return web.json_response(_err("invalid_auth"))
        response = await self._fault(method, args.get("channel"), call) or self._rate_limit(method, args)
        if response is not None:
            call["status"] = response.status
            return response
        handler = self._methods.get(method)
        return web.json_response(handler(args) if handler else _err("unknown_method"))

    # ----- faults and rate limits -----

    def inject(self, method: str, kind: str, times: int | None = 1, *, seconds: float | None = None,
               channel: str | None = None, retry_after: int = 1) -> Fault:
        """Make calls of ``method`` fail: the next ``times`` of them, or (``times=None``) all arriving within
        ``seconds`` (wall clock) from now; only those naming ``channel`` if given.

        ``kind``: "ratelimited" (HTTP 429, ``Retry-After: retry_after`` seconds, ``{"ok": false, "error":
        "ratelimited"}`` as Slack sends), "server_error" (500, ``{"ok": false, "error": "internal_error"}``),
        "bad_gateway" (502 with an HTML page, as a proxy in front of Slack answers), "empty" (503 with no body,
        python-slack-sdk#1693) or "hang" (no answer for ``HANG_SECONDS``, then 504; the client times out
        first). Faults are used in the order injected; a failed call does none of the method's work. Raises
        ValueError for an unknown kind or neither ``times`` nor ``seconds``.
        """
        if kind not in FAULTS:
            raise ValueError(f"unknown fault {kind!r}; one of {FAULTS}")
        if times is None and seconds is None:
            raise ValueError("give times or seconds")
        fault = Fault(method, kind, channel, retry_after, times,
                      time.monotonic() + seconds if seconds is not None else None)
        self.faults.append(fault)
        return fault

    async def _fault(self, method: str, channel: Any, call: dict) -> web.Response | None:
        now = time.monotonic()
        fault = next((f for f in self.faults if f.matches(method, channel, now)), None)
        if fault is None:
            return None
        if fault.remaining is not None:
            fault.remaining -= 1
        if fault.kind == "ratelimited":
            return web.json_response(_err("ratelimited"), status=429,
                                     headers={"Retry-After": str(fault.retry_after)})
        if fault.kind == "server_error":
            return web.json_response(_err("internal_error"), status=500)
        if fault.kind == "bad_gateway":
            return web.Response(status=502, content_type="text/html",
                                text="<html><head><title>502 Bad Gateway</title></head>"
                                     "<body><h1>502 Bad Gateway</h1></body></html>")
        if fault.kind == "empty":
            return web.Response(status=503)
        call["status"] = 0
        try:
            async with asyncio.timeout(HANG_SECONDS):  # not wait_for, which can swallow a cancellation on 3.11
                await self._unhang.wait()
        except TimeoutError:
            pass
        return web.Response(status=504)

    def _rate_limit(self, method: str, args: Args) -> web.Response | None:
        """Slack's chat.postMessage limit, when ``post_rate_limit`` is set: a token bucket per channel."""
        if self.post_rate_limit is None or method != "chat.postMessage":
            return None
        channel = self._channel(args.get("channel"))
        if channel is None:
            return None
        per_second, burst = self.post_rate_limit
        now = time.monotonic()
        bucket = self._buckets.setdefault(channel, _Bucket(float(burst), now))
        bucket.tokens = min(float(burst), bucket.tokens + (now - bucket.at) * per_second)
        bucket.at = now
        if bucket.tokens >= 1:
            bucket.tokens -= 1
            return None
        self.rate_limited += 1
        retry_after = max(1, math.ceil((1 - bucket.tokens) / per_second))
        return web.json_response(_err("ratelimited"), status=429, headers={"Retry-After": str(retry_after)})

    # ----- Socket Mode -----

    def _connections_open(self, token: str | None) -> dict:
        """Slack apps.connections.open: a WebSocket URL for an app-level (xapp-) token."""
        if not self.app_token or token != self.app_token:
            return _err("invalid_auth")
        return {"ok": True, "url": (self.base_url or "").replace("http", "ws", 1) + "/socket-mode"}

    async def _socket(self, request: web.Request) -> web.StreamResponse:
        """The Socket Mode WebSocket: says hello, then carries envelopes out and their acks back."""
        ws = web.WebSocketResponse(autoping=True)
        await ws.prepare(request)
        await ws.send_json({"type": "hello", "num_connections": len(self._sockets) + 1,
                            "connection_info": {"app_id": APP_ID}, "debug_info": {"host": "sandbox"}})
        self._sockets.append(ws)
        try:
            async for message in ws:
                if message.type == aiohttp.WSMsgType.TEXT:
                    ack = json.loads(message.data)
                    future = self._acks.pop(ack.get("envelope_id", ""), None)
                    if future is not None and not future.done():
                        future.set_result(ack)
        finally:
            if ws in self._sockets:
                self._sockets.remove(ws)
        return ws

    @property
    def socket_connected(self) -> bool:
        return bool(self._sockets)

    async def drop_sockets(self) -> None:
        """Close every Socket Mode connection, as Slack does on its side from time to time."""
        for ws in list(self._sockets):
            self._sockets.remove(ws)
            await ws.close()

    async def _deliver_over_socket(self, payload: dict, kind: str = "interactive") -> int:
        envelope_id = secrets.token_hex(8)
        future: asyncio.Future = asyncio.get_running_loop().create_future()
        self._acks[envelope_id] = future
        await self._sockets[-1].send_json({"envelope_id": envelope_id, "type": kind, "payload": payload,
                                           "accepts_response_payload": True, "retry_attempt": 0,
                                           "retry_reason": ""})
        try:
            await asyncio.wait_for(future, self.ack_timeout)
        finally:
            self._acks.pop(envelope_id, None)
        return 200

    def _auth_test(self, args: Args) -> dict:
        return {"ok": True, "url": (self.base_url or "http://sandbox.invalid") + "/", "team": "Sandbox",
                "user": "grantbot", "team_id": self.team_id, "user_id": self.bot_user_id, "bot_id": BOT_ID,
                "is_enterprise_install": False}

    def _post_message(self, args: Args) -> dict:
        channel = self._channel(args.get("channel"))
        if channel is None:
            return _err("channel_not_found")
        text, blocks, problem = self._content(args)
        if problem:
            return problem
        thread_ts = args.get("thread_ts") or None
        parent = self._find(channel, thread_ts) if thread_ts else None
        if parent and parent["thread_ts"]:  # replying to a reply lands in the same thread
            thread_ts = parent["thread_ts"]
        metadata = args.get("metadata")
        if isinstance(metadata, str):  # form-encoded
            try:
                metadata = json.loads(metadata)
            except ValueError:
                return _err("invalid_metadata_format")
        message = self._store(channel, text or "", blocks or [], thread_ts)
        if metadata:
            message["metadata"] = metadata
        return {"ok": True, "channel": channel, "ts": message["ts"], "message": self._as_slack(message)}

    def _history(self, args: Args) -> dict:
        """Slack conversations.history: top-level messages, newest first, ``oldest``/``limit`` honoured."""
        channel = args.get("channel")
        if channel not in self.channels:
            return _err("channel_not_found")
        oldest = float(args.get("oldest") or 0)
        found = [m for m in reversed(self.messages)
                 if m["channel"] == channel and not m["thread_ts"] and float(m["ts"]) >= oldest]
        return self._paginate(found, args)

    def _paginate(self, found: list[dict], args: Args) -> dict:
        """One page of ``found`` per Slack's cursor pagination (``limit``, ``cursor``, ``response_metadata``)."""
        limit = int(args.get("limit") or 100)
        start = int(args.get("cursor") or 0)
        rest = found[start + limit:]
        return {"ok": True, "messages": [self._as_slack(m) for m in found[start:start + limit]],
                "has_more": bool(rest), "response_metadata": {"next_cursor": str(start + limit) if rest else ""}}

    def _replies(self, args: Args) -> dict:
        """Slack conversations.replies: the parent, then its replies, oldest first."""
        channel, ts = args.get("channel"), args.get("ts")
        parent = self._find(channel, ts) if isinstance(channel, str) else None
        if parent is None:
            return _err("thread_not_found")
        replies = [m for m in self.messages if m["channel"] == channel and m["thread_ts"] == ts]
        return self._paginate([parent, *replies], args)

    def _update(self, args: Args) -> dict:
        if not isinstance(args.get("channel"), str) or args["channel"] not in self.channels:
            return _err("channel_not_found")
        message = self._find(args["channel"], args.get("ts"))
        if message is None:
            return _err("message_not_found")
        text, blocks, problem = self._content(args)
        if problem:
            return problem
        self._replace(message, text, blocks)
        return {"ok": True, "channel": message["channel"], "ts": message["ts"], "text": message["text"],
                "message": self._as_slack(message)}

    def _post_ephemeral(self, args: Args) -> dict:
        channel = self._channel(args.get("channel"))
        if channel is None:
            return _err("channel_not_found")
        if not isinstance(args.get("user"), str) or args["user"] not in self.users:
            return _err("user_not_found")
        text, blocks, problem = self._content(args)
        if problem:
            return problem
        ts = self._next_ts()
        self.ephemerals.append({"channel": channel, "user": args["user"], "text": text or "",
                                "blocks": blocks or [], "ts": ts})
        return {"ok": True, "message_ts": ts}

    def _users_info(self, args: Args) -> dict:
        user_id = args.get("user")
        if user_id not in self.users:
            return _err("user_not_found")
        display = self.users[user_id]
        handle = _handle(display, user_id)
        return {"ok": True, "user": {
            "id": user_id, "team_id": self.team_id, "name": handle, "real_name": display, "is_bot": False,
            "deleted": False, "tz": "UTC", "tz_offset": 0,
            "profile": {"real_name": display, "display_name": display, "email": f"{handle}@example.com"}}}

    def set_usergroup(self, group_id: str, members: list[str], *, disabled: bool = False) -> None:
        """Create or replace a user group ("S..." id) with these member user IDs, as an admin would in Slack."""
        self.usergroups[group_id] = list(members)
        (self.disabled_usergroups.add if disabled else self.disabled_usergroups.discard)(group_id)

    def _usergroup_members(self, args: Args) -> dict:
        """Slack usergroups.users.list: ``{"ok": true, "users": ["U…", …]}``; ``usergroup`` required
        (``invalid_arguments`` without), unknown group ``no_such_subteam``. A disabled group lists no users unless
        ``include_disabled`` is true (an assumption: Slack documents the flag, not the answer without it)."""
        group = args.get("usergroup")
        if not isinstance(group, str) or not group:
            return _err("invalid_arguments")
        if group not in self.usergroups:
            return _err("no_such_subteam")
        include_disabled = str(args.get("include_disabled", "")).lower() in ("1", "true")
        if group in self.disabled_usergroups and not include_disabled:
            return {"ok": True, "users": []}
        return {"ok": True, "users": list(self.usergroups[group])}

    # ----- response_url -----

    async def _response_url(self, request: web.Request) -> web.Response:
        hook = self._hooks.get(request.match_info["token"])
        if hook is None:
            return web.json_response(_err("expired_url"), status=404)
        hook["uses"] += 1
        if hook["uses"] > RESPONSE_URL_USES:
            return web.json_response(_err("used_url"), status=404)
        try:
            body = await request.json()
            if not isinstance(body, dict):
                raise ValueError("JSON body is not an object")
        except ValueError:
            return web.json_response(_err("invalid_payload"), status=400)
        if hook.get("ephemeral_ts"):  # a click on an ephemeral message: "original" is that ephemeral
            return self._respond_to_ephemeral(hook, body)
        original = self._find(hook["channel"], hook["ts"])
        if body.get("delete_original") in (True, "true"):
            if original is not None:
                self.messages.remove(original)
            return web.json_response({"ok": True})
        text, blocks, problem = self._content(body)
        if problem:
            return web.json_response(problem, status=400)
        if body.get("replace_original") in (True, "true"):
            if original is None:
                return web.json_response(_err("message_not_found"), status=404)
            self._replace(original, text, blocks)
        elif body.get("response_type") == "in_channel":
            self._store(hook["channel"], text or "", blocks or [], original["thread_ts"] if original else None)
        else:
            self.ephemerals.append({"channel": hook["channel"], "user": hook["user"], "text": text or "",
                                    "blocks": blocks or [], "ts": self._next_ts()})
        return web.json_response({"ok": True})

    # ----- interactivity -----

    def block_actions_payload(self, *, channel: str, ts: str, action_id: str, user_id: str) -> dict:
        """A Slack block_actions payload for a click on the button ``action_id`` of message ``ts``.

        Same shape as tests/fixtures/slack/block_actions.json. Raises KeyError for an unknown message or
        user, ValueError if the message has no such button. Each call issues a fresh response_url.
        """
        message = self._find(channel, ts)
        if message is None:
            raise KeyError(f"no message {ts} in channel {channel}")
        if user_id not in self.users:
            raise KeyError(f"unknown user {user_id}")
        block, button = next(((b, e) for b, e in _buttons(message["blocks"]) if e["action_id"] == action_id),
                             (None, None))
        if button is None:
            raise ValueError(f"message {ts} has no button with action_id {action_id!r}")
        return self._block_actions(
            user_id, block, button,
            container={"type": "message", "message_ts": ts, "channel_id": channel, "is_ephemeral": False},
            channel={"id": channel, "name": self.channels.get(channel, channel)},
            message=self._as_slack(message),
            response_url=self._new_hook(channel, user_id, ts),
        )

    async def click(self, *, channel: str, ts: str, action_id: str, user_id: str) -> int:
        """Deliver a click to grantbot as Slack does: POST ``payload=<json>`` (form-encoded) to
        ``events_url`` with X-Slack-Request-Timestamp and X-Slack-Signature. Returns grantbot's HTTP status.

        Raises RuntimeError without ``events_url``, KeyError/ValueError as ``block_actions_payload``,
        TimeoutError if grantbot does not answer within ``ack_timeout`` seconds (Slack's 3 s).
        """
        payload = self.block_actions_payload(channel=channel, ts=ts, action_id=action_id, user_id=user_id)
        if self._sockets:  # Socket Mode: the app is connected; Slack sends over the socket, not to a URL
            return await self._deliver_over_socket(payload)
        status, _ = await self._post_signed(urlencode({"payload": json.dumps(payload)}))
        return status

    async def _post_signed(self, body: str) -> tuple[int, bytes]:
        """POST a form-encoded ``body`` to ``events_url`` signed as Slack signs; (HTTP status, response body)."""
        if not self.events_url:
            raise RuntimeError("events_url is not set")
        timestamp = str(int(time.time()))
        headers = {
            "Content-Type": "application/x-www-form-urlencoded",
            "User-Agent": "Slackbot 1.0 (+https://api.slack.com/robots)",
            "X-Slack-Request-Timestamp": timestamp,
            "X-Slack-Signature": SignatureVerifier(self.signing_secret).generate_signature(
                timestamp=timestamp, body=body),
        }
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.ack_timeout)) as session:
            async with session.post(self.events_url, data=body.encode(), headers=headers) as response:
                return response.status, await response.read()

    # ----- modals (views.open, view_submission) -----

    def _block_actions(self, user_id: str, block: dict, button: dict, *, container: dict, **where) -> dict:
        """A Slack ``block_actions`` payload for ``user_id`` pressing ``button`` of ``block``: the envelope every
        click shares (user, team, a fresh trigger_id) plus ``container`` and what locates the click (``channel``,
        ``message``, ``view``, ``response_url``). Same shape as tests/fixtures/slack/block_actions.json."""
        action = {k: button[k] for k in ("action_id", "text", "value", "style", "url", "confirm") if k in button}
        action.update(block_id=block["block_id"], type="button", action_ts=f"{time.time():.6f}")
        handle = _handle(self.users[user_id], user_id)
        return {
            "type": "block_actions",
            "user": {"id": user_id, "username": handle, "name": handle, "team_id": self.team_id},
            "api_app_id": APP_ID,
            "token": "sandbox-verification-token",
            "container": container,
            "trigger_id": self._issue_trigger(user_id),
            "team": {"id": self.team_id, "domain": "sandbox"},
            "enterprise": None,
            "is_enterprise_install": False,
            **where,
            "state": {"values": {}},
            "actions": [action],
        }

    def _issue_trigger(self, user_id: str) -> str:
        """A trigger_id in Slack's shape ("<unix s>.<n>.<hex>") that ``views.open`` accepts once, for a while."""
        trigger = f"{int(time.time())}.{secrets.randbelow(10**6)}.{secrets.token_hex(6)}"
        self._triggers[trigger] = {"user": user_id, "issued": time.monotonic(), "used": False}
        return trigger

    def _views_open(self, args: Args) -> dict:
        """Slack views.open: ``trigger_id`` (issued here, used once, within ``trigger_seconds``) and ``view`` (a
        modal, JSON or a JSON string). Answers ``{"ok": true, "view": {... "id": "V…", "state": {"values": {}}}}``."""
        trigger = self._triggers.get(str(args.get("trigger_id") or ""))
        if trigger is None:
            return _err("invalid_trigger_id")
        if trigger["used"]:
            return _err("exchanged_trigger_id")
        if time.monotonic() - trigger["issued"] >= self.trigger_seconds:
            return _err("expired_trigger_id")
        view = args.get("view")
        if isinstance(view, str):
            try:
                view = json.loads(view)
            except ValueError:
                return _err("invalid_arguments", response_metadata={"messages": ["invalid `view` JSON"]})
        problems = _check_view(view)
        if problems:
            return _err("invalid_arguments", response_metadata={"messages": problems})
        trigger["used"] = True
        view = {**view, "blocks": _with_ids(view["blocks"]), "id": "V" + secrets.token_hex(5).upper(),
                "team_id": self.team_id, "state": {"values": {}}, "hash": f"{time.time():.6f}.{secrets.token_hex(4)}",
                "app_id": APP_ID, "bot_id": BOT_ID, "previous_view_id": None}
        view["root_view_id"] = view["id"]
        self.views[view["id"]] = {"id": view["id"], "user": trigger["user"], "view": view, "errors": {}}
        return {"ok": True, "view": copy.deepcopy(view)}

    def view_state(self, view_id: str, values: dict[str, Any]) -> dict:
        """``view.state.values`` as Slack sends it for an open modal, from ``{block_id: answer}``: a string for a
        ``plain_text_input`` / ``number_input``, a list of option values for ``checkboxes`` /
        ``multi_static_select`` (the options' objects are taken from the view), or a dict used as it is (to send
        what a tampered client could). Raises KeyError for an unknown view or block."""
        view = self.views[view_id]["view"]
        inputs = {b["block_id"]: b["element"] for b in view["blocks"] if b["type"] == "input"}
        state: dict[str, dict] = {}
        for block_id, answer in values.items():
            element = inputs[block_id]
            if isinstance(answer, dict):
                entry = answer
            elif element["type"] in ("checkboxes", "multi_static_select"):
                chosen = [o for o in element.get("options", []) if o["value"] in answer]
                entry = {"type": element["type"], "selected_options": chosen}
            else:
                entry = {"type": element["type"], "value": answer}
            state[block_id] = {element["action_id"]: entry}
        return state

    async def submit_view(self, view_id: str, values: dict[str, Any], user_id: str | None = None) -> tuple[int, Any]:
        """Submit an open modal as its user would: POST a signed Slack ``view_submission`` payload (form field
        ``payload``) to ``events_url``. ``values`` as :meth:`view_state`. Returns grantbot's HTTP status and its
        answer (parsed JSON, or None for an empty body). An empty answer closes the modal (it leaves ``views``);
        ``{"response_action": "errors", "errors": {block_id: text}}`` keeps it open with those ``errors``.

        Raises KeyError for an unknown view, RuntimeError without ``events_url`` or over Socket Mode (not faked),
        TimeoutError as :meth:`click`.
        """
        opened = self.views[view_id]
        user = user_id or opened["user"]
        view = {**copy.deepcopy(opened["view"]), "state": {"values": self.view_state(view_id, values)}}
        handle = _handle(self.users.get(user, user), user)
        payload = {
            "type": "view_submission",
            "team": {"id": self.team_id, "domain": "sandbox"},
            "user": {"id": user, "username": handle, "name": handle, "team_id": self.team_id},
            "api_app_id": APP_ID,
            "token": "sandbox-verification-token",
            "trigger_id": self._issue_trigger(user),
            "view": view,
            "response_urls": [],
            "is_enterprise_install": False,
            "enterprise": None,
        }
        if self._sockets:
            raise RuntimeError("submit_view is not faked over Socket Mode")
        status, raw = await self._post_signed(urlencode({"payload": json.dumps(payload)}))
        answer = json.loads(raw) if raw.strip() else None
        if status == 200:
            if isinstance(answer, dict) and answer.get("response_action") == "errors":
                opened["errors"] = dict(answer.get("errors") or {})
            elif not (isinstance(answer, dict) and answer.get("response_action") in ("update", "push")):
                self.views.pop(view_id, None)  # an empty ack (or "clear") closes the modal
        return status, answer

    def close_view(self, view_id: str) -> None:
        """The user closes (cancels) a modal; Slack sends nothing unless the view asked with notify_on_close."""
        self.views.pop(view_id, None)

    async def _submit_route(self, request: web.Request) -> web.Response:
        """Browser: ``POST /sandbox/submit`` JSON {view_id, values, user_id?} → {status, answer}; {close: true}
        cancels the modal instead."""
        try:
            body = await request.json()
            view_id = body["view_id"]
            if body.get("close"):
                self.close_view(view_id)
                return web.json_response({"status": None})
            status, answer = await self.submit_view(view_id, dict(body.get("values") or {}), body.get("user_id"))
        except (ValueError, TypeError, KeyError) as e:
            return web.json_response({"error": f"bad submission: {e}"}, status=400)
        except RuntimeError as e:
            return web.json_response({"error": str(e)}, status=409)
        except TimeoutError:
            return web.json_response({"error": f"grantbot did not answer within {self.ack_timeout:g} s"},
                                     status=504)
        except aiohttp.ClientError as e:
            return web.json_response({"error": f"could not reach grantbot: {e}"}, status=502)
        return web.json_response({"status": status, "answer": answer})

    # ----- browser -----

    # ----- slash commands and clicks on ephemeral messages -----

    def _new_hook(self, channel: str, user_id: str, ts: str | None = None, ephemeral_ts: str | None = None) -> str:
        token = secrets.token_urlsafe(16)
        self._hooks[token] = {"channel": channel, "ts": ts, "user": user_id, "uses": 0, "ephemeral_ts": ephemeral_ts}
        return f"{self.base_url or 'http://sandbox.invalid'}/response/{token}"

    def slash_command_payload(self, text: str, *, user_id: str, channel: str, command: str = "/access") -> dict:
        """The form fields of a Slack slash command (same fields as tests/fixtures/slack/slash_command.form),
        with a fresh response_url whose answers land in ``ephemerals`` (or the channel for ``in_channel``).
        Raises KeyError for an unknown user or channel."""
        if user_id not in self.users:
            raise KeyError(f"unknown user {user_id}")
        resolved = self._channel(channel)
        if resolved is None:
            raise KeyError(f"unknown channel {channel}")
        return {
            "token": "sandbox-verification-token", "team_id": self.team_id, "team_domain": "sandbox",
            "channel_id": resolved, "channel_name": self.channels[resolved], "user_id": user_id,
            "user_name": _handle(self.users[user_id], user_id), "command": command, "text": text,
            "api_app_id": APP_ID, "is_enterprise_install": "false",
            "response_url": self._new_hook(resolved, user_id),
            "trigger_id": self._issue_trigger(user_id),
        }

    async def slash_command(self, text: str, *, user_id: str, channel: str = "C0SANDBOX",
                            command: str = "/access") -> int:
        """Deliver ``/command text`` typed by ``user_id`` in ``channel`` as Slack does: a signed, form-encoded POST
        to ``events_url`` (or a ``slash_commands`` envelope in Socket Mode). Returns grantbot's HTTP status.

        A non-empty JSON answer to the POST itself (an ``ack()`` with text or blocks) is shown to the user as an
        ephemeral, as Slack does; answers posted to the response_url arrive in ``ephemerals`` later.
        Raises as :meth:`click`, and KeyError for an unknown user or channel."""
        payload = self.slash_command_payload(text, user_id=user_id, channel=channel, command=command)
        if self._sockets:
            return await self._deliver_over_socket(payload, "slash_commands")
        status, body = await self._post_signed(urlencode(payload))
        if status == 200 and body.strip():
            try:
                answer = json.loads(body)
            except ValueError:  # Slack shows a plain-text answer as it is
                answer = {"text": body.decode(errors="replace")}
            if isinstance(answer, dict) and (answer.get("text") or answer.get("blocks")):
                self.ephemerals.append({"channel": payload["channel_id"], "user": user_id,
                                        "text": str(answer.get("text") or ""), "blocks": _with_ids(
                                            answer.get("blocks") or []), "ts": self._next_ts()})
        return status

    def _find_ephemeral(self, ts: Any) -> dict | None:
        return next((e for e in self.ephemerals if e["ts"] == ts), None)

    def ephemeral_block_actions_payload(self, *, ts: str, action_id: str, user_id: str) -> dict:
        """A block_actions payload for a click on a button of the ephemeral message ``ts``. As on Slack the
        container says ``is_ephemeral`` and there is no ``message``; only the person it was shown to can click.
        Raises KeyError (unknown ephemeral, or shown to someone else) and ValueError (no such button)."""
        message = self._find_ephemeral(ts)
        if message is None or message["user"] != user_id:
            raise KeyError(f"no ephemeral message {ts} shown to {user_id}")
        block, button = next(((b, e) for b, e in _buttons(message["blocks"]) if e["action_id"] == action_id),
                             (None, None))
        if button is None:
            raise ValueError(f"ephemeral message {ts} has no button with action_id {action_id!r}")
        channel = message["channel"]
        return self._block_actions(
            user_id, block, button,
            container={"type": "message", "message_ts": ts, "channel_id": channel, "is_ephemeral": True},
            channel={"id": channel, "name": self.channels.get(channel, channel)},
            response_url=self._new_hook(channel, user_id, ephemeral_ts=ts),
        )

    async def click_ephemeral(self, *, ts: str, action_id: str, user_id: str) -> int:
        """Deliver a click on a button of an ephemeral message (after its ``confirm`` dialog, if it has one: the
        sandbox plays the person who pressed the dialog's confirm button). Returns grantbot's HTTP status."""
        payload = self.ephemeral_block_actions_payload(ts=ts, action_id=action_id, user_id=user_id)
        if self._sockets:
            return await self._deliver_over_socket(payload)
        status, _ = await self._post_signed(urlencode({"payload": json.dumps(payload)}))
        return status

    def _respond_to_ephemeral(self, hook: dict, body: dict) -> web.Response:
        """A response_url post after a click on an ephemeral: replace or delete that ephemeral, or add one."""
        original = self._find_ephemeral(hook["ephemeral_ts"])
        if body.get("delete_original") in (True, "true"):
            if original is not None:
                self.ephemerals.remove(original)
            return web.json_response({"ok": True})
        text, blocks, problem = self._content(body)
        if problem:
            return web.json_response(problem, status=400)
        if body.get("replace_original") in (True, "true"):
            if original is None:
                return web.json_response(_err("message_not_found"), status=404)
            original["text"], original["blocks"] = text or "", blocks or []
            original["updated_count"] = original.get("updated_count", 0) + 1
        elif body.get("response_type") == "in_channel":
            self._store(hook["channel"], text or "", blocks or [], None)
        else:
            self.ephemerals.append({"channel": hook["channel"], "user": hook["user"], "text": text or "",
                                    "blocks": blocks or [], "ts": self._next_ts()})
        return web.json_response({"ok": True})

    async def _command_route(self, request: web.Request) -> web.Response:
        """``POST /sandbox/command`` ``{"text", "user_id", "channel", "command"?}``: type a slash command."""
        try:
            body = await request.json()
            text, user_id, channel = str(body["text"]), body["user_id"], body["channel"]
        except (ValueError, TypeError, KeyError):
            return web.json_response({"error": "expected JSON {text, user_id, channel}"}, status=400)
        return await self._deliver_from_page(
            self.slash_command(text, user_id=user_id, channel=channel, command=body.get("command") or "/access"))

    async def _deliver_from_page(self, delivery) -> web.Response:
        """Run a delivery to grantbot for the browser page and answer ``{"status"}`` or ``{"error"}``."""
        try:
            status = await delivery
        except (KeyError, ValueError) as e:
            return web.json_response({"error": str(e.args[0] if e.args else e)}, status=404)
        except RuntimeError as e:
            return web.json_response({"error": str(e)}, status=409)
        except TimeoutError:
            return web.json_response({"error": f"grantbot did not answer within {self.ack_timeout:g} s"},
                                     status=504)
        except aiohttp.ClientError as e:
            return web.json_response({"error": f"could not reach grantbot: {e}"}, status=502)
        return web.json_response({"status": status})

    # ----- App Home: views.publish, Events API delivery, clicks in the Home tab -----

    def _views_publish(self, args: Args) -> dict:
        """Slack views.publish: ``user_id`` and ``view`` (an object, or a JSON string when form-encoded) of type
        ``home``, at most 100 blocks checked like a message's; an optional ``hash`` must match the current view's
        (``hash_conflict``). Answers ``{"ok": true, "view": {...}}`` with the stored view."""
        user, view = args.get("user_id"), args.get("view")
        if isinstance(view, str):
            try:
                view = json.loads(view)
            except ValueError:
                return _err("invalid_arguments", response_metadata={"messages": ["invalid `view`"]})
        if not isinstance(user, str) or user not in self.users:
            return _err("invalid_arguments", response_metadata={"messages": ["invalid `user_id`"]})
        if not isinstance(view, dict) or view.get("type") != "home":
            return _err("invalid_arguments", response_metadata={"messages": [
                "must be a view object of type home [json-pointer:/view/type]"]})
        problems = _check_blocks(view.get("blocks"), MAX_VIEW_BLOCKS)
        if len(str(view.get("private_metadata", ""))) > MAX_PRIVATE_METADATA:
            problems.append(f"must be no more than {MAX_PRIVATE_METADATA} characters [json-pointer:/view/private_metadata]")
        if len(str(view.get("callback_id", ""))) > MAX_CALLBACK_ID:
            problems.append(f"must be no more than {MAX_CALLBACK_ID} characters [json-pointer:/view/callback_id]")
        if problems:
            return _err("invalid_arguments", response_metadata={"messages": problems})
        current = self.home_views.get(user)
        if args.get("hash") and current is not None and args["hash"] != current["hash"]:
            return _err("hash_conflict")
        view_id = current["id"] if current else "V" + secrets.token_hex(5).upper()
        published = {
            "id": view_id, "team_id": self.team_id, "type": "home", "blocks": _with_ids(view["blocks"]),
            "private_metadata": str(view.get("private_metadata", "")), "callback_id": str(view.get("callback_id", "")),
            "state": {"values": {}}, "hash": f"{time.time():.0f}.{secrets.token_hex(4)}", "title": None,
            "close": None, "submit": None, "clear_on_close": False, "notify_on_close": False,
            "external_id": str(view.get("external_id", "")), "root_view_id": view_id, "previous_view_id": None,
            "app_id": APP_ID, "app_installed_team_id": self.team_id, "bot_id": BOT_ID,
        }
        self.home_views[user] = published
        self.home_publishes[user] = self.home_publishes.get(user, 0) + 1
        return {"ok": True, "view": copy.deepcopy(published)}

    def event_callback_payload(self, event: dict) -> dict:
        """An Events API ``event_callback`` envelope around ``event``, as Slack sends it to the request URL."""
        return {
            "token": "sandbox-verification-token", "team_id": self.team_id, "api_app_id": APP_ID,
            "event": event, "type": "event_callback", "event_id": "Ev" + secrets.token_hex(5).upper(),
            "event_time": int(time.time()), "authorizations": [{
                "enterprise_id": None, "team_id": self.team_id, "user_id": self.bot_user_id, "is_bot": True,
                "is_enterprise_install": False}],
            "is_ext_shared_channel": False, "event_context": secrets.token_hex(16),
        }

    async def open_home(self, user_id: str) -> int:
        """``user_id`` opens the app's Home tab: Slack's ``app_home_opened`` event (``tab`` ``home``, with the
        view published before, if any) goes to ``events_url`` as a signed JSON POST, or over the Socket Mode
        connection. Returns grantbot's HTTP status. Raises KeyError for an unknown user, RuntimeError without
        ``events_url``, TimeoutError after ``ack_timeout``. The app publishes the Home afterwards (views.publish):
        wait for ``home_views[user_id]`` to change."""
        if user_id not in self.users:
            raise KeyError(f"unknown user {user_id}")
        event = {"type": "app_home_opened", "user": user_id, "channel": "D" + user_id[1:], "tab": "home",
                 "event_ts": f"{time.time():.6f}"}
        if user_id in self.home_views:
            event["view"] = copy.deepcopy(self.home_views[user_id])
        payload = self.event_callback_payload(event)
        if self._sockets:
            return await self._deliver_over_socket(payload, "events_api")
        status, _ = await self._send_signed(json.dumps(payload), "application/json")
        return status

    async def verify_url(self) -> bool:
        """What Slack does when an Events API request URL is saved: a signed ``url_verification`` POST whose
        ``challenge`` the app must answer (as plain text, form or JSON ``{"challenge": ...}``)."""
        challenge = secrets.token_urlsafe(24)
        body = json.dumps({"token": "sandbox-verification-token", "challenge": challenge, "type": "url_verification"})
        status, answer = await self._send_signed(body, "application/json")
        return status == 200 and challenge in answer

    def home_block_actions_payload(self, *, user_id: str, block_id: str, action_id: str) -> dict:
        """A Slack block_actions payload for a click on button ``action_id`` in block ``block_id`` of
        ``user_id``'s Home tab: ``container`` ``{"type": "view", "view_id"}`` and the whole ``view``; no channel
        and no response_url, as from a real Home tab. Raises KeyError (no Home published for the user) or
        ValueError (no such button)."""
        view = self.home_views.get(user_id)
        if view is None:
            raise KeyError(f"no Home tab published for {user_id}")
        block, button = next(((b, e) for b, e in _buttons(view["blocks"])
                              if b["block_id"] == block_id and e["action_id"] == action_id), (None, None))
        if button is None:
            raise ValueError(f"the Home of {user_id} has no button {action_id!r} in block {block_id!r}")
        # A click in a view: no channel, no message and no response_url, as Slack sends it.
        return self._block_actions(user_id, block, button, container={"type": "view", "view_id": view["id"]},
                                   view=copy.deepcopy(view))

    async def home_click(self, *, user_id: str, block_id: str, action_id: str) -> int:
        """Deliver a click in ``user_id``'s Home tab to grantbot as Slack does (form-encoded ``payload``, signed),
        or over Socket Mode. Returns grantbot's HTTP status; raises as ``home_block_actions_payload`` and
        ``click``."""
        payload = self.home_block_actions_payload(user_id=user_id, block_id=block_id, action_id=action_id)
        if self._sockets:
            return await self._deliver_over_socket(payload)
        status, _ = await self._send_signed(urlencode({"payload": json.dumps(payload)}),
                                            "application/x-www-form-urlencoded")
        return status

    async def _send_signed(self, body: str, content_type: str) -> tuple[int, str]:
        """POST ``body`` to ``events_url`` signed with the signing secret (Slack's ``v0`` scheme); (status, text).
        Raises RuntimeError without ``events_url``, TimeoutError after ``ack_timeout`` seconds."""
        if not self.events_url:
            raise RuntimeError("events_url is not set")
        timestamp = str(int(time.time()))
        headers = {
            "Content-Type": content_type,
            "User-Agent": "Slackbot 1.0 (+https://api.slack.com/robots)",
            "X-Slack-Request-Timestamp": timestamp,
            "X-Slack-Signature": SignatureVerifier(self.signing_secret).generate_signature(
                timestamp=timestamp, body=body),
        }
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.ack_timeout)) as session:
            async with session.post(self.events_url, data=body.encode(), headers=headers) as response:
                return response.status, await response.text()

    async def _home_route(self, request: web.Request) -> web.Response:
        """``GET /sandbox/home/{user}``: ``{"user", "view"}``, the view last published for the user (or null)."""
        user = request.match_info["user"]
        if user not in self.users:
            return web.json_response({"error": f"unknown user {user}"}, status=404)
        return web.json_response({"user": user, "view": self.home_views.get(user)})

    async def _home_open_route(self, request: web.Request) -> web.Response:
        """``POST /sandbox/home/{user}/open``: the page's Home tab was opened; sends ``app_home_opened``."""
        return await self._deliver_from_page(self.open_home(request.match_info["user"]))

    async def _home_click_route(self, request: web.Request) -> web.Response:
        """``POST /sandbox/home/{user}/click`` with JSON ``{block_id, action_id}``: a click in the Home tab."""
        try:
            body = await request.json()
            args = {k: body[k] for k in ("block_id", "action_id")}
        except (ValueError, TypeError, KeyError):
            return web.json_response({"error": "expected JSON {block_id, action_id}"}, status=400)
        return await self._deliver_from_page(self.home_click(user_id=request.match_info["user"], **args))

    # ----- browser -----

    async def _page(self, request: web.Request) -> web.Response:
        return web.Response(text=_PAGE.read_text(encoding="utf-8"), content_type="text/html")

    async def _state(self, request: web.Request) -> web.Response:
        return web.json_response({"channels": self.channels, "users": self.users,
                                  "messages": self.messages, "ephemerals": self.ephemerals,
                                  "views": list(self.views.values())})

    async def _click_route(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
            args = {k: body[k] for k in ("channel", "ts", "action_id", "user_id")}
        except (ValueError, TypeError, KeyError):
            return web.json_response({"error": "expected JSON {channel, ts, action_id, user_id}"}, status=400)
        if body.get("ephemeral") is True:  # a button on an ephemeral message (e.g. /access revoke-all's)
            del args["channel"]
            return await self._deliver_from_page(self.click_ephemeral(**args))
        try:
            status = await self.click(**args)
        except (KeyError, ValueError) as e:
            return web.json_response({"error": str(e.args[0] if e.args else e)}, status=404)
        except RuntimeError as e:
            return web.json_response({"error": str(e)}, status=409)
        except TimeoutError:
            return web.json_response({"error": f"grantbot did not answer within {self.ack_timeout:g} s"},
                                     status=504)
        except aiohttp.ClientError as e:
            return web.json_response({"error": f"could not reach grantbot: {e}"}, status=502)
        return web.json_response({"status": status})

    # ----- storage -----

    def _channel(self, channel: Any) -> str | None:
        """A channel id, a "#name", or a user id (the bot's DM with that user, created on first use)."""
        if not isinstance(channel, str):
            return None
        if channel in self.channels:
            return channel
        if channel.startswith("#"):
            return next((cid for cid, name in self.channels.items() if name == channel[1:]), None)
        if channel in self.users:
            dm = "D" + channel[1:]
            self.channels.setdefault(dm, "@" + _handle(self.users[channel], channel))
            return dm
        return None

    def _content(self, args: Args) -> tuple[str | None, list[dict] | None, dict | None]:
        """(text, blocks, error) from a request; blocks arrive as a JSON string when form-encoded."""
        text, blocks = args.get("text"), args.get("blocks")
        if isinstance(blocks, str):
            try:
                blocks = json.loads(blocks)
            except ValueError:
                return None, None, _err("invalid_blocks_format")
        if text is not None:
            text = str(text)
            if len(text) > MAX_TEXT:
                return None, None, _err("msg_too_long")
        if blocks is not None:
            problems = _check_blocks(blocks)
            if problems:
                return None, None, _err("invalid_blocks", response_metadata={"messages": problems})
            blocks = _with_ids(blocks)
        if not text and not blocks:
            return None, None, _err("no_text")
        return text, blocks, None

    def _next_ts(self) -> str:
        # Slack's ts is "seconds.micros", unique per channel and increasing; this one is unique globally.
        self._last_us = max(self._last_us + 100, time.time_ns() // 1000)
        return f"{self._last_us // 1_000_000}.{self._last_us % 1_000_000:06d}"

    def _store(self, channel: str, text: str, blocks: list[dict], thread_ts: str | None) -> dict:
        message = {"channel": channel, "ts": self._next_ts(), "thread_ts": thread_ts, "text": text,
                   "blocks": blocks, "user": self.bot_user_id, "updated_count": 0}
        self.messages.append(message)
        return message

    @staticmethod
    def _replace(message: dict, text: str | None, blocks: list[dict] | None) -> None:
        # Only what was sent is replaced: an update with text alone keeps the old blocks, as on Slack
        # (python-slack-sdk#523).
        if text is not None:
            message["text"] = text
        if blocks is not None:
            message["blocks"] = blocks
        message["updated_count"] += 1

    def _find(self, channel: str, ts: Any) -> dict | None:
        return next((m for m in self.messages if m["channel"] == channel and m["ts"] == ts), None)

    def _as_slack(self, message: dict) -> dict:
        """A stored message as Slack returns it in API answers and payloads."""
        out = {"type": "message", "subtype": "bot_message", "ts": message["ts"], "bot_id": BOT_ID,
               "app_id": APP_ID, "user": message["user"], "team": self.team_id, "text": message["text"],
               "blocks": copy.deepcopy(message["blocks"])}
        if message["thread_ts"]:
            out["thread_ts"] = message["thread_ts"]
        if message.get("metadata"):
            out["metadata"] = copy.deepcopy(message["metadata"])
        return out
