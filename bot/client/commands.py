"""``grantbot request / release / status / verify``: the argparse side of the pipeline client.

Settings come from the environment (``GRANTBOT_URL``, ``GRANTBOT_IDENTITY``, ``GRANTBOT_SECRET``,
``GRANTBOT_OIDC_AUDIENCE``, ``GRANTBOT_GRANT_ID``, ``GRANTBOT_INTROSPECTION_CLIENT``) or flags. Progress and
reasons go to stderr, the chosen output to stdout; the exit codes are ``bot.client.exits``'.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
from yarl import URL

from bot.client import outputs
from bot.client.access import AccessClient
from bot.client.credentials import (DEFAULT_OIDC_AUDIENCE, Credentials, ci_context, hmac_credentials,
                                    oidc_credentials)
from bot.client.exits import EXIT_CODES_HELP, RELEASE_EXIT_CODES_HELP, ExitCode, Stop
from bot.client.transport import Transport
from bot.client.verifier import CannotVerify, InvalidToken, TokenVerifier

DEFAULT_URL = "http://127.0.0.1:8080"  # where `grantbot dev` listens
DEFAULT_RETRY_SECONDS = 120.0


def _seconds(text: str) -> float:
    """argparse type: a non-negative number of seconds."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, not {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"expected a number of seconds (0 or more), not {text!r}")
    return value


def _key_value(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, not {text!r}")
    return key, value


class _RefuseSecret(argparse.Action):
    """``--secret VALUE`` is refused: a secret on the command line can be read by anyone on the machine."""

    def __call__(self, parser, namespace, values, option_string=None):
        parser.error(f"{option_string} is refused: a secret on the command line can be read by every user of this "
                     "machine (ps, /proc) and stays in shell history and CI logs. Put it in the GRANTBOT_SECRET "
                     "environment variable, or in a file named by --secret-file FILE.")


def _connection_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("connection and identity")
    group.add_argument("--url", help=f"grantbot's base URL (default: $GRANTBOT_URL, else {DEFAULT_URL})")
    group.add_argument("--identity", help="HMAC identity (default: $GRANTBOT_IDENTITY)")
    group.add_argument("--secret-file", type=Path, metavar="FILE",
                       help="file holding the identity's secret (default: the secret itself in $GRANTBOT_SECRET)")
    group.add_argument("--secret", action=_RefuseSecret, nargs="?", help="refused: use GRANTBOT_SECRET or --secret-file")
    group.add_argument("--oidc", choices=("github", "gitlab"),
                       help="authenticate with the CI job's OIDC identity token instead of HMAC: GitHub Actions' "
                            "(fetched from the runner) or GitLab's id_tokens: variable GRANTBOT_ID_TOKEN")
    group.add_argument("--oidc-audience", metavar="AUDIENCE",
                       help=f"--oidc github: the identity token's audience (default: $GRANTBOT_OIDC_AUDIENCE, else "
                            f"{DEFAULT_OIDC_AUDIENCE})")
    group.add_argument("--retry-for", type=_seconds, default=DEFAULT_RETRY_SECONDS, metavar="SECONDS",
                       help="keep retrying connection errors and 502/503/504 answers this long (default: %(default)g)")


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Add ``request``, ``release``, ``status``, ``cancel`` and ``verify`` to ``grantbot``'s subcommands."""
    formatter = argparse.RawDescriptionHelpFormatter
    req = sub.add_parser(
        "request", help="ask grantbot for access and wait for the decision (what a pipeline runs)",
        description="Ask for access, wait for the decision, and write the token (and credentials) to --output.",
        epilog=EXIT_CODES_HELP, formatter_class=formatter)
    req.add_argument("--environment", required=True)
    req.add_argument("--scope", action="append", required=True, help="repeat for several scopes")
    req.add_argument("--ttl", type=int, default=None, metavar="SECONDS", help="how long the grant lasts once approved")
    req.add_argument("--reason", help="why; shown to the approvers")
    req.add_argument("--audience", help="the token's aud (default: the environment's, per the policy)")
    req.add_argument("--context", action="append", type=_key_value, metavar="KEY=VALUE",
                     help="shown to approvers; the CI job's run_url, commit and repository are added by themselves")
    req.add_argument("--wait", type=_seconds, default=None, metavar="SECONDS",
                     help="wait at most this long for a decision (default: until the request's pending timeout)")
    req.add_argument("--leave-pending", action="store_true",
                     help="when the wait ends (or the command is stopped) before anyone decided, leave the request "
                          "pending, to collect it later with `grantbot status`; by default it is cancelled, so "
                          "that nobody approves it after the job")
    req.add_argument("--require-exact", action="store_true",
                     help="exit 1 (and release the grant) when an approver narrowed the scopes or the TTL")
    req.add_argument("--output", choices=outputs.OUTPUTS, default="json",
                     help="json (default): the request with its grant; token: the token alone; env: export lines; "
                          "github: $GITHUB_OUTPUT and $GITHUB_ENV, every secret masked")
    _connection_options(req)
    req.set_defaults(func=cmd_request)

    release = sub.add_parser(
        "release", help="end a grant now (the last step of a pipeline, run even when it failed)",
        description="Revoke one's own grant; an ended grant is left as it is (exit 0).",
        epilog=RELEASE_EXIT_CODES_HELP, formatter_class=formatter)
    release.add_argument("grant_id", nargs="?", metavar="GRANT_ID", help="default: $GRANTBOT_GRANT_ID")
    _connection_options(release)
    release.set_defaults(func=cmd_release)

    status = sub.add_parser(
        "status", help="print an access request's state as JSON",
        description="Print an access request as JSON; the exit code is its status's, as for request: 0 approved "
                    "(whether or not its grant has ended since), 1 denied, 3 pending, expired or cancelled.",
        epilog=EXIT_CODES_HELP, formatter_class=formatter)
    status.add_argument("request_id", metavar="REQUEST_ID")
    _connection_options(status)
    status.set_defaults(func=cmd_status)

    cancel = sub.add_parser(
        "cancel", help="withdraw one's own pending access request (e.g. one left with --leave-pending)",
        description="Cancel an access request that is still pending, so that nobody approves it; print it as JSON. "
                    "A request decided meanwhile is left as it is (an approved one's grant: `grantbot release`).",
        epilog="exit codes: 0 the request is cancelled (now or before); 3 it was decided or expired first (its "
               "status is printed); 2 bad usage, no such request for this identity, or authentication refused; 4 "
               "grantbot unreachable", formatter_class=formatter)
    cancel.add_argument("request_id", metavar="REQUEST_ID")
    _connection_options(cancel)
    cancel.set_defaults(func=cmd_cancel)

    verify = sub.add_parser(
        "verify", help="check an access token as a resource server would (exit 0 valid, 1 not)",
        description="Check a grantbot access token: signature against the JWKS, typ at+jwt, iss, aud, exp, and "
                    "optionally environment, scopes and (with --introspect) whether it is still active.",
        epilog="exit codes: 0 valid; 1 not valid (the reason is printed); 2 bad usage or introspection credentials "
               "refused; 4 grantbot unreachable", formatter_class=formatter)
    verify.add_argument("token", metavar="TOKEN", help="the access token, or - to read it from stdin")
    verify.add_argument("--audience", required=True, help="this resource server's audience")
    verify.add_argument("--environment", help="the token's environment claim must be this")
    verify.add_argument("--scope", action="append", default=[], help="the token must grant this scope (repeatable)")
    verify.add_argument("--introspect", action="store_true",
                        help="also ask grantbot whether the token is still active (RFC 7662), as the client "
                             "$GRANTBOT_INTROSPECTION_CLIENT (id:secret)")
    verify.add_argument("--url", help=f"grantbot's base URL (default: $GRANTBOT_URL, else {DEFAULT_URL})")
    verify.set_defaults(func=cmd_verify)


EXIT_SIGTERM = 128 + signal.SIGTERM  # 143: what a shell reports for a command ended by SIGTERM


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _base_url(args: argparse.Namespace) -> str:
    """--url, else $GRANTBOT_URL, else the default; raises :class:`Stop` (usage) for anything but an http(s) URL
    with a host (retrying "127.0.0.1:8080" for --retry-for would only hide the typo)."""
    text = args.url or os.environ.get("GRANTBOT_URL") or DEFAULT_URL
    source = "--url" if args.url else "GRANTBOT_URL" if os.environ.get("GRANTBOT_URL") else "the default URL"
    try:
        url = URL(text)
        usable = url.scheme in ("http", "https") and bool(url.host)
    except (ValueError, TypeError):
        usable = False
    if not usable:
        raise Stop(ExitCode.USAGE, f"{source} {text!r} is not an http:// or https:// URL with a host; give grantbot's "
                   f"base URL, e.g. http://127.0.0.1:8080 or https://grantbot.example.com.")
    return text


def _credentials(args: argparse.Namespace) -> Credentials:
    if args.oidc:
        return oidc_credentials(args.oidc, os.environ, args.oidc_audience)
    return hmac_credentials(args.identity, args.secret_file, os.environ)


def _run(args: argparse.Namespace, work: Callable[[aiohttp.ClientSession], Awaitable[int]]) -> int:
    async def main() -> int:
        task = asyncio.current_task()
        terminated = False
        result: int | None = None

        def on_sigterm() -> None:
            # A CI runner stopping the job: unwind as Ctrl-C does (what the command asked for is ended on the way
            # out), then exit 143 as SIGTERM's default would. Once only: a second SIGTERM must not cut that short;
            # and not once the command is done (its output is written: it succeeded).
            nonlocal terminated
            if not terminated and result is None:
                terminated = True
                task.cancel()

        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, on_sigterm)
        try:
            async with aiohttp.ClientSession() as http:
                result = await work(http)
                # Done (a token already written): a late SIGTERM must not turn that into a kill. Removed here
                # rather than by the loop's end, which would give SIGTERM back its default action first.
                loop.remove_signal_handler(signal.SIGTERM)
                signal.signal(signal.SIGTERM, signal.SIG_IGN)
            return result
        except asyncio.CancelledError:
            if result is not None:  # stopped while closing the connections: the work was done
                return result
            if terminated:
                return EXIT_SIGTERM
            raise

    try:
        return asyncio.run(main())
    except Stop as stop:
        _say(f"grantbot {args.command}: {stop.sentence}")
        if stop.view is not None and getattr(args, "output", None) == "json":
            print(json.dumps(stop.view, indent=2), flush=True)
        return int(stop.code)
    except KeyboardInterrupt:
        return 130


def _client(args: argparse.Namespace, http: aiohttp.ClientSession) -> AccessClient:
    transport = Transport(_base_url(args), _credentials(args), http, retry_for=args.retry_for, say=_say)
    return AccessClient(transport, _say)


def cmd_request(args: argparse.Namespace) -> int:
    async def work(http: aiohttp.ClientSession) -> int:
        outputs.check_ready(args.output, os.environ)
        body: dict = {"environment": args.environment, "scopes": args.scope}
        if args.ttl is not None:
            body["ttl_seconds"] = args.ttl
        if args.reason:
            body["reason"] = args.reason
        if args.audience:
            body["audience"] = args.audience
        context = {**ci_context(os.environ), **dict(args.context or [])}
        if context:
            body["context"] = context
        client = _client(args, http)
        view = await client.request(body, wait_seconds=args.wait, require_exact=args.require_exact,
                                    leave_pending=args.leave_pending)
        try:
            outputs.write(args.output, view, sys.stdout, os.environ)
        except OSError as exc:
            await client.release(view["grant"]["id"], quiet=True)
            raise Stop(ExitCode.USAGE, f"cannot write the {args.output} output ({exc}); the grant was released.") from None
        return ExitCode.APPROVED

    return _run(args, work)


def cmd_release(args: argparse.Namespace) -> int:
    async def work(http: aiohttp.ClientSession) -> int:
        grant_id = args.grant_id or os.environ.get("GRANTBOT_GRANT_ID")
        if not grant_id:
            raise Stop(ExitCode.USAGE, "name the grant to release: grantbot release GRANT_ID, or set "
                       "GRANTBOT_GRANT_ID (--output env and --output github set it).")
        await _client(args, http).release(grant_id)
        return ExitCode.APPROVED

    return _run(args, work)


STATUS_EXITS = {"approved": ExitCode.APPROVED, "denied": ExitCode.DENIED}  # pending, expired, cancelled: 3


def cmd_status(args: argparse.Namespace) -> int:
    async def work(http: aiohttp.ClientSession) -> int:
        view = await _client(args, http).status(args.request_id)
        print(json.dumps(view, indent=2), flush=True)
        _say(f"request {view.get('id')} is {view.get('status')}")
        # The request's exit code, as `grantbot request` would have ended on it (a script can branch on it).
        return STATUS_EXITS.get(view.get("status"), ExitCode.NOT_GRANTED)

    return _run(args, work)


def cmd_cancel(args: argparse.Namespace) -> int:
    async def work(http: aiohttp.ClientSession) -> int:
        view = await _client(args, http).cancel(args.request_id)
        print(json.dumps(view, indent=2), flush=True)
        status = view.get("status")
        if status == "cancelled":
            _say(f"request {view.get('id')} is cancelled: nobody can approve it")
            return ExitCode.APPROVED
        grant = view.get("grant") if isinstance(view.get("grant"), dict) else {}
        release = (f"; release its grant with `grantbot release {grant.get('id')}`"
                   if grant.get("status") == "active" else "")
        _say(f"request {view.get('id')} was already {status}, so it was not cancelled{release}")
        return ExitCode.NOT_GRANTED

    return _run(args, work)


def cmd_verify(args: argparse.Namespace) -> int:
    token = sys.stdin.read().strip() if args.token == "-" else args.token
    client = None
    if args.introspect:
        client_id, sep, secret = os.environ.get("GRANTBOT_INTROSPECTION_CLIENT", "").partition(":")
        if not sep or not client_id or not secret:
            _say("grantbot verify: --introspect needs GRANTBOT_INTROSPECTION_CLIENT=id:secret, a client listed in "
                 "grantbot's GRANTBOT_INTROSPECTION_CLIENTS.")
            return ExitCode.USAGE
        client = (client_id, secret)

    async def work(http: aiohttp.ClientSession) -> int:
        verifier = TokenVerifier(_base_url(args), args.audience, environment=args.environment,
                                 introspection_client=client, http=http)
        try:
            verified = await verifier.verify(token, args.scope)
        except InvalidToken as exc:
            _say(f"grantbot verify: not valid: {exc.reason}")
            return ExitCode.DENIED
        except CannotVerify as exc:
            _say(f"grantbot verify: cannot check the token: {exc.reason}")
            return ExitCode.USAGE if exc.status == 401 else ExitCode.UNREACHABLE
        print(json.dumps(verified.claims, indent=2), flush=True)
        checked = "signature, typ, iss, aud, exp" + (", environment" if args.environment else "") + \
            (", scopes" if args.scope else "") + (", active (introspection)" if args.introspect else "")
        _say(f"grantbot verify: valid ({checked}): {verified.subject}, scope {' '.join(sorted(verified.scopes))}, "
             f"expires {verified.expires_at.isoformat()}")
        return ExitCode.APPROVED

    return _run(args, work)
