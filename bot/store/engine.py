"""Engine set-up: URL normalisation, SQLite pragmas and immediate transactions, schema creation."""

from __future__ import annotations

from sqlalchemy import event, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from bot.store import tables  # noqa: F401  (registers the tables on SQLModel.metadata)


def normalize_url(url: str) -> str:
    """Accept the URLs hosting platforms hand out: ``postgres://`` / ``postgresql://`` -> asyncpg; plain sqlite -> aiosqlite."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+asyncpg://" + url[len(prefix) :]
    if url.startswith("sqlite://"):
        return "sqlite+aiosqlite://" + url[len("sqlite://") :]
    return url


WRITE_OPTION = "grantbot_write"


def describe_url(url: str) -> str:
    """The URL with its password masked, for messages and logs."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url.split("://", 1)[0] + "://…" if "://" in url else "(not a URL)"


def writer(engine: AsyncEngine) -> AsyncEngine:
    """The same engine (and pool) marked for write transactions: ``BEGIN IMMEDIATE`` on SQLite."""
    return engine.execution_options(**{WRITE_OPTION: True})


def create_engine(url: str) -> AsyncEngine:
    """An async engine for ``url``. On SQLite: WAL, a 5 s busy timeout, foreign keys, and ``BEGIN IMMEDIATE`` for
    connections carrying the execution option ``grantbot_write=True`` (see :func:`writer`).

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
        return create_async_engine(url, pool_pre_ping=True)
    # One connection: SQLite has one writer at a time anyway, and contention queued in asyncio costs microseconds,
    # while contention between connections is resolved by SQLite's busy handler, which sleeps (up to 100 ms a try).
    engine = create_async_engine(url, connect_args={"timeout": 5}, pool_size=1, max_overflow=0, pool_timeout=30)

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection, _record) -> None:
        dbapi_connection.isolation_level = None  # we emit BEGIN ourselves below
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA busy_timeout=5000")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get(WRITE_OPTION) else "BEGIN")

    return engine
