"""Scheduler settings, from `VICINO_*` environment variables. Unsafe values refuse to start."""
from __future__ import annotations

from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import orjson
from pydantic import Field, field_validator

from vicino.services.runtime.service_settings import ServiceSettings

from .domain.schedules import Schedule, ScheduleError


class SchedulerSettings(ServiceSettings):
    # redis_url, admin_token, token_secret, redis_wait_s, log_level: see ServiceSettings
    job_schedules: str = Field("{}", description="JSON object overriding jobs' schedules, e.g. "
                               "{\"retrain\": \"daily 02:00\", \"export_history\": \"off\"}; a schedule is "
                               "\"every <n>s|m|h|d\", \"daily HH:MM\" or \"off\"")
    scheduler_tz: str = Field("UTC", description="time zone of the daily schedules (IANA name)")
    event_shards: int = Field(16, ge=1, le=1024, description="the geo service's event streams (same value as geo)")
    customer_shards: int = Field(16, ge=1, le=1024, description="the recommender's customer shards (same value)")
    kpi_retention_days: float = Field(35.0, ge=1, description="decisions and delivery receipts are kept this long "
                                      "in their streams for the KPIs; older ones are trimmed (the daily KPI "
                                      "roll-ups stay)")
    dead_letter_retention_days: float = Field(30.0, ge=1, description="dead-lettered stream entries are kept this "
                                              "long for inspection")
    stuck_after_s: float = Field(600.0, ge=30, description="a pending stream entry unacknowledged for this long "
                                 "is stuck")
    max_deliveries: int = Field(10, ge=2, le=1000, description="a stuck entry delivered this many times is moved "
                                "to its stream's dead letters")
    stream_hard_cap: int = Field(1_000_000, ge=1000, description="entries a consumed stream (geo events, push "
                                 "jobs) may hold: past it, trim_streams drops the oldest even though a consumer group "
                                 "has not read them, and counts them (vicino_stream_trimmed_unconsumed_total, a "
                                 "warning in the log); below it only what every group acknowledged is trimmed")
    consumer_idle_s: float = Field(86_400.0, ge=300, description="consumers with nothing pending and idle this long "
                                   "(stopped processes) are removed from their groups")

    @field_validator("scheduler_tz")
    @classmethod
    def _tz(cls, v: str) -> str:
        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"VICINO_SCHEDULER_TZ: unknown time zone {v!r}") from None
        return v

    @field_validator("job_schedules")
    @classmethod
    def _schedules(cls, v: str) -> str:
        try:
            parsed = orjson.loads(v or "{}")
        except orjson.JSONDecodeError:
            raise ValueError("VICINO_JOB_SCHEDULES must be a JSON object of job name -> schedule") from None
        if not isinstance(parsed, dict) or not all(isinstance(s, str) for s in parsed.values()):
            raise ValueError("VICINO_JOB_SCHEDULES must be a JSON object of job name -> schedule")
        for name, s in parsed.items():
            try:
                Schedule.parse(s)
            except ScheduleError as e:
                raise ValueError(f"VICINO_JOB_SCHEDULES[{name}]: {e}") from None
        return v

    def schedule_overrides(self) -> dict[str, Schedule]:
        return {name: Schedule.parse(s) for name, s in orjson.loads(self.job_schedules or "{}").items()}

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.scheduler_tz)
