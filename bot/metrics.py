"""Prometheus metrics (prometheus-client), one registry per application so several apps can live in a process.

Counters count what this process did (sum them over replicas). Gauges describe the shared database, read at
scrape time, so every replica reports the same values (take ``max`` over replicas, not ``sum``).
"""

from __future__ import annotations

import logging
from datetime import datetime

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from bot.domain.models import AccessRequest, Backlog, Grant

log = logging.getLogger(__name__)


class Metrics:
    """What grantbot counts and measures; ``render()`` is the text exposition format served at ``/metrics``."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        # (metric, label values) -> its child: prometheus_client's ``labels()`` checks and converts the values on
        # every call (1.5 µs, more under load), paid on every HTTP request; the children are kept for the
        # process's life either way, so this adds no series.
        self._children: dict[tuple[object, tuple[str, ...]], object] = {}
        self.access_requests = Counter(
            "grantbot_access_requests",
            "Access requests received (an Idempotency-Key replay is not counted again), by the status the policy "
            "gave them: approved (auto-approved), pending (sent to people) or denied",
            ["status"], registry=self.registry,
        )
        self.grants_expired = Counter("grantbot_grants_expired", "Grants ended by expiry", registry=self.registry)
        self.requests_timed_out = Counter(
            "grantbot_pending_requests_timed_out", "Pending requests nobody decided in time", registry=self.registry
        )
        self.introspections = Counter(
            "grantbot_introspections", "Introspection answers, by activity", ["active"], registry=self.registry
        )
        self.slack_messages = Counter(
            "grantbot_slack_messages", "Outbox items handled, by result", ["result"], registry=self.registry
        )
        self.http_request_duration = Histogram(
            "grantbot_http_request_duration_seconds",
            "HTTP requests served, by method, route pattern and status, and how long each took",
            ["method", "route", "status"], registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0),
        )
        self.auth_failures = Counter(
            "grantbot_auth_failures",
            "Callers refused authentication, by scheme (hmac, oidc, basic for introspection clients) and reason "
            "(unsigned, bad_signature, unknown_identity, stale_timestamp, replay, bad_nonce, expired, unknown_key, "
            "untrusted_issuer, wrong_audience, identity_too_long, malformed, bad_client, invalid)",
            ["scheme", "reason"], registry=self.registry,
        )
        self.decisions = Counter(
            "grantbot_decisions",
            "Access requests decided, by deciding rule (\"default\" when none matched), decision (approved, "
            "denied, expired: nobody decided in time) and who decided (policy, people, timeout)",
            ["rule", "decision", "by"], registry=self.registry,
        )
        self.decision_seconds = Histogram(
            "grantbot_decision_seconds",
            "Seconds from an access request to its decision by people (or its timeout)",
            ["decision"], registry=self.registry,
            buckets=(5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 14400, 86400),
        )
        self.sweep_duration = Histogram(
            "grantbot_sweep_duration_seconds", "How long each expiry sweep of this process took",
            registry=self.registry, buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
        )
        self.sweep_lag = Gauge(
            "grantbot_sweep_lag_seconds",
            "Seconds the longest-overdue grant has stayed active past its expires_at (0 when none): alert when it "
            "grows beyond a few seconds, the sweep is falling behind or failing",
            registry=self.registry,
        )
        self.grants_issued = Counter("grantbot_grants_issued", "Grants issued (automatically or by people)",
                                     registry=self.registry)
        self.grants_revoked = Counter("grantbot_grants_revoked", "Grants ended early, by any path",
                                      registry=self.registry)
        self.provider_operations = Counter(
            "grantbot_provider_operations",
            "Operations of credential providers, by kind (postgresql, mysql, …), operation (create, issue, revoke, "
            "verify_revoked, accounts) and result (ok, error)",
            ["kind", "operation", "result"], registry=self.registry,
        )
        self.provider_seconds = Histogram(
            "grantbot_provider_operation_seconds", "How long credential providers' operations took",
            ["kind", "operation"], registry=self.registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
        )
        self.database_up = Gauge(
            "grantbot_database_up", "1 if the database answered this scrape's reads, else 0", registry=self.registry
        )
        self.pending_requests = Gauge(
            "grantbot_pending_requests", "Access requests waiting for people's decision", registry=self.registry
        )
        self.active_grants = Gauge("grantbot_active_grants", "Grants active now", registry=self.registry)
        self.outbox_unsent = Gauge(
            "grantbot_outbox_unsent", "Slack messages queued and not yet sent", registry=self.registry
        )
        self.outbox_oldest_age = Gauge(
            "grantbot_outbox_oldest_unsent_age_seconds",
            "Seconds the oldest unsent Slack message has waited (0 when none): alert on it, e.g. above 300, to "
            "learn that Slack keeps refusing or failing a message",
            registry=self.registry,
        )

        self.revocations = Counter(
            "grantbot_revocations", "Credential revocation attempts this process finished, by result: verified, "
            "retried (will be tried again) or failed (no more retries)", ["result"], registry=self.registry,
        )
        self.revocations_pending = Gauge(
            "grantbot_revocations_pending", "Credential revocations queued or waiting for a retry",
            registry=self.registry,
        )
        self.revocations_failed = Gauge(
            "grantbot_revocations_failed",
            "Credential revocations that failed every retry: accounts that may still work. Alert on > 0; "
            "`grantbot credentials reconcile` retries them",
            registry=self.registry,
        )

    def child(self, metric, *values: str):
        """``metric.labels(*values)`` (values in the order of its label names), from a cache."""
        key = (metric, values)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*values)
        return found

    def http_request(self, method: str, route: str, status: int, seconds: float) -> None:
        """An HTTP request served: ``route`` is the matched pattern (``bot.web.observability.route_of``)."""
        self.child(self.http_request_duration, method, route, str(status)).observe(seconds)

    # -- the domain's Observer port (bot.domain.ports.Observer) ----------------------------------------------------

    def request_decided(self, request: AccessRequest, by: str) -> None:
        self.child(self.decisions, request.rule or "default", request.status.value, by).inc()
        if by != "policy" and request.decided_at is not None:
            self.decision_seconds.labels(decision=request.status.value).observe(
                max((request.decided_at - request.created_at).total_seconds(), 0.0))

    def grant_issued(self, grant: Grant) -> None:
        self.grants_issued.inc()

    def grant_revoked(self, grant: Grant) -> None:
        self.grants_revoked.inc()

    def provider_operation(self, kind: str, operation: str, result: str, seconds: float) -> None:
        """A credential provider's operation (``bot.providers.pool``): ``result`` is ``ok`` or ``error``."""
        self.provider_operations.labels(kind=kind, operation=operation, result=result).inc()
        self.provider_seconds.labels(kind=kind, operation=operation).observe(seconds)

    def observe_sweep(self, seconds: float) -> None:
        self.sweep_duration.observe(seconds)

    def observe_backlog(self, backlog: Backlog | None, now: datetime) -> None:
        """Set the database gauges from ``backlog``, or mark the database down (``None``) keeping the last values."""
        if backlog is None:
            self.database_up.set(0)
            return
        self.database_up.set(1)
        self.pending_requests.set(backlog.pending_requests)
        self.active_grants.set(backlog.active_grants)
        self.outbox_unsent.set(backlog.outbox_unsent)
        self.revocations_pending.set(backlog.revocations_pending)
        self.revocations_failed.set(backlog.revocations_failed)
        oldest = backlog.outbox_oldest
        self.outbox_oldest_age.set(max((now - oldest).total_seconds(), 0.0) if oldest else 0.0)
        overdue = backlog.oldest_overdue_grant
        self.sweep_lag.set(max((now - overdue).total_seconds(), 0.0) if overdue else 0.0)

    def render(self) -> bytes:
        return generate_latest(self.registry)
