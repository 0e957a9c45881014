"""The README's walkthrough, as a new user follows it: ``grantbot dev`` in an empty folder, the ``grantbot request``
command it prints, a click in the sandbox it started, the token, and the expiry. It runs on non-default ports, so
it also checks that the printed commands find this grantbot and not whatever listens on 8080."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import signal
import subprocess
import time

import aiohttp
import pytest

from tests.support import Api, advance_clock_offset, buttons, eventually, message_text, write_clock_offset
from tests.ports import spare_port
from tests.test_end_to_end import grantbot_command


class Dev:
    """``grantbot dev`` started in ``folder``, with what it printed."""

    def __init__(self, folder, port: int, sandbox_port: int, *options: str) -> None:
        self.folder = folder
        self.offset_file = folder / "clock-offset"
        write_clock_offset(self.offset_file, 0)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SLACK_", "GRANTBOT_"))}
        self.env = {**env, "GRANTBOT_CLOCK_OFFSET_FILE": str(self.offset_file),
                    "GRANTBOT_SWEEP_INTERVAL_SECONDS": "0.2"}
        self.log_path = folder / "dev.log"
        self.sandbox = f"http://127.0.0.1:{sandbox_port}"
        self.proc = subprocess.Popen(
            [*grantbot_command("dev"), "--port", str(port), "--sandbox-port", str(sandbox_port), *options],
            cwd=folder, env=self.env, stdout=self.log_path.open("w"), stderr=subprocess.STDOUT)

    def printed(self) -> str:
        return self.log_path.read_text()

    def command(self, containing: str) -> list[str]:
        """The first printed ``.venv/bin/grantbot`` command with ``containing`` in it, as this test runs it."""
        line = next(line for line in self.printed().splitlines() if ".venv/bin/grantbot" in line and containing in line)
        words = shlex.split(line[line.index(".venv/bin/grantbot"):])
        return [*grantbot_command(words[1]), *words[2:]]

    def advance(self, seconds: float) -> None:
        advance_clock_offset(self.offset_file, seconds)


@pytest.fixture
async def dev(tmp_path):
    port, sandbox_port = spare_port(), spare_port()
    started = Dev(tmp_path, port, sandbox_port)
    await eventually(lambda: "Stop with Ctrl-C." in started.printed() or started.proc.poll() is not None,
                     timeout=30, interval=0.1)
    assert started.proc.poll() is None, started.printed()
    yield started
    started.proc.send_signal(signal.SIGINT)  # Ctrl-C, as the README says
    deadline = time.monotonic() + 15
    while started.proc.poll() is None:
        assert time.monotonic() < deadline, "grantbot dev did not stop on Ctrl-C"
        await asyncio.sleep(0.05)
    log = started.printed()
    assert "Traceback" not in log, log[-3000:]
    assert "grantbot dev stopped" in log.splitlines()[-1], log[-3000:]  # Ctrl-C is answered


async def test_the_walkthrough_works_as_printed_on_other_ports(dev):
    printed = dev.printed()
    assert f"The Slack sandbox is at {dev.sandbox}/" in printed, printed
    async with aiohttp.ClientSession() as http:
        page = await (await http.get(dev.sandbox + "/")).text()
        assert "<title>grantbot · Slack sandbox</title>" in page

        async def state() -> dict:
            async with http.get(dev.sandbox + "/sandbox/state") as resp:
                return await resp.json()

        assert "access-requests" in json.dumps((await state())["channels"])

        # Step 1: the printed request command, which waits for a decision.
        request = await asyncio.create_subprocess_exec(
            *dev.command("--environment production"), cwd=dev.folder, env=dev.env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)

        async def card():
            cards = [m for m in (await state())["messages"] if "approve" in buttons(m)]  # not the daily summary
            return cards[0] if cards else None

        message = await eventually(card, timeout=20)
        assert "hotfix 42" in message_text(message) and "deploy-bot" in message_text(message)

        async def click(user: str) -> dict:
            body = {"channel": message["channel"], "ts": message["ts"], "action_id": "approve", "user_id": user}
            async with http.post(dev.sandbox + "/sandbox/click", json=body) as resp:
                return {"status": resp.status, **await resp.json()}

        # sam is not an approver: a private refusal, the request still waits.
        assert (await click("U0OTHER"))["status"] == 200
        refusal = await eventually(lambda: _ephemeral_for(state, "U0OTHER"))
        assert "approvers" in refusal, refusal
        assert request.returncode is None

        # dana approves: the command returns with the token.
        assert (await click("U0APPROVER"))["status"] == 200
        out, err = await asyncio.wait_for(request.communicate(), 20)
        assert request.returncode == 0, err.decode()
        answer = json.loads(out)
        assert answer["status"] == "approved" and answer["grant"]["access_token"], answer
        assert "pending approval in Slack" in err.decode() and "approved" in err.decode()

        # The printed introspection command's client sees the token active.
        curl = next(line for line in printed.splitlines() if "curl -s -u" in line)
        client = re.search(r"-u (\S+)", curl).group(1)
        base = re.search(r"(http://\S+)/oauth/introspect", curl).group(1)
        introspection = Api(http, base)
        token = answer["grant"]["access_token"]
        assert (await introspection.introspect(token, tuple(client.split(":"))))[1]["active"] is True

        # 60 s after the approval the grant expires: a thread reply under the card, introspection inactive.
        dev.advance(61)

        async def expiry():
            replies = [message_text(m) for m in (await state())["messages"] if m.get("thread_ts") == message["ts"]]
            return next((r for r in replies if "expired" in r), None)

        assert "access has ended" in await eventually(expiry, timeout=20)
        assert await introspection.introspect(token, tuple(client.split(":"))) == (200, {"active": False})

        # The printed staging command is auto-approved at once.
        staging = subprocess.run(dev.command("--environment staging"), cwd=dev.folder, env=dev.env,
                                 capture_output=True, text=True, timeout=30)
        assert staging.returncode == 0, staging.stderr
        assert json.loads(staging.stdout)["status"] == "approved"


async def _ephemeral_for(state, user: str) -> str | None:
    found = [message_text(e) for e in (await state())["ephemerals"] if e.get("user") == user]
    return found[-1] if found else None


async def test_grantbot_dev_lists_the_local_servers_it_found(dev):
    """This machine runs PostgreSQL, MariaDB, Redis and RabbitMQ (with its management API): each is found by its
    own protocol and named with what to put in a policy."""
    lines = dev.printed().split("Servers on this machine that real credentials can be handed out in")[1].splitlines()
    found = {line.split()[0]: line for line in lines[1:5]}
    assert set(found) == {"PostgreSQL", "MariaDB", "Redis", "RabbitMQ"}, lines
    assert "127.0.0.1:3306" in found["MariaDB"] and "found: kind: mysql" in found["MariaDB"]
    assert re.search(r"MariaDB 10\.\d+", found["MariaDB"]), found["MariaDB"]
    assert "found: grantbot dev --postgres postgresql://postgres@127.0.0.1:5432/postgres" in found["PostgreSQL"]
    assert "found: kind: redis" in found["Redis"] and "found: kind: rabbitmq" in found["RabbitMQ"]


def test_a_sandbox_port_in_use_is_named_with_the_option_that_moves_it(tmp_path):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        sandbox_port = taken.getsockname()[1]
        dev = Dev(tmp_path, spare_port(), sandbox_port)
        assert dev.proc.wait(60) == 2, dev.printed()
    assert dev.printed().strip().splitlines()[-1] == (
        f"grantbot: cannot listen on 127.0.0.1:{sandbox_port} for the Slack sandbox: the address is already in use "
        "(another grantbot dev, or another program, listens there); stop that program or choose another port "
        "(grantbot dev --sandbox-port)"), dev.printed()
    assert "Traceback" not in dev.printed()
