"""The dependencies every use case receives, wired once at the composition root (``bot.app``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from bot.domain.policy import Policy
from bot.domain.ports import (
    ApproverDirectory, Changes, Clock, CredentialProviders, NoObserver, Observer, RefusalLog, Store, TokenMinter,
)


@dataclass
class Deps:
    store: Store
    tokens: TokenMinter
    clock: Clock
    changes: Changes
    policy: Policy
    issuer: str  # the ``iss`` of issued tokens, also the audience of last resort
    default_channel: str | None = None  # GRANTBOT_SLACK_CHANNEL; wins over the policy's defaults.channel
    directory: ApproverDirectory | None = None  # Slack user groups; None (no Slack): groups have no members
    refusals: RefusalLog | None = None  # refused clicks and commands, audited; None: not recorded
    credentials: CredentialProviders | None = None  # real credentials (bot.providers); None: rules may not use any
    observer: Observer = field(default_factory=NoObserver)  # metrics of decisions and grants
