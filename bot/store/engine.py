"""Engine set-up: URL normalisation, PostgreSQL time limits, SQLite pragmas and immediate transactions."""

from __future__ import annotations

import ssl

from sqlalchemy import event, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from bot.store import tables  # noqa: F401  (registers the tables on SQLModel.metadata)
from bot.store.wal_checkpoint import FALLBACK_PAGES

try:
    from bot.store.sqlite_driver import one_trip_dbapi, run_in_one_trip, runs_in_one_trip
except ImportError:  # a SQLAlchemy whose aiosqlite adapter differs from the one the shim was written against
    one_trip_dbapi = run_in_one_trip = None

    def runs_in_one_trip(engine: AsyncEngine) -> bool:
        return False


def normalize_url(url: str) -> str:
    """Accept the URLs hosting platforms hand out: ``postgres://`` / ``postgresql://`` -> asyncpg; plain sqlite -> aiosqlite."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+asyncpg://" + url[len(prefix) :]
    if url.startswith("sqlite://"):
        return "sqlite+aiosqlite://" + url[len("sqlite://") :]
    return url


WRITE_OPTION = "grantbot_write"
POSTGRES_POOL_SIZE = 15

SSL_MODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
# Query parameters asyncpg takes as they are (SQLAlchemy passes the URL's query to asyncpg.connect as keywords).
ASYNCPG_PARAMETERS = {"command_timeout", "timeout", "statement_cache_size", "prepared_statement_cache_size",
                      "max_cached_statement_lifetime", "max_cacheable_statement_size", "target_session_attrs",
                      "direct_tls"}


def libpq_parameters(url: str) -> tuple[str, dict]:
    """Split libpq's query parameters off a PostgreSQL URL, as hosting platforms write them
    (``?sslmode=require&sslrootcert=…&application_name=…&connect_timeout=10``), into asyncpg's ``connect`` keywords
    (``ssl``, ``server_settings``, ``timeout``), which SQLAlchemy's asyncpg dialect does not translate. Returns the
    URL without them and the keywords. Raises ``ValueError`` naming a parameter neither libpq's nor asyncpg's, or a
    bad ``sslmode`` (libpq's meanings: postgresql.org/docs/current/libpq-connect.html#LIBPQ-CONNECT-SSLMODE)."""
    parsed = make_url(url)
    query = dict(parsed.query)
    connect_args: dict = {}
    mode = query.pop("sslmode", None)
    files = {name: query.pop(name) for name in ("sslrootcert", "sslcert", "sslkey") if name in query}
    if mode is not None and mode not in SSL_MODES:
        raise ValueError(f"GRANTBOT_DATABASE_URL: sslmode={mode!r} is not one of {', '.join(SSL_MODES)}")
    if files:
        # A root certificate, or a client certificate, needs a context: asyncpg takes only a mode name as a string.
        context = ssl.create_default_context(cafile=files.get("sslrootcert"))
        if mode != "verify-full":
            context.check_hostname = False
        if mode not in ("verify-ca", "verify-full"):
            context.verify_mode = ssl.CERT_NONE
        if "sslcert" in files:
            context.load_cert_chain(files["sslcert"], files.get("sslkey"))
        connect_args["ssl"] = context
    elif mode is not None:
        connect_args["ssl"] = mode
    if "application_name" in query:
        connect_args["server_settings"] = {"application_name": query.pop("application_name")}
    if "connect_timeout" in query:
        value = query.pop("connect_timeout")
        try:
            connect_args["timeout"] = float(value)
        except ValueError:
            raise ValueError(f"GRANTBOT_DATABASE_URL: connect_timeout={value!r} is not a number of seconds") from None
    if unknown := sorted(set(query) - ASYNCPG_PARAMETERS):
        raise ValueError(f"GRANTBOT_DATABASE_URL: unknown parameter {unknown[0]!r}; grantbot understands "
                         f"sslmode, sslrootcert, sslcert, sslkey, application_name, connect_timeout and asyncpg's "
                         f"{', '.join(sorted(ASYNCPG_PARAMETERS))}")
    return parsed.set(query=query).render_as_string(hide_password=False), connect_args


def describe_url(url: str) -> str:
    """The URL with its password masked, for messages and logs."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url.split("://", 1)[0] + "://…" if "://" in url else "(not a URL)"


def writer(engine: AsyncEngine) -> AsyncEngine:
    """The same engine (and pool) marked for write transactions: ``BEGIN IMMEDIATE`` on SQLite. Made once per
    engine (kept on its sync engine, as AsyncEngine takes no attributes): every write transaction asks for it, and
    each ``execution_options`` call builds a new engine object."""
    marked = getattr(engine.sync_engine, "_grantbot_writer", None)
    if marked is None:
        marked = engine.execution_options(**{WRITE_OPTION: True})
        engine.sync_engine._grantbot_writer = marked
    return marked


DEFAULT_CONNECT_TIMEOUT_SECONDS = 5.0
# A transaction of grantbot's is idle on the server only between two of its statements (the store never waits on
# anything else inside one), so far less than a statement's time limit; this many of those limits is generous.
IDLE_IN_TRANSACTION_FACTOR = 4


def _end_abandoned_transactions(engine: AsyncEngine, seconds: float) -> None:
    """Have PostgreSQL end a session of ``engine`` that has sat in an open transaction for ``seconds``
    (``idle_in_transaction_session_timeout``, postgresql.org/docs/current/runtime-config-client.html).

    A replica cut off from the database in the middle of a transaction (a network partition: neither its
    statements nor its reset get through) leaves the server a session holding that transaction's locks (rows
    being expired or revoked, an outbox claim, a quota's advisory lock) until the server's TCP keepalive gives up
    on it, two hours by default; every other replica's work on those rows waits meanwhile. Set with ``SET`` on each
    new connection rather than as a startup parameter, which poolers such as PgBouncer refuse."""
    statement = f"SET idle_in_transaction_session_timeout = {max(1, round(seconds * 1000))}"

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection, _record) -> None:
        # On the asyncpg connection itself: through the DBAPI adapter it would run in a transaction, and a
        # rolled-back SET is undone.
        dbapi_connection.run_async(lambda connection: connection.execute(statement))


def create_engine(url: str, *, connect_timeout: float = DEFAULT_CONNECT_TIMEOUT_SECONDS,
                  command_timeout: float | None = None) -> AsyncEngine:
    """An async engine for ``url``.

    On PostgreSQL, time limits in seconds, so that a database that stops answering (packets dropped, no reset)
    fails a caller with ``TimeoutError`` (an ``OSError``) or ``sqlalchemy.exc.TimeoutError`` instead of hanging
    it: ``connect_timeout`` bounds opening a connection and waiting for a free one in the pool;
    ``command_timeout`` (None: no limit, for migrations) bounds each statement, COMMIT and ROLLBACK. A
    ``connect_timeout`` or ``command_timeout`` parameter in the URL wins over these.

    On SQLite: WAL, a 5 s busy timeout, foreign keys, and ``BEGIN IMMEDIATE`` for connections carrying the
    execution option ``grantbot_write=True`` (see :func:`writer`).

    Immediate transactions matter because our write transactions read, then write: a deferred SQLite transaction
    that does that fails at once with "database is locked" when another connection wrote meanwhile, whatever the
    timeout. Reads stay deferred so that, under WAL, they never wait for a writer.
    """
    url = normalize_url(url)
    if not url.startswith(("sqlite+aiosqlite:", "postgresql+asyncpg:")):
        raise ValueError(
            f"GRANTBOT_DATABASE_URL must be a SQLite or PostgreSQL URL (sqlite:///grantbot.db, "
            f"postgresql://user:pass@host/db), not {describe_url(url)!r}"
        )
    if not url.startswith("sqlite"):
        url, connect_args = libpq_parameters(url)
        in_url = make_url(url).query  # asyncpg's own parameters, passed as they are
        if "timeout" not in in_url:
            connect_args.setdefault("timeout", connect_timeout)
        if command_timeout is not None and "command_timeout" not in in_url:
            connect_args["command_timeout"] = command_timeout
        pool_timeout = float(connect_args.get("timeout") or in_url["timeout"])
        # At most 15 connections, as SQLAlchemy's default (5 kept + 10 overflow) allowed, but all 15 are kept:
        # overflow connections are closed as soon as they are returned, so under load the default pool opened a
        # new connection (TLS, authentication, codec set-up, an empty prepared-statement cache) every few requests.
        engine = create_async_engine(url, pool_pre_ping=True, connect_args=connect_args,
                                     pool_size=POSTGRES_POOL_SIZE, max_overflow=0, pool_timeout=pool_timeout)
        if command_timeout is not None:
            _end_abandoned_transactions(engine, IDLE_IN_TRANSACTION_FACTOR * command_timeout)
        return engine
    # One connection: SQLite has one writer at a time anyway, and contention queued in asyncio costs microseconds,
    # while contention between connections is resolved by SQLite's busy handler, which sleeps (up to 100 ms a try).
    # One trip to SQLite's thread per statement (bot.store.sqlite_driver) rather than SQLAlchemy's three or four.
    # SQLAlchemy's own adapter where the shim does not fit the installed SQLAlchemy (``one_trip_dbapi``).
    module = one_trip_dbapi() if one_trip_dbapi is not None else None
    engine = create_async_engine(url, connect_args={"timeout": 5}, pool_size=1, max_overflow=0, pool_timeout=30,
                                 **({"module": module} if module is not None else {}))

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection, _record) -> None:
        dbapi_connection.isolation_level = None  # we emit BEGIN ourselves below
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA busy_timeout=5000")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")
        # Checkpoints run beside the writer (bot.store.wal_checkpoint); the writer's own only past this many pages.
        cursor.execute(f"PRAGMA wal_autocheckpoint={FALLBACK_PAGES}")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get(WRITE_OPTION) else "BEGIN")

    return engine
