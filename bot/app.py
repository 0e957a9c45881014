"""Composition root: builds every part from ``Settings`` and owns start-up and clean shutdown.

``create_app`` does the checks that must stop start-up (policy file, identity secrets, signing key,
introspection clients) before anything listens; resources that need the loop (database, outbox worker,
scheduler) live in ``cleanup_ctx`` so they are closed in reverse order on shutdown.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import traceback
from collections.abc import AsyncIterator
from functools import partial

import aiohttp
from aiohttp import web
from slack_sdk.signature import SignatureVerifier
from slack_sdk.web.async_client import AsyncWebClient

from bot.changes import LocalChanges
from bot.config import Settings
from bot.domain.clock import OffsetFileClock, SystemClock
from bot.domain.policy import Policy
from bot.policy_file import load_policy
from bot.policy_reload import PolicyReloader
from bot.providers.kinds import explain_credentials
from bot.providers.pool import ProviderPool, ProviderServices
from bot.policy_reload import digest as policy_digest
from bot.slack import blocks
from bot.domain.ports import Clock
from bot.domain.usecases import Deps
from bot.metrics import Metrics
from bot.identity.callers import CallerAuthenticator
from bot.identity.hmac_auth import HmacAuthenticator, secrets_from_policy
from bot.identity.jwks_cache import JwksCache
from bot.identity.oidc import ALLOWED_ALGORITHMS, OidcAuthenticator
from bot.scheduler import CronSchedule, Sweeper, SweepWaking, run_scheduler
from bot.slack.directory import SlackApproverDirectory
from bot.slack.listeners import build_bolt_app
from bot.slack.notifier import SlackNotifier
from bot.store.outage import close_pool
from bot.store.engine import create_engine
from bot.store.schema import check_current, upgrade
from bot.store.wal_checkpoint import WalCheckpointer
from bot.store.refusals import SqlRefusalLog
from bot.store.repository import SqlStore
from bot.store.outbox_channels import OutboxChannels
from bot.tokens.access_tokens import AccessTokenIssuer
from bot.tokens.keys import load_or_create_signing_key, load_verification_key
from bot.web import access_requests, health, oauth, openapi, slack_events, ssh
from bot.web.errors import MAX_BODY_BYTES, error_middleware
from bot.web.observability import observe
from bot.web.keys import (
    AUTH,
    BOLT,
    DEPS,
    INTROSPECTION_CLIENTS,
    METRICS,
    RELOADER,
    SETTINGS,
    SLACK_VERIFIER,
    STORE,
    TOKENS,
)

log = logging.getLogger(__name__)

# How often the Socket Mode connection is checked; a dropped connection is replaced within a few of these.
SOCKET_PING_SECONDS = 2
CANCELLED_STOP_SECONDS = 5.0  # how long a background task cancelled at shutdown may take to end


def default_clock(settings: Settings) -> Clock:
    return OffsetFileClock(settings.clock_offset_file) if settings.clock_offset_file else SystemClock()


def create_app(settings: Settings, *, clock: Clock | None = None, migrate: bool = False) -> web.Application:
    """The aiohttp application for ``settings``; ``migrate`` upgrades the schema at start instead of refusing
    to start on a database that is behind (``bot.store.schema.SchemaBehind``).

    Raises ``bot.domain.errors.PolicyError`` (bad policy file, unset identity secret) and ``ValueError``
    (unreadable signing key, malformed ``GRANTBOT_INTROSPECTION_CLIENTS``) before anything starts.
    """
    clock = clock or default_clock(settings)
    policy_path = settings.policy_path
    policy = load_policy(policy_path, os.environ)
    loaded_digest = policy_digest(policy_path.read_text())
    log.info("policy %s loaded (sha256 %s): %d rules, default %s", policy_path.resolve(), loaded_digest[:16],
             len(policy.rules), policy.default.value)
    identity_secrets = secrets_from_policy(policy)
    introspection_clients = settings.introspection_credentials()
    tokens = AccessTokenIssuer(load_or_create_signing_key(settings.signing_key_file), settings.issuer_url,
                               [load_verification_key(path) for path in settings.previous_signing_keys])
    store = SqlStore(create_engine(settings.database_url, connect_timeout=settings.database_connect_timeout_seconds,
                                   command_timeout=settings.database_command_timeout_seconds))
    changes = LocalChanges()
    refusals = SqlRefusalLog(store.engine)
    metrics = Metrics()
    providers = ProviderPool(services=ProviderServices(revoked_certificates=store, clock=clock),
                             observe=metrics.provider_operation)
    deps = Deps(
        store=store,
        tokens=tokens,
        clock=clock,
        changes=changes,
        policy=policy,
        issuer=settings.issuer_url,
        default_channel=settings.slack_channel,
        refusals=refusals,
        credentials=providers,
        observer=metrics,
    )

    sweeper = Sweeper(deps, metrics, settings.sweep_interval_seconds)
    deps.observer = SweepWaking(metrics, sweeper)  # a grant expiring before the next sweep brings it forward

    app = web.Application(middlewares=[observe, error_middleware], client_max_size=MAX_BODY_BYTES)
    app[SETTINGS] = settings
    app[DEPS] = deps
    app[STORE] = store
    app[TOKENS] = tokens
    app[INTROSPECTION_CLIENTS] = introspection_clients
    app[METRICS] = metrics
    issuer_keys = JwksCache(clock, ALLOWED_ALGORITHMS)
    hmac_auth = HmacAuthenticator(identity_secrets, clock, store.remember_signature)
    oidc_auth = OidcAuthenticator(policy, issuer_keys, clock, store.remember_signature)
    app[AUTH] = CallerAuthenticator(hmac_auth, oidc_auth, refusals, clock)

    def apply_policy(new: Policy) -> None:
        # Everything derived from the policy is computed first, so a failure leaves the old policy whole.
        new_secrets = secrets_from_policy(new)
        deps.policy = new
        hmac_auth.replace_secrets(new_secrets)
        oidc_auth.replace_policy(new)

    async def refuse_policy(reason: str, key: str) -> None:
        text = (f":warning: The policy file `{blocks.escape(str(policy_path))}` changed but was not loaded; "
                f"the previous policy stays in force.\n```{blocks.escape(reason)}```")
        if await store.add_notice(f"policy-refused:{key[:64]}", None, text, clock.now(), "policy.reload_refused",
                                  file=str(policy_path), sha256=key, reason=reason[:2000]):
            changes.notify(f"policy-refused:{key[:64]}")  # wakes the outbox worker

    app[RELOADER] = reloader = PolicyReloader(policy_path, loaded_digest, apply_policy, refuse_policy,
                                              settings.policy_watch_seconds)
    for module in (access_requests, oauth, health, openapi, slack_events, ssh):
        app.add_routes(module.routes)

    app.cleanup_ctx.append(partial(_database, store, migrate, settings))
    app.cleanup_ctx.append(partial(_providers, providers))  # closed after the scheduler's last revocation round
    app.cleanup_ctx.append(partial(_issuer_keys_client, issuer_keys))
    if settings.slack_enabled:
        # Without a signing secret (Socket Mode only) a random one makes every HTTP delivery fail verification.
        signing_secret = (
            settings.slack_signing_secret.get_secret_value() if settings.slack_signing_secret else secrets.token_hex(32)
        )
        app[BOLT] = bolt = build_bolt_app(deps, settings.slack_bot_token.get_secret_value(), signing_secret,
                                          settings.slack_api_url, timeout_seconds=10)
        client = bolt.client
        deps.directory = SlackApproverDirectory(client, clock)  # approvers.usergroups, resolved on click
        app[SLACK_VERIFIER] = SignatureVerifier(signing_secret)
        if settings.slack_app_token is not None:
            app.cleanup_ctx.append(partial(_socket_mode, bolt, client, settings.slack_app_token.get_secret_value()))
        # The outbox retries on its own terms; the client's connection-error retry could repost a message Slack
        # already took (a reset after the post), so the notifier's client has none.
        outbox_client = AsyncWebClient(
            token=settings.slack_bot_token.get_secret_value(), base_url=settings.slack_api_url, timeout=10,
            retry_handlers=[],
        )
        notifier = SlackNotifier(
            store, OutboxChannels(store.engine), outbox_client, clock, metrics,
            pace_seconds=1.0 / settings.slack_posts_per_second,
            default_channel=settings.slack_channel or policy.defaults.channel, timezone=settings.timezone,
            hands_out=lambda rule: explain_credentials(deps.policy, deps.policy.rule_named(rule)),
        )
        changes.subscribe(notifier.wake)
        app.cleanup_ctx.append(partial(_background, notifier.run, notifier.stop, "outbox worker"))
    else:
        log.warning("Slack is not configured: approval cards wait in the outbox until SLACK_BOT_TOKEN is set")
    summary_schedule = (
        CronSchedule(settings.summary_cron, settings.timezone) if settings.summary_cron != "off" else None
    )
    app.cleanup_ctx.append(
        lambda _app: run_scheduler(deps, metrics, settings.sweep_interval_seconds, summary_schedule,
                                   settings.revocation_retries, settings.reconcile_interval_seconds, sweeper)
    )
    app.cleanup_ctx.append(partial(_background, reloader.run, reloader.stop, "policy reloader"))

    async def drain(_app: web.Application) -> None:
        changes.shutdown()  # long polls answer now instead of holding the shutdown for up to 60 s
        sweeper.stop_starting()  # no sweep or revocation round starts while the requests in flight finish

    app.on_shutdown.append(drain)
    return app


async def _database(store: SqlStore, migrate: bool, settings: Settings, _app: web.Application) -> AsyncIterator[None]:
    try:
        if migrate:
            # On an engine of their own, without the command time limit: an index on a big table takes its time.
            migrations = create_engine(settings.database_url, connect_timeout=settings.database_connect_timeout_seconds)
            try:
                await upgrade(migrations)
            finally:
                await migrations.dispose()
        else:
            await check_current(store.engine)
    except BaseException:
        # Close the pool's connections while the loop still runs. aiosqlite, when a connect fails, queues the
        # close of its worker thread without awaiting it (aiosqlite/core.py ``_connect``); the thread then hands
        # its result to the loop, which must still be open or the thread dies with a traceback on stderr.
        await store.engine.dispose()
        await asyncio.sleep(0.2)
        raise
    checkpointer = _wal_checkpointer(store)
    if checkpointer is not None:
        checkpointer.start()
    yield
    await store.finish_writes(settings.readiness_timeout_seconds)
    if checkpointer is not None:
        await checkpointer.stop()
    await close_pool(store.engine, settings.readiness_timeout_seconds)


def _wal_checkpointer(store: SqlStore) -> WalCheckpointer | None:
    """SQLite's checkpoints beside the writer (``bot.store.wal_checkpoint``); None for PostgreSQL and for an
    in-memory SQLite database."""
    url = store.engine.url
    if url.get_backend_name() != "sqlite" or not url.database or url.database == ":memory:":
        return None
    return WalCheckpointer(url.database)


async def _providers(providers: ProviderPool, _app: web.Application) -> AsyncIterator[None]:
    """The credential providers' admin connections, opened as needed and closed at shutdown."""
    yield
    await providers.close()


async def _issuer_keys_client(cache: JwksCache, _app: web.Application) -> AsyncIterator[None]:
    """The HTTP client that fetches CI issuers' discovery documents and JWKS, for the application's life."""
    async with aiohttp.ClientSession(headers={"User-Agent": "grantbot"}) as session:
        cache.session = session
        yield
        cache.session = None


async def _socket_mode(bolt, client: AsyncWebClient, app_token: str, _app: web.Application) -> AsyncIterator[None]:
    """Slack Socket Mode: the same listeners, over a WebSocket that slack-sdk reconnects when it drops."""
    # Imported here: only a Socket Mode app needs it, and it is a tenth of the server's import time (~70 ms).
    from slack_bolt.adapter.socket_mode.aiohttp import AsyncSocketModeHandler

    handler = AsyncSocketModeHandler(bolt, app_token, web_client=client, ping_interval=SOCKET_PING_SECONDS)
    await handler.connect_async()
    log.info("connected to Slack over Socket Mode")
    yield
    await handler.close_async()


async def _background(run, stop, name: str, _app: web.Application) -> AsyncIterator[None]:
    """Run ``run()`` for the application's life; on shutdown ask it to ``stop()``, cancel it only if it hangs.
    (A function, not a coroutine: a start-up refused earlier must not leave a never-awaited coroutine behind.)"""
    task = asyncio.create_task(run(), name=name)
    yield
    stop()
    _, hanging = await asyncio.wait([task], timeout=10)
    if hanging:
        where = "".join(traceback.format_stack(task.get_stack(limit=8)[-1])) if task.get_stack() else "?"
        log.warning("%s did not stop within 10 s; cancelling it (it was at:\n%s)", name, where.rstrip())
        task.cancel()
    # Bounded even after the cancel: a task that outlived it must not hold the rest of the shutdown for ever.
    await asyncio.wait([task], timeout=CANCELLED_STOP_SECONDS)
    if not task.done():
        log.error("%s did not stop after being cancelled; shutting down without it", name)
    elif not task.cancelled() and (failure := task.exception()) is not None:
        log.error("%s failed: %s: %s", name, type(failure).__name__, failure)
