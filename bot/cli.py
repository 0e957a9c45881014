"""``grantbot`` commands: ``serve``, ``migrate``, ``audit``, ``policy``, ``dev`` (with the local Slack sandbox), and
the pipeline client's ``request``, ``release``, ``status`` and ``verify`` (``bot.client.commands``)."""

from __future__ import annotations

import argparse
import asyncio
import errno
import gc
import json
import logging
import os
import secrets
import signal
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from bot.client.commands import DEFAULT_URL, add_commands
from bot.client.credentials import DEV_IDENTITY_FILE
from bot.domain.errors import PolicyError

if TYPE_CHECKING:  # the server's modules load with the server's commands: a pipeline's `grantbot request` skips them
    from aiohttp import web

    from bot.config import Settings

DEV_STATE_DIR = DEV_IDENTITY_FILE.parent
DEV_APPROVER = "U0APPROVER"


def _setup_logging(level: str, fmt: str | None = None) -> None:
    """Logging for a command (``bot.logs``): JSON lines unless ``fmt`` or a terminal says text."""
    from bot.logs import log_format, setup_logging

    setup_logging(level, log_format(fmt))
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    # APScheduler warns on every skipped run while a long sweep is still going; failures are ERRORs and stay.
    logging.getLogger("apscheduler").setLevel(logging.ERROR)


def _load_settings(**overrides: object) -> Settings:
    from pydantic import ValidationError

    from bot.config import Settings

    try:
        return Settings(**overrides)
    except ValidationError as exc:
        errors = "; ".join(f"{Settings.variables_of(e['loc'])}: {e['msg']}" for e in exc.errors())
        print(f"grantbot: invalid settings: {errors}", file=sys.stderr)
        raise SystemExit(2) from None  # as every other refusal to start (README: one line, exit status 2)


class PortUnavailable(Exception):
    """The address to listen on cannot be bound; the message says which and what to do."""


async def _listen(app: web.Application, settings: Settings, reuse_port: bool = False):
    """Serve ``app`` where the settings say (``bot.web.serving.listen``); :class:`PortUnavailable` when the
    address cannot be bound, raised before the application has started anything."""
    from bot.web.serving import listen

    try:
        return await listen(app, settings.host, settings.port, header_timeout_seconds=settings.header_timeout_seconds,
                            reuse_port=reuse_port)
    except OSError as exc:
        raise _port_unavailable(settings, exc) from None


def _port_unavailable(settings: Settings, exc: OSError) -> PortUnavailable:
    if exc.errno == errno.EADDRINUSE:
        why = "the address is already in use (another grantbot, or another program, listens there)"
    else:
        why = exc.strerror or str(exc)
    return PortUnavailable(f"cannot listen on {settings.host}:{settings.port}: {why}; stop that program or choose "
                           "another port (PORT and GRANTBOT_HOST; grantbot dev --port)")


async def _preflight(settings: Settings) -> None:
    """What would stop every worker of ``serve --workers N``, checked once before they start, so that it is one
    line as for a single ``serve``: the policy file, the signing key (created here once, not raced for by the
    workers), the introspection clients, the schema, and the address (bound without ``SO_REUSEPORT``, so that
    another program, or a grantbot already running, is found)."""
    import socket

    from bot.policy_file import load_policy
    from bot.store.engine import create_engine
    from bot.store.schema import check_current
    from bot.tokens.keys import load_or_create_signing_key

    load_policy(settings.policy_path, os.environ)
    settings.introspection_credentials()
    engine = create_engine(settings.database_url, connect_timeout=settings.database_connect_timeout_seconds)
    try:
        await check_current(engine)
    finally:
        await engine.dispose()
    try:
        for family, kind, proto, _, address in socket.getaddrinfo(settings.host, settings.port,
                                                                  type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE):
            with socket.socket(family, kind, proto) as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as asyncio's server does
                probe.bind(address)
    except OSError as exc:
        raise _port_unavailable(settings, exc) from None
    load_or_create_signing_key(settings.signing_key_file)  # last: a refusal above leaves nothing behind


# How often a worker of ``serve --workers N`` checks that the process that started it is still there (seconds).
SUPERVISOR_CHECK_SECONDS = 0.5
# How often `credentials reconcile` looks again at revocations another process holds.
RECONCILE_POLL_SECONDS = 0.5


async def _until_signalled(app=None, supervisor_pid: int | None = None) -> None:
    """Wait for SIGINT or SIGTERM; meanwhile SIGHUP reloads the policy file. ``supervisor_pid``: a worker of
    ``serve --workers N`` also stops, as on SIGTERM, when that process is gone (killed with SIGKILL, it could not
    pass the signal on): otherwise the orphans would keep the port, and the restarted set would find it in use."""
    from bot.web.keys import RELOADER

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    if app is not None and RELOADER in app:
        loop.add_signal_handler(signal.SIGHUP, app[RELOADER].request)
    if supervisor_pid is None:
        await stop.wait()
        return
    # The parent's id changes (to 1, or to a subreaper) once the parent has died; a poll, not PR_SET_PDEATHSIG,
    # which is Linux-only and tied to the thread that forked rather than to the process.
    stopped = asyncio.ensure_future(stop.wait())
    try:
        while os.getppid() == supervisor_pid:
            if (await asyncio.wait({stopped}, timeout=SUPERVISOR_CHECK_SECONDS))[0]:
                return
    finally:
        stopped.cancel()
    logging.getLogger("bot").warning("the supervising process %d is gone; stopping this worker", supervisor_pid)


# The youngest generation's threshold (CPython's default: 700 allocations). A request allocates thousands of objects
# (SQLAlchemy's statements and rows, the JSON), so at the default the collector ran several times per request.
GC_YOUNG_THRESHOLD = 10_000


def _settle_heap() -> None:
    """Once the application has started: move what start-up allocated (modules, the policy, SQLAlchemy's tables
    and compiled statements) out of the collector's sight (``gc.freeze``), so that full collections stop walking
    it, and collect the youngest generation less often. Measured with ``benchmarks/compare.py`` (SQLite, 16
    connections): request p99 26-43 ms before, 20-23 ms after, throughput unchanged."""
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, older, oldest)


async def _serve(settings: Settings, reuse_port: bool = False, supervisor_pid: int | None = None) -> None:
    from bot.app import create_app

    app = create_app(settings)
    listener = await _listen(app, settings, reuse_port)
    _settle_heap()
    logging.getLogger("bot").info("grantbot listening on http://%s:%s", settings.host, settings.port)
    if settings.issuer is None and settings.database_url.startswith("postgresql"):
        # On a shared database, replicas are likely: each would name its own host:port as the issuer, and then
        # introspect the others' tokens as inactive and ignore them in /oauth/revoke.
        logging.getLogger("bot").warning(
            "GRANTBOT_ISSUER is not set, so tokens name %s as their issuer; set it to the URL clients use, the same "
            "on every replica", settings.issuer_url)
    try:
        await _until_signalled(app, supervisor_pid)
    finally:
        logging.getLogger("bot").info("draining: no new connections; finishing what is in flight")
        await listener.close()
        logging.getLogger("bot").info("stopped")


def _run(coro) -> int:
    from sqlalchemy.exc import SQLAlchemyError

    from bot.store.schema import DatabaseUnreachable, SchemaBehind

    try:
        asyncio.run(coro)
    except (SchemaBehind, DatabaseUnreachable, PortUnavailable) as exc:
        print(f"grantbot: {exc}", file=sys.stderr)
        return 2
    except SQLAlchemyError as exc:
        print(f"grantbot: cannot use the database: {type(exc).__name__}: {getattr(exc, 'orig', None) or exc}",
              file=sys.stderr)
        return 2
    except PolicyError as exc:
        print(f"grantbot: {exc}", file=sys.stderr)
        return 2
    except ValueError as exc:
        print(f"grantbot: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        return _reader_gone()
    except OSError as exc:
        print(f"grantbot: cannot start: {exc}", file=sys.stderr)
        return 2
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    settings = _load_settings()
    _setup_logging(settings.log_level, settings.log_format)
    if args.workers < 1:
        print("grantbot: --workers must be at least 1", file=sys.stderr)
        return 2
    if args.workers > 1:
        from bot.workers import supervise

        if (refused := _run(_preflight(settings))) != 0:
            return refused
        return supervise(args.workers, [sys.executable, "-m", "bot", "serve", "--worker", str(os.getpid())])
    return _run(_serve(settings, reuse_port=args.worker is not None, supervisor_pid=args.worker))


async def _migrate(settings: Settings) -> None:
    from bot.store.engine import create_engine
    from bot.store.schema import current_revision, upgrade

    engine = create_engine(settings.database_url, connect_timeout=settings.database_connect_timeout_seconds)
    try:
        before = await current_revision(engine)
        await upgrade(engine)
        after = await current_revision(engine)
    finally:
        await engine.dispose()
    if before == after:
        print(f"grantbot: the database is up to date (schema revision {after})")
    else:
        print(f"grantbot: migrated the database from schema revision {before or '(none)'} to {after}")


def cmd_migrate(_: argparse.Namespace) -> int:
    settings = _load_settings()
    _setup_logging(settings.log_level, settings.log_format)
    return _run(_migrate(settings))


async def _audit_export(settings: Settings, since, out) -> int:
    from bot.store.engine import create_engine
    from bot.store.repository import SqlStore

    store = SqlStore(create_engine(settings.database_url, connect_timeout=settings.database_connect_timeout_seconds))
    written, after = 0, 0
    try:
        while batch := await store.audit_events(since=since, after_id=after):
            for event in batch:
                out.write(json.dumps(event, separators=(",", ":")) + "\n")
            written += len(batch)
            after = batch[-1]["id"]
    finally:
        await store.engine.dispose()
    out.flush()
    return written


def cmd_audit_export(args: argparse.Namespace) -> int:
    from datetime import UTC, datetime

    since = None
    if args.since:
        try:
            since = datetime.fromisoformat(args.since.replace("Z", "+00:00"))
        except ValueError:
            print("grantbot audit export: --since must be an ISO 8601 time, e.g. 2026-11-29T00:00:00Z", file=sys.stderr)
            return 2
        since = since if since.tzinfo else since.replace(tzinfo=UTC)
    settings = _load_settings()
    return _run(_audit_export(settings, since, sys.stdout))


async def _credentials_reconcile(settings: Settings, out, max_wait_seconds: float | None = None) -> int:
    """Queue again every failed revocation (and bring forward those waiting for a retry), reconcile every
    provider's accounts with the grants, and work through the due revocations now, waiting for those another
    process holds (until its attempt ends, or, if it died, until its lease runs out: ``LEASE_SECONDS`` of
    bot.domain.usecases.revoke_credentials, then taking them over) for at most ``max_wait_seconds`` of real time
    (None: no limit); prints what happened. Exit status 1 when something is still not removed (a revocation
    failed again or is still pending or held, a provider could not be asked)."""
    from datetime import UTC

    from bot.changes import LocalChanges
    from bot.domain.usecases import Deps
    from bot.domain.usecases.reconcile_credentials import reconcile_credentials
    from bot.domain.usecases.revoke_credentials import RevocationRound, revoke_due_credentials
    from bot.policy_file import load_policy
    from bot.providers.pool import ProviderPool, ProviderServices
    from bot.store.engine import create_engine
    from bot.store.repository import SqlStore
    from bot.store.schema import check_current
    from bot.app import default_clock

    policy = load_policy(settings.policy_path, os.environ)
    store = SqlStore(create_engine(settings.database_url, connect_timeout=settings.database_connect_timeout_seconds,
                                   command_timeout=settings.database_command_timeout_seconds))
    clock = default_clock(settings)
    providers = ProviderPool(services=ProviderServices(revoked_certificates=store, clock=clock))
    # No token is minted here: reconciliation and revocation need the store, the clock and the providers.
    deps = Deps(store=store, tokens=None, clock=clock, changes=LocalChanges(),  # type: ignore[arg-type]
                policy=policy, issuer=settings.issuer_url, credentials=providers)
    try:
        await check_current(store.engine)
        found = await reconcile_credentials(deps, retry_failed=True)
        for problem in found.problems:
            print(f"grantbot: {problem}", file=sys.stderr)
        print(f"reconcile: {found.checked} account(s) grantbot made checked in {len(policy.providers)} provider(s); "
              f"{found.queued} revocation(s) queued for accounts whose grant is not active; "
              f"{found.requeued_failed} failed or waiting revocation(s) queued again", file=out, flush=True)
        total = RevocationRound()
        waiting = False
        # Real time, not grantbot's clock: the limit is the operator's (a script's or a cron job's) patience, and
        # counts from the first look that finds revocations held elsewhere (this command's own work is not waiting).
        wait_ends: float | None = None
        gave_up = False
        while True:
            while (done := await revoke_due_credentials(deps, settings.revocation_retries)).claimed:
                total += done
            # Those another process holds: a replica working on them now (it renews its lease until its attempt
            # ends), or one that died mid-way (kill -9), whose lease has to run out before anyone may take them
            # over. Wait for either instead of leaving them.
            held, until = await store.held_revocations(clock.now())
            if not held:
                # A lease may have run out between the last round and this look: one more round takes it over.
                if (done := await revoke_due_credentials(deps, settings.revocation_retries)).claimed:
                    total += done
                    continue
                break
            if wait_ends is None and max_wait_seconds is not None:
                wait_ends = time.monotonic() + max_wait_seconds
            if wait_ends is not None and time.monotonic() >= wait_ends:
                gave_up = True
                print(f"gave up waiting after {max_wait_seconds:g} s (--max-wait): {held} revocation(s) still held "
                      "by another grantbot process; it is still working on them, or its lease runs out at "
                      f"{until.astimezone(UTC):%H:%M:%S} UTC: run this again after that", file=out)
                break
            if not waiting:
                waiting = True
                print(f"waiting for {held} revocation(s) another grantbot process holds: it finishes them, or, "
                      f"if it stopped, this command takes them over when its lease runs out (at "
                      f"{until.astimezone(UTC):%H:%M:%S} UTC unless renewed)", file=out, flush=True)
            pause = RECONCILE_POLL_SECONDS
            if wait_ends is not None:
                pause = max(0.0, min(pause, wait_ends - time.monotonic()))
            await asyncio.sleep(pause)
        print(f"revocations: {total.verified} verified, {total.retried} failed and will be retried, {total.failed} "
              "failed for good", file=out)
        counts = await store.backlog(deps.clock.now())
        if counts.revocations_failed or counts.revocations_pending:
            print(f"still not removed: {counts.revocations_failed} failed, {counts.revocations_pending} pending "
                  "(`/access show <grant id>` says why)", file=out)
        return 1 if (found.problems or counts.revocations_failed or counts.revocations_pending or total.retried
                     or gave_up) else 0
    finally:
        await providers.close()
        await store.engine.dispose()


def cmd_credentials_reconcile(args: argparse.Namespace) -> int:
    settings = _load_settings()
    _setup_logging(settings.log_level)
    outcome: list[int] = []

    async def run() -> None:
        outcome.append(await _credentials_reconcile(settings, sys.stdout, args.max_wait))

    try:
        return _run(run()) or (outcome[0] if outcome else 2)
    except KeyboardInterrupt:  # Ctrl-C, in the wait or mid-revocation (a revocation begun is given back, due now)
        print("grantbot: interrupted; what is not removed yet is still queued: run it again to finish",
              file=sys.stderr)
        return 130


def _policy_or_exit(path: Path):
    """The policy at ``path``; a bad file ends the command with its message and exit status 2."""
    from bot.policy_file import load_policy

    try:
        return load_policy(path)
    except PolicyError as exc:
        print(f"grantbot: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def _key_value(text: str) -> tuple[str, str]:
    """argparse type for KEY=VALUE options."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, not {text!r}")
    return key, value


def _seconds(text: str) -> float:
    """argparse type for a duration in seconds (0 or more; fractions allowed)."""
    try:
        seconds = float(text)
    except ValueError:
        seconds = -1.0
    if not 0 <= seconds < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number of seconds, 0 or more (e.g. 60), not {text!r}")
    return seconds + 0.0  # "-0" is 0


def _policy_path(args: argparse.Namespace) -> Path:
    """The policy file a command names, else the one `grantbot serve` would load (GRANTBOT_POLICY_FILE, else
    policy.yaml)."""
    return args.file if args.file is not None else _load_settings().policy_path


def cmd_policy_check(args: argparse.Namespace) -> int:
    from bot.domain.policy import lint

    path = _policy_path(args)
    policy = _policy_or_exit(path)
    warnings = lint(policy)
    for warning in warnings:
        print(f"warning: {path}: {warning}")
    providers = f", {len(policy.providers)} providers" if policy.providers else ""
    print(f"{path}: valid; {len(policy.rules)} rules, {len(policy.identities)} identities{providers}, "
          f"default {policy.default.value}; {len(warnings)} warning(s)")
    return 0


def cmd_policy_test(args: argparse.Namespace) -> int:
    from bot.policy_cases import load_cases, run_cases

    policy = _policy_or_exit(args.file)
    try:
        cases = load_cases(args.cases.read_text(), str(args.cases))
    except OSError as exc:
        print(f"grantbot: {args.cases}: cannot read the cases file: {exc.strerror}", file=sys.stderr)
        return 2
    except PolicyError as exc:
        print(f"grantbot: {exc}", file=sys.stderr)
        return 2
    mismatches = run_cases(policy, cases)
    for miss in mismatches:
        where = f"{args.cases}:{miss.line}" if miss.line else str(args.cases)
        print(f"{where}: case [{miss.index}] {miss.case.label()}\n- expected: {miss.expected}\n+ got:      {miss.got}")
    passed = len(cases) - len(mismatches)
    print(f"{args.file}: {passed} of {len(cases)} case(s) passed" + (f", {len(mismatches)} failed" if mismatches else ""))
    return 1 if mismatches else 0


def _iso_time(text: str):
    """argparse type for an ISO 8601 time; UTC when no zone is given."""
    from datetime import UTC, datetime

    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an ISO 8601 time such as 2026-11-30T09:30:00+01:00, not {text!r}")
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def cmd_policy_explain(args: argparse.Namespace) -> int:
    from datetime import UTC, datetime

    from bot.domain.models import Caller
    from bot.domain.policy import explain, unknown_environment
    from bot.providers.kinds import explain_credentials

    policy = _policy_or_exit(_policy_path(args))
    if (unknown := unknown_environment(policy, args.environment)) is not None:
        print(f"refused before any rule: {unknown} (grantbot answers such a request 422)")
        return 1
    claims = dict(args.claim or [])
    at = args.at or datetime.now(UTC)
    audience = args.audience or policy.audience_for(args.environment)  # as a request naming none gets it
    outcome, rules = explain(policy, Caller(args.identity, claims), args.environment, tuple(args.scope),
                             audience, reason=args.reason, at=at)
    print(f"decision: {outcome.decision.value} ({outcome.reason})")
    if args.at or any(rule.when for rule in policy.rules):  # the time only matters to rules with a `when`
        print(f"  at {at.isoformat()}")
    for index, (rule, reason) in enumerate(rules):
        verdict = "matches" if reason is None else f"no: {reason}"
        print(f"  rules[{index}] {rule.name} ({rule.decision.value}): {verdict}")
    if outcome.rule is None:
        print(f"  default: {policy.default.value}")
    if outcome.decision.value != "deny":
        for line in explain_credentials(policy, outcome.rule):
            print(f"  credentials: {line}")
    if outcome.rule is not None and outcome.decision.value == "auto_approve" and policy.sends_to_people(outcome.rule):
        guards = [name for name, on in (("auto_approve_limit", outcome.rule.auto_approve_limit is not None),
                                        ("first_use", policy.first_use(outcome.rule) == "require_approval")) if on]
        print(f"  note: {' and '.join(guards)} may still send it to people; they depend on the identity's history")
    return 0


def _dev_identity() -> dict:
    """The sandbox's HMAC identity, made once per checkout and kept in .grantbot/ (mode 0600)."""
    if DEV_IDENTITY_FILE.exists():
        return json.loads(DEV_IDENTITY_FILE.read_text())
    DEV_STATE_DIR.mkdir(exist_ok=True)
    identity = {"identity": "deploy-bot", "secret": secrets.token_urlsafe(32)}
    fd = os.open(DEV_IDENTITY_FILE, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(identity, handle)
    return identity


async def _dev(args: argparse.Namespace) -> None:
    """grantbot on this machine: SQLite, the example policy, an HMAC identity for `grantbot request`, and the
    local Slack sandbox unless real Slack credentials (SLACK_BOT_TOKEN and SLACK_SIGNING_SECRET) are set."""
    from bot.app import create_app
    from bot.config import bundled_policy
    from bot.sandbox import SlackSandbox

    identity = _dev_identity()
    os.environ["GRANTBOT_SECRET_DEPLOY_BOT"] = identity["secret"]
    introspection = f"demo:{secrets.token_hex(8)}"
    policy_file = args.policy or bundled_policy()
    demo = None
    if args.postgres:
        from bot.providers import demo as pg_demo

        demo_url, demo = await pg_demo.set_up(args.postgres)
        os.environ[pg_demo.URL_ENV] = demo_url
        if args.policy is None:
            policy_file = pg_demo.demo_policy(bundled_policy(), demo, DEV_STATE_DIR / "dev-policy.yaml")
    overrides: dict[str, object] = {
        "host": args.host,
        "introspection_clients": introspection,
        "policy_file": policy_file,
    }
    if args.port is not None:
        overrides["port"] = args.port
    sandbox = None
    if not _load_settings().slack_enabled:
        bot_token = "xoxb-sandbox-" + secrets.token_hex(8)
        signing_secret = secrets.token_hex(16)
        sandbox = SlackSandbox(bot_token=bot_token, signing_secret=signing_secret)
        try:
            await sandbox.start(args.host, args.sandbox_port)
        except OSError as exc:
            why = ("the address is already in use (another grantbot dev, or another program, listens there)"
                   if exc.errno == errno.EADDRINUSE else exc.strerror or str(exc))
            raise PortUnavailable(f"cannot listen on {args.host}:{args.sandbox_port} for the Slack sandbox: {why}; "
                                  "stop that program or choose another port (grantbot dev --sandbox-port)") from None
        overrides.update(slack_bot_token=bot_token, slack_signing_secret=signing_secret,
                         slack_api_url=sandbox.api_url, slack_channel="C0SANDBOX")
    settings = _load_settings(**overrides)
    app = create_app(settings, migrate=True)
    try:
        listener = await _listen(app, settings)
    except BaseException:
        if sandbox is not None:
            await sandbox.stop()
        raise
    base = f"http://{settings.host}:{settings.port}"
    from bot.providers.local_servers import find_local_servers, servers_text

    local_servers = servers_text(await find_local_servers())
    if sandbox is not None:
        sandbox.events_url = f"{base}/slack/events"
        where = f"The Slack sandbox is at {sandbox.base_url}/ - open it in a browser: it shows #access-requests."
        approve = ('In the sandbox page, as "dana (approver)", click Approve (on the card, or in the '
                   '"Home (as dana)" tab).')
    else:
        where = f"Slack: the real workspace; cards go to channel {settings.slack_channel or '(set GRANTBOT_SLACK_CHANNEL)'}."
        approve = "In Slack, as an approver of rule prod-write, click Approve."
    client_id, secret = introspection.split(":")
    # `grantbot request` goes to 8080 unless told otherwise; elsewhere, the hints must say where.
    url = "" if base == DEFAULT_URL else f" --url {base}"
    print(
        f"""
grantbot is running at {base} (database {settings.database_url}, policy {settings.policy_file})
{where}

Try it, in a second terminal in this folder:
  1. Ask for access that needs approval (identity 'deploy-bot', secret kept in {DEV_IDENTITY_FILE}):
       .venv/bin/grantbot request{url} --environment production --scope db:write --ttl 60 --reason "hotfix 42" --wait 300
  2. {approve} The command prints the token.
  3. 60 s after the approval the grant expires: a thread reply under the card says so.
  Staging is auto-approved:  .venv/bin/grantbot request{url} --environment staging --scope db:read --ttl 30
  Check a token (RFC 7662):  curl -s -u {client_id}:{secret} -d token=TOKEN {base}/oauth/introspect
{_demo_hint(demo, url)}
{local_servers}

Stop with Ctrl-C.
""",
        flush=True,
    )
    try:
        await _until_signalled(app)
    finally:
        await listener.close()
        if sandbox is not None:
            await sandbox.stop()
    print("grantbot dev stopped (its state stays in this folder for the next start).", flush=True)


def _demo_hint(demo: dict | None, url: str) -> str:
    if demo is None:
        return ""
    return f"""
A real database grant (database {demo['database']}: table orders; grants are temporary roles {demo['prefix']}…):
  4. Ask, approve in the sandbox, and get PostgreSQL credentials as PG* variables for psql:
       eval "$(.venv/bin/grantbot request{url} --environment production --scope db:write --ttl 60 --reason "fix order 3" --wait 300 --output env)"
  5. Use them:  psql -c 'SELECT * FROM orders'   (and keep a session open: psql)
  6. 60 s after the approval the session ends, the role is dropped, and the card's thread says what was removed.
"""


def cmd_dev(args: argparse.Namespace) -> int:
    # A person reads `grantbot dev` in a terminal: text unless GRANTBOT_LOG_FORMAT says otherwise.
    _setup_logging(os.environ.get("GRANTBOT_LOG_LEVEL", "INFO"), os.environ.get("GRANTBOT_LOG_FORMAT") or "text")
    return _run(_dev(args))


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("grantbot")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="grantbot", description="Just-in-time, scoped, expiring access for machines.")
    parser.add_argument("--version", action="version", version=f"grantbot {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the HTTP API and Slack endpoint (settings from the environment)")
    serve.add_argument("--workers", type=int, default=1, metavar="N",
                       help="run N processes sharing the port (SO_REUSEPORT; about one per core); each is a replica "
                            "like any other (default: 1)")
    # One of --workers' processes; the value is the supervising process's id.
    serve.add_argument("--worker", type=int, metavar="SUPERVISOR_PID", help=argparse.SUPPRESS)
    serve.set_defaults(func=cmd_serve)

    migrate = sub.add_parser("migrate", help="upgrade the database schema to this version (run before serve)")
    migrate.set_defaults(func=cmd_migrate)

    audit = sub.add_parser("audit", help="the audit trail").add_subparsers(dest="audit_command", required=True)
    export = audit.add_parser("export", help="write audit events as JSON lines (oldest first) to stdout, for a SIEM")
    export.add_argument("--since", help="only events at or after this ISO 8601 time (UTC if no zone is given)")
    export.set_defaults(func=cmd_audit_export)

    policy = sub.add_parser("policy", help="check a policy file, or explain its decision for a request")
    policy_sub = policy.add_subparsers(dest="policy_command", required=True)
    check = policy_sub.add_parser("check", help="validate a policy file and warn of rules that can never decide")
    check.add_argument("file", type=Path, nargs="?",
                       help="default: the file `grantbot serve` loads ($GRANTBOT_POLICY_FILE, else policy.yaml)")
    check.set_defaults(func=cmd_policy_check)
    test = policy_sub.add_parser("test", help="decide a list of cases and compare with the expected decisions "
                                              "(exit 1 with a diff on any mismatch)")
    test.add_argument("file", type=Path, help="the policy file")
    test.add_argument("cases", type=Path, help="a YAML list of {identity, environment, scopes, claims?, audience?, "
                                               "reason?, at?, expect, rule?}")
    test.set_defaults(func=cmd_policy_test)
    explain_cmd = policy_sub.add_parser("explain", help="print the decision for a request and why, rule by rule")
    explain_cmd.add_argument("file", type=Path, nargs="?",
                             help="default: the file `grantbot serve` loads ($GRANTBOT_POLICY_FILE, else policy.yaml)")
    explain_cmd.add_argument("--identity", required=True)
    explain_cmd.add_argument("--environment", required=True)
    explain_cmd.add_argument("--scope", action="append", required=True)
    explain_cmd.add_argument("--audience")
    explain_cmd.add_argument("--claim", action="append", type=_key_value, metavar="KEY=VALUE")
    explain_cmd.add_argument("--reason", help="the request's reason (for require_reason / reason_pattern)")
    explain_cmd.add_argument("--at", type=_iso_time, metavar="TIME",
                             help="decide as at this ISO 8601 time (for `when`); default: now")
    explain_cmd.set_defaults(func=cmd_policy_explain)

    credentials = sub.add_parser("credentials", help="real credentials (providers' temporary accounts)")
    credentials_sub = credentials.add_subparsers(dest="credentials_command", required=True)
    reconcile = credentials_sub.add_parser(
        "reconcile", help="retry failed revocations now and revoke every account grantbot made whose grant is not "
                          "active (settings and policy from the environment, as for serve)")
    reconcile.add_argument(
        "--max-wait", type=_seconds, metavar="SECONDS", default=None,
        help="wait at most this long for revocations another grantbot process holds, then exit 1 (default: until "
             "they are finished or taken over)")
    reconcile.set_defaults(func=cmd_credentials_reconcile)

    dev = sub.add_parser("dev", help="run grantbot with the local Slack sandbox and the example policy")
    dev.add_argument("--host", default="127.0.0.1")
    # Default: the settings' port (PORT, else 8080), read when dev runs: a bad PORT is then a settings error,
    # not a traceback of every command's parser.
    dev.add_argument("--port", type=int, default=None)
    dev.add_argument("--sandbox-port", type=int, default=8081)
    dev.add_argument("--policy", type=Path, default=None, help="policy file (default: the bundled example)")
    dev.add_argument("--postgres", metavar="URL", default=None,
                     help="hand out real PostgreSQL roles: a URL of a role that may create databases and roles "
                          "(e.g. postgresql://postgres@127.0.0.1:5432/postgres); makes a demo database "
                          "grantbot_demo (or the URL's database) with an orders table")
    dev.set_defaults(func=cmd_dev)

    add_commands(sub)  # request, release, status, cancel, verify: the pipeline client (bot/client/)
    return parser


# 128 + SIGPIPE: what a shell reports for a command whose reader went away (``cat big | head`` under pipefail).
EXIT_BROKEN_PIPE = 141


def main(argv: list[str] | None = None) -> int:
    """``grantbot …``; the exit status. A reader that stops early (``grantbot audit export | head``) ends the
    command quietly with :data:`EXIT_BROKEN_PIPE`, as it would end ``cat``."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except BrokenPipeError:
        return _reader_gone()


def _reader_gone() -> int:
    # stdout's buffer can no longer be flushed: point it at /dev/null, or the interpreter's own flush at exit
    # prints "Exception ignored … BrokenPipeError" (Python docs, "Note on SIGPIPE").
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    return EXIT_BROKEN_PIPE


if __name__ == "__main__":
    sys.exit(main())
