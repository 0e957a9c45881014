"""``grantbot serve --workers N``: N processes share one port and serve like replicas; SIGTERM stops them all
cleanly; a worker that dies takes the set down with a non-zero status, for the process manager to restart."""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
from pathlib import Path

import aiohttp
import pytest

from tests.support import Api, eventually
from tests.test_end_to_end import Process, at_head, grantbot_command, migrate


def children(pid: int) -> list[int]:
    return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def listening_inodes(port: int) -> set[str]:
    """Socket inodes listening on ``port`` (state 0A in /proc/net/tcp)."""
    inodes = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if int(fields[1].split(":")[1], 16) == port and fields[3] == "0A":
            inodes.add(fields[9])
    return inodes


def socket_inodes(pid: int) -> set[str]:
    found = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = fd.readlink().name
        except OSError:
            continue
        if target.startswith("socket:["):
            found.add(target[8:-1])
    return found


async def start_workers(proc: Process, workers: int) -> subprocess.Popen:
    log = proc.log_path.open("a")
    proc.proc = subprocess.Popen([*grantbot_command(), "--workers", str(workers)], env=proc.env, stdout=log,
                                 stderr=subprocess.STDOUT)

    async def both_listening() -> bool:
        assert proc.proc.poll() is None, proc.log_path.read_text()
        workers_now = children(proc.proc.pid)
        listening = listening_inodes(proc.port)
        return len(workers_now) == workers and all(socket_inodes(w) & listening for w in workers_now)

    await eventually(both_listening, timeout=30, interval=0.1)
    return proc.proc


# PostgreSQL only: workers are for production, where they share a PostgreSQL like replicas.
@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
async def test_two_workers_share_the_port_serve_and_stop_together(tmp_path, database_url, sandbox):
    proc = Process(tmp_path, database_url, sandbox)
    await at_head(proc)
    supervisor = await start_workers(proc, 2)
    workers = children(supervisor.pid)
    connector = aiohttp.TCPConnector(force_close=True)  # a new connection each time: the kernel picks a worker
    async with aiohttp.ClientSession(connector=connector) as http:
        api = Api(http, proc.base_url, proc.now)
        answers = await asyncio.gather(*(api.request_access({"environment": "staging", "scopes": ["db:read"],
                                                              "reason": f"worker test {i}"}) for i in range(20)))
    assert [status for status, _ in answers] == [201] * 20
    supervisor.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(supervisor.wait, 30) == 0
    assert all(not Path(f"/proc/{w}").exists() or "zombie" in Path(f"/proc/{w}/status").read_text() for w in workers)
    proc.check_log()


# PostgreSQL only: workers are for production, where they share a PostgreSQL like replicas.
@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
async def test_a_worker_that_dies_stops_the_set_with_a_failure(tmp_path, database_url, sandbox):
    proc = Process(tmp_path, database_url, sandbox)
    await at_head(proc)
    supervisor = await start_workers(proc, 2)
    first, second = children(supervisor.pid)
    subprocess.run(["kill", "-KILL", str(first)], check=True)
    assert await asyncio.to_thread(supervisor.wait, 30) != 0
    assert "worker %d exited" % first in proc.log_path.read_text()
    # The port is free again: nothing was left behind.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", proc.port))


def test_zero_workers_is_refused_in_one_line(tmp_path):
    ran = subprocess.run([*grantbot_command(), "--workers", "0"], capture_output=True, text=True, timeout=30,
                         cwd=tmp_path, env={"PATH": "/usr/bin:/bin", "GRANTBOT_POLICY_FILE": str(tmp_path / "none")})
    assert ran.returncode == 2 and ran.stderr.strip() == "grantbot: --workers must be at least 1", ran.stderr


def test_workers_on_a_database_behind_are_refused_in_one_line_before_any_starts(tmp_path, sandbox):
    proc = Process(tmp_path, f"sqlite+aiosqlite:///{tmp_path / 'grantbot.db'}", sandbox)  # never migrated
    ran = subprocess.run([*grantbot_command(), "--workers", "2"], env=proc.env, capture_output=True, text=True,
                         timeout=60)
    assert ran.returncode == 2, ran.stderr
    refusals = [line for line in ran.stderr.splitlines() if line.startswith("grantbot: ")]
    assert len(refusals) == 1 and "run `grantbot migrate` first" in refusals[0], ran.stderr
    assert "exited with status" not in ran.stderr  # no worker was started
    assert not (tmp_path / "signing-key.pem").exists()  # nor anything left behind


def test_workers_on_a_port_in_use_are_refused_in_one_line(tmp_path, sandbox):
    proc = Process(tmp_path, f"sqlite+aiosqlite:///{tmp_path / 'grantbot.db'}", sandbox)
    migrate(proc)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", proc.port))
        taken.listen()
        ran = subprocess.run([*grantbot_command(), "--workers", "2"], env=proc.env, capture_output=True, text=True,
                             timeout=60)
    assert ran.returncode == 2, ran.stderr
    assert [line for line in ran.stderr.splitlines() if line.startswith("grantbot: ")] == [
        f"grantbot: cannot listen on 127.0.0.1:{proc.port}: the address is already in use (another grantbot, or "
        "another program, listens there); stop that program or choose another port (PORT and GRANTBOT_HOST; "
        "grantbot dev --port)"], ran.stderr


# PostgreSQL only: workers are for production, where they share a PostgreSQL like replicas.
@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
async def test_workers_whose_supervisor_is_killed_stop_and_free_the_port(tmp_path, database_url, sandbox):
    """A process manager that kills only the main process (supervisord, runit, a script) must be able to start the
    set again: the workers notice their supervisor is gone, stop as on SIGTERM and let the port go."""
    proc = Process(tmp_path, database_url, sandbox)
    await at_head(proc)
    supervisor = await start_workers(proc, 2)
    workers = children(supervisor.pid)
    supervisor.kill()
    await asyncio.to_thread(supervisor.wait, 30)

    def gone(pid: int) -> bool:
        try:
            return "zombie" in Path(f"/proc/{pid}/status").read_text()
        except FileNotFoundError:
            return True

    await eventually(lambda: all(gone(w) for w in workers), timeout=20, interval=0.1)
    assert "the supervising process %d is gone" % supervisor.pid in proc.log_path.read_text()
    with socket.socket() as sock:  # a restarted set can listen
        sock.bind(("127.0.0.1", proc.port))
