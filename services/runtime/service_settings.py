"""What every service's settings start with: Redis, the two secrets (refused when weak), the
wait for Redis at start and the log level, from `VICINO_*` environment variables."""
from __future__ import annotations

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from ..kernel.rate_limits import DEVICE, DEVICE_LOCATIONS, KEY, RateLimit
from ..kernel.contracts.erasures import register_key

_WEAK = {"changeme", "admin", "secret", "password", "token", "test"}


class ServiceSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="VICINO_", extra="ignore")

    redis_url: str = Field(..., description="redis:// URL of a standalone Redis, or of one or more nodes of a Redis "
                           "Cluster, comma-separated (redis://h1:7000,h2:7001): each is a startup node")
    redis_wait_replicas: int = Field(0, ge=0, le=5, description="after the writes a failover must not lose (a "
                                     "decision with its push job, a push's `sending` mark), WAIT for this many "
                                     "replicas to have them; 0: do not wait (no replicas, or loss accepted)")
    redis_wait_ms: int = Field(100, ge=1, le=10_000, description="the longest such a WAIT blocks; a write not "
                               "replicated by then stays on its master and is logged")
    admin_token: str = Field(..., description="bearer token of the operator (admin endpoints)")
    token_secret: str = Field(..., description="key that signs device tokens; same on every replica")
    erasure_key: str | None = Field(None, description="HMAC key of the erasure register's digests of erased "
                                    "customer ids; unset: derived from VICINO_TOKEN_SECRET. Set it (the same on every "
                                    "service and the CLI) before you ever rotate the token secret: a new key cannot "
                                    "read the register written with the old one")
    redis_wait_s: float = Field(30.0, ge=0, description="at start, how long to wait for Redis to answer before giving up")
    log_level: str = Field("INFO", description="DEBUG, INFO, WARNING or ERROR; logs are JSON lines on stderr")
    audit_retention_days: float = Field(90, gt=0, le=3650, description="how long the audit trail keeps each write "
                                        "made with an API key or the admin token")

    # Rate limits, per device token and per API key (the admin token has none). The defaults are
    # far above what the SDK or an app server does: a phone posts a batch every few seconds to
    # minutes, and a backlog after a day offline is a few dozen batches sent at once.
    rate_limits: bool = Field(True, description="per device and per API key rate limits (429 with Retry-After "
                              "when passed); off only for benchmarks of the bare path")
    rate_limit_locations_per_s: float = Field(2.0, gt=0, le=1e6, description="sustained POST /v1/locations "
                                              "requests per second of one device")
    rate_limit_locations_burst: int = Field(120, ge=1, le=1_000_000, description="POST /v1/locations requests "
                                            "one device may send at once after a quiet spell (a backlog flush)")
    rate_limit_device_per_s: float = Field(2.0, gt=0, le=1e6, description="sustained requests per second of one "
                                           "device token on the other routes")
    rate_limit_device_burst: int = Field(60, ge=1, le=1_000_000, description="requests at once of one device "
                                         "token on the other routes")
    rate_limit_key_per_s: float = Field(500.0, gt=0, le=1e6, description="sustained requests per second of one "
                                        "API key (on each service)")
    rate_limit_key_burst: int = Field(5000, ge=1, le=1_000_000, description="requests at once of one API key")

    def rate_limit_policies(self) -> dict[str, RateLimit]:
        """The limit of each class of caller; none when `rate_limits` is off."""
        if not self.rate_limits:
            return {}
        return {DEVICE_LOCATIONS: RateLimit(self.rate_limit_locations_per_s, self.rate_limit_locations_burst),
                DEVICE: RateLimit(self.rate_limit_device_per_s, self.rate_limit_device_burst),
                KEY: RateLimit(self.rate_limit_key_per_s, self.rate_limit_key_burst)}

    def erasure_register_key(self) -> bytes:
        return register_key(self.token_secret, self.erasure_key)

    @field_validator("erasure_key")
    @classmethod
    def _strong_if_set(cls, v: str | None) -> str | None:
        if v is not None and (len(v) < 16 or v.lower() in _WEAK):
            raise ValueError("VICINO_ERASURE_KEY must be at least 16 characters and not a default")
        return v

    @field_validator("admin_token", "token_secret")
    @classmethod
    def _strong(cls, v: str, info) -> str:
        if len(v) < 16 or v.lower() in _WEAK:
            raise ValueError(f"VICINO_{info.field_name.upper()} must be at least 16 characters and not a default")
        return v
