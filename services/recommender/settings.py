"""Recommender service settings, from `VICINO_*` environment variables. Unsafe values refuse to start."""
from __future__ import annotations

from pydantic import Field, field_validator

from vicino.services.runtime.service_settings import ServiceSettings


class RecommenderSettings(ServiceSettings):
    # redis_url, admin_token, token_secret, redis_wait_s, log_level: see ServiceSettings
    geo_url: str = Field("http://127.0.0.1:8000", description="base URL of the geo service (consent changes on "
                         "merge, location data on erasure)")

    customer_shards: int = Field(16, ge=1, le=1024, description="interaction streams and customer key shards "
                                 "(fixed for a deployment)")
    event_shards: int = Field(16, ge=1, le=1024, description="the geo service's event streams (same value as geo)")
    history_hot_per_customer: int = Field(200, ge=1, le=10_000, description="most recent interactions kept in Redis "
                                          "per customer")
    visits_per_customer: int = Field(50, ge=1, le=10_000, description="most recent store visits kept per customer")
    dedup_window_s: float = Field(7 * 86_400.0, gt=0, description="a retried event id is recognised for this long "
                                  "after it was first accepted")
    max_future_s: float = Field(300.0, ge=0, description="interactions further ahead of the server clock are refused")
    max_batch: int = Field(1000, ge=1, le=10_000, description="interactions per POST /v1/interactions")
    history_dir: str = Field("var/history", description="where the Parquet interaction log is written: a local path "
                             "or any URL fsspec understands (s3://bucket/prefix, ...)")
    model_dir: str = Field("var/models", description="where trained model versions are published (a local "
                           "directory; CURRENT names the version that serves)")
    model_keep: int = Field(5, ge=1, le=1000, description="model versions kept on disk after a publication (the "
                            "published one and the newest others), for `vicino models rollback`")
    model_poll_s: float = Field(5.0, gt=0, description="how often a replica checks whether a new model version was "
                                "published (picked up without a restart)")
    export_flush_rows: int = Field(20_000, ge=1, description="the exporter writes a Parquet file after this many "
                                   "stream entries of one shard ...")
    export_flush_s: float = Field(5.0, gt=0, description="... or after this many seconds")
    interactions_maxlen: int = Field(5_000_000, ge=1000, description="safety cap per interaction stream; the "
                                     "exporter trims what it has written, this only bounds a stalled exporter")
    max_body_bytes: int = Field(1 << 20, ge=1024, description="request body limit")
    max_bulk_body_bytes: int = Field(256 << 20, ge=1024, description="body limit of POST /v1/offers, for an "
                                     "operator or admin (other callers get `max_body_bytes`)")

    # --- offer decisions on store visits (workers/decisions.py) ---
    decide_on: str = Field("dwell", description="which geofence events get a decision: enter, dwell or "
                           "enter,dwell (the first decided event of a visit is its one decision)")
    cap_per_day: int = Field(3, ge=0, le=100, description="pushes per customer per local day (the device's time "
                             "zone); holdout would-be pushes count too")
    store_cooldown_s: float = Field(21_600.0, ge=0, description="no second push for the same store within this "
                                    "many seconds")
    quiet_hours: str = Field("21:00-09:00", description="HH:MM-HH:MM in the customer's local time when no push is "
                             "sent (may span midnight); empty for none")
    holdout_percent: float = Field(10.0, ge=0, le=100, description="share of customers (stable hash of the id) who "
                                   "never get a push; their decisions are logged for the KPIs")
    push_ttl_s: float = Field(900.0, gt=0, le=86_400, description="a push job expires this long after its "
                              "decision; events older than this get no push either (the moment has passed)")
    decision_ttl_s: float = Field(7 * 86_400.0, ge=86_400, description="how long a visit's decision (and its exit) "
                                  "is remembered against redelivered events")

    @field_validator("decide_on")
    @classmethod
    def _decide_on(cls, v: str) -> str:
        types = {t.strip() for t in v.split(",") if t.strip()}
        if not types or not types <= {"enter", "dwell"}:
            raise ValueError("VICINO_DECIDE_ON must be enter, dwell or enter,dwell")
        return ",".join(t for t in ("enter", "dwell") if t in types)

    @field_validator("quiet_hours")
    @classmethod
    def _quiet_hours(cls, v: str) -> str:
        from .domain.decision_policy import QuietHours

        try:
            QuietHours.parse(v)
        except ValueError as e:
            raise ValueError(f"VICINO_QUIET_HOURS: {e}") from None
        return v.strip()
    # --- end offer decisions ---

    # --- KPIs (GET /v1/kpis, the kpi_rollup job) ---
    attribution_window_h: float = Field(72.0, gt=0, le=720, description="a purchase of an offered item or a "
                                        "redemption counts as a conversion of a push this many hours after it "
                                        "(GET /v1/kpis?window_h= overrides it per request)")
    kpi_retention_days: float = Field(35.0, ge=1, description="decisions and delivery receipts are kept this long "
                                      "(the scheduler's trim_streams job, same variable); older days are in the "
                                      "daily roll-ups only")
