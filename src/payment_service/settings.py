"""Configuration from the environment and `.env`, validated once at start-up.

The seed service's variable names (`DB_HOST`, `DB_PASS`, `SERVICE_PORT`, ...) keep
working; `DATABASE_URL` wins when set. Every field's environment name is its
upper-case name, with no prefix, so deploy files can be checked against this class.
"""

from __future__ import annotations

import base64
from decimal import Decimal
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]


class ConfigurationError(Exception):
    """Invalid configuration, reported as one line instead of a traceback."""


class Settings(BaseSettings):
    """All settings of the service; see `.env.example` for what each one does."""

    model_config = SettingsConfigDict(
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        case_sensitive=False,
        env_ignore_empty=True,  # `DB_PASS=` in a copied .env.example means "not set"
    )

    # Database: DATABASE_URL, else the DB_* parts, else an embedded PostgreSQL.
    database_url: SecretStr | None = None
    db_host: str | None = None
    db_port: int = Field(5433, ge=1, le=65535)
    db_name: str | None = None
    db_user: str | None = None
    db_pass: SecretStr | None = None
    db_pool_size: int = Field(20, ge=1, le=200)
    db_max_overflow: int = Field(10, ge=0, le=200)
    db_pool_timeout_seconds: float = Field(10.0, gt=0)
    db_connect_timeout_seconds: float = Field(5.0, gt=0)
    # Check a pooled connection before use: skips connections a database restart has
    # closed (a local check, no round trip; see db.create_engine) instead of failing a request.
    db_pool_pre_ping: bool = True
    embedded_pg_dir: Path = Path(".data/postgres")

    # HTTP server.
    service_host: str = "0.0.0.0"
    service_port: int = Field(8082, ge=1, le=65535)
    web_concurrency: int = Field(1, ge=1, le=64)
    log_level: LogLevel = "INFO"
    access_log: bool = True
    forwarded_allow_ips: str | None = None
    """Proxies whose X-Forwarded-For/-Proto uvicorn believes (comma-separated IPs or CIDRs,
    `*` for any); unset, nobody's, so a client cannot pick its own address."""

    # Callers: API keys and per-client rate limits (SPEC §7a).
    auth_required: bool = True
    api_key_cache_seconds: float = Field(5.0, ge=0, le=300)
    rate_limit_enabled: bool = True
    # The edge (edge.py): what a request may cost before the app refuses it.
    max_body_bytes: int = Field(65536, ge=1024)
    max_header_bytes: int = Field(16384, ge=1024, le=1024 * 1024)
    request_read_timeout_seconds: float = Field(10.0, gt=0, le=600)
    keep_alive_timeout_seconds: int = Field(5, ge=1, le=600)
    rate_limit_read_per_minute: int = Field(1200, ge=1)
    rate_limit_charge_per_minute: int = Field(600, ge=1)
    rate_limit_refund_per_minute: int = Field(120, ge=1)
    redis_url: SecretStr | None = None
    """Rate-limit counters in Redis (shared by replicas); unset, in this process's memory."""
    redis_key_prefix: str = Field("payment-service", min_length=1, max_length=64)
    bootstrap_api_key: SecretStr | None = None
    """Read only by `api-keys create --key-from-env BOOTSTRAP_API_KEY` (the migration Job)."""

    # Peers.
    trip_service_url: str = "http://localhost:8081"
    notification_service_url: str = "http://localhost:8084"
    rider_service_url: str = "http://localhost:8083"
    driver_service_url: str = "http://localhost:8086"
    trip_service_timeout_seconds: float = Field(2.0, gt=0)
    trip_service_retries: int = Field(2, ge=0, le=10)
    notification_timeout_seconds: float = Field(5.0, gt=0)
    notification_signing_secret: SecretStr | None = None
    """Standard Webhooks secret (`whsec_<base64>`) signing each delivery; unset, unsigned."""

    # Tracing (tracing.py): OTLP/HTTP export when the endpoint is set, nothing otherwise.
    # The standard OpenTelemetry variable names.
    otel_exporter_otlp_endpoint: str | None = None
    otel_service_name: str = Field("payment-service", min_length=1)

    # Money.
    currency: str = Field("INR", min_length=3, max_length=3)
    base_fare: Decimal = Field(Decimal("5.00"), ge=0)
    rate_per_km: Decimal = Field(Decimal("2.50"), ge=0)
    # Ledger and extra charges (issue 12): the platform's share of fares and fees (none
    # of tips), and the limits on tips.
    platform_commission_rate: Decimal = Field(Decimal("0.20"), ge=0, le=1)
    tip_max_days: int = Field(7, ge=0, le=365)
    tip_max_amount: Decimal = Field(Decimal("500.00"), gt=0, max_digits=12, decimal_places=2)
    merchant_name: str = Field("Ride Hailing Payments", min_length=1, max_length=120)

    gateway_decline_rate: float = Field(0.0, ge=0, le=1)
    gateway_pending_rate: float = Field(0.0, ge=0, le=1)

    # Reconciler (in `serve` and `worker`): finishes PROCESSING payments and refunds that
    # nobody retried and polls PENDING ones, by asking the processor.
    reconcile_enabled: bool = True
    reconcile_after_seconds: float = Field(60.0, gt=0)
    reconcile_interval_seconds: float = Field(10.0, gt=0)
    reconcile_batch_size: int = Field(50, ge=1, le=1000)
    # Payment processor (SPEC §3a). `stripe` talks to STRIPE_API_BASE (Stripe itself, or the
    # sandbox processor in `dev`); `simulator` decides in-process, for unit tests and the bench.
    gateway: Literal["stripe", "simulator"] = "stripe"
    stripe_api_key: SecretStr | None = None
    stripe_api_base: str = "https://api.stripe.com"
    stripe_webhook_secret: SecretStr | None = None
    stripe_timeout_seconds: float = Field(10.0, gt=0)
    # The PaymentMethod confirmed with. A real integration passes the rider's saved method
    # (charge metadata `payment_method` overrides this per charge); pm_card_visa is Stripe's
    # test card.
    stripe_payment_method: str = Field("pm_card_visa", min_length=1)
    # 0: the service retries itself, with the payment's own idempotency key.
    stripe_max_network_retries: int = Field(0, ge=0, le=10)

    # Idempotency.
    idempotency_ttl_hours: int = Field(24, ge=1)
    idempotency_lease_seconds: float = Field(30.0, gt=0)
    idempotency_wait_seconds: float = Field(5.0, ge=0)

    # Outbox dispatcher. Backoff is capped at a minute so a message is retried soon after
    # the Notification service is back; 25 attempts ride out roughly a 10-minute outage.
    outbox_enabled: bool = True
    outbox_max_attempts: int = Field(25, ge=1)
    outbox_poll_interval_seconds: float = Field(1.0, gt=0)
    outbox_batch_size: int = Field(50, ge=1, le=1000)
    outbox_backoff_base_seconds: float = Field(1.0, gt=0)
    outbox_backoff_max_seconds: float = Field(60.0, gt=0)

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_log_level(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @field_validator(
        "trip_service_url",
        "notification_service_url",
        "rider_service_url",
        "driver_service_url",
        "stripe_api_base",
    )
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError(f"must be an http(s) URL, got {value!r}")
        return value.rstrip("/")

    @field_validator("otel_exporter_otlp_endpoint")
    @classmethod
    def _otlp_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError(f"must be an http(s) URL, got {value!r}")
        return value.rstrip("/") if value is not None else None

    @field_validator("notification_signing_secret")
    @classmethod
    def _signing_secret(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            import binascii

            raw = value.get_secret_value()
            try:
                key = base64.b64decode(raw.removeprefix("whsec_"), validate=True)
            except (binascii.Error, ValueError):
                key = b""
            if not raw.startswith("whsec_") or len(key) < 16:
                # Never echo the value: it is a secret.
                raise ValueError("must be whsec_ followed by base64 of at least 16 bytes")
        return value

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            scheme = value.get_secret_value().removeprefix("async+").split("://", 1)[0]
            if scheme not in {"redis", "rediss", "redis+unix"}:
                raise ValueError("must be a redis://, rediss:// or redis+unix:// URL")
        return value

    @field_validator("database_url")
    @classmethod
    def _postgres_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            _parse_database_url(value.get_secret_value())
        return value

    @model_validator(mode="after")
    def _check_rates(self) -> Settings:
        if self.gateway_decline_rate + self.gateway_pending_rate > 1:
            raise ValueError("GATEWAY_DECLINE_RATE + GATEWAY_PENDING_RATE must not exceed 1")
        return self

    @property
    def uses_embedded_database(self) -> bool:
        """True when nothing names a database, so `serve`/`dev` start an embedded one."""
        return self.database_url is None and not any(
            (self.db_host, self.db_name, self.db_user, self.db_pass)
        )

    @property
    def configured_database_url(self) -> URL | None:
        """The asyncpg URL from DATABASE_URL or DB_*, or None for the embedded database."""
        if self.database_url is not None:
            return _parse_database_url(self.database_url.get_secret_value())
        if self.uses_embedded_database:
            return None
        return URL.create(
            "postgresql+asyncpg",
            username=self.db_user or "postgres",
            password=self.db_pass.get_secret_value() if self.db_pass else None,
            host=self.db_host or "localhost",
            port=self.db_port,
            database=self.db_name or "payment_db",
        )


def _parse_database_url(raw: str) -> URL:
    """Accept postgres:// and postgresql:// URLs and pin the asyncpg driver."""
    try:
        url = make_url(raw)
    except (ArgumentError, ValueError):  # ValueError: a non-numeric port
        raise ValueError("not a valid database URL") from None
    if url.get_backend_name() not in {"postgresql", "postgres"}:
        raise ValueError(f"must be a PostgreSQL URL, got {url.drivername!r}")
    return url.set(drivername="postgresql+asyncpg")


def load_settings(**overrides: object) -> Settings:
    """Build Settings, turning validation errors into one readable ConfigurationError."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            name = ".".join(str(part) for part in error["loc"]).upper() or "settings"
            message = error["msg"].removeprefix("Value error, ")
            problems.append(f"{name}: {message}")
        raise ConfigurationError("invalid configuration: " + "; ".join(problems)) from None
