"""Geo service settings, from `VICINO_*` environment variables. Unsafe values refuse to start."""
from __future__ import annotations

from pydantic import Field, model_validator

from vicino.services.kernel.rate_limits import DEVICE_TOKEN, RateLimit
from vicino.services.runtime.service_settings import ServiceSettings


class GeoSettings(ServiceSettings):
    # redis_url, admin_token, token_secret, redis_wait_s, log_level: see ServiceSettings
    dwell_s: float = Field(300.0, gt=0, description="default dwell threshold when a store sets none")
    exit_buffer_m: float = Field(30.0, ge=0, description="a visit ends only this far outside the fence")
    exit_timeout_s: float = Field(900.0, gt=0, description="a visit ends after this long without an inside fix "
                                  "(found by the next fix, or by the exit sweep when no fix comes)")
    exit_sweep_interval_s: float = Field(30.0, gt=0, le=3600, description="how often each replica ends the visits "
                                         "of silent phones (exit, reason timeout)")
    max_transitions_per_min: int = Field(30, ge=1, le=10_000, description="visit events one device may cause per "
                                         "minute of server time; fixes that would cause more are ignored "
                                         "(reason transition_rate)")
    max_accuracy_m: float = Field(200.0, gt=0, description="less accurate fixes cause no transition")
    max_fix_age_s: float = Field(86_400.0, gt=0, description="fixes older than this are refused")
    max_future_s: float = Field(300.0, ge=0, description="fixes further ahead of the server clock are refused")
    device_state_ttl_s: float = Field(86_400.0, gt=0, description="visit state of a silent device expires")
    device_token_ttl_s: float = Field(30 * 86_400.0, gt=0, description="lifetime of a device token")
    token_grace_s: float = Field(600.0, ge=0, le=86_400, description="after a device refreshes its token "
                                 "(POST /v1/devices/{id}/token), how long the token it replaced keeps working "
                                 "(requests in flight, a reply that was lost); at most a day, and less than "
                                 "VICINO_DEVICE_TOKEN_TTL_S")
    rate_limit_token_refresh_per_s: float = Field(0.01, gt=0, le=1e6, description="sustained token refreshes "
                                                  "per second of one device (a phone refreshes once in weeks)")
    rate_limit_token_refresh_burst: int = Field(5, ge=1, le=1_000_000, description="token refreshes one device "
                                                "may send at once")
    device_cache_size: int = Field(50_000, ge=0, description="recently active devices whose last snapshot a replica keeps "
                                   "to save a Redis read (validated on every save; 0 turns it off)")
    event_shards: int = Field(16, ge=1, le=1024, description="geofence event streams (fixed for a deployment)")
    events_maxlen: int = Field(2_000_000, ge=1000, description="last-resort length cap per event stream at XADD "
                               "(approximate, uncounted): keep it above the scheduler's VICINO_STREAM_HARD_CAP, "
                               "which trims first, never past what a consumer group needs without counting it")
    max_body_bytes: int = Field(1 << 20, ge=1024, description="request body limit")
    max_bulk_body_bytes: int = Field(256 << 20, ge=1024, description="body limit of POST /v1/stores, for an "
                                     "operator or admin (other callers get `max_body_bytes`)")

    @model_validator(mode="after")
    def _grace_shorter_than_a_token(self) -> "GeoSettings":
        if self.token_grace_s >= self.device_token_ttl_s:
            raise ValueError("VICINO_TOKEN_GRACE_S must be shorter than VICINO_DEVICE_TOKEN_TTL_S")
        return self

    def rate_limit_policies(self) -> dict[str, RateLimit]:
        """The shared classes, and the token refreshes this service alone serves."""
        policies = super().rate_limit_policies()
        if policies:
            policies[DEVICE_TOKEN] = RateLimit(self.rate_limit_token_refresh_per_s, self.rate_limit_token_refresh_burst)
        return policies
