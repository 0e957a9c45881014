"""Revocation lag: how long after its ``expires_at`` each grant is ended by a real `grantbot serve`.

N active, auto-approved grants whose expiries are spread evenly over W seconds are written straight into a fresh
database (rows as grantbot writes them), then `grantbot serve` starts (no Slack configured) and ends them as they
come due. When all have ended (or a deadline passes) it prints the lag ``ended_at - expires_at`` (p50, p99, max),
how many were never ended, and the server's peak RSS (``VmHWM`` from /proc). Nothing here asserts.

    .venv/bin/python benchmarks/revocation_lag.py --grants 100000 --window 120 --database sqlite
    .venv/bin/python benchmarks/revocation_lag.py --grants 10000 --window 1 --database postgresql

The first expiry is ``--lead`` seconds after the rows are written (default: enough for the server to start), so
no grant is already due when the server starts.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
from sqlalchemy import func, insert, select

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bot.store.engine import create_engine  # noqa: E402
from bot.store.tables import AccessRequestRow, GrantRow  # noqa: E402

R, G = AccessRequestRow.__table__, GrantRow.__table__
CHUNK = 5000


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def rows(n: int, first_expiry: datetime, window: float, now: datetime):
    """Request and grant rows of ``n`` auto-approved grants expiring evenly over ``window`` seconds."""
    for i in range(n):
        request_id, grant_id = str(uuid.uuid4()), str(uuid.uuid4())
        expires_at = first_expiry + timedelta(seconds=window * i / max(n - 1, 1))
        ttl = int((expires_at - now).total_seconds()) + 1
        request = {
            "id": request_id, "identity": "deploy-bot", "environment": "staging", "scopes": ["db:read"],
            "ttl_seconds": ttl, "audience": "https://api.acme.example", "reason": "lag benchmark", "context": {},
            "status": "approved", "decision": "auto_approve", "rule": "staging-anything",
            "decision_reason": "rule 'staging-anything' auto-approves it", "decision_reasons": [],
            "approvers": [], "approver_groups": [], "excluded_approvers": [], "min_approvals": 1,
            "deny_on_first_denial": True, "channel": None, "created_at": now, "expires_at": None,
            "decided_at": now, "decided_by": "policy",
        }
        grant = {
            "id": grant_id, "request_id": request_id, "identity": "deploy-bot", "scopes": ["db:read"],
            "audience": "https://api.acme.example", "environment": "staging", "jti": str(uuid.uuid4()), "issued_at": now,
            "expires_at": expires_at, "status": "active", "delivered_at": now, "token_hash": "0" * 64,
        }
        yield request, grant


async def seed(url: str, n: int, first_expiry: datetime, window: float) -> None:
    engine = create_engine(url)
    now = datetime.now(UTC)
    batch: list[tuple[dict, dict]] = []
    async with engine.begin() as conn:
        for pair in rows(n, first_expiry, window, now):
            batch.append(pair)
            if len(batch) == CHUNK:
                await conn.execute(insert(R), [r for r, _ in batch])
                await conn.execute(insert(G), [g for _, g in batch])
                batch.clear()
        if batch:
            await conn.execute(insert(R), [r for r, _ in batch])
            await conn.execute(insert(G), [g for _, g in batch])
    await engine.dispose()


async def active_count(url: str) -> int:
    engine = create_engine(url)
    try:
        async with engine.connect() as conn:
            return (await conn.execute(select(func.count()).select_from(G).where(G.c.status == "active"))).scalar_one()
    finally:
        await engine.dispose()


async def lags(url: str) -> tuple[list[float], int]:
    engine = create_engine(url)
    try:
        async with engine.connect() as conn:
            found = (await conn.execute(select(G.c.expires_at, G.c.ended_at))).all()
    finally:
        await engine.dispose()
    ended = [(e - x).total_seconds() for x, e in found if e is not None]
    return ended, sum(1 for _, e in found if e is None)


async def admin(url: str, sql: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--grants", type=int, default=10000)
    parser.add_argument("--window", type=float, default=1.0, help="seconds over which the expiries are spread")
    parser.add_argument("--database", choices=["sqlite", "postgresql"], default="sqlite")
    parser.add_argument("--lead", type=float, default=None, help="seconds from seeding to the first expiry")
    parser.add_argument("--postgres-admin-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="grantbot-lag-"))
    name = f"grantbot_lag_{uuid.uuid4().hex[:8]}"
    if args.database == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp / 'lag.db'}"
    else:
        url = args.postgres_admin_url.rsplit("/", 1)[0] + "/" + name
        asyncio.run(admin(args.postgres_admin_url, f'CREATE DATABASE "{name}"'))
    port = free_port()
    env = {**os.environ, "PORT": str(port), "GRANTBOT_DATABASE_URL": url, "GRANTBOT_SECRET_DEPLOY_BOT": "x",
           "GRANTBOT_POLICY_FILE": str(ROOT / "bot" / "examples" / "policy.yaml"),
           "GRANTBOT_SIGNING_KEY_FILE": str(tmp / "key.pem"), "GRANTBOT_LOG_LEVEL": "WARNING",
           "GRANTBOT_SUMMARY_CRON": "off"}
    for slack in ("SLACK_BOT_TOKEN", "SLACK_SIGNING_SECRET", "SLACK_APP_TOKEN"):
        env.pop(slack, None)
    server = None
    try:
        subprocess.run([sys.executable, "-m", "bot", "migrate"], env=env, check=True, capture_output=True)
        lead = args.lead if args.lead is not None else 8.0
        started = time.monotonic()
        first_expiry = datetime.now(UTC) + timedelta(seconds=lead + args.grants / 4000)
        asyncio.run(seed(url, args.grants, first_expiry, args.window))
        print(f"seeded {args.grants} grants in {time.monotonic() - started:.1f} s; first expiry in "
              f"{(first_expiry - datetime.now(UTC)).total_seconds():.1f} s, last {args.window:.0f} s later",
              flush=True)
        server = subprocess.Popen([sys.executable, "-m", "bot", "serve"], env=env)
        deadline = first_expiry + timedelta(seconds=args.window + 120)
        while datetime.now(UTC) < deadline:
            time.sleep(1.0)
            if datetime.now(UTC) > first_expiry + timedelta(seconds=args.window) and asyncio.run(active_count(url)) == 0:
                break
        rss = peak_rss_mb(server.pid)
    finally:
        if server is not None:
            server.terminate()
            server.wait(30)
    ended, never = asyncio.run(lags(url))
    if args.database == "postgresql":
        asyncio.run(admin(args.postgres_admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    q = statistics.quantiles(ended, n=100) if len(ended) > 1 else [float("nan")] * 99
    print(f"database {args.database}; {args.grants} grants expiring over {args.window:g} s "
          f"({args.grants / max(args.window, 1e-9):,.0f}/s); load average {os.getloadavg()[0]:.2f}")
    print(f"lag p50 {q[49]:.3f} s, p99 {q[98]:.3f} s, max {max(ended, default=float('nan')):.3f} s; "
          f"never ended: {never}; peak RSS {rss:.0f} MB")


if __name__ == "__main__":
    main()
