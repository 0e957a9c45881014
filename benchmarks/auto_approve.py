"""Throughput of the auto-approve path: signed POST /v1/access-requests -> 201 with a token, against a real
`grantbot serve` process. Prints requests/s and latency percentiles; asserts nothing.

    .venv/bin/python benchmarks/auto_approve.py [--database-url URL] [--requests 2000] [--concurrency 32]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
SECRET = "bench-secret"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def server_cpu_seconds(pid: int) -> float:
    """User + system CPU time of the server process (all its threads), from /proc (Linux): steadier than
    throughput on a machine where other processes compete for the cores."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def signed(body: bytes) -> dict[str, str]:
    ts = str(int(time.time()))
    digest = hmac.new(SECRET.encode(), f"v1:{ts}:POST:/v1/access-requests:".encode() + body, hashlib.sha256)
    return {"X-Grantbot-Identity": "deploy-bot", "X-Grantbot-Timestamp": ts,
            "X-Grantbot-Signature": "v1=" + digest.hexdigest(), "Content-Type": "application/json"}


async def run(base: str, total: int, concurrency: int, tag: str = "") -> list[float]:
    latencies: list[float] = []
    queue = iter(range(total))

    async def worker(http: aiohttp.ClientSession) -> None:
        for i in queue:
            body = json.dumps({"environment": "staging", "scopes": ["db:read"], "ttl_seconds": 600,
                               "reason": f"bench {tag}{i}"}).encode()
            started = time.perf_counter()
            async with http.post(base + "/v1/access-requests", data=body, headers=signed(body)) as resp:
                await resp.read()
                assert resp.status == 201, resp.status
            latencies.append(time.perf_counter() - started)

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as http:
        await asyncio.gather(*(worker(http) for _ in range(concurrency)))
    return latencies


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--database-url")
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp())
    port = free_port()
    env = {**os.environ, "PORT": str(port), "GRANTBOT_SECRET_DEPLOY_BOT": SECRET,
           "GRANTBOT_DATABASE_URL": args.database_url or f"sqlite:///{tmp}/bench.db",
           "GRANTBOT_POLICY_FILE": str(ROOT / "bot" / "examples" / "policy.yaml"),
           "GRANTBOT_SIGNING_KEY_FILE": str(tmp / "key.pem"), "GRANTBOT_LOG_LEVEL": "WARNING"}
    grantbot = [sys.executable, "-m", "bot"]
    subprocess.run([*grantbot, "migrate"], env=env, check=True, capture_output=True)
    server = subprocess.Popen([*grantbot, "serve"], env=env)
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), 0.1).close()
                break
            except OSError:
                time.sleep(0.1)
        # Warm up with other bodies: the same body signed in the same second is a replay (401).
        asyncio.run(run(f"http://127.0.0.1:{port}", 100, 8, tag="warm-up "))
        cpu_before = server_cpu_seconds(server.pid)
        started = time.perf_counter()
        latencies = asyncio.run(run(f"http://127.0.0.1:{port}", args.requests, args.concurrency))
        elapsed = time.perf_counter() - started
        cpu_ms = (server_cpu_seconds(server.pid) - cpu_before) * 1000 / args.requests
    finally:
        server.terminate()
        server.wait()
    q = statistics.quantiles(latencies, n=100)
    print(f"database: {env['GRANTBOT_DATABASE_URL'].split(':')[0]}; {args.requests} auto-approved requests, "
          f"concurrency {args.concurrency}")
    print(f"throughput: {args.requests / elapsed:.0f} requests/s; latency p50 {q[49] * 1000:.1f} ms, "
          f"p95 {q[94] * 1000:.1f} ms, p99 {q[98] * 1000:.1f} ms; server CPU {cpu_ms:.2f} ms/request")


if __name__ == "__main__":
    main()
