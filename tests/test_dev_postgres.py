"""The README walkthrough's database step, as a new user follows it: ``grantbot dev --postgres URL``, the printed
``eval "$(grantbot request … --output env)"`` command, dana's click in the sandbox, a session opened with the PG*
variables it set (reading and writing ``orders``), and at expiry the session ended, the role gone, and the card's
thread saying what was removed. The demo database gets a name of this test's own (the URL's database), so
parallel runs do not share roles."""

from __future__ import annotations

import asyncio
import secrets
import shlex
import signal
import time

import aiohttp
import asyncpg
import pytest

from tests.conftest import ADMIN_URL
from tests.support import buttons, eventually, message_text
from tests.test_credentials import session_ended
from tests.test_dev_walkthrough import Dev
from tests.ports import spare_port
from tests.test_end_to_end import grantbot_command


@pytest.fixture
async def demo_database():
    name = f"gbt_demo_{secrets.token_hex(3)}"
    yield name
    conn = await asyncpg.connect(ADMIN_URL)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        for (role,) in await conn.fetch("SELECT rolname FROM pg_roles WHERE starts_with(rolname, $1) "
                                        "OR starts_with(rolname, $2)", f"{name}_", f"gb_{name}_"):
            await conn.execute(f'DROP ROLE "{role}"')
    finally:
        await conn.close()


@pytest.mark.slow
async def test_the_database_step_works_as_printed(tmp_path, demo_database):
    url = ADMIN_URL.rsplit("/", 1)[0] + "/" + demo_database
    dev = Dev(tmp_path, spare_port(), spare_port(), "--postgres", url)
    try:
        await eventually(lambda: "Stop with Ctrl-C." in dev.printed() or dev.proc.poll() is not None, timeout=30,
                         interval=0.1)
        printed = dev.printed()
        assert dev.proc.poll() is None, printed
        assert f"A real database grant (database {demo_database}: table orders" in printed
        line = next(line for line in printed.splitlines() if "--output env" in line)
        words = shlex.split(line[line.index("$(") + 2:line.rindex(")")])
        command = [*grantbot_command(words[1]), *words[2:]]
        request = await asyncio.create_subprocess_exec(*command, cwd=tmp_path, env=dev.env,
                                                       stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        async with aiohttp.ClientSession() as http:
            async def state() -> dict:
                async with http.get(dev.sandbox + "/sandbox/state") as resp:
                    return await resp.json()

            async def card():
                cards = [m for m in (await state())["messages"] if "approve" in buttons(m)]  # not the daily summary
                return cards[0] if cards else None

            message = await eventually(card, timeout=20)
            body = {"channel": message["channel"], "ts": message["ts"], "action_id": "approve",
                    "user_id": "U0APPROVER"}
            async with http.post(dev.sandbox + "/sandbox/click", json=body) as resp:
                assert resp.status == 200
            out, err = await asyncio.wait_for(request.communicate(), 30)
            assert request.returncode == 0, err.decode()

            # What `eval` would set.
            exported = dict(shlex.split(line.removeprefix("export "))[0].split("=", 1)
                            for line in out.decode().splitlines())
            assert {"GRANTBOT_TOKEN", "GRANTBOT_GRANT_ID", "GRANTBOT_EXPIRES_AT", "PGHOST", "PGPORT", "PGDATABASE",
                    "PGUSER", "PGPASSWORD"} <= set(exported), exported
            assert exported["PGDATABASE"] == demo_database and exported["PGUSER"].startswith(f"gb_{demo_database}_")
            session = await asyncpg.connect(host=exported["PGHOST"], port=int(exported["PGPORT"]),
                                            user=exported["PGUSER"], password=exported["PGPASSWORD"],
                                            database=exported["PGDATABASE"])
            assert await session.fetchval("SELECT item FROM orders WHERE id = 2") == "flat white"
            await session.execute("UPDATE orders SET item = 'oat flat white' WHERE id = 2")

            dev.advance(61)
            await eventually(lambda: session_ended(session), timeout=20)

            async def removed():
                replies = [message_text(m) for m in (await state())["messages"]
                           if m.get("thread_ts") == message["ts"]]
                return next((r for r in replies if "Access removed" in r), None)

            said = await eventually(removed, timeout=20)
            assert f"role {exported['PGUSER']} dropped, 1 session ended" in said, said
            with pytest.raises(asyncpg.exceptions.InvalidAuthorizationSpecificationError, match="does not exist"):
                await asyncpg.connect(host=exported["PGHOST"], port=int(exported["PGPORT"]), user=exported["PGUSER"],
                                      password=exported["PGPASSWORD"], database=exported["PGDATABASE"])
    finally:
        dev.proc.send_signal(signal.SIGINT)
        deadline = time.monotonic() + 15
        while dev.proc.poll() is None and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
    assert "Traceback" not in dev.printed() and exported["PGPASSWORD"] not in dev.printed()
