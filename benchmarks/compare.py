"""grantbot beside a bare aiohttp echo, under the same wrk load, in one run (DESIGN.md "Performance to design for").

For each database (SQLite, PostgreSQL) and each path (the auto-approved ``POST /v1/access-requests``, and
``POST /oauth/introspect`` of a live token), it starts the echo server (benchmarks/echo_server.py) and then a real
`grantbot serve` one after the other, pinned to one core with ``taskset`` when it exists, puts the same wrk load
on each from the other core (one wrk thread, 16 connections), and prints requests/s, p50/p99 latency and the
ratio grantbot / echo. Access requests are pre-signed with distinct nonces, because grantbot refuses a signature
it has seen (a replay); every answer that is not 2xx is counted and reported, so a run that measured refusals
says so. Nothing here asserts; run it on a quiet machine and compare medians.

    .venv/bin/python benchmarks/compare.py [--duration 10] [--connections 16] [--runs 3]
        [--databases sqlite,postgresql] [--paths request,introspect]
        [--postgres-admin-url postgresql://postgres@127.0.0.1:5432/postgres]

Needs wrk (Debian: ``apt-get install wrk``).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import hmac
import json
import os
import re
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
SECRET = "bench-secret"
INTROSPECTION = ("bench", "bench-secret")
BODY = json.dumps({"environment": "staging", "scopes": ["db:read"], "ttl_seconds": 600,
                   "reason": "benchmark"}, separators=(",", ":"))
PATH = "/v1/access-requests"

# wrk's Lua: one thread walks the pre-signed lines ("timestamp nonce signature") in order, one request each.
REQUEST_LUA = """
local lines, i = {}, 0
local body = %s
init = function(args) for line in io.lines(args[1]) do lines[#lines + 1] = line end end
request = function()
  i = i + 1
  local ts, nonce, sig = lines[((i - 1) %% #lines) + 1]:match("(%%S+) (%%S+) (%%S+)")
  return wrk.format("POST", "%s", {["Content-Type"] = "application/json", ["X-Grantbot-Identity"] = "deploy-bot",
    ["X-Grantbot-Timestamp"] = ts, ["X-Grantbot-Nonce"] = nonce, ["X-Grantbot-Signature"] = sig}, body)
end
"""
INTROSPECT_LUA = """
wrk.method = "POST"
wrk.path = "/oauth/introspect"
wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"
wrk.headers["Authorization"] = "Basic %s"
wrk.body = "token=%s"
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def pinned(cpu: int | str, command: list[str]) -> list[str]:
    """``command`` pinned to a core (or a taskset list such as ``0-1``) when taskset exists and there are two
    cores to share."""
    if shutil.which("taskset") and (os.cpu_count() or 1) > 1:
        return ["taskset", "-c", str(cpu), *command]
    return command


def server_cores(workers: int) -> str:
    """The cores grantbot's processes run on: the one wrk does not use for one process; for more, as many as
    there are workers counting from core 1, sharing core 0 with wrk when the machine has no more."""
    cpus = os.cpu_count() or 1
    if workers <= 1:
        return "1"
    return f"1-{workers}" if workers < cpus else f"0-{cpus - 1}"


def wait_for_port(port: int, process: subprocess.Popen, seconds: float = 30, ready_path: str | None = None) -> None:
    """Until the port accepts connections and, given ``ready_path``, answers it 200: grantbot binds its port
    before its application has started (bot/web/serving.py), and requests sent meanwhile wait for the start."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the server exited with {process.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), 0.5) as sock:
                if ready_path is None:
                    return
                sock.sendall(f"GET {ready_path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n".encode())
                if sock.recv(64).startswith(b"HTTP/1.1 200"):
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise SystemExit(f"nothing ready on port {port} after {seconds} s")


def presigned_lines(count: int) -> str:
    """``count`` distinct signatures of BODY (DESIGN.md HMAC with a nonce), one per line."""
    ts = str(int(time.time()))
    lines = []
    for _ in range(count):
        nonce = secrets.token_hex(16)
        message = f"v1:{ts}:{nonce}:POST:{PATH}:{BODY}".encode()
        lines.append(f"{ts} {nonce} v1={hmac.new(SECRET.encode(), message, hashlib.sha256).hexdigest()}")
    return "\n".join(lines) + "\n"


@dataclass
class Figures:
    requests_per_second: float
    p50_ms: float
    p99_ms: float
    refused: int  # answers that were not 2xx/3xx
    cpu_us: float = 0.0  # the server's CPU (user + system, every thread and worker) per request, in µs


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (all its threads) and of its child processes still running
    (the workers of ``serve --workers N``), from ``/proc``; 0 without it. Steadier than requests/s when other
    processes share the machine: a change of a few per cent shows here first."""
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    total, pending = 0.0, [pid]
    while pending:
        current = pending.pop()
        try:
            fields = Path(f"/proc/{current}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime (proc(5) fields 14 and 15)
            for task in Path(f"/proc/{current}/task").iterdir():
                pending.extend(int(child) for child in (task / "children").read_text().split())
        except (OSError, ValueError, IndexError):  # gone meanwhile, or no /proc
            continue
    return total


def _ms(text: str) -> float:
    value, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", text).groups()
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def run_wrk(port: int, script: Path, lines: Path | None, duration: int, connections: int) -> Figures:
    command = pinned(0, ["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--latency", "-s", str(script),
                         f"http://127.0.0.1:{port}"])
    if lines is not None:
        command += ["--", str(lines)]
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    p50 = _ms(re.search(r"\s50%\s+(\S+)", out).group(1))
    p99 = _ms(re.search(r"\s99%\s+(\S+)", out).group(1))
    refused = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    return Figures(rps, p50, p99, int(refused.group(1)) if refused else 0)


class Database:
    """A fresh grantbot database for one server start: a SQLite file, or a scratch PostgreSQL database."""

    def __init__(self, kind: str, tmp: Path, admin_url: str) -> None:
        self.kind, self.admin_url = kind, admin_url
        self.name = f"grantbot_bench_{uuid.uuid4().hex[:8]}"
        if kind == "sqlite":
            self.url = f"sqlite:///{tmp / (self.name + '.db')}"
        else:
            self.url = admin_url.rsplit("/", 1)[0] + "/" + self.name

    async def _admin(self, sql: str) -> None:
        import asyncpg

        conn = await asyncpg.connect(self.admin_url)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    def __enter__(self) -> Database:
        if self.kind == "postgresql":
            asyncio.run(self._admin(f'CREATE DATABASE "{self.name}"'))
        return self

    def __exit__(self, *_: object) -> None:
        if self.kind == "postgresql":
            asyncio.run(self._admin(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)'))


class Server:
    """A server process on its own port and core: the echo, or `grantbot serve` on a fresh database."""

    def __init__(self, kind: str, tmp: Path, database: Database | None = None, workers: int = 1) -> None:
        self.kind = kind
        self.cores = "1" if kind == "echo" else server_cores(workers)
        self.port = free_port()
        self.env = {**os.environ, "PORT": str(self.port), "GRANTBOT_SECRET_DEPLOY_BOT": SECRET,
                    "GRANTBOT_POLICY_FILE": str(ROOT / "bot" / "examples" / "policy.yaml"),
                    "GRANTBOT_SIGNING_KEY_FILE": str(tmp / "bench-key.pem"), "GRANTBOT_LOG_LEVEL": "WARNING",
                    "GRANTBOT_INTROSPECTION_CLIENTS": ":".join(INTROSPECTION), "GRANTBOT_SUMMARY_CRON": "off"}
        for name in ("SLACK_BOT_TOKEN", "SLACK_SIGNING_SECRET", "SLACK_APP_TOKEN"):  # no Slack: the outbox waits
            self.env.pop(name, None)
        if kind == "echo":
            self.command = [sys.executable, str(ROOT / "benchmarks" / "echo_server.py"), str(self.port)]
        else:
            self.env["GRANTBOT_DATABASE_URL"] = database.url
            subprocess.run([sys.executable, "-m", "bot", "migrate"], env=self.env, check=True, capture_output=True)
            self.command = [sys.executable, "-m", "bot", "serve", "--workers", str(workers)]

    def __enter__(self) -> Server:
        self.process = subprocess.Popen(pinned(self.cores, self.command), env=self.env, stdout=subprocess.DEVNULL)
        wait_for_port(self.port, self.process, ready_path=None if self.kind == "echo" else "/readyz")
        return self

    def __exit__(self, *_: object) -> None:
        self.process.terminate()
        self.process.wait(30)

    def live_token(self) -> str:
        """A token of an auto-approved request, for the introspection load."""
        async def ask() -> str:
            ts, nonce = str(int(time.time())), secrets.token_hex(16)
            sig = hmac.new(SECRET.encode(), f"v1:{ts}:{nonce}:POST:{PATH}:{BODY}".encode(), hashlib.sha256)
            headers = {"Content-Type": "application/json", "X-Grantbot-Identity": "deploy-bot",
                       "X-Grantbot-Timestamp": ts, "X-Grantbot-Nonce": nonce,
                       "X-Grantbot-Signature": "v1=" + sig.hexdigest()}
            async with aiohttp.ClientSession() as http:
                async with http.post(f"http://127.0.0.1:{self.port}{PATH}", data=BODY, headers=headers) as resp:
                    answer = await resp.json()
                    if resp.status != 201:
                        raise SystemExit(f"could not get a token to introspect: {resp.status} {answer}")
                    return answer["grant"]["access_token"]

        return asyncio.run(ask())


def measure(path: str, server: Server, tmp: Path, args: argparse.Namespace) -> Figures:
    """The measured wrk run on ``path`` (after a warm-up), with the server's CPU per request."""
    script, lines = _prepare(path, server, tmp, args)
    before = cpu_seconds(server.process.pid)
    figures = run_wrk(server.port, script, lines, args.duration, args.connections)
    answered = figures.requests_per_second * args.duration
    if answered:
        figures.cpu_us = (cpu_seconds(server.process.pid) - before) / answered * 1e6
    return figures


def _prepare(path: str, server: Server, tmp: Path, args: argparse.Namespace) -> tuple[Path, Path | None]:
    """The wrk script (and the pre-signed lines) for ``path``, after a one-second warm-up on the server."""
    if path == "request":  # (main() accepts request and introspect only)
        lines = tmp / "signed.txt"
        lines.write_text(presigned_lines(args.duration * args.max_rate))
        script = tmp / "request.lua"
        script.write_text(REQUEST_LUA % (json.dumps(BODY), PATH))
        # A short warm-up on other signatures, so that imports and caches are not measured.
        warm = tmp / "warm.txt"
        warm.write_text(presigned_lines(2000))
        run_wrk(server.port, script, warm, 1, args.connections)
        return script, lines
    token = server.live_token() if "GRANTBOT_DATABASE_URL" in server.env else "x" * 600
    script = tmp / "introspect.lua"
    script.write_text(INTROSPECT_LUA % (base64.b64encode(":".join(INTROSPECTION).encode()).decode(), token))
    run_wrk(server.port, script, None, 1, args.connections)
    return script, None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=int, default=10, help="seconds of load per measurement")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--runs", type=int, default=3, help="measurements of each pair; medians are printed")
    parser.add_argument("--databases", default="sqlite,postgresql")
    parser.add_argument("--paths", default="request,introspect")
    parser.add_argument("--max-rate", type=int, default=8000,
                        help="requests/s the pre-signed signatures must cover (each is used once)")
    parser.add_argument("--workers", type=int, default=1,
                        help="grantbot serve --workers N (N > 1: on cores 1..N, sharing core 0 with wrk on a "
                             "machine with no more)")
    parser.add_argument("--postgres-admin-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    args = parser.parse_args()
    unknown = set(args.paths.split(",")) - {"request", "introspect"}
    if unknown:
        parser.error(f"unknown path {', '.join(sorted(unknown))}: --paths takes request and/or introspect")
    if not shutil.which("wrk"):
        raise SystemExit("benchmarks/compare.py needs wrk (Debian: apt-get install wrk)")
    tmp = Path(tempfile.mkdtemp(prefix="grantbot-bench-"))
    print(f"load average before: {os.getloadavg()[0]:.2f}; {args.connections} connections, {args.duration} s each, "
          f"{args.runs} runs, grantbot workers: {args.workers} (cores {server_cores(args.workers)}), "
          f"taskset: {'yes' if shutil.which('taskset') else 'no'}", flush=True)
    results: dict[tuple[str, str, str], list[Figures]] = {}
    for _ in range(args.runs):
        for database in args.databases.split(","):
            for path in args.paths.split(","):
                with Server("echo", tmp) as echo:
                    results.setdefault((database, path, "echo"), []).append(measure(path, echo, tmp, args))
                with Database(database, tmp, args.postgres_admin_url) as db, Server("grantbot", tmp, db, args.workers) as bot:
                    results.setdefault((database, path, "grantbot"), []).append(measure(path, bot, tmp, args))
                print(".", end="", flush=True)
    print(f"\nload average after: {os.getloadavg()[0]:.2f}\n")
    print("| database | path | echo req/s | grantbot req/s | ratio | grantbot p50 | grantbot p99 | refused "
          "| echo CPU/request | grantbot CPU/request |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for database in args.databases.split(","):
        for path in args.paths.split(","):
            echo, bot = results[(database, path, "echo")], results[(database, path, "grantbot")]
            echo_rps = statistics.median(f.requests_per_second for f in echo)
            bot_rps = statistics.median(f.requests_per_second for f in bot)
            print(f"| {database} | {path} | {echo_rps:,.0f} | {bot_rps:,.0f} | {100 * bot_rps / echo_rps:.1f} % | "
                  f"{statistics.median(f.p50_ms for f in bot):.1f} ms | {statistics.median(f.p99_ms for f in bot):.1f} ms"
                  f" | {sum(f.refused for f in bot)} | {statistics.median(f.cpu_us for f in echo):.0f} µs"
                  f" | {statistics.median(f.cpu_us for f in bot):.0f} µs |")


if __name__ == "__main__":
    main()
