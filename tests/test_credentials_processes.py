"""Real ``grantbot serve`` processes handing out PostgreSQL roles: ``kill -9`` in the middle of issuing leaves no
role behind after the restart (neither one whose grant was never recorded nor one whose grant ended meanwhile),
and three replicas on one database drop each role once and say so once. Time moves through the clock offset
file; the processes' logs hold no password and no traceback."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
import uuid
from datetime import UTC, datetime, timedelta

import aiohttp
import pytest
from sqlalchemy import text

from bot.providers.postgresql import scram_verifier
from bot.store.engine import create_engine
from bot.store.repository import SqlStore
from tests.pg_target import target  # noqa: F401  (fixture)
from tests.support import Api, TcpProxy, eventually
from tests.test_credentials import STAGING_READ, session_ended
from tests.test_end_to_end import Process, at_head, grantbot_command
from tests.test_replicas import spawn  # noqa: F401  (fixture)


@pytest.fixture
async def relay():
    """A TCP relay in front of the local PostgreSQL, for the provider's admin connection only (the pipeline's goes
    straight): tests make that provider go silent (``blackhole``) mid-revocation."""
    proxy = TcpProxy("127.0.0.1", 5432)
    await proxy.start()
    yield proxy
    await proxy.stop()


def configure(proc: Process, target, tmp_path) -> Process:
    proc.env.update({
        target.url_env: target.url,
        "GRANTBOT_POLICY_FILE": str(target.policy(tmp_path)),
        "GRANTBOT_RECONCILE_INTERVAL_SECONDS": "1",
        "GRANTBOT_LOG_LEVEL": "DEBUG",  # the most a log can say: still no password
    })
    return proc


async def rows(database_url: str, sql: str) -> list:
    engine = create_engine(database_url)
    try:
        async with engine.connect() as conn:
            return (await conn.execute(text(sql))).all()
    finally:
        await engine.dispose()


def check_log(proc: Process, passwords: list[str]) -> None:
    proc.check_log()  # no traceback, no HMAC secret or Slack token
    log = proc.log_path.read_text()
    for password in passwords:
        assert password not in log


@pytest.mark.slow
async def test_kill_9_while_issuing_leaves_no_role_behind_after_the_restart(spawn, target, tmp_path, database_url):
    proc = configure(spawn(name="grantbot"), target, tmp_path)
    await at_head(proc)
    await proc.start()
    async with aiohttp.ClientSession() as http:
        api = Api(http, proc.base_url, proc.now)

        async def ask(n: int):
            try:
                return await api.request_access({**STAGING_READ, "reason": f"load {n}"})
            except aiohttp.ClientError:
                return None  # the process died under it

        calls = [asyncio.ensure_future(ask(n)) for n in range(40)]
        # Killed once five grants are handed over (on a loaded machine the first answers may be 503s).
        await eventually(lambda: sum(c.done() and (c.result() or (0,))[0] == 201 for c in calls) >= 5,
                         timeout=30, interval=0.01)
        assert await proc.kill(signal.SIGKILL) == -signal.SIGKILL
        answers = [a for a in await asyncio.gather(*calls) if a is not None and a[0] == 201]
    handed = {a["grant"]["credentials"][0]["username"]: a["grant"]["credentials"][0] for _, a in answers}
    assert len(handed) >= 5

    # A role the crash left as it leaves one: made and marked, its grant never committed.
    grant_id = str(uuid.uuid4())
    orphan = target.prefix + grant_id.replace("-", "")
    created = datetime.now(UTC) - timedelta(minutes=10)
    conn = await target.admin()
    await conn.execute(
        f'''CREATE ROLE "{orphan}" LOGIN PASSWORD '{scram_verifier("pw")}' IN ROLE "{target.read_role}";
            COMMENT ON ROLE "{orphan}" IS 'grantbot grant={grant_id} provider=orders-db created={created:%Y-%m-%dT%H:%M:%SZ}' ''')
    await conn.close()
    session = await target.login({"username": orphan, "password": "pw", "database": target.database})

    await proc.start()  # reconciliation runs at start
    await eventually(lambda: session_ended(session), timeout=20)
    await eventually(lambda: _gone(target, orphan), timeout=20)
    assert set(handed) <= set(await target.roles_made())  # what was handed over works until the grant ends

    # Roles made for requests the kill cut off (never recorded) are orphans too, once past the grace a grant
    # being committed has; every grant expires. Then nothing is left, and every removal was verified.
    proc.advance(180)
    await eventually(lambda: _none_left(target), timeout=30)
    # A role is gone a moment before its check is recorded (the worker drops it, checks, then commits).
    await eventually(lambda: _all_verified(database_url), timeout=20)
    made = await rows(database_url, "SELECT username FROM credentials")
    assert set(handed) | {orphan} <= {r.username for r in made}
    await proc.kill(signal.SIGTERM)
    check_log(proc, [c["password"] for c in handed.values()])


async def _count(read, expected: int) -> bool:
    return len(await read()) >= expected


async def _gone(target, role: str) -> bool:
    return await target.role(role) is None


async def _all_verified(database_url: str) -> bool:
    states = await rows(database_url, "SELECT revocation, count(*) FROM credentials GROUP BY revocation")
    return list(dict(states)) == ["verified"]


async def _none_left(target) -> bool:
    return await target.roles_made() == []


@pytest.mark.slow
@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
async def test_three_replicas_drop_each_role_once_and_say_so_once(spawn, target, tmp_path, database_url, sandbox):
    replicas = [configure(spawn(name=f"replica-{i}"), target, tmp_path) for i in range(3)]
    await at_head(replicas[0])
    await asyncio.gather(*(r.start() for r in replicas))
    async with aiohttp.ClientSession() as http:
        apis = [Api(http, r.base_url, r.now) for r in replicas]
        answers = await asyncio.gather(*(apis[n % 3].request_access({**STAGING_READ, "reason": f"job {n}"})
                                         for n in range(24)))
    assert [status for status, _ in answers] == [201] * 24
    credentials = [a["grant"]["credentials"][0] for _, a in answers]
    sessions = [await target.login(c) for c in credentials[:6]]

    replicas[0].advance(61)  # one clock file: every replica's time moves
    await eventually(lambda: _none_left(target), timeout=30)
    for session in sessions:
        assert await session_ended(session)

    async def revoked():
        return await rows(database_url, "SELECT grant_id, count(*) FROM audit_events "
                                        "WHERE kind = 'credentials.revoked' GROUP BY grant_id")

    await eventually(lambda: _count(revoked, 24), timeout=15)  # the last ones may be recording their check
    await asyncio.sleep(1)
    assert sorted(n for _, n in await revoked()) == [1] * 24

    def told():
        return [m for m in sandbox.messages if "Access removed" in m["text"]]

    await eventually(lambda: len(told()) >= 24, timeout=30)
    await asyncio.sleep(1)  # nothing more comes
    assert sorted(m["text"].split("role ")[1].split(" ")[0] for m in told()) == \
        sorted(c["username"] for c in credentials)
    for replica in replicas:
        assert await replica.kill(signal.SIGTERM) == 0
        check_log(replica, [c["password"] for c in credentials])


async def _killed_mid_revocation(spawn, target, tmp_path, database_url, relay: TcpProxy,
                                 sig: int = signal.SIGKILL, exit_status: int = -signal.SIGKILL,
                                 others: list | None = None):
    """A grantbot whose provider connection goes through ``relay``, killed (``sig``, its ``exit_status``) while it
    revokes a grant's role with the relay silent; the relay restored. Returns the process, the credential and the
    pipeline's session. ``others``: a list to which one more grant, still active, is added (made first)."""
    proc = configure(spawn(name="grantbot"), target, tmp_path)
    proc.env[target.url_env] = f"postgresql://postgres@127.0.0.1:{relay.port}/{target.database}"
    # Limits longer than the test: the revocation waits on the silent network until the kill.
    proc.env["GRANTBOT_POLICY_FILE"] = str(target.policy(tmp_path, options="{connect_timeout: 60, "
                                                                           "statement_timeout: 60}"))
    await at_head(proc)
    await proc.start()
    async with aiohttp.ClientSession() as http:
        api = Api(http, proc.base_url, proc.now)
        if others is not None:
            status, other = await api.request_access({**STAGING_READ, "reason": "another grant"})
            assert status == 201, other
            others.append(other["grant"])
        status, created = await api.request_access(STAGING_READ)
        assert status == 201, created
        grant = created["grant"]
        [credential] = grant["credentials"]
        session = await target.login(credential)
        relay.blackhole()
        status, answer = await api.call("POST", f"/v1/grants/{grant['id']}/revoke")
        assert status == 200 and answer["status"] == "revoked", answer

    async def leased() -> bool:
        return await rows(database_url, "SELECT id FROM credentials WHERE revocation = 'pending' "
                                        "AND locked_until IS NOT NULL AND attempts = 1") != []
    await eventually(leased)
    assert await proc.kill(sig) == exit_status
    relay.restore()
    assert not await session_ended(session)
    return proc, credential, session


async def _start_reconcile(proc: Process, *options: str) -> asyncio.subprocess.Process:
    """``grantbot credentials reconcile [options]`` with ``proc``'s settings and clock, its output piped."""
    return await asyncio.create_subprocess_exec(
        *grantbot_command("credentials"), "reconcile", *options, env={**proc.env, "GRANTBOT_LOG_LEVEL": "WARNING"},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


async def _reconcile(proc: Process, *options: str) -> tuple[int, str]:
    """Run reconcile to its end: its exit status and everything it printed."""
    reconcile = await _start_reconcile(proc, *options)
    out = await _finish(reconcile, [])
    return reconcile.returncode, out


async def _reconcile_until_it_waits(proc: Process) -> tuple[asyncio.subprocess.Process, list[str]]:
    reconcile = await _start_reconcile(proc)
    printed: list[str] = []
    try:
        while not any(line.startswith("waiting for 1 revocation(s)") for line in printed):
            line = await asyncio.wait_for(reconcile.stdout.readline(), 30)
            assert line, f"reconcile ended without waiting: {printed}"
            printed.append(line.decode())
    except BaseException:
        reconcile.kill()
        await reconcile.wait()
        raise
    return reconcile, printed


async def _finish(reconcile: asyncio.subprocess.Process, printed: list[str]) -> str:
    try:
        return "".join(printed) + (await asyncio.wait_for(reconcile.communicate(), 30))[0].decode()
    finally:
        if reconcile.returncode is None:
            reconcile.kill()
            await reconcile.wait()


async def _a_later_run_finishes(proc: Process, target, credential: dict, session, *options: str) -> None:
    """Past the dead process's lease (LEASE_SECONDS, 30 s), a new reconcile takes the revocation over: the session
    ended, the role dropped, exit 0."""
    proc.advance(31)
    status, out = await _reconcile(proc, *options)
    assert status == 0 and "revocations: 1 verified" in out and "gave up" not in out, out
    assert await session_ended(session) and await target.role(credential["username"]) is None
    await session.close()


@pytest.mark.slow
async def test_reconcile_after_kill_9_mid_revocation_takes_it_over_when_the_lease_runs_out(
        spawn, target, tmp_path, database_url, relay):
    """``kill -9`` while a revocation waits on its provider leaves it leased to the dead process. ``grantbot
    credentials reconcile`` says so and waits; once the lease has run out it takes the revocation over, ends the
    session, drops the role and exits 0. (It used to exit 0 at once, the role still there.)"""
    proc, credential, session = await _killed_mid_revocation(spawn, target, tmp_path, database_url, relay)
    reconcile, printed = await _reconcile_until_it_waits(proc)
    await asyncio.sleep(1)
    assert reconcile.returncode is None and await target.role(credential["username"]) is not None
    proc.advance(31)  # past the dead process's lease (LEASE_SECONDS, 30 s: nobody renews it)
    out = await _finish(reconcile, printed)
    assert reconcile.returncode == 0, out
    assert "revocations: 1 verified" in out and "still not removed" not in out, out
    assert await session_ended(session)
    assert await target.role(credential["username"]) is None
    assert await _all_verified(database_url)
    assert credential["password"] not in out
    await session.close()


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
async def test_ctrl_c_in_the_reconcile_wait_exits_130_in_one_line_and_a_second_run_finishes(
        spawn, target, tmp_path, database_url, relay):
    proc, credential, session = await _killed_mid_revocation(spawn, target, tmp_path, database_url, relay)
    reconcile, printed = await _reconcile_until_it_waits(proc)
    reconcile.send_signal(signal.SIGINT)
    out = await _finish(reconcile, printed)
    assert reconcile.returncode == 130, out
    assert "Traceback" not in out and "interrupted" in out, out
    assert await target.role(credential["username"]) is not None  # nothing was done: it is still queued

    await _a_later_run_finishes(proc, target, credential, session)


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
async def test_reconcile_with_max_wait_gives_up_on_a_held_revocation_with_exit_1_and_a_later_run_finishes(
        spawn, target, tmp_path, database_url, relay):
    """``--max-wait`` bounds the wait for a revocation another process holds (a script's or cron job's patience):
    past it reconcile says what is still held and until when, and exits 1, the role untouched."""
    proc, credential, session = await _killed_mid_revocation(spawn, target, tmp_path, database_url, relay)
    started = time.monotonic()
    status, out = await _reconcile(proc, "--max-wait", "1")
    assert status == 1, out
    assert "gave up waiting after 1 s (--max-wait): 1 revocation(s) still held" in out, out
    assert "still not removed: 0 failed, 1 pending" in out, out
    assert time.monotonic() - started < 20, out  # gave up, did not wait out the 30 s lease
    assert await target.role(credential["username"]) is not None and not await session_ended(session)

    await _a_later_run_finishes(proc, target, credential, session, "--max-wait", "1")


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
async def test_max_wait_counts_from_the_first_look_at_revocations_held_elsewhere_not_from_its_own_work(
        spawn, target, tmp_path, database_url, relay):
    """Reconcile's own revocation taking longer than ``--max-wait`` (its provider slow) does not use up the wait:
    it still says it waits for the one a dead process holds, and only then gives up. (The limit once counted from
    the start of the rounds, so a slow own round gave up without waiting.)"""
    others: list = []
    proc, credential, session = await _killed_mid_revocation(spawn, target, tmp_path, database_url, relay,
                                                             others=others)
    [other] = others
    [other_credential] = other["credentials"]
    # Another replica revokes the other grant (its revocation queued, due now, held by nobody).
    store = SqlStore(create_engine(database_url))
    try:
        now = datetime.fromtimestamp(proc.now(), UTC)
        assert await store.revoke_grant(other["id"], "other-replica", now, [])
    finally:
        await store.engine.dispose()
    reconcile = await _start_reconcile(proc, "--max-wait", "0.5")
    printed = [(await asyncio.wait_for(reconcile.stdout.readline(), 30)).decode()]
    assert printed[0].startswith("reconcile: "), printed  # the roles listed; its own revocation comes next
    relay.blackhole()  # its own revocation waits on a silent provider, longer than --max-wait
    await asyncio.sleep(1.5)
    relay.restore()
    out = await _finish(reconcile, printed)
    assert reconcile.returncode == 1, out
    assert "revocations: 1 verified" in out, out  # its own, the other grant's
    waiting, gave_up = out.find("waiting for 1 revocation(s)"), out.find("gave up waiting after 0.5 s")
    assert -1 < waiting < gave_up, out
    assert await target.role(other_credential["username"]) is None
    assert await target.role(credential["username"]) is not None  # the dead process's, left to its lease
    await session.close()


@pytest.mark.slow
@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
async def test_sigterm_mid_revocation_gives_the_lease_back_and_the_next_start_finishes_at_once(
        spawn, target, tmp_path, database_url, relay):
    """A deploy stopping grantbot (SIGTERM) while a revocation waits on its provider: after the drain's grace the
    round is cut off and gives its lease back, so the next process takes it over at once, not a lease later."""
    proc, credential, session = await _killed_mid_revocation(spawn, target, tmp_path, database_url, relay,
                                                             signal.SIGTERM, 0)
    # The cut-off attempt is given back with the lease (a rolling deploy must not use up the retries); the
    # claim count keeps it.
    assert await rows(database_url, "SELECT revocation, locked_until, attempts, claims FROM credentials") == [
        ("pending", None, 0, 1)]
    await proc.start()  # the clock has not moved
    await eventually(lambda: session_ended(session), timeout=20)
    await eventually(lambda: _gone(target, credential["username"]), timeout=20)
    await eventually(lambda: _all_verified(database_url), timeout=20)
    assert await rows(database_url, "SELECT data->>'attempts', data->>'claims' FROM audit_events "
                                    "WHERE kind = 'credentials.revoked'") == [("1", "2")]
    await proc.kill(signal.SIGTERM)
    await session.close()
