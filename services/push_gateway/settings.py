"""Push gateway settings, from `VICINO_*` environment variables. A provider that is configured
but incomplete refuses to start, with one message that names what is missing."""
from __future__ import annotations

from pydantic import Field, model_validator

from vicino.services.runtime.service_settings import ServiceSettings


class PushSettings(ServiceSettings):
    # redis_url, admin_token, token_secret, redis_wait_s, log_level: see ServiceSettings
    geo_url: str = Field("http://127.0.0.1:8000", description="base URL of the geo service (removes push tokens "
                         "that a provider declared invalid)")
    recommender_url: str = Field("http://127.0.0.1:8001", description="base URL of the recommender (an opened "
                                 "push becomes an offer_open interaction)")
    customer_shards: int = Field(16, ge=1, le=1024, description="the recommender's customer shards (same value): "
                                 "one push-job stream each")
    event_shards: int = Field(16, ge=1, le=1024, description="the geo service's device shards (same value as geo)")

    fcm_credentials: str | None = Field(None, description="path of a Google service-account JSON key; its "
                                        "project_id and token_uri are used. Unset: Android falls back")
    fcm_endpoint: str = Field("https://fcm.googleapis.com", description="FCM API host (tests and staging "
                              "override it)")
    apns_key_file: str | None = Field(None, description="path of the APNs .p8 signing key. Unset: iOS falls back")
    apns_key_id: str | None = Field(None, description="the .p8 key's id (10 characters, from Apple)")
    apns_team_id: str | None = Field(None, description="the Apple developer team id")
    apns_topic: str | None = Field(None, description="the app's bundle id (apns-topic)")
    apns_endpoint: str = Field("https://api.push.apple.com", description="APNs host; "
                               "https://api.sandbox.push.apple.com for development builds")
    apns_token_refresh_s: float = Field(2400.0, ge=1200, le=3600, description="age at which the APNs provider "
                                        "token is renewed (Apple: between 20 and 60 minutes)")
    webhook_url: str | None = Field(None, description="POST every push here (signed) for platforms without "
                                    "a configured provider")
    webhook_secret: str | None = Field(None, description="HMAC-SHA256 key of the webhook signature (16+ chars)")

    concurrency: int = Field(128, ge=1, le=10_000, description="jobs handled at once by one worker (enough "
                             "for rate x provider round trip: 128 carries ~1,000/s at 100 ms)")
    provider_concurrency: int = Field(128, ge=1, le=10_000, description="requests in flight to one provider (FCM "
                                      "and webhook: pools of 4 connections; APNs: one HTTP/2 connection, up to 100 streams)")
    provider_timeout_s: float = Field(10.0, gt=0, le=120, description="one provider request's time limit, "
                                    "all of it (connection, upload, the answer read to its end); one send, with its "
                                    "token exchanges and a retry after a refused token, is cut at 4x this")
    max_attempts: int = Field(6, ge=1, le=50, description="sends tried per push before it fails")
    retry_base_s: float = Field(1.0, gt=0, le=600, description="pause after the first failed send; doubles "
                                "on each failure (with jitter), never less than the provider's Retry-After")
    retry_max_s: float = Field(300.0, gt=0, le=86_400, description="longest pause between two sends")
    claim_idle_ms: int = Field(30_000, ge=100, description="a job left pending this long by a stopped worker "
                               "is taken over by another")
    delivery_retention_s: float = Field(30 * 86_400.0, ge=2 * 86_400, description="how long delivery records are "
                                        "kept (at least twice a push job's longest life, so a redelivered job "
                                        "always finds its record)")
    max_body_bytes: int = Field(64 << 10, ge=1024, description="request body limit")

    @model_validator(mode="after")
    def _complete_providers(self) -> "PushSettings":
        apns = {"VICINO_APNS_KEY_FILE": self.apns_key_file, "VICINO_APNS_KEY_ID": self.apns_key_id,
                "VICINO_APNS_TEAM_ID": self.apns_team_id, "VICINO_APNS_TOPIC": self.apns_topic}
        given = [k for k, v in apns.items() if v]
        if given and len(given) < len(apns):
            missing = [k for k, v in apns.items() if not v]
            raise ValueError(f"APNs is partly configured ({', '.join(given)} set): also set {', '.join(missing)}")
        if bool(self.webhook_url) != bool(self.webhook_secret):
            raise ValueError("set both VICINO_WEBHOOK_URL and VICINO_WEBHOOK_SECRET (every webhook call is signed)")
        if self.webhook_secret is not None and len(self.webhook_secret) < 16:
            raise ValueError("VICINO_WEBHOOK_SECRET must be at least 16 characters")
        if self.webhook_url and not self.webhook_url.startswith(("http://", "https://")):
            raise ValueError("VICINO_WEBHOOK_URL must be an http(s) URL")
        return self
