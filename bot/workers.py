"""``grantbot serve --workers N``: N ``grantbot serve`` processes on one port, one per core.

Each worker binds the port with ``SO_REUSEPORT`` (the kernel spreads new connections over them) and is a replica
like any other: the sweep, the outbox and every state change are already safe across replicas (conditional
updates, leases), so the workers need no coordination beyond the database. This process only starts them, passes
on SIGTERM, SIGINT and SIGHUP (a policy reload in every worker), and waits. When one worker exits on its own, the
others are stopped and its exit status becomes this one's: a process manager (systemd, Kubernetes) restarts the
whole set, as it would restart a single ``grantbot serve``. Each worker is told this process's id and stops by
itself when this process is gone (SIGKILL cannot be passed on), so that a set whose supervisor was killed can be
started again on the same port (``bot.cli._until_signalled``).
"""

from __future__ import annotations

import logging
import signal
import subprocess
import time

log = logging.getLogger(__name__)

# How long the workers get to drain after SIGTERM before they are killed (a worker's own drain is 15 s).
STOP_GRACE_SECONDS = 20.0


def supervise(workers: int, command: list[str]) -> int:
    """Run ``workers`` copies of ``command`` until a signal or the first exit; returns the exit status (0 after
    SIGTERM/SIGINT when every worker stopped cleanly, else the first non-zero status of a worker)."""
    processes = [subprocess.Popen(command) for _ in range(workers)]
    log.info("started %d workers: %s", workers, ", ".join(str(p.pid) for p in processes))
    stopping = False

    def forward(signum, _frame) -> None:
        nonlocal stopping
        if signum in (signal.SIGTERM, signal.SIGINT):
            stopping = True
        for process in processes:
            if process.poll() is None:
                process.send_signal(signum)

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, forward)

    status = 0
    while True:
        exited = [p for p in processes if p.poll() is not None]
        if exited and not stopping:
            first = exited[0]
            status = first.returncode if first.returncode != 0 else 1  # a worker that stops by itself is a fault
            log.error("worker %d exited with status %s; stopping the others", first.pid, first.returncode)
            forward(signal.SIGTERM, None)
        if len(exited) == len(processes):
            break
        if stopping:
            deadline = time.monotonic() + STOP_GRACE_SECONDS
            while time.monotonic() < deadline and any(p.poll() is None for p in processes):
                time.sleep(0.05)
            for process in processes:
                if process.poll() is None:
                    log.error("worker %d did not stop within %.0f s; killing it", process.pid, STOP_GRACE_SECONDS)
                    process.kill()
                process.wait()
            break
        time.sleep(0.1)
    if status == 0:
        status = next((p.returncode for p in processes if p.returncode not in (0, -signal.SIGTERM, -signal.SIGINT)), 0)
    return status
