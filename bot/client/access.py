"""The pipeline's side of an access request: ask, wait for the decision, collect the token, release the grant.

What grantbot answers (DESIGN.md HTTP contract) becomes an exit code (``bot.client.exits``); nothing here exits 0
without a token in hand. A token grantbot handed over in an answer that never arrived (a dropped connection, or
the first try of a retried ``POST``) is recovered with ``POST /v1/grants/{id}/reissue``: a new token for the
same grant, the lost one inactive from then on.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from bot.client.exits import ExitCode, Stop
from bot.client.transport import Answer, Transport

MAX_POLL_SECONDS = 60  # the contract's longest ?wait=
# Past the pending deadline grantbot's sweep expires the request within about a second; a client that still sees
# it pending this long after stops waiting on its own.
PENDING_GRACE_SECONDS = 60
# An interrupted command cancels its pending request within this long (a CI runner kills it soon after SIGTERM).
WITHDRAW_SECONDS = 5.0


def refusal(answer: Answer, what: str, hint: str = "") -> Stop:
    """The exit for an answer to ``what`` (a noun phrase: "the access request") that is not the one hoped for;
    ``hint`` follows a 401's detail (what the client's user should check)."""
    body = answer.body
    detail = body.get("detail") if isinstance(body.get("detail"), str) else ""
    error = body.get("error") or f"HTTP {answer.status}"
    if answer.status == 403 and body.get("error") == "denied":
        return Stop(ExitCode.DENIED, f"denied: {detail}", body)
    if answer.status == 401:
        return Stop(ExitCode.USAGE, f"grantbot did not accept this client's credentials for {what}: {detail}"
                    + (f" So {hint}" if hint else ""))
    if 400 <= answer.status < 500:
        return Stop(ExitCode.USAGE, f"grantbot refused {what} (HTTP {answer.status}, {error}): {detail}")
    return Stop(ExitCode.UNREACHABLE, f"grantbot could not serve {what} (HTTP {answer.status}, {error}): {detail}")


def _time(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


class AccessClient:
    """``request``, ``status`` and ``release`` over a :class:`Transport`; ``say`` prints progress to stderr."""

    def __init__(self, transport: Transport, say: Callable[[str], None]) -> None:
        self.transport = transport
        self.say = say
        self._hint = getattr(transport.credentials, "hint", "")

    async def request(self, body: dict, *, wait_seconds: float | None, require_exact: bool,
                      leave_pending: bool = False) -> dict:
        """Ask for access and wait for the decision: at most ``wait_seconds`` (None: until the request's own
        pending timeout). Returns the approved request (its ``grant`` holds ``access_token``); raises
        :class:`Stop` for every other outcome.

        What this command asked for does not outlive it: a request still pending when the wait ends is cancelled,
        and when the command is stopped (the task cancelled: Ctrl-C, SIGTERM) before it returns, its request is
        cancelled or, if it was approved meanwhile, its grant released; unless ``leave_pending``, for a pipeline
        that collects it later with ``grantbot status``."""
        key = str(uuid.uuid4())  # one key for every attempt: a retried POST answers with the request it created
        posted = asyncio.ensure_future(self.transport.call("POST", "/v1/access-requests", body, idempotency_key=key))
        try:
            answer = await asyncio.shield(posted)
        except asyncio.CancelledError:
            # Stopped before grantbot answered: let the answer arrive (briefly), so what it created can be ended.
            await self._end_unanswered(posted, leave_pending)
            raise
        if answer.status not in (200, 201, 202):
            raise refusal(answer, "the access request", self._hint)
        view = answer.body
        try:
            if view.get("status") == "pending":
                try:
                    view = await self._wait(view, answer, wait_seconds)
                except Stop as stop:
                    if stop.code is ExitCode.UNREACHABLE and not leave_pending:
                        raise Stop(stop.code, f"{stop.sentence} Request {view['id']} may still be pending: it "
                                   "could not be cancelled; see it with `grantbot status`.", stop.view) from None
                    raise
                if view.get("status") == "pending" and not leave_pending:
                    view = await self._withdraw(view["id"])
            return await self._settle(view, require_exact)
        except asyncio.CancelledError:
            if not leave_pending:
                await self._end_on_the_way_out(view["id"])
            raise

    async def cancel(self, request_id: str) -> dict:
        """``POST /v1/access-requests/{id}/cancel``: the request as it now stands (``cancelled``, or as it was
        decided meanwhile; never with a token)."""
        answer = await self.transport.call("POST", f"/v1/access-requests/{request_id}/cancel")
        if answer.status != 200:
            raise refusal(answer, f"the cancellation of request {request_id}", self._hint)
        return answer.body

    async def _withdraw(self, request_id: str) -> dict:
        """The wait ended with the request pending: cancel it, or, if it was decided just now, read it as a poll
        would (an approval hands the token over)."""
        view = await self.cancel(request_id)
        if view.get("status") == "cancelled":
            raise Stop(ExitCode.NOT_GRANTED, f"request {request_id} is still pending; nobody decided while this "
                       "command waited, so it was cancelled: nobody can approve it after this job. Ask again with "
                       "a longer --wait, or use --leave-pending and collect it later with `grantbot status`.", view)
        answer = await self.transport.call("GET", f"/v1/access-requests/{request_id}")
        if answer.status != 200:
            raise refusal(answer, f"the read of request {request_id}", self._hint)
        return answer.body

    async def _end_unanswered(self, posted: asyncio.Future, leave_pending: bool) -> None:
        """Stopped while the access request was being sent: wait up to WITHDRAW_SECONDS for grantbot's answer and
        end what it created; say so when that cannot be known."""
        try:
            answer = await asyncio.wait_for(posted, WITHDRAW_SECONDS)
        except (Stop, asyncio.TimeoutError, asyncio.CancelledError):
            self.say("stopped before grantbot answered the access request: if it was created, it may still be "
                     "pending (see /access pending in Slack).")
            return
        if answer.status in (200, 201, 202) and isinstance(answer.body.get("id"), str) and not leave_pending:
            await self._end_on_the_way_out(answer.body["id"])

    async def _end_on_the_way_out(self, request_id: str) -> None:
        """Stopped before this command returned: cancel the request, or release the grant an approval gave it
        (its token will not reach the job), in at most WITHDRAW_SECONDS; say how it ended."""
        quick = AccessClient(self.transport.within(WITHDRAW_SECONDS), self.say)
        try:
            view = await asyncio.wait_for(quick.cancel(request_id), WITHDRAW_SECONDS)
        except (Stop, asyncio.TimeoutError) as exc:
            why = exc.sentence if isinstance(exc, Stop) else "grantbot did not answer in time"
            self.say(f"request {request_id} may still be pending: it could not be cancelled ({why}).")
            return
        status = view.get("status")
        grant = view.get("grant") if isinstance(view.get("grant"), dict) else {}
        if status == "cancelled":
            self.say(f"request {request_id} cancelled: this command was stopped while it waited.")
        elif status == "approved" and grant.get("status") == "active":
            grant_id = grant.get("id")
            try:
                await asyncio.wait_for(quick.release(grant_id, quiet=True), WITHDRAW_SECONDS)
                self.say(f"request {request_id} was approved as this command was stopped; grant {grant_id} was "
                         "released.")
            except (Stop, asyncio.TimeoutError):
                self.say(f"request {request_id} was approved as this command was stopped; release grant "
                         f"{grant_id} with `grantbot release {grant_id}`.")
        else:
            self.say(f"request {request_id} is {status}.")

    async def _wait(self, view: dict, answer: Answer, wait_seconds: float | None) -> dict:
        request_id = view["id"]
        started = time.monotonic()
        deadlines = [] if wait_seconds is None else [started + wait_seconds]
        pending_until = _time(view.get("expires_at"))
        if pending_until is not None and answer.server_time is not None:
            # grantbot's deadline on its own clock, moved onto ours through its Date header.
            deadlines.append(started + (pending_until - answer.server_time).total_seconds() + PENDING_GRACE_SECONDS)
        shown = f"up to {wait_seconds:g} s" if wait_seconds is not None else "until it is decided or times out"
        self.say(f"request {request_id} is pending approval in Slack; waiting {shown}…")
        while view.get("status") == "pending":
            left = min(deadlines) - time.monotonic() if deadlines else MAX_POLL_SECONDS
            if left <= 0:
                break
            poll = max(1, min(MAX_POLL_SECONDS, int(left)))
            answer = await self.transport.call("GET", f"/v1/access-requests/{request_id}?wait={poll}",
                                               read_timeout=poll + 30)
            if answer.status != 200:
                raise refusal(answer, f"the read of request {request_id}", self._hint)
            view = answer.body
        return view

    async def _settle(self, view: dict, require_exact: bool) -> dict:
        status = view.get("status")
        request_id = view.get("id")
        if status == "denied":
            why = view.get("denial_reason") or view.get("decision_reason") or "no reason given"
            raise Stop(ExitCode.DENIED, f"request {request_id} was denied by {view.get('decided_by')}: {why}", view)
        if status == "pending":
            raise Stop(ExitCode.NOT_GRANTED, f"request {request_id} is still pending; nobody decided while this "
                       f"command waited. See it with `grantbot status {request_id}`.", view)
        if status != "approved" or not isinstance(view.get("grant"), dict):
            raise Stop(ExitCode.NOT_GRANTED, f"request {request_id} is {status}: no access was granted.", view)
        grant = view["grant"]
        if not grant.get("access_token"):
            view = {**view, "grant": await self._recover(grant)}
            view.pop("hint", None)
        self.say(f"request {request_id} approved by {view.get('decided_by')}: grant {view['grant'].get('id')} "
                 f"expires at {view['grant'].get('expires_at')}")
        cut = narrowing(view)
        if cut:
            self.say(f"warning: the approver narrowed this grant: {cut}")
            if require_exact:
                await self.release(view["grant"]["id"], quiet=True)
                raise Stop(ExitCode.DENIED, f"--require-exact: the grant was narrowed ({cut}), so it was released "
                           "and its token is not printed.", _without_secrets(view))
        return view

    async def _recover(self, grant: dict) -> dict:
        """The token of ``grant`` went out in an answer this client never got: have grantbot issue a new one."""
        grant_id = grant.get("id")
        if grant.get("status") != "active":
            raise Stop(ExitCode.NOT_GRANTED, f"grant {grant_id} is {grant.get('status')} and its token was "
                       "handed over in an earlier answer that never arrived; ask for access again.")
        self.say(f"grant {grant_id}: its token went out in an answer that never arrived; asking for a new one")
        answer = await self.transport.call("POST", f"/v1/grants/{grant_id}/reissue")
        if answer.status == 409:
            raise Stop(ExitCode.NOT_GRANTED, f"grant {grant_id} cannot get a new token: {answer.body.get('detail')}")
        if answer.status != 200 or not answer.body.get("access_token"):
            raise refusal(answer, f"a new token for grant {grant_id}", self._hint)
        return {**grant, **{k: v for k, v in answer.body.items() if k != "request_id"}}

    async def status(self, request_id: str) -> dict:
        answer = await self.transport.call("GET", f"/v1/access-requests/{request_id}")
        if answer.status != 200:
            raise refusal(answer, f"the read of request {request_id}", self._hint)
        return answer.body

    async def release(self, grant_id: str, *, quiet: bool = False) -> dict:
        """End the grant now (``POST /v1/grants/{id}/revoke``); an ended grant stays as it is (idempotent)."""
        answer = await self.transport.call("POST", f"/v1/grants/{grant_id}/revoke")
        if answer.status != 200:
            raise refusal(answer, f"the release of grant {grant_id}", self._hint)
        if not quiet:
            self.say(f"grant {grant_id} is {answer.body.get('status')}")
        return answer.body


def narrowing(view: dict) -> str:
    """What an approver cut from the request ("scope db:write; TTL 600 s instead of 1800 s"), or ""."""
    grant = view["grant"]
    cuts = []
    granted = set(str(grant.get("scope", "")).split())
    missing = [scope for scope in view.get("scopes") or () if scope not in granted]
    if missing:
        cuts.append(f"scope {' '.join(missing)} not granted")
    issued, expires, asked = _time(grant.get("issued_at")), _time(grant.get("expires_at")), view.get("ttl_seconds")
    if issued and expires and isinstance(asked, int):
        ttl = int((expires - issued) / timedelta(seconds=1))
        if ttl < asked:
            cuts.append(f"TTL {ttl} s instead of {asked} s")
    return "; ".join(cuts)


def _without_secrets(view: dict) -> dict:
    grant = {k: v for k, v in view["grant"].items() if k not in ("access_token", "credentials")}
    return {**view, "grant": grant}
