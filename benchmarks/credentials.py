"""Credentials issued and revoked per second on a local PostgreSQL: the PostgreSQL provider
(``bot.providers.postgresql``) beside raw asyncpg running the same kind of statements, in one run. Prints
figures; asserts nothing (DESIGN.md "Performance to design for", last paragraph).

    .venv/bin/python benchmarks/credentials.py [--admin-url postgresql://postgres@127.0.0.1:5432/postgres]
        [--roles 300] [--rounds 3]

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

Raw and provider runs alternate (``--rounds``), each on fresh roles, and the median round is printed.
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


async def raw_round(url: str, count: int) -> tuple[float, float, list[float]]:
    conn = await asyncpg.connect(url)
    names = [f"{PREFIX}raw_{uuid.uuid4().hex}" for _ in range(count)]
    until = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    latencies = []
    started = time.perf_counter()
    for name in names:
        t = time.perf_counter()
        await conn.execute(f"CREATE ROLE {quote_ident(name)} LOGIN PASSWORD '{secrets.token_urlsafe(32)}' "
                           f"VALID UNTIL '{until}' IN ROLE {quote_ident(READ)}")
        latencies.append(time.perf_counter() - t)
    issued = time.perf_counter() - started
    started = time.perf_counter()
    for name in names:
        role = quote_ident(name)
        await conn.execute(f"ALTER ROLE {role} NOLOGIN")
        await conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1", name)
        await conn.execute(f"REASSIGN OWNED BY {role} TO {quote_ident(OWNER)}")
        await conn.execute(f"DROP OWNED BY {role}")
        await conn.execute(f"DROP ROLE {role}")
    revoked = time.perf_counter() - started
    await conn.close()
    return rate(count, issued), rate(count, revoked), latencies


async def provider_round(url: str, count: int, concurrency: int) -> tuple[float, float, list[float]]:
    spec = ProviderSpec(name="bench", kind="postgresql", url_env="UNUSED", username_prefix=PREFIX,
                        owner_role=OWNER, options={"pool_size": concurrency})
    provider = PostgresProvider(spec, url)
    expires = datetime.now(UTC) + timedelta(hours=1)
    accounts = []
    for _ in range(count):
        grant_id = str(uuid.uuid4())
        accounts.append(Account(grant_id, "bench", "postgresql", provider.username(grant_id), expires,
                                {"roles": [READ]}))
    latencies: list[float] = []
    slots = asyncio.Semaphore(concurrency)

    async def issue(account: Account) -> None:
        async with slots:
            t = time.perf_counter()
            await provider.issue(account, datetime.now(UTC))
            latencies.append(time.perf_counter() - t)

    async def revoke(account: Account) -> None:
        async with slots:
            report = await provider.revoke(account.username)
            assert (await provider.verify_revoked(account.username, report)).gone

    await provider.issue(Account(str(uuid.uuid4()), "bench", "postgresql", f"{PREFIX}warm", expires),
                         datetime.now(UTC))  # opens the pool's first connection outside the timing
    await provider.revoke(f"{PREFIX}warm")
    started = time.perf_counter()
    await asyncio.gather(*(issue(a) for a in accounts))
    issued = time.perf_counter() - started
    started = time.perf_counter()
    await asyncio.gather(*(revoke(a) for a in accounts))
    revoked = time.perf_counter() - started
    await provider.close()
    return rate(count, issued), rate(count, revoked), latencies


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--admin-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--roles", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    admin = await asyncpg.connect(args.admin_url)
    await admin.execute(f"CREATE DATABASE {DATABASE}")
    await admin.execute(f"CREATE ROLE {READ} NOLOGIN; CREATE ROLE {OWNER} NOLOGIN")
    url = args.admin_url.rsplit("/", 1)[0] + "/" + DATABASE
    results: dict[str, list[tuple[float, float, list[float]]]] = {"raw": [], "provider": [], "provider x4": []}
    try:
        for _ in range(args.rounds):
            results["raw"].append(await raw_round(url, args.roles))
            results["provider"].append(await provider_round(url, args.roles, 1))
            results["provider x4"].append(await provider_round(url, args.roles, 4))
    finally:
        for (name,) in await admin.fetch("SELECT rolname FROM pg_roles WHERE starts_with(rolname, $1)", PREFIX):
            await admin.execute(f"DROP ROLE {quote_ident(name)}")
        await admin.execute(f"DROP DATABASE {DATABASE} WITH (FORCE)")
        await admin.execute(f"DROP ROLE {READ}; DROP ROLE {OWNER}")
        await admin.close()

    def median(runs, index):
        return statistics.median(run[index] for run in runs)

    raw_issue, raw_revoke = median(results["raw"], 0), median(results["raw"], 1)
    print(f"{args.roles} roles per round, {args.rounds} rounds (median), PostgreSQL "
          f"{(await _version(args.admin_url))}")
    for name, runs in results.items():
        issue, revoke = median(runs, 0), median(runs, 1)
        latencies = [x for run in runs for x in run[2]]
        share = "" if name == "raw" else (f"  ({issue / raw_issue:.0%} of raw issue, "
                                          f"{revoke / raw_revoke:.0%} of raw revoke)")
        print(f"{name:12} issue {issue:6.0f}/s ({percentiles(latencies)}); revoke {revoke:6.0f}/s{share}")


async def _version(url: str) -> str:
    conn = await asyncpg.connect(url)
    try:
        return await conn.fetchval("SHOW server_version")
    finally:
        await conn.close()


if __name__ == "__main__":
    asyncio.run(main())
