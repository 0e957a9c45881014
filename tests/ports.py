"""Ports for the servers the tests start as child processes (grantbot, its sandbox, sshd).

A child process must be told its port before it binds, so the port is chosen here and bound later. Asking the
kernel for port 0 and releasing it races twice: every outgoing connection of every process on the machine (to
PostgreSQL, to Slack's sandbox, ...) takes its local port from the same ephemeral range, and the other xdist workers
ask for port 0 too. CI lost a run that way ("cannot listen on 127.0.0.1:42317: the address is already in use").

So ports come from below the kernel's default ephemeral range (``/proc/sys/net/ipv4/ip_local_port_range``:
32768-60999), where no outgoing connection lands, in a block of its own for each xdist worker, handed out in turn,
and each one is checked free by binding it before it is given.
"""

from __future__ import annotations

import itertools
import os
import socket

_FIRST = 20_000  # below Linux's default ephemeral range (32768-60999) and above the usual services' ports
_BLOCK = 1_000  # ports per xdist worker: twelve workers fit below 32768


def _worker_block() -> range:
    """This worker's ports: its own block, whatever the ephemeral range (a machine whose range starts lower still
    keeps the workers apart, and the bind check below keeps ports in use out)."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    index = int(worker[2:]) if worker.startswith("gw") and worker[2:].isdigit() else 0
    start = _FIRST + index * _BLOCK
    return range(start, start + _BLOCK)


_turns = itertools.cycle(_worker_block())


def spare_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that nothing listens on now and that this test process has not handed out lately.

    Raises RuntimeError when every port of this worker's block is taken.
    """
    for _ in range(_BLOCK):
        port = next(_turns)
        with socket.socket() as probe:
            try:
                probe.bind((host, port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {_worker_block()} for xdist worker {os.environ.get('PYTEST_XDIST_WORKER')}")
