"""``/v1/*`` routes: create and read access requests, revoke one's own grant or have its token re-issued
(DESIGN.md HTTP contract)."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Annotated

from aiohttp import web
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints, ValidationError, field_validator

from bot.domain import usecases
from bot.domain.errors import CiTokenAlreadyUsed, DatabaseUnavailable, InvalidRequest, NotFound, SignatureReplayed
from bot.domain.ids import is_uuid
from bot.domain.models import AccessRequestInput, Caller, Grant, GrantStatus, RequestStatus
from bot.providers.ssh import MAX_PUBLIC_KEY, check_public_key
from bot.web.keys import AUTH, CALLER_IDENTITY, DEPS, METRICS

routes = web.RouteTableDef()

def _no_nul(value: str) -> str:
    if "\x00" in value:
        raise ValueError("must not contain the NUL character (\\u0000)")
    return value


def _text(min_length: int = 0, max_length: int = 255):
    return Annotated[str, StringConstraints(min_length=min_length, max_length=max_length), AfterValidator(_no_nul)]


Text = _text(1)
MAX_IDEMPOTENCY_KEY = 255
# Beyond any sane TTL, and within a 32-bit integer column on every database; the policy's cap is checked later.
MAX_TTL_SECONDS = 2**31 - 1


class AccessRequestBody(BaseModel):
    """``POST /v1/access-requests`` body; unknown fields are refused."""

    model_config = ConfigDict(extra="forbid", strict=True)

    environment: Text
    scopes: list[Text] = Field(max_length=50)
    ttl_seconds: Annotated[int, Field(le=MAX_TTL_SECONDS)] | None = None
    reason: _text(0, 2000) | None = None
    audience: _text(1, 1024) | None = None
    context: dict[Text, _text(0, 2000)] = Field(default_factory=dict, max_length=20)
    ssh_public_key: _text(1, MAX_PUBLIC_KEY) | None = None

    @field_validator("ssh_public_key")
    @classmethod
    def _ssh_public_key(cls, value: str | None) -> str | None:
        return check_public_key(value) if value is not None else None


_JSON_TYPES = {str: "a string", int: "a number", float: "a number", bool: "true or false", list: "a list",
               dict: "an object", type(None): "null"}


def _explain(exc: ValidationError) -> str:
    """pydantic's errors as sentences; a wrong JSON type names what was sent (``"600"``, a string, for a number:
    the body model is strict, so nothing is coerced)."""
    sentences = []
    for error in exc.errors()[:5]:
        where = ".".join(str(p) for p in error["loc"]) or "body"
        message = "is not a field of an access request" if error["type"] == "extra_forbidden" else error["msg"]
        if error["type"].endswith("_type") and type(error.get("input")) in _JSON_TYPES:
            sent = json.dumps(error["input"])
            message += f", not {_JSON_TYPES[type(error['input'])]} ({sent if len(sent) <= 40 else sent[:37] + '...'})"
        sentences.append(f"{where}: {message}")
    return "; ".join(sentences) + "."


async def authenticate(request: web.Request, body: bytes, *, single_use: bool = False,
                       defer_replay_check: bool = False) -> Caller:
    """The caller of a ``/v1`` route (HMAC or a CI OIDC bearer token; see ``bot.identity.callers``).

    ``single_use``: a bearer token is used up by this request; only creating an access request does that, so a
    pipeline can long-poll and revoke with the token it created its request with (``bot.identity.oidc``).
    ``defer_replay_check``: an HMAC signature's replay record is left to the route (``Caller.signature``).
    """
    caller = await request.app[AUTH].authenticate(
        request.headers, request.method, request.raw_path, body, single_use=single_use,
        defer_replay_check=defer_replay_check,
    )
    request[CALLER_IDENTITY] = caller.identity
    return caller


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat().replace("+00:00", "Z") if moment else None


def grant_json(grant: Grant, now: datetime, token: str | None, credentials=(), revocation=None) -> dict:
    """The API's grant (DESIGN.md HTTP contract): the token and ``credentials`` only on the hand-over, and once
    the grant ended with credentials, ``revocation`` ``{"status", "detail"}``; ``expires_in`` in seconds, 0 once
    the grant has ended."""
    body = {
        "id": grant.id,
        "status": grant.status.value,
        "token_type": "Bearer",
        "scope": " ".join(grant.scopes),
        "audience": grant.audience,
        "environment": grant.environment,
        "issued_at": _iso(grant.issued_at),
        "expires_at": _iso(grant.expires_at),
        # RFC 6749 §5.1's lifetime: what is left of the token's, so none once the grant has ended (a revoked
        # grant's expires_at is still its planned end).
        "expires_in": max(0, int((grant.expires_at - now).total_seconds())) if grant.status is GrantStatus.ACTIVE
        else 0,
    }
    if token is not None:
        body["access_token"] = token
    if credentials:
        body["credentials"] = [credential.as_json() for credential in credentials]
    if revocation is not None:
        body["revocation"] = revocation.as_json()
    return body


def view_json(view: usecases.RequestView, now: datetime) -> dict:
    req = view.request
    body: dict = {
        "id": req.id,
        "status": req.status.value,
        "identity": req.identity,
        "environment": req.environment,
        "scopes": list(req.scopes),
        "ttl_seconds": req.ttl_seconds,
        "rule": req.rule,
        "decision_reason": req.decision_reason,  # why the policy decided so (all reasons: on the card and audit)
        "created_at": _iso(req.created_at),
    }
    if req.status is RequestStatus.PENDING:
        body["expires_at"] = _iso(req.expires_at)
    else:
        body["decided_by"] = req.decided_by
        body["decided_at"] = _iso(req.decided_at)
        if req.denial_reason is not None:  # the approver's words from the deny modal
            body["denial_reason"] = req.denial_reason
    if view.grant is not None:
        body["grant"] = grant_json(view.grant, now, view.access_token, view.credentials, view.revocation)
        if (view.access_token is None and view.grant.delivered_at is not None
                and view.grant.status is GrantStatus.ACTIVE and view.grant.expires_at > now):
            # The token went out with an earlier answer (e.g. the first try of an Idempotency-Key retry).
            body["hint"] = _reissue_hint(view.grant)
    return body


def _reissue_hint(grant: Grant) -> str:
    """How the holder of ``grant`` gets a token again when the answer that carried it was lost."""
    return (f"The token of grant {grant.id} was handed over in an earlier answer; if it was lost, "
            f"POST /v1/grants/{grant.id}/reissue for a new one (the lost one then stops working).")


@routes.post("/v1/access-requests")
async def create_access_request(request: web.Request) -> web.Response:
    raw = await request.read()
    try:
        # An HMAC signature's replay record is written with the request's rows (one transaction, not two).
        caller, used_token = await authenticate(request, raw, single_use=True, defer_replay_check=True), None
    except CiTokenAlreadyUsed as exc:
        if not request.headers.get("Idempotency-Key"):
            raise
        caller, used_token = exc.caller, exc  # may still replay the request this token created (below)
        request[CALLER_IDENTITY] = caller.identity
    try:
        return await _create(request, raw, caller, used_token)
    except Exception as exc:
        if not isinstance(exc, DatabaseUnavailable | SignatureReplayed):
            try:  # a refused body uses its signature up too; a replay of it is refused as a replay
                await usecases.record_signature(request.app[DEPS], caller)
            except SignatureReplayed as replay:
                exc = replay
        if isinstance(exc, SignatureReplayed):
            await request.app[AUTH].refused(exc, "hmac")
            raise exc from None
        raise


async def _create(request: web.Request, raw: bytes, caller: Caller, used_token: CiTokenAlreadyUsed | None
                  ) -> web.Response:
    try:
        data = json.loads(raw or b"null")
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, bad UTF-8, 4300-digit numbers, deep nesting
        reason = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)[:200]
        raise InvalidRequest(f"The body is not valid JSON ({reason}); send an object like {{\"environment\": ...}}.") from None
    if not isinstance(data, dict):
        raise InvalidRequest('The body must be a JSON object, e.g. {"environment": "staging", "scopes": ["db:read"]}.')
    try:
        body = AccessRequestBody.model_validate(data)
    except ValidationError as exc:
        raise InvalidRequest(_explain(exc)) from None
    idempotency_key = request.headers.get("Idempotency-Key") or None
    if idempotency_key is not None and not (
        len(idempotency_key) <= MAX_IDEMPOTENCY_KEY and idempotency_key.isascii() and idempotency_key.isprintable()
    ):
        raise InvalidRequest(
            f"The Idempotency-Key header must be at most {MAX_IDEMPOTENCY_KEY} printable ASCII characters (a UUID fits)."
        )
    deps = request.app[DEPS]
    view = await usecases.request_access(
        deps,
        caller,
        AccessRequestInput(
            environment=body.environment,
            scopes=tuple(body.scopes),
            ttl_seconds=body.ttl_seconds,
            reason=body.reason,
            audience=body.audience,
            context=body.context,
            ssh_public_key=body.ssh_public_key,
        ),
        idempotency_key=idempotency_key,
        refuse_unless_replay=used_token,
    )
    payload = view_json(view, deps.clock.now())
    status = view.request.status
    if not view.replayed:
        metrics = request.app[METRICS]
        metrics.child(metrics.access_requests, status.value).inc()
    if status is RequestStatus.DENIED:
        return web.json_response(
            {"error": "denied", "detail": f"The policy denies this request: {view.request.decision_reason}.", **payload},
            status=403,
        )
    code = {RequestStatus.APPROVED: 201, RequestStatus.PENDING: 202}.get(status, 200)
    return web.json_response(payload, status=code, headers={"Location": f"/v1/access-requests/{view.request.id}"})


def _resource_id(request: web.Request, what: str) -> str:
    """The ``{id}`` of the path; ids are UUIDs, so anything else is simply not found."""
    value = request.match_info["id"]
    if not is_uuid(value):
        raise NotFound(f"There is no {what} {value[:64]!r}.")
    return value


@routes.get("/v1/access-requests/{id}")
async def get_access_request(request: web.Request) -> web.Response:
    caller = await authenticate(request, await request.read())
    request_id = _resource_id(request, "access request")
    raw_wait = request.query.get("wait", "0")
    try:
        wait = float(raw_wait)
    except ValueError:
        raise InvalidRequest(f"wait must be a number of seconds (0 to 60), not {raw_wait!r}.") from None
    if not 0 <= wait <= 60:
        raise InvalidRequest("wait must be between 0 and 60 seconds.")
    deps = request.app[DEPS]
    view = await usecases.read_request(deps, caller, request_id, wait)
    return web.json_response(view_json(view, deps.clock.now()))


@routes.post("/v1/access-requests/{id}/cancel")
async def cancel_access_request(request: web.Request) -> web.Response:
    """Withdraw one's own pending request: 200 with the request as it now stands (``cancelled``, or what it was
    decided meanwhile; never a token)."""
    caller = await authenticate(request, await request.read())
    deps = request.app[DEPS]
    view = await usecases.cancel_request(deps, caller, _resource_id(request, "access request"))
    return web.json_response(view_json(view, deps.clock.now()))


@routes.post("/v1/grants/{id}/revoke")
async def revoke_grant(request: web.Request) -> web.Response:
    caller = await authenticate(request, await request.read())
    deps = request.app[DEPS]
    grant = await usecases.revoke_own_grant(deps, caller, _resource_id(request, "grant"))
    return web.json_response({"id": grant.id, "status": grant.status.value, "ended_at": _iso(grant.ended_at)})


@routes.post("/v1/grants/{id}/reissue")
async def reissue_token(request: web.Request) -> web.Response:
    """The grant (as in a request's ``grant``) with its new ``access_token`` and its ``request_id``."""
    caller = await authenticate(request, await request.read())
    deps = request.app[DEPS]
    view = await usecases.reissue(deps, caller, _resource_id(request, "grant"))
    body = {**grant_json(view.grant, deps.clock.now(), view.access_token, view.credentials),
            "request_id": view.grant.request_id}
    return web.json_response(body, headers={"Cache-Control": "no-store"})  # RFC 6749 §5.1: a token answer
