"""Typed application state (``web.AppKey``), set by the composition root."""

from __future__ import annotations

from aiohttp import web
from slack_bolt.async_app import AsyncApp
from slack_sdk.signature import SignatureVerifier

from bot.config import Settings
from bot.domain.ports import Operations
from bot.domain.usecases import Deps
from bot.metrics import Metrics
from bot.identity.callers import CallerAuthenticator
from bot.policy_reload import PolicyReloader
from bot.tokens.access_tokens import AccessTokenIssuer

SETTINGS = web.AppKey("settings", Settings)
DEPS = web.AppKey("deps", Deps)
STORE = web.AppKey("store", Operations)  # the SQL store, as the operators' endpoints see it
AUTH = web.AppKey("caller_auth", CallerAuthenticator)
TOKENS = web.AppKey("tokens", AccessTokenIssuer)
BOLT = web.AppKey("bolt", AsyncApp)
SLACK_VERIFIER = web.AppKey("slack_verifier", SignatureVerifier)
INTROSPECTION_CLIENTS = web.AppKey("introspection_clients", dict)
METRICS = web.AppKey("metrics", Metrics)
RELOADER = web.AppKey("policy_reloader", PolicyReloader)
# Per request: the authenticated caller's identity, for the access log (bot.web.observability).
CALLER_IDENTITY = web.RequestKey("caller_identity", str)
