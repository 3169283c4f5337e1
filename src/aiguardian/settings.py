"""The one settings tree: environment (``AIG_`` prefix, a few plain names), ``.env``, optional YAML."""

from __future__ import annotations

import os
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AliasChoices, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

CONFIG_FILE_ENV = "AIG_CONFIG_FILE"


def _names(field: str, *plain: str) -> AliasChoices:
    """The environment names of a setting: ``AIG_FIELD`` and any plain legacy names. YAML files and keyword
    arguments use the field name itself (``populate_by_name``); a bare ``PORT`` or ``SECRET_KEY`` in the
    environment belongs to someone else and is ignored."""
    return AliasChoices(f"AIG_{field.upper()}", *plain)


class SettingsError(Exception):
    """Settings that cannot start the server; the message is one line naming the setting."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        populate_by_name=True,
        validate_default=True,
    )

    data_dir: Path = Field(Path("aiguardian-data"), validation_alias=_names("data_dir"))
    database_url: str | None = Field(None, validation_alias=_names("database_url", "DATABASE_URL"))
    redis_url: str | None = Field(None, validation_alias=_names("redis_url", "REDIS_URL"))

    host: str = Field("127.0.0.1", validation_alias=_names("host"))
    port: int = Field(8080, ge=1, le=65535, validation_alias=_names("port", "API_PORT"))
    workers: int = Field(1, ge=1, le=64, validation_alias=_names("workers"))
    forwarded_allow_ips: str = Field("127.0.0.1", validation_alias=_names("forwarded_allow_ips"))

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO", validation_alias=_names("log_level")
    )
    log_format: Literal["auto", "json", "console"] = Field("auto", validation_alias=_names("log_format"))

    secret_key: SecretStr | None = Field(None, validation_alias=_names("secret_key"))

    circuit_breaker_threshold: int = Field(
        5, ge=1, validation_alias=_names("circuit_breaker_threshold", "CIRCUIT_BREAKER_THRESHOLD")
    )
    circuit_breaker_reset_seconds: float = Field(
        5.0, gt=0, validation_alias=_names("circuit_breaker_reset_seconds")
    )
    db_timeout_seconds: float = Field(5.0, gt=0, validation_alias=_names("db_timeout_seconds"))
    db_pool_size: int = Field(10, ge=1, validation_alias=_names("db_pool_size"))
    db_max_overflow: int = Field(10, ge=0, validation_alias=_names("db_max_overflow"))
    sqlite_busy_timeout_ms: int = Field(5000, ge=0, validation_alias=_names("sqlite_busy_timeout_ms"))

    cache_ttl: int = Field(300, ge=1, validation_alias=_names("cache_ttl", "CACHE_TTL"))
    cache_memory_size: int = Field(10_000, ge=1, validation_alias=_names("cache_memory_size"))
    cache_local_ttl: float = Field(5.0, gt=0, validation_alias=_names("cache_local_ttl"))
    redis_timeout_seconds: float = Field(1.0, gt=0, validation_alias=_names("redis_timeout_seconds"))
    redis_retry_seconds: float = Field(2.0, gt=0, validation_alias=_names("redis_retry_seconds"))
    cache_namespace: str = Field("aig", min_length=1, validation_alias=_names("cache_namespace"))

    registration_enabled: bool = Field(True, validation_alias=_names("registration_enabled"))
    password_min_length: int = Field(12, ge=8, le=128, validation_alias=_names("password_min_length"))
    access_token_ttl_seconds: int = Field(900, ge=30, validation_alias=_names("access_token_ttl_seconds"))
    refresh_token_ttl_days: int = Field(30, ge=1, validation_alias=_names("refresh_token_ttl_days"))
    auth_cache_ttl: float = Field(60.0, gt=0, validation_alias=_names("auth_cache_ttl"))
    first_admin_email: str = Field("admin@aiguardian.local", validation_alias=_names("first_admin_email"))

    rate_limit_enabled: bool = Field(True, validation_alias=_names("rate_limit_enabled"))
    rate_limit_default: str = Field("600/minute", validation_alias=_names("rate_limit_default"))
    rate_limit_per_ip: str = Field("1200/minute", validation_alias=_names("rate_limit_per_ip"))
    login_rate_limit_per_ip: str = Field("30/minute", validation_alias=_names("login_rate_limit_per_ip"))
    login_rate_limit_per_account: str = Field(
        "10/minute", validation_alias=_names("login_rate_limit_per_account")
    )

    deployments: list[dict[str, Any]] = Field(
        default_factory=list, validation_alias=_names("deployments"), description="See README: Gateway."
    )
    fallbacks: dict[str, list[str]] = Field(default_factory=dict, validation_alias=_names("fallbacks"))
    demo_model_enabled: bool = Field(True, validation_alias=_names("demo_model_enabled"))
    gateway_max_retries: int = Field(2, ge=0, le=10, validation_alias=_names("gateway_max_retries"))
    gateway_retry_backoff_seconds: float = Field(
        0.2, ge=0, le=30, validation_alias=_names("gateway_retry_backoff_seconds")
    )
    gateway_cache_scope: Literal["user", "global"] = Field(
        "user",
        validation_alias=_names("gateway_cache_scope"),
        description="Who shares cached answers: each user's keys (user) or every caller (global).",
    )
    deployment_breaker_threshold: int = Field(
        5, ge=1, validation_alias=_names("deployment_breaker_threshold")
    )
    deployment_breaker_reset_seconds: float = Field(
        10.0, gt=0, validation_alias=_names("deployment_breaker_reset_seconds")
    )
    deployment_probe_interval_seconds: float = Field(
        0.0,
        ge=0,
        le=86400,
        validation_alias=_names("deployment_probe_interval_seconds"),
        description="Seconds between active health probes of OpenAI-compatible deployments; 0 turns them off.",
    )

    max_body_bytes: int = Field(10 * 1024 * 1024, ge=1024, validation_alias=_names("max_body_bytes"))
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list, validation_alias=_names("cors_origins")
    )

    metrics_multiproc_dir: Path | None = Field(
        None, validation_alias=_names("metrics_multiproc_dir", "PROMETHEUS_MULTIPROC_DIR")
    )

    audit_batch_size: int = Field(500, ge=1, validation_alias=_names("audit_batch_size"))
    audit_flush_interval: float = Field(0.5, gt=0, validation_alias=_names("audit_flush_interval"))
    audit_queue_max: int = Field(100_000, ge=100, validation_alias=_names("audit_queue_max"))
    audit_page_max: int = Field(500, ge=1, validation_alias=_names("audit_page_max"))
    audit_exclude_paths: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["/healthz", "/readyz", "/metrics"],
        validation_alias=_names("audit_exclude_paths"),
    )

    realtime_auth_timeout_seconds: float = Field(
        5.0, gt=0, le=60, validation_alias=_names("realtime_auth_timeout_seconds")
    )
    realtime_ping_seconds: float = Field(
        20.0,
        gt=0,
        le=3600,
        validation_alias=_names("realtime_ping_seconds"),
        description="Quiet seconds before a WebSocket ping (and a credential re-check on WebSocket and SSE).",
    )
    realtime_send_queue: int = Field(
        256,
        ge=1,
        le=100_000,
        validation_alias=_names("realtime_send_queue"),
        description="Events waiting for one subscriber; past it the subscriber is disconnected (slow consumer).",
    )
    realtime_max_connections: int = Field(10_000, ge=1, validation_alias=_names("realtime_max_connections"))

    usage_batch_size: int = Field(500, ge=1, validation_alias=_names("usage_batch_size"))
    usage_flush_interval: float = Field(0.5, gt=0, validation_alias=_names("usage_flush_interval"))
    usage_queue_max: int = Field(100_000, ge=100, validation_alias=_names("usage_queue_max"))
    budget_reservation_ttl_seconds: float = Field(
        900.0,
        gt=0,
        validation_alias=_names("budget_reservation_ttl_seconds"),
        description="A reservation not settled by then (its process died) is released.",
    )
    budget_reservation_sweep_seconds: float = Field(
        60.0, gt=0, validation_alias=_names("budget_reservation_sweep_seconds")
    )
    prices: dict[str, dict[str, Decimal]] = Field(
        default_factory=dict,
        validation_alias=_names("prices"),
        description="Per-model price overrides: {model: {input_per_mtok, output_per_mtok}} in USD.",
    )
    usage_max_completion_tokens: int = Field(
        4096, ge=1, validation_alias=_names("usage_max_completion_tokens")
    )
    context_overflow: Literal["refuse", "trim"] = Field("refuse", validation_alias=_names("context_overflow"))
    budget_cache_ttl: float = Field(30.0, gt=0, validation_alias=_names("budget_cache_ttl"))

    guards_policy_file: Path | None = Field(None, validation_alias=_names("guards_policy_file"))
    guards_reload_interval: float = Field(
        2.0,
        ge=0,
        validation_alias=_names("guards_reload_interval"),
        description="Seconds between checks of the policy file for changes; 0 turns the watch off.",
    )
    guard_service_token: SecretStr | None = Field(None, validation_alias=_names("guard_service_token"))

    @field_validator("cors_origins", "audit_exclude_paths", mode="before")
    @classmethod
    def _split_commas(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator(
        "rate_limit_default", "rate_limit_per_ip", "login_rate_limit_per_ip", "login_rate_limit_per_account"
    )
    @classmethod
    def _rate_limit(cls, value: str) -> str:
        from limits import parse

        try:
            parse(value)
        except ValueError:
            raise ValueError("must look like `600/minute` or `10 per second`") from None
        return value

    @field_validator("secret_key", "guard_service_token", mode="before")
    @classmethod
    def _blank_is_unset(cls, value: Any) -> Any:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("database_url")
    @classmethod
    def _async_driver(cls, value: str | None) -> str | None:
        if not value:
            return None
        for plain, driver in (
            ("postgresql://", "postgresql+asyncpg://"),
            ("postgres://", "postgresql+asyncpg://"),
            ("sqlite://", "sqlite+aiosqlite://"),
        ):
            if value.startswith(plain):
                return driver + value[len(plain) :]
        if value.startswith(("postgresql+asyncpg://", "sqlite+aiosqlite://")):
            return value
        raise ValueError("must start with postgresql:// or sqlite:///")

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, value: str | None) -> str | None:
        if not value:
            return None
        if not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must start with redis://, rediss:// or unix://")
        return value

    @property
    def effective_database_url(self) -> str:
        return self.database_url or f"sqlite+aiosqlite:///{(self.data_dir / 'aiguardian.db').resolve()}"

    @property
    def is_sqlite(self) -> bool:
        return self.effective_database_url.startswith("sqlite")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        for source in (env_settings, dotenv_settings):
            # The environment is shared with other programs: only our own names (aliases) count there,
            # never a bare field name such as PORT or SECRET_KEY.
            source.config = {**source.config, "populate_by_name": False, "validate_by_name": False}
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings, dotenv_settings]
        yaml_file = settings_cls.model_config.get("yaml_file")
        if yaml_file:
            sources.append(YamlConfigSettingsSource(settings_cls))
        sources.append(file_secret_settings)
        return tuple(sources)


def load_settings(config_file: Path | str | None = None, **overrides: Any) -> Settings:
    """Build the settings; precedence: keyword overrides, environment, ``.env``, YAML file, defaults."""
    path = config_file or os.environ.get(CONFIG_FILE_ENV)
    cls: type[Settings] = Settings
    if path:
        if not Path(path).is_file():
            raise SettingsError(f"invalid setting {CONFIG_FILE_ENV}: config file {path} does not exist")

        class _WithYaml(Settings):
            model_config = SettingsConfigDict(yaml_file=str(path))

        cls = _WithYaml
    try:
        return cls(**overrides)
    except ValidationError as exc:
        raise SettingsError(_one_line(exc)) from None
    except (ValueError, OSError, yaml.YAMLError) as exc:  # unreadable YAML or .env
        raise SettingsError(f"invalid settings file: {exc}") from None


def _one_line(exc: ValidationError) -> str:
    first = exc.errors()[0]
    field = str(first["loc"][0]) if first["loc"] else "?"
    env_name = field if field.isupper() else f"AIG_{field.upper()}"
    value = first.get("input")
    shown = "" if "KEY" in env_name or "TOKEN" in env_name or isinstance(value, dict) else f" (got {value!r})"
    more = f"; and {len(exc.errors()) - 1} more" if len(exc.errors()) > 1 else ""
    return f"invalid setting {env_name}: {first['msg']}{shown}{more}"


def secret_from_env(name: str) -> str | None:
    """A provider key named in the config (``api_key_env``): read here, the one place that reads the
    environment, so keys never sit in config files."""
    value = os.environ.get(name)
    return value if value else None
