"""Reloading the policy while grantbot runs: on SIGHUP, and when the file's content changes (polled, so it works
for Kubernetes ConfigMaps, which are swapped through symlinks that file-change events often miss).

A new file that does not load (bad YAML, an unknown key, an identity whose secret or a provider whose admin URL is
not set) is refused: the policy in force stays, the refusal is logged and posted once to the default channel (once
per file content, across all replicas, through the outbox). Providers need nothing more: each is built from its
spec when first used, and a revocation keeps the spec it was issued under.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path

from bot.domain.errors import PolicyError
from bot.domain.policy import Policy
from bot.policy_file import parse_policy

log = logging.getLogger(__name__)

SETTLE_SECONDS = 0.1
Apply = Callable[[Policy], None]  # raises PolicyError when the policy cannot be put in force
Refuse = Callable[[str, str], Awaitable[None]]  # (the reason, the file's sha256)


def digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


class PolicyReloader:
    """Watches ``path``; a changed, valid file goes to ``apply``; a changed, invalid one to ``refuse``.

    ``loaded_digest`` is the SHA-256 of the text in force at start. ``interval`` is the polling period in seconds
    (0: only on :meth:`request`, i.e. SIGHUP).
    """

    def __init__(self, path: Path, loaded_digest: str, apply: Apply, refuse: Refuse, interval: float = 2.0) -> None:
        self._path = Path(path)
        self._seen = loaded_digest
        self._apply = apply
        self._refuse = refuse
        self._interval = interval
        self._wakeup = asyncio.Event()
        self._stopping = False
        self._asked = False

    def request(self) -> None:
        """Check the file now (the SIGHUP handler); an unchanged file is then said to be, so that an operator sees
        the signal arrived."""
        self._asked = True
        self._wakeup.set()

    def stop(self) -> None:
        self._stopping = True
        self._wakeup.set()

    async def run(self) -> None:
        while not self._stopping:
            try:
                # asyncio.timeout: wait_for could swallow a cancellation on Python 3.11 (see bot/changes.py).
                async with asyncio.timeout(self._interval or None):
                    await self._wakeup.wait()
            except TimeoutError:
                pass
            self._wakeup.clear()
            asked, self._asked = self._asked, False
            if not self._stopping and await self.check() == "unchanged" and asked:
                log.info("policy reload asked for (SIGHUP): %s is unchanged (sha256 %s); nothing to do", self._path,
                         self._seen[:16])

    async def check(self) -> str:
        """Look at the file once: ``"unchanged"``, ``"reloaded"`` or ``"refused"``."""
        try:
            text = await asyncio.to_thread(self._path.read_text)
        except (OSError, UnicodeDecodeError) as exc:
            # A file being replaced can be briefly missing; say so once per kind of trouble, keep the policy.
            reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
            return await self._refused(f"{self._path}: cannot read the policy file: {reason}", digest(reason))
        current = digest(text)
        if current == self._seen:
            return "unchanged"
        # A file caught in the middle of being written is not a new policy: act only on content that holds
        # still for a moment (the next round looks again otherwise).
        await asyncio.sleep(SETTLE_SECONDS)
        try:
            again = await asyncio.to_thread(self._path.read_text)
        except (OSError, UnicodeDecodeError):
            return "unchanged"
        if again != text:
            return "unchanged"
        try:
            policy = parse_policy(text, str(self._path), os.environ)
            self._apply(policy)
        except PolicyError as exc:
            return await self._refused(str(exc), current)
        self._seen = current
        log.info("policy reloaded from %s: %d rules (sha256 %s)", self._path, len(policy.rules), current[:16])
        return "reloaded"

    async def _refused(self, reason: str, key: str) -> str:
        if key == self._seen:  # the same trouble as last round (a file still missing): said already
            return "refused"
        self._seen = key
        log.error("policy reload refused; the previous policy stays in force: %s", reason)
        try:
            await self._refuse(reason, key)
        except Exception:  # the database may be away; the log line above still tells the operator
            log.exception("could not queue the notice of the refused policy reload")
        return "refused"
