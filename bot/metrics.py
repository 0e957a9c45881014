"""Prometheus metrics (prometheus-client), one registry per application so several apps can live in a process."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, generate_latest


class Metrics:
    """The counters grantbot keeps; ``render()`` is the text exposition format served at ``/metrics``."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.access_requests = Counter(
            "grantbot_access_requests", "Access requests answered, by outcome", ["status"], registry=self.registry
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

    def render(self) -> bytes:
        return generate_latest(self.registry)
