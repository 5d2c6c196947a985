"""Settings of `vicino up` (the whole stack on one machine), from `VICINO_*` variables."""
from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class LauncherSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="VICINO_", extra="ignore")

    host: str = Field("127.0.0.1", description="address the stack listens on")
    port: int = Field(8000, ge=1, le=65535, description="port of the geo service; the recommender listens on the next one, the push gateway on the one after, the scheduler on the next, the recommender-worker's health edge on the one after")
    data_dir: Path = Field(Path("./var"), description="everything the stack writes (Redis data, logs, models)")
    redis_url: str | None = Field(None, description="unset: embedded Redis under data_dir; else standalone or Cluster URL")
    demo: bool = Field(True, description="load demo stores and a demo device at start (0 to start empty)")
    admin_token: str | None = Field(None, description="generated and kept under data_dir when unset")
    token_secret: str | None = Field(None, description="generated and kept under data_dir when unset")
    demo_radius_m: float = Field(80.0, ge=10, le=10_000, description="fence radius of the demo fuel stations")
