"""The migrations build exactly the schema the models describe, on SQLite and PostgreSQL."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlmodel import SQLModel

from bot.store.engine import create_engine
from bot.store.schema import current_revision, head_revision, upgrade


async def test_autogenerate_finds_nothing_after_upgrading(database_url):
    engine = create_engine(database_url)
    try:
        assert await current_revision(engine) is None
        await upgrade(engine)
        assert await current_revision(engine) == head_revision()
        async with engine.connect() as conn:
            diff = await conn.run_sync(
                lambda sync: compare_metadata(MigrationContext.configure(sync, opts={"compare_type": True}),
                                              SQLModel.metadata)
            )
        assert diff == []
    finally:
        await engine.dispose()


async def test_grants_made_before_0008_take_their_request_s_environment(database_url):
    """Revision 0008 gives every grant an environment (the token's ``environment`` claim): an existing grant gets
    its request's, on SQLite and PostgreSQL."""
    from sqlalchemy import text

    engine = create_engine(database_url)
    try:
        await upgrade(engine, "0007")
        async with engine.begin() as conn:
            for request_id, environment in (("r-staging", "staging"), ("r-production", "production")):
                await conn.execute(text(
                    "INSERT INTO access_requests (id, identity, environment, scopes, ttl_seconds, audience, context, "
                    "status, decision, decision_reason, approvers, created_at) VALUES (:id, 'deploy-bot', :env, "
                    "'[]', 60, 'https://api.acme.example', '{}', 'approved', 'auto_approve', 'r', '[]', "
                    "'2026-11-30 10:00:00')"), {"id": request_id, "env": environment})
                await conn.execute(text(
                    "INSERT INTO grants (id, request_id, identity, scopes, audience, jti, issued_at, expires_at, "
                    "status) VALUES (:id, :request_id, 'deploy-bot', '[]', 'https://api.acme.example', :jti, "
                    "'2026-11-30 10:00:00', '2026-11-30 10:01:00', 'active')"),
                    {"id": "g-" + environment, "request_id": request_id, "jti": "jti-" + environment})
        await upgrade(engine)
        async with engine.connect() as conn:
            rows = (await conn.execute(text("SELECT id, environment FROM grants ORDER BY id"))).all()
        assert [tuple(row) for row in rows] == [("g-production", "production"), ("g-staging", "staging")]
    finally:
        await engine.dispose()
