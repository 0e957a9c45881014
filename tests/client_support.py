"""Helpers for the pipeline client's tests: the real ``grantbot`` commands run as subprocesses (without blocking
the event loop, so the servers of the test keep answering), a clean CI-less environment for them, a real
``grantbot serve`` process, and an HTTP relay in front of it that records what the client sent and can be told to
misbehave like a load balancer during a deploy."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from aiohttp import web

from tests.support import SECRETS, cards, eventually, message_text
from tests.test_end_to_end import Process, at_head, grantbot_command

# Variables of the machine running the tests that a client would pick up; tests set the ones they mean.
_CI_PREFIXES = ("GRANTBOT_", "GITHUB_", "GITLAB_", "CI_", "ACTIONS_", "RUNNER_")


def client_env(url: str | None = None, *, identity: str | None = "deploy-bot", **extra: str) -> dict[str, str]:
    """The environment of a pipeline step: nothing of the CI the tests may run in, grantbot's URL and an HMAC
    identity (``identity=None`` for none), plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(_CI_PREFIXES) and k != "CI"}
    # The runner's image has grantbot installed: this test environment's.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    if url is not None:
        env["GRANTBOT_URL"] = url
    if identity is not None:
        env.update(GRANTBOT_IDENTITY=identity, GRANTBOT_SECRET=SECRETS[identity])
    env.update(extra)
    return env


@dataclass
class Ran:
    code: int
    out: str
    err: str

    def json(self) -> dict:
        return json.loads(self.out)


async def run_grantbot(*args: str, env: dict[str, str], cwd: Path, stdin: str | None = None,
                       timeout: float = 90) -> Ran:
    """``grantbot ARGS…`` as a subprocess; returns its exit code, stdout and stderr."""
    proc = await start_grantbot_command(*args, env=env, cwd=cwd, stdin=stdin is not None)
    return await finish(proc, stdin, timeout)


async def run_bash(script: str, *args: str, env: dict[str, str], cwd: Path, timeout: float = 90) -> Ran:
    """``bash -c script sh ARGS…``, e.g. to ``eval`` what ``--output env`` prints, as a pipeline's shell would."""
    proc = await asyncio.create_subprocess_exec("bash", "-c", script, "sh", *args, env=env, cwd=cwd,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    return await finish(proc, None, timeout)


async def start_grantbot_command(*args: str, env: dict[str, str], cwd: Path, stdin: bool = False):
    return await asyncio.create_subprocess_exec(
        *grantbot_command(args[0]), *args[1:], env=env, cwd=cwd, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, stdin=asyncio.subprocess.PIPE if stdin else asyncio.subprocess.DEVNULL)


async def finish(proc, stdin: str | None = None, timeout: float = 90) -> Ran:
    try:
        out, err = await asyncio.wait_for(proc.communicate(stdin.encode() if stdin is not None else None), timeout)
    except asyncio.TimeoutError:
        proc.kill()
        out, err = await proc.communicate()
        raise AssertionError(f"grantbot did not finish within {timeout} s; stderr: {err.decode()}") from None
    return Ran(proc.returncode, out.decode(), err.decode())


async def start_serve(tmp_path: Path, database_url: str, sandbox, policy: Path | None = None) -> Process:
    """A migrated, running ``grantbot serve`` whose Slack is ``sandbox``."""
    proc = Process(tmp_path, database_url, sandbox)
    if policy is not None:
        proc.env["GRANTBOT_POLICY_FILE"] = str(policy)
    sandbox.events_url = proc.base_url + "/slack/events"
    await at_head(proc)
    await proc.start()
    return proc


async def stop_serve(proc: Process) -> None:
    if proc.proc and proc.proc.poll() is None:
        assert await proc.kill(signal.SIGTERM) == 0, proc.log_path.read_text()[-3000:]
    proc.check_log()


async def card_for(sandbox, request_id: str) -> dict:
    return await eventually(lambda: next((c for c in cards(sandbox) if request_id in message_text(c)), None))


async def pending_request_id(sandbox, index: int = 0) -> str:
    """The id of the access request whose approval card was posted ``index``-th (a waiting client prints it only on
    stderr)."""
    card = await eventually(lambda: len(cards(sandbox)) > index and cards(sandbox)[index], timeout=30)
    return re.search(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", message_text(card)).group(0)


@dataclass
class Seen:
    method: str
    path_qs: str
    headers: dict[str, str]
    body: bytes
    at: float  # time.monotonic() when it arrived


@dataclass
class Fault:
    """What the relay does instead of relaying, ``times`` times, to requests with ``method`` whose path starts with
    ``path``: answer ``status`` itself, or relay and then drop the answer (the client never gets it), or hold the
    request ``cut_after`` seconds and close the connection without an answer, or deliver the answer
    ``delay_answer`` seconds late. A ``drop_answer`` fault with
    ``answer_contains`` applies only to an answer holding that text (the one that carries a token, say)."""

    method: str
    path: str
    times: int
    status: int | None = None
    headers: dict[str, str] = field(default_factory=dict)
    body: dict | None = None
    drop_answer: bool = False
    answer_contains: str | None = None
    cut_after: float | None = None
    delay_answer: float | None = None  # relay at once, deliver the answer this many seconds later


class HttpRelay:
    """An HTTP relay in front of ``upstream`` (a load balancer, say) that records every request and can be told to
    misbehave (:meth:`fault`). ``dropped`` holds the answers it relayed but did not deliver."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.seen: list[Seen] = []
        self.faults: list[Fault] = []
        self.dropped: list[dict] = []
        self._runner: web.AppRunner | None = None
        self._http: aiohttp.ClientSession | None = None
        self.url = ""

    def fault(self, method: str, path: str, times: int = 1, **how) -> None:
        self.faults.append(Fault(method, path, times, **how))

    def requests(self, method: str, path: str) -> list[Seen]:
        return [s for s in self.seen if s.method == method and s.path_qs.startswith(path)]

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._relay)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.url = "http://127.0.0.1:%d" % self._runner.addresses[0][1]
        self._http = aiohttp.ClientSession(auto_decompress=False)

    async def stop(self) -> None:
        if self._http is not None:
            await self._http.close()
        if self._runner is not None:
            await self._runner.cleanup()

    def _take(self, method: str, path_qs: str, answer: bytes | None = None) -> Fault | None:
        """The first fault for this request with times left (one that looks at answers only when ``answer`` is
        given and holds its text), which is used up once."""
        for fault in self.faults:
            if fault.times > 0 and fault.method == method and path_qs.startswith(fault.path) and \
                    (fault.answer_contains is None) == (answer is None) and \
                    (answer is None or fault.answer_contains.encode() in answer):
                fault.times -= 1
                return fault
        return None

    async def _relay(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.seen.append(Seen(request.method, request.raw_path, dict(request.headers), body, time.monotonic()))
        fault = self._take(request.method, request.raw_path)
        if fault is not None and fault.status is not None:
            return web.json_response(fault.body or {"error": "unavailable", "detail": "relay says no"},
                                     status=fault.status, headers=fault.headers)
        if fault is not None and fault.cut_after is not None:
            await asyncio.sleep(fault.cut_after)
            request.transport.abort()  # a dropped connection: no answer at all
            return web.Response()
        headers = {k: v for k, v in request.headers.items() if k.lower() not in ("host", "content-length")}
        async with self._http.request(request.method, self.upstream + request.raw_path, data=body,
                                      headers=headers, timeout=aiohttp.ClientTimeout(total=120)) as resp:
            data = await resp.read()
            answer_headers = {k: v for k, v in resp.headers.items()
                              if k.lower() not in ("content-length", "transfer-encoding", "connection")}
            status = resp.status
        fault = fault or self._take(request.method, request.raw_path, data)
        if fault is not None and fault.drop_answer:
            self.dropped.append(json.loads(data))
            request.transport.abort()
            return web.Response()
        if fault is not None and fault.delay_answer is not None:
            await asyncio.sleep(fault.delay_answer)
        return web.Response(status=status, body=data, headers=answer_headers)
