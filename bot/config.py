"""Settings, read once from the environment (and ``.env``) at start and passed down (DESIGN.md "Settings")."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


def bundled_policy() -> Path:
    """The example policy shipped with grantbot (used when no ``policy.yaml`` is found)."""
    return Path(str(resources.files("bot") / "examples" / "policy.yaml"))


def _env(*names: str):
    return AliasChoices(*names)


class Settings(BaseSettings):
    """Every setting grantbot reads; names are the environment variables of DESIGN.md."""

    model_config = SettingsConfigDict(env_file=".env", extra="ignore", populate_by_name=True)

    database_url: str = Field(
        "sqlite+aiosqlite:///grantbot.db", validation_alias=_env("GRANTBOT_DATABASE_URL", "DATABASE_URL")
    )
    policy_file: Path | None = Field(None, validation_alias=_env("GRANTBOT_POLICY_FILE"))
    host: str = Field("127.0.0.1", validation_alias=_env("GRANTBOT_HOST"))
    port: int = Field(8080, ge=0, le=65535, validation_alias=_env("PORT", "GRANTBOT_PORT"))
    issuer: str | None = Field(None, validation_alias=_env("GRANTBOT_ISSUER"))
    signing_key_file: Path = Field(Path("grantbot-signing-key.pem"), validation_alias=_env("GRANTBOT_SIGNING_KEY_FILE"))
    # Key rotation: retired keys (PEM, private or public), comma-separated. Their public halves stay in the JWKS
    # and tokens they signed still verify (introspection, revocation) until those tokens expire; nothing new is
    # signed with them.
    previous_signing_key_files: str = Field("", validation_alias=_env("GRANTBOT_PREVIOUS_SIGNING_KEY_FILES"))
    slack_bot_token: SecretStr | None = Field(None, validation_alias=_env("SLACK_BOT_TOKEN"))
    slack_signing_secret: SecretStr | None = Field(None, validation_alias=_env("SLACK_SIGNING_SECRET"))
    slack_app_token: SecretStr | None = Field(None, validation_alias=_env("SLACK_APP_TOKEN"))
    slack_api_url: str = Field("https://slack.com/api/", validation_alias=_env("SLACK_API_URL"))
    slack_channel: str | None = Field(None, validation_alias=_env("GRANTBOT_SLACK_CHANNEL"))
    introspection_clients: SecretStr | None = Field(None, validation_alias=_env("GRANTBOT_INTROSPECTION_CLIENTS"))
    summary_cron: str = Field("0 9 * * *", validation_alias=_env("GRANTBOT_SUMMARY_CRON"))
    timezone: str = Field("UTC", validation_alias=_env("GRANTBOT_TIMEZONE"))
    # Time limits on the database (PostgreSQL), so that one which stops answering (packets dropped, no reset)
    # costs a request a bounded wait and a 503 instead of hanging it (bot.store.engine.create_engine). Connect:
    # opening a connection, or waiting for a free one in the pool. Command: each statement, COMMIT and ROLLBACK;
    # a statement that times out waits as long again for its cancellation, so a request's worst case is about
    # twice this. A libpq ``connect_timeout`` or asyncpg ``command_timeout`` in the URL wins; migrations have none.
    database_connect_timeout_seconds: float = Field(
        5.0, gt=0, validation_alias=_env("GRANTBOT_DATABASE_CONNECT_TIMEOUT_SECONDS")
    )
    database_command_timeout_seconds: float = Field(
        5.0, gt=0, validation_alias=_env("GRANTBOT_DATABASE_COMMAND_TIMEOUT_SECONDS")
    )
    # How long GET /readyz waits for the database before answering 503 (below the readiness probe's timeoutSeconds).
    readiness_timeout_seconds: float = Field(2.0, gt=0, validation_alias=_env("GRANTBOT_READINESS_TIMEOUT_SECONDS"))
    sweep_interval_seconds: float = Field(1.0, gt=0, validation_alias=_env("GRANTBOT_SWEEP_INTERVAL_SECONDS"))
    # A connection whose request line and headers are not complete this long after it opened is closed (slowloris).
    header_timeout_seconds: float = Field(10.0, gt=0, validation_alias=_env("GRANTBOT_HEADER_TIMEOUT_SECONDS"))
    # Slack writes (posts, updates, thread replies) per channel per second, per process (Slack: ~1/s per channel).
    slack_posts_per_second: float = Field(1.0, gt=0, validation_alias=_env("GRANTBOT_SLACK_POSTS_PER_SECOND"))
    log_level: str = Field("INFO", validation_alias=_env("GRANTBOT_LOG_LEVEL"))
    # json or text; None: json unless standard error is a terminal (bot.logs.log_format)
    log_format: Literal["json", "text"] | None = Field(None, validation_alias=_env("GRANTBOT_LOG_FORMAT"))
    policy_watch_seconds: float = Field(2.0, ge=0, validation_alias=_env("GRANTBOT_POLICY_WATCH_SECONDS"))
    # Real credentials: seconds before each retry of a revocation that failed (then it is marked failed: an alert,
    # the grantbot_revocations_failed gauge), and how often every provider's accounts are reconciled.
    revocation_retry_seconds: str = Field("5,15,30,60,120,300,600,900,1200",
                                          validation_alias=_env("GRANTBOT_REVOCATION_RETRY_SECONDS"))
    reconcile_interval_seconds: float = Field(300.0, gt=0, validation_alias=_env("GRANTBOT_RECONCILE_INTERVAL_SECONDS"))
    # Testing aid: a file holding seconds to add to the wall clock, so tests of a real process move time.
    clock_offset_file: Path | None = Field(None, validation_alias=_env("GRANTBOT_CLOCK_OFFSET_FILE"))

    @classmethod
    def variables_of(cls, loc: tuple) -> str:
        """The environment variable(s) behind a validation error's ``loc`` ("PORT or GRANTBOT_PORT"): pydantic
        names a setting by its first alias, which need not be the one that was set."""
        field = cls.model_fields.get(str(loc[0])) if loc else None
        if field is None:  # pydantic gives the alias, not the field name
            field = next((f for f in cls.model_fields.values() if isinstance(f.validation_alias, AliasChoices)
                          and loc and loc[0] in f.validation_alias.choices), None)
        if field is None or not isinstance(field.validation_alias, AliasChoices):
            return ".".join(map(str, loc))
        return " or ".join(str(choice) for choice in field.validation_alias.choices)

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, value: str) -> str:
        level = value.strip().upper()
        if level not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
            raise ValueError(f"{value!r} is not a log level; use DEBUG, INFO, WARNING, ERROR or CRITICAL")
        return level

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        from bot.domain.zones import check_zone

        return check_zone(value)

    @field_validator("summary_cron")
    @classmethod
    def _crontab(cls, value: str) -> str:
        from apscheduler.triggers.cron import CronTrigger

        if value.strip().lower() in ("", "off"):
            return "off"
        try:
            CronTrigger.from_crontab(value, timezone="UTC")
        except ValueError as exc:
            raise ValueError(f"not a crontab expression ({exc}); e.g. '0 9 * * *' is 09:00 every day") from None
        return value

    @field_validator("revocation_retry_seconds")
    @classmethod
    def _retry_list(cls, value: str) -> str:
        try:
            delays = [float(part) for part in value.split(",") if part.strip()]
        except ValueError:
            delays = []
        if not delays or any(not 0 < d <= 86400 for d in delays):
            raise ValueError("a comma-separated list of seconds, each above 0, e.g. '5,15,30,60'")
        return value

    @property
    def revocation_retries(self) -> tuple[float, ...]:
        """``GRANTBOT_REVOCATION_RETRY_SECONDS`` as seconds: the wait before each retry."""
        return tuple(float(part) for part in self.revocation_retry_seconds.split(",") if part.strip())

    @field_validator("slack_api_url")
    @classmethod
    def _trailing_slash(cls, value: str) -> str:
        return value if value.endswith("/") else value + "/"

    @property
    def previous_signing_keys(self) -> list[Path]:
        return [Path(part.strip()) for part in self.previous_signing_key_files.split(",") if part.strip()]

    @property
    def issuer_url(self) -> str:
        return self.issuer or f"http://{self.host}:{self.port}"

    @property
    def policy_path(self) -> Path:
        """``GRANTBOT_POLICY_FILE``, else ``policy.yaml`` in the working folder. There is no fallback to the bundled
        example (which names example approvers and admins): a missing file stops `grantbot serve`, naming it;
        `grantbot dev` passes the example explicitly."""
        return self.policy_file if self.policy_file is not None else Path("policy.yaml")

    @property
    def slack_enabled(self) -> bool:
        """A bot token, and a way for Slack to reach us: a signing secret (HTTP) or an app token (Socket Mode)."""
        return self.slack_bot_token is not None and (
            self.slack_signing_secret is not None or self.slack_app_token is not None
        )

    def introspection_credentials(self) -> dict[str, str]:
        """``GRANTBOT_INTROSPECTION_CLIENTS`` (``id:secret,id:secret``) as a map; raises ValueError when malformed."""
        raw = self.introspection_clients.get_secret_value() if self.introspection_clients else ""
        clients: dict[str, str] = {}
        for pair in filter(None, (p.strip() for p in raw.split(","))):
            client_id, sep, secret = pair.partition(":")
            if not sep or not client_id or not secret:
                raise ValueError("GRANTBOT_INTROSPECTION_CLIENTS must look like id:secret,id:secret")
            clients[client_id] = secret
        return clients
