"""Grouped commits on the request path: many callers' writes in one transaction, each caller answered only after
that transaction committed.

Callers (``SqlStore.remember_signature`` and ``SqlStore.insert_request``) prepare their rows in their own task (the
audit rows name the HTTP request being served, from a context variable) and enqueue them. One writer task at a
time takes whatever is queued (up to ``MAX_GROUP`` items) and writes it in one transaction: the replay records in
one multi-row upsert whose ``RETURNING`` names the digests that were new, then the requests, grants, audit rows,
scopes, credential accounts and outbox events each in one executemany (the statements are one synchronous function,
``_write_items``: run with ``run_sync`` on PostgreSQL, and on SQLite as one trip to its thread, see
``bot.store.sqlite_driver.run_in_one_trip``). While it commits, the next callers queue up,
so under load a group grows to what arrived during one commit; with one caller it is a group of one. The writer is
a task of its own (not one of the callers'), started when work arrives and ending when the queue is empty, so a
caller that goes away cannot take the others' writes with it.

What one transaction per request guaranteed still holds per item:

- Replay records: a digest is new for the first item of the group that carries it, and only if the database had
  no fresh record of it (the upsert's condition); duplicates later in the group are replays. A new request may
  carry its own signature's record (``NewRequest.signature``): a replay is answered ``SignatureReplayed`` and
  stores nothing, so that a signed request costs one trip through the queue instead of two. On PostgreSQL a
  concurrent insert of the same digest by another replica waits for this transaction and then sees its row.
- Auto-approve quotas are exact: the count is taken inside the transaction (on PostgreSQL under a transaction-
  scoped advisory lock per identity and rule, taken in sorted order so that replicas cannot deadlock; SQLite has
  one writer) and adds the group's own earlier items under the same limit. An item over its limit is answered
  alone with ``AutoApproveLimitReached`` and left out of the group.
- One request per Idempotency-Key: a unique index. When the group's transaction fails on a constraint (a key
  taken, by another replica or by an earlier item of the group) it is rolled back and every item is written again
  in a transaction of its own, so that the failing one is answered alone (False: the caller replays the request
  that holds the key) and the others succeed.
- The audit rows are written in the same transaction as the change they record.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import bindparam, func, insert, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from bot.domain.errors import AutoApproveLimitReached, SignatureReplayed
from bot.domain.models import Decision
from bot.store.engine import run_in_one_trip, runs_in_one_trip, writer
from bot.store.tables import (
    AccessRequestRow, AuditEventRow, CredentialRow, GrantRow, IdentityScopeRow, OutboxRow, UsedSignatureRow,
)

R = AccessRequestRow.__table__
G = GrantRow.__table__
E = AuditEventRow.__table__
S = IdentityScopeRow.__table__
C = CredentialRow.__table__
O = OutboxRow.__table__  # noqa: E741
U = UsedSignatureRow.__table__

MAX_GROUP = 256  # items per transaction: a group's statements stay well below PostgreSQL's 32,767 parameters
WRITERS = {"postgresql": 4, "sqlite": 1}  # groups in flight at once, per store
DEADLOCK = "40P01"  # PostgreSQL's SQLSTATE: two groups' rows locked in opposite orders; written again one by one

_INSERT = {table.name: insert(table) for table in (R, G, E, C, O)}
_INSERT_SCOPE = {"postgresql": pg_insert(S).on_conflict_do_nothing(),
                 "sqlite": sqlite_insert(S).on_conflict_do_nothing()}


def _upsert_digest(dialect_insert):
    """A replay record written, or taken over when the one there is stale at ``now``; RETURNING the digest of
    each row written (a row whose record is fresh is not: a replay)."""
    statement = dialect_insert(U)
    return statement.on_conflict_do_update(
        index_elements=[U.c.digest], set_={"expires_at": statement.excluded.expires_at},
        where=U.c.expires_at < bindparam("now"),
    ).returning(U.c.digest)


_UPSERT_DIGEST = {"postgresql": _upsert_digest(pg_insert), "sqlite": _upsert_digest(sqlite_insert)}


@dataclass
class Signature:
    """A used signature's replay record to write (``SqlStore.remember_signature``)."""

    digest: str
    expires_at: datetime
    now: datetime


@dataclass
class NewRequest:
    """An access request's rows, ready to insert (``SqlStore.insert_request``). ``quota``: (identity, rule, count,
    since) of an auto-approve limit to check inside the transaction; ``keyed``: it carries an Idempotency-Key (a
    unique-index refusal then answers False instead of raising)."""

    request: dict
    grant: dict | None
    audit: list[dict]
    scopes: list[dict] = field(default_factory=list)
    accounts: list[dict] = field(default_factory=list)
    events: list[dict] = field(default_factory=list)
    quota: tuple[str, str, int, datetime] | None = None
    keyed: bool = False
    signature: Signature | None = None  # the request's own replay record, written with its rows


class GroupCommit:
    """The queue and its writer for one engine (see the module docstring). ``submit`` answers ``True``/``False``
    (a signature: new or a replay; a request: inserted or its Idempotency-Key taken) or raises what the write
    raised (``AutoApproveLimitReached``, an outage)."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._queue: list[tuple[Signature | NewRequest, asyncio.Future]] = []
        self._writers: set[asyncio.Task] = set()
        # Writers running, counted down by each one in the step where it finds the queue empty (not by a done
        # callback, which runs later: an item queued in between would find no writer coming).
        self._active = 0
        # SQLite has one connection and one writer at a time; on PostgreSQL a few groups in flight at once keep the
        # request path from waiting on one group's round trips (quotas, keys and digests are settled by locks and
        # unique indexes across transactions, as across replicas).
        self._max_writers = WRITERS.get(engine.dialect.name, 1)
        self._hold = engine.dialect.name != "sqlite"
        self._one_trip = runs_in_one_trip(engine)

    async def submit(self, item: Signature | NewRequest) -> bool:
        future = asyncio.get_running_loop().create_future()
        self._queue.append((item, future))
        if self._active < self._max_writers:
            self._active += 1
            writer_task = asyncio.get_running_loop().create_task(self._drain())
            self._writers.add(writer_task)  # a strong reference while it runs
            writer_task.add_done_callback(self._writers.discard)
        # A caller cancelled here cancels only its own future: its item stays in the group, the writer (a task of
        # its own) writes it anyway and skips answering a future that is done (``_answer``). No shield needed.
        return await future

    async def close(self, timeout: float) -> None:
        """For shutdown, before the pool is closed: wait up to ``timeout`` seconds for the writers to write what is
        queued and give their connections back, then cancel what is left (its callers learn it). A writer that
        outlived the shutdown was cancelled by the event loop's end while returning its connection, which SQLAlchemy
        logs as an error with a traceback."""
        if not self._writers:
            return
        _, late = await asyncio.wait(set(self._writers), timeout=timeout)
        for task in late:
            task.cancel()
        if late:
            await asyncio.wait(late, timeout=timeout)

    async def _drain(self) -> None:
        try:
            await self._drain_queue()
        finally:
            self._active -= 1

    async def _drain_queue(self) -> None:
        while self._queue:
            try:
                # PostgreSQL: one connection while groups keep coming, no pool checkout (and its ping) per group.
                async with writer(self._engine).connect() as conn:
                    while self._queue:
                        if not await self._write_next(conn) or not self._hold:
                            # Failed: the connection may be gone, take another. SQLite: its one connection goes
                            # back to the pool after each group, so the sweep and the reads waiting for it get it.
                            break
            except asyncio.CancelledError as exc:  # shutting down: every caller waiting learns it
                for _, future in self._queue:
                    if not future.done():
                        future.set_exception(exc)
                self._queue = []
                raise
            except Exception as exc:  # no connection to be had: the callers queued now learn it
                queued, self._queue = self._queue, []
                _answer(queued, [exc] * len(queued))

    async def _write_next(self, conn: AsyncConnection) -> bool:
        """Write the next group on ``conn`` and answer its callers; False when it failed for all of them (an
        outage), so that the connection is not used again."""
        group, self._queue = self._queue[:MAX_GROUP], self._queue[MAX_GROUP:]
        items = [item for item, _ in group]
        try:
            answers = await self._write_group(conn, items)
        except DBAPIError as exc:
            if not _write_alone_after(exc):
                _answer(group, [exc] * len(group))
                return False
            answers = [await self._write_alone(conn, item) for item in items]
        except asyncio.CancelledError as exc:
            _answer(group, [exc] * len(group))
            raise
        except Exception as exc:
            _answer(group, [exc] * len(group))
            return False
        _answer(group, answers)
        return True

    async def _write_alone(self, conn: AsyncConnection, item: Signature | NewRequest) -> bool | BaseException:
        try:
            return (await self._write_group(conn, [item]))[0]
        except IntegrityError as exc:
            if isinstance(item, NewRequest) and item.keyed:
                return False
            return exc
        except Exception as exc:
            return exc

    async def _write_group(self, conn: AsyncConnection, items: list[Signature | NewRequest]
                           ) -> list[bool | BaseException]:
        if self._one_trip:
            # SQLite: the whole transaction in one trip to its thread, instead of one per statement.
            return await run_in_one_trip(conn, _write_items, items)
        async with conn.begin():
            return await conn.run_sync(_write_items, items)


def _write_items(conn: Connection, items: list[Signature | NewRequest]) -> list[bool | BaseException]:
    """The group's statements, in the caller's transaction (synchronous: run by ``run_sync`` on PostgreSQL, on
    SQLite's thread there); each item's answer."""
    answers: list[bool | BaseException] = [True] * len(items)
    dialect = conn.dialect.name
    # Replay records first, those of requests included: a replayed request is answered alone and stores
    # nothing; one over its quota keeps its record (the caller stores it again as pending, without one).
    signed = [(i, item if isinstance(item, Signature) else item.signature) for i, item in enumerate(items)
              if isinstance(item, Signature) or item.signature is not None]
    if signed:
        new = _remember(conn, dialect, [signature for _, signature in signed])
        for (i, _), is_new in zip(signed, new):
            if isinstance(items[i], Signature):
                answers[i] = is_new
            elif not is_new:
                answers[i] = SignatureReplayed(items[i].request["identity"])
    requests = [i for i, item in enumerate(items) if isinstance(item, NewRequest) and answers[i] is True]
    if requests:
        over = _over_quota(conn, dialect, [items[i] for i in requests])
        written = []
        for i, exceeded in zip(requests, over):
            if exceeded is not None:
                answers[i] = AutoApproveLimitReached(exceeded)
            else:
                written.append(items[i])
        _insert_requests(conn, dialect, written)
    return answers


def _answer(group: list[tuple[object, asyncio.Future]], answers: list) -> None:
    for (_, future), answer in zip(group, answers):
        if future.done():
            continue
        if isinstance(answer, BaseException):
            future.set_exception(answer)
        else:
            future.set_result(answer)


def _write_alone_after(exc: DBAPIError) -> bool:
    """A failure that one of the group's items may have caused alone: a unique key taken, or a deadlock between
    groups (then each item, written alone, locks one row)."""
    return isinstance(exc, IntegrityError) or getattr(exc.orig, "sqlstate", None) == DEADLOCK


def _remember(conn: Connection, dialect: str, signatures: list[Signature]) -> list[bool]:
    """Record the digests in one upsert; True for each that was new (or took over a stale record), False for a
    replay (a fresh record, or an earlier item of this group with the same digest)."""
    first: dict[str, Signature] = {}
    for signature in signatures:
        first.setdefault(signature.digest, signature)
    # The earliest ``now`` of the group decides staleness for all: a record stale then is stale for every item.
    now = min(signature.now for signature in signatures)
    # Sorted: two groups that share digests (a replay racing its original) lock their rows in one order.
    rows = [{"digest": s.digest, "expires_at": s.expires_at, "now": now}
            for s in sorted(first.values(), key=lambda s: s.digest)]
    # One statement for every group, so SQLAlchemy compiles it once; it sends the rows as multi-row VALUES
    # ("insertmanyvalues"), the RETURNING rows of all of them coming back.
    new = set(conn.execute(_UPSERT_DIGEST[dialect], rows).scalars())
    return [signature.digest in new and first[signature.digest] is signature for signature in signatures]


def _over_quota(conn: Connection, dialect: str, requests: list[NewRequest]) -> list[int | None]:
    """For each request, None when it is within its auto-approve limit (counting the database and the group's
    earlier items under the same limit), else the limit's count."""
    keys = sorted({(r.quota[0], r.quota[1]) for r in requests if r.quota is not None})
    if not keys:
        return [None] * len(requests)
    if dialect == "postgresql":
        for identity, rule in keys:  # sorted: two replicas take the locks in one order
            conn.execute(select(func.pg_advisory_xact_lock(func.hashtext(f"quota:{identity}:{rule}"))))
    in_database: dict[tuple[str, str, datetime], int] = {}
    taken: dict[tuple[str, str], list[datetime]] = {}  # created_at of the group's items already let through
    answers: list[int | None] = []
    for request in requests:
        if request.quota is None:
            answers.append(None)
            continue
        identity, rule, count, since = request.quota
        if (identity, rule, since) not in in_database:
            in_database[(identity, rule, since)] = conn.execute(
                select(func.count()).select_from(R).where(
                    R.c.identity == identity, R.c.rule == rule, R.c.decision == Decision.AUTO_APPROVE.value,
                    R.c.created_at > since)
            ).scalar_one()
        earlier = taken.setdefault((identity, rule), [])
        if in_database[(identity, rule, since)] + sum(1 for at in earlier if at > since) >= count:
            answers.append(count)
        else:
            answers.append(None)
            earlier.append(request.request["created_at"])
    return answers


def _insert_requests(conn: Connection, dialect: str, requests: list[NewRequest]) -> None:
    """The group's rows, one executemany per table, in the order a single request wrote them (the grant after its
    request, audit rows naming it after both)."""
    if not requests:
        return
    conn.execute(_INSERT[R.name], [r.request for r in requests])
    if grants := [r.grant for r in requests if r.grant is not None]:
        conn.execute(_INSERT[G.name], grants)
    conn.execute(_INSERT[E.name], [row for r in requests for row in r.audit])
    if scopes := [row for r in requests for row in r.scopes]:
        conn.execute(_INSERT_SCOPE[dialect], scopes)
    if accounts := [row for r in requests for row in r.accounts]:
        conn.execute(_INSERT[C.name], accounts)
    if events := [row for r in requests for row in r.events]:
        conn.execute(_INSERT[O.name], events)
