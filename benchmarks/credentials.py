"""Credentials issued and revoked per second on a local PostgreSQL: the PostgreSQL provider
(``bot.providers.postgresql``) beside raw asyncpg running the same kind of statements, in one run. Prints
figures; asserts nothing (DESIGN.md "Performance to design for", last paragraph).

    .venv/bin/python benchmarks/credentials.py [--admin-url postgresql://postgres@127.0.0.1:5432/postgres]
        [--roles 100] [--rounds 10]

- raw issue: ``CREATE ROLE … LOGIN PASSWORD '<plaintext>' VALID UNTIL … IN ROLE …`` on one connection (the server
  hashes the password: SCRAM-SHA-256, 4096 iterations);
- provider issue: ``PostgresProvider.issue`` on one pooled connection (concurrency 1) and with a pool of 4
  (concurrency 4): a look-up of the role, a fresh 32-byte password hashed here into a SCRAM verifier (in a
  thread), then ``CREATE ROLE … PASSWORD '<verifier>' … IN ROLE …; COMMENT ON ROLE …`` as one implicit transaction;
- raw revoke: the five statements ``ALTER ROLE … NOLOGIN``, ``pg_terminate_backend`` of its sessions,
  ``REASSIGN OWNED``, ``DROP OWNED``, ``DROP ROLE``;
- provider revoke: ``revoke`` (look-up and marker check, NOLOGIN, end sessions, find the databases it owns things in,
  REASSIGN/DROP OWNED where needed, DROP ROLE) and ``verify_revoked`` (no role, no session), as the revocation
  worker runs them.

The contenders take turns in small rounds (``--rounds`` of ``--roles`` each, fresh roles every time); the medians
over rounds are printed, and each provider's median ratio to raw within a round (the machine's load drifts less
within a round than across a run).
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import statistics
import time
import uuid
from datetime import UTC, datetime, timedelta

import asyncpg

from bot.domain.credentials import Account, ProviderSpec
from bot.providers.postgresql import PostgresProvider, quote_ident

TAG = secrets.token_hex(3)
DATABASE = f"gb_bench_{TAG}"
READ, OWNER = f"gb_bench_{TAG}_read", f"gb_bench_{TAG}_owner"
PREFIX = f"gbb_{TAG}_"


def rate(count: int, seconds: float) -> float:
    return count / seconds if seconds else float("inf")


def percentiles(latencies: list[float]) -> str:
    q = statistics.quantiles(latencies, n=100)
    return f"p50 {q[49] * 1000:.1f} ms, p99 {q[98] * 1000:.1f} ms"


class Raw:
    """The floor: the statements on one asyncpg connection, nothing else."""

    name = "raw asyncpg"

    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn

    async def issue(self, names: list[str], latencies: list[float]) -> None:
        until = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
        for name in names:
            t = time.perf_counter()
            await self.conn.execute(f"CREATE ROLE {quote_ident(name)} LOGIN PASSWORD '{secrets.token_urlsafe(32)}' "
                                    f"VALID UNTIL '{until}' IN ROLE {quote_ident(READ)}")
            latencies.append(time.perf_counter() - t)

    async def revoke(self, names: list[str]) -> None:
        for name in names:
            role = quote_ident(name)
            await self.conn.execute(f"ALTER ROLE {role} NOLOGIN")
            await self.conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1", name)
            await self.conn.execute(f"REASSIGN OWNED BY {role} TO {quote_ident(OWNER)}")
            await self.conn.execute(f"DROP OWNED BY {role}")
            await self.conn.execute(f"DROP ROLE {role}")


class Provider:
    """The PostgreSQL provider, ``concurrency`` calls at a time on a pool of as many connections."""

    def __init__(self, url: str, concurrency: int) -> None:
        self.name = "provider" if concurrency == 1 else f"provider x{concurrency}"
        self.concurrency = concurrency
        self.provider = PostgresProvider(
            ProviderSpec(name="bench", kind="postgresql", url_env="UNUSED", username_prefix=PREFIX,
                         owner_role=OWNER, options={"pool_size": concurrency}), url)
        self.accounts: dict[str, Account] = {}

    async def issue(self, names: list[str], latencies: list[float]) -> None:
        slots = asyncio.Semaphore(self.concurrency)
        expires = datetime.now(UTC) + timedelta(hours=1)

        async def one(name: str) -> None:
            async with slots:
                account = Account(str(uuid.uuid4()), "bench", "postgresql", name, expires, {"roles": [READ]})
                t = time.perf_counter()
                await self.provider.issue(account, datetime.now(UTC))
                latencies.append(time.perf_counter() - t)

        await asyncio.gather(*(one(name) for name in names))

    async def revoke(self, names: list[str]) -> None:
        slots = asyncio.Semaphore(self.concurrency)

        async def one(name: str) -> None:
            async with slots:  # as the revocation worker does: remove, then check
                account = Account(str(uuid.uuid4()), "bench", "postgresql", name, datetime.now(UTC))
                report = await self.provider.revoke(account)
                assert (await self.provider.verify_revoked(account, report)).gone

        await asyncio.gather(*(one(name) for name in names))


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--admin-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--roles", type=int, default=100, help="roles per round and contender")
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    admin = await asyncpg.connect(args.admin_url)
    await admin.execute(f"CREATE DATABASE {DATABASE}")
    await admin.execute(f"CREATE ROLE {READ} NOLOGIN; CREATE ROLE {OWNER} NOLOGIN")
    url = args.admin_url.rsplit("/", 1)[0] + "/" + DATABASE
    raw = Raw(await asyncpg.connect(url))
    contenders = [raw, Provider(url, 1), Provider(url, 4)]
    issued: dict[str, list[float]] = {c.name: [] for c in contenders}
    revoked: dict[str, list[float]] = {c.name: [] for c in contenders}
    latencies: dict[str, list[float]] = {c.name: [] for c in contenders}
    try:
        for contender in contenders[1:]:  # each pool's first connection and thread, outside the timing
            await contender.issue([f"{PREFIX}warm"], [])
            await contender.revoke([f"{PREFIX}warm"])
        # Small rounds, the contenders one after the other in each: the machine's load drifts less within a
        # round than across a run, so each round's ratio to raw is fairer than ratios of whole-run averages.
        for _ in range(args.rounds):
            names = {c.name: [f"{PREFIX}{uuid.uuid4().hex}" for _ in range(args.roles)] for c in contenders}
            for contender in contenders:
                started = time.perf_counter()
                await contender.issue(names[contender.name], latencies[contender.name])
                issued[contender.name].append(rate(args.roles, time.perf_counter() - started))
            for contender in contenders:
                started = time.perf_counter()
                await contender.revoke(names[contender.name])
                revoked[contender.name].append(rate(args.roles, time.perf_counter() - started))
    finally:
        for contender in contenders[1:]:
            await contender.provider.close()
        await raw.conn.close()
        for (name,) in await admin.fetch("SELECT rolname FROM pg_roles WHERE starts_with(rolname, $1)", PREFIX):
            await admin.execute(f"DROP ROLE {quote_ident(name)}")
        await admin.execute(f"DROP DATABASE {DATABASE} WITH (FORCE)")
        await admin.execute(f"DROP ROLE {READ}; DROP ROLE {OWNER}")
        await admin.close()

    print(f"{args.rounds} rounds of {args.roles} roles per contender, PostgreSQL {await _version(args.admin_url)}; "
          "medians over rounds")
    for contender in contenders:
        name = contender.name
        line = (f"{name:12} issue {statistics.median(issued[name]):5.0f}/s ({percentiles(latencies[name])}); "
                f"revoke {statistics.median(revoked[name]):5.0f}/s")
        if contender is not raw:
            issue_share = statistics.median(a / b for a, b in zip(issued[name], issued[raw.name]))
            revoke_share = statistics.median(a / b for a, b in zip(revoked[name], revoked[raw.name]))
            line += f"  ({issue_share:.0%} of raw issue, {revoke_share:.0%} of raw revoke, per round)"
        print(line)


async def _version(url: str) -> str:
    conn = await asyncpg.connect(url)
    try:
        return await conn.fetchval("SHOW server_version")
    finally:
        await conn.close()


if __name__ == "__main__":
    asyncio.run(main())
