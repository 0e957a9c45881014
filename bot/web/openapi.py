"""``GET /openapi.json``: the OpenAPI 3.1 document of grantbot's HTTP API (DESIGN.md HTTP contract)."""

from __future__ import annotations

from aiohttp import web

from bot.web.access_requests import AccessRequestBody

routes = web.RouteTableDef()

_ERROR = {"$ref": "#/components/schemas/Error"}
# Either scheme (OpenAPI: alternatives are separate entries of the list).
_HMAC = [{"hmacIdentity": [], "hmacTimestamp": [], "hmacSignature": []}, {"ciOidc": []}]


def _json(schema: dict, description: str) -> dict:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*statuses: int) -> dict:
    meaning = {400: "bad input", 401: "not authenticated", 403: "denied", 404: "not found", 413: "body over 64 KiB",
               409: "the grant ended, or its token was not handed over yet",
               422: "bad input: the detail says what to change",
               503: "database or a credential provider unavailable; see Retry-After"}
    return {str(s): _json(_ERROR, meaning[s]) for s in statuses}


def document() -> dict:
    """The OpenAPI 3.1 document; the request body schema is the pydantic model the route validates with."""
    grant = {
        "type": "object",
        "required": ["id", "status", "token_type", "scope", "expires_at", "expires_in"],
        "properties": {
            "id": {"type": "string"}, "status": {"enum": ["active", "expired", "revoked"]},
            "access_token": {"type": "string", "description": "RFC 9068 JWT; present only the first time"},
            "token_type": {"const": "Bearer"}, "scope": {"type": "string"}, "audience": {"type": "string"},
            "environment": {"type": "string", "description": "the token's environment claim"},
            "issued_at": {"type": "string", "format": "date-time"},
            "expires_at": {"type": "string", "format": "date-time"}, "expires_in": {"type": "integer"},
            "credentials": {
                "type": "array", "description": "real credentials (the rule's credentials:); present only the first "
                "time, with the token; fields by kind",
                "items": {"type": "object", "required": ["provider", "kind", "expires_at"], "properties": {
                    "provider": {"type": "string"}, "kind": {"type": "string"}, "username": {"type": "string"},
                    "password": {"type": "string"}, "host": {"type": "string"}, "port": {"type": "integer"},
                    "database": {"type": "string"}, "dsn": {"type": "string"},
                    "expires_at": {"type": "string", "format": "date-time"}}},
            },
            "revocation": {
                "type": "object", "description": "once the grant ended, how the removal of its credentials stands",
                "required": ["status", "detail"], "properties": {
                    "status": {"enum": ["pending", "verified", "failed"]}, "detail": {"type": "string"}},
            },
        },
    }
    request_view = {
        "type": "object",
        "required": ["id", "status"],
        "properties": {
            "id": {"type": "string"},
            "status": {"enum": ["pending", "approved", "denied", "expired", "cancelled"]},
            "expires_at": {"type": "string", "format": "date-time", "description": "pending deadline"},
            "decided_by": {"type": ["string", "null"]}, "grant": {"$ref": "#/components/schemas/Grant"},
            "denial_reason": {"type": "string", "description": "why the approver who denied it did (Slack)"},
            "hint": {"type": "string", "description": "how to recover a token an earlier answer handed over "
                                                      "(POST /v1/grants/{id}/reissue)"},
        },
    }
    form = {"application/x-www-form-urlencoded": {"schema": {"type": "object", "required": ["token"],
                                                              "properties": {"token": {"type": "string"}}}}}
    return {
        "openapi": "3.1.0",
        "info": {"title": "grantbot", "version": "0.1.0",
                 "description": "Just-in-time, scoped, expiring access for machines."},
        "paths": {
            "/v1/access-requests": {"post": {
                "summary": "Ask for access", "security": _HMAC,
                "parameters": [{"name": "Idempotency-Key", "in": "header", "schema": {"type": "string", "maxLength": 255}}],
                "requestBody": {"required": True, "content": {"application/json": {
                    "schema": {"$ref": "#/components/schemas/AccessRequest"}}}},
                "responses": {"201": _json({"$ref": "#/components/schemas/RequestView"}, "approved, with the token"),
                              "202": _json({"$ref": "#/components/schemas/RequestView"}, "pending approval"),
                              **_errors(401, 403, 413, 422, 503)},
            }},
            "/v1/access-requests/{id}": {"get": {
                "summary": "Read a request, long-polling for its decision", "security": _HMAC,
                "parameters": [{"name": "id", "in": "path", "required": True, "schema": {"type": "string"}},
                               {"name": "wait", "in": "query", "schema": {"type": "number", "minimum": 0, "maximum": 60}}],
                "responses": {"200": _json({"$ref": "#/components/schemas/RequestView"}, "the request"),
                              **_errors(401, 404, 422, 503)},
            }},
            "/v1/access-requests/{id}/cancel": {"post": {
                "summary": "Withdraw one's own pending request (idempotent; a decided one is returned as it is)",
                "security": _HMAC,
                "parameters": [{"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}],
                "responses": {"200": _json({"$ref": "#/components/schemas/RequestView"}, "the request, never a token"),
                              **_errors(401, 404, 503)},
            }},
            "/v1/grants/{id}/revoke": {"post": {
                "summary": "End one's own grant early (idempotent)", "security": _HMAC,
                "parameters": [{"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}],
                "responses": {"200": _json({"type": "object"}, "the grant's status"), **_errors(401, 404, 503)},
            }},
            "/v1/grants/{id}/reissue": {"post": {
                "summary": "A new token for one's own active grant (the old one stops working); same expiry",
                "security": _HMAC,
                "parameters": [{"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}],
                "responses": {"200": _json({"allOf": [{"$ref": "#/components/schemas/Grant"}, {
                    "type": "object", "required": ["access_token", "request_id"],
                    "properties": {"request_id": {"type": "string"}}}]}, "the grant with its new token"),
                    **_errors(401, 404, 409, 503)},
            }},
            "/oauth/introspect": {"post": {
                "summary": "RFC 7662 token introspection", "security": [{"basic": []}],
                "requestBody": {"required": True, "content": form},
                "responses": {"200": _json({"type": "object", "required": ["active"]}, "active or not"),
                              **_errors(400, 401)},
            }},
            "/oauth/revoke": {"post": {
                "summary": "RFC 7009 token revocation", "security": [{"basic": []}],
                "requestBody": {"required": True, "content": form},
                "responses": {"200": {"description": "revoked, or nothing to revoke"}, **_errors(400, 401)},
            }},
            "/.well-known/jwks.json": {"get": {"summary": "Public signing keys (RFC 7517)",
                                               "responses": {"200": _json({"type": "object"}, "JWKS")}}},
            "/.well-known/oauth-authorization-server": {"get": {
                "summary": "RFC 8414 metadata", "responses": {"200": _json({"type": "object"}, "metadata")}}},
            "/ssh/{provider}/ca.pub": {"get": {
                "summary": "An ssh provider's certificate authority public key, for sshd's TrustedUserCAKeys",
                "parameters": [{"name": "provider", "in": "path", "required": True, "schema": {"type": "string"}}],
                "responses": {"200": {"description": "one OpenSSH public key line",
                                      "content": {"text/plain": {"schema": {"type": "string"}}}},
                              **_errors(404)}}},
            "/ssh/{provider}/krl": {"get": {
                "summary": "An ssh provider's key revocation list (OpenSSH KRL, binary), for sshd's RevokedKeys",
                "parameters": [{"name": "provider", "in": "path", "required": True, "schema": {"type": "string"}}],
                "responses": {"200": {"description": "the certificates of grants ended early, by serial",
                                      "content": {"application/octet-stream": {
                                          "schema": {"type": "string", "format": "binary"}}}},
                              **_errors(404, 503)}}},
            "/healthz": {"get": {"summary": "Liveness", "responses": {"200": {"description": "alive"}}}},
            "/readyz": {"get": {"summary": "Readiness (the database answers)",
                                "responses": {"200": {"description": "ready"}, "503": {"description": "not ready"}}}},
            "/metrics": {"get": {"summary": "Prometheus metrics", "responses": {"200": {"description": "metrics"}}}},
            "/openapi.json": {"get": {"summary": "This document", "responses": {"200": {"description": "OpenAPI"}}}},
            "/slack/events": {"post": {"summary": "Slack interactivity (signed by Slack)",
                                       "responses": {"200": {"description": "acknowledged"},
                                                     **_errors(400, 401)}}},
        },
        "components": {
            "schemas": {
                "AccessRequest": AccessRequestBody.model_json_schema(),
                "RequestView": request_view,
                "Grant": grant,
                "Error": {"type": "object", "required": ["error", "detail"],
                          "properties": {"error": {"type": "string"}, "detail": {"type": "string"}}},
            },
            "securitySchemes": {
                "hmacIdentity": {"type": "apiKey", "in": "header", "name": "X-Grantbot-Identity"},
                "hmacTimestamp": {"type": "apiKey", "in": "header", "name": "X-Grantbot-Timestamp"},
                "hmacSignature": {"type": "apiKey", "in": "header", "name": "X-Grantbot-Signature",
                                  "description": 'v1=hex HMAC-SHA256(secret, "v1:{timestamp}:{METHOD}:{path and query}:{body}"); '
                                                 'with the optional header X-Grantbot-Nonce (16-64 of [A-Za-z0-9_-]) '
                                                 'the signed string is "v1:{timestamp}:{nonce}:{METHOD}:{path and '
                                                 'query}:{body}"'},
                "ciOidc": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT",
                           "description": "a CI OIDC identity token from an issuer listed in the policy file; "
                                          "used up by POST /v1/access-requests"},
                "basic": {"type": "http", "scheme": "basic"},
            },
        },
    }


@routes.get("/openapi.json")
async def openapi(_: web.Request) -> web.Response:
    return web.json_response(document())
