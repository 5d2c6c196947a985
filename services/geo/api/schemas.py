"""Request and response shapes of the geo API (the mobile app's and the operator's contract)."""
from __future__ import annotations

from typing import Annotated, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationInfo, field_validator

from vicino.services.kernel.contracts.push_tokens import MAX_PUSH_TOKEN_CHARS, push_token_problem
from vicino.services.kernel.ids import CLIENT_ID_PATTERN
from vicino.services.kernel.locales import MAX_LOCALE_TAG_CHARS, canonical_locale
from vicino.services.kernel.times import InstantIn, InstantOut
from vicino.services.runtime.http_problems import BODY_PROBLEMS, problem  # noqa: F401 (BODY_PROBLEMS re-exported to the routers)

ClientId = Annotated[str, StringConstraints(pattern=CLIENT_ID_PATTERN)]
MAX_FIXES = 500
MAX_NEARBY_RADIUS_M = 50_000  # GET /v1/stores: farther is refused (422)
MAX_NEARBY_LIMIT = 500
DEFAULT_REGIONS = 20  # iOS monitors at most 20 regions per app
MAX_REGIONS = 100     # Android, 100


class FixIn(BaseModel):
    model_config = ConfigDict(extra="ignore")

    lat: float = Field(ge=-90, le=90, allow_inf_nan=False)
    lon: float = Field(ge=-180, le=180, allow_inf_nan=False)
    accuracy_m: float = Field(gt=0, le=100_000, allow_inf_nan=False, description="horizontal accuracy, metres")
    ts: InstantIn = Field(description="RFC 3339 with an offset, or epoch seconds")
    speed_mps: float | None = Field(None, ge=0, le=1000, allow_inf_nan=False)


class LocationBatchIn(BaseModel):
    device_id: ClientId
    fixes: list[FixIn] = Field(min_length=1, max_length=MAX_FIXES)


class IgnoredFix(BaseModel):
    index: int
    reason: Literal["duplicate", "out_of_order", "low_accuracy", "no_location_consent", "transition_rate"]


class VisitEventOut(BaseModel):
    type: Literal["enter", "dwell", "exit"]
    store_id: str
    visit_id: str
    ts: InstantOut
    dwell_s: float | None = None
    exit_reason: str | None = None


class LocationResultOut(BaseModel):
    accepted: int
    ignored: list[IgnoredFix]
    events: list[VisitEventOut]
    location_consent: bool
    detail: str | None = None


class PushTokenRevocationIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    push_token_sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="SHA-256 (hex) of the refused token")
    reason: str = Field("", max_length=200, description="the provider's word, e.g. UNREGISTERED")


class PushTokenRevocationOut(BaseModel):
    device_id: str
    revoked: bool


LOCALE_DESCRIPTION = ("the device's language, BCP 47 (`it`, `it-IT`, `en-GB`; `_` accepted): picks the language "
                      "of a campaign's push message. Stored canonical (`it_it` -> `it-IT`); a tag Babel (CLDR) "
                      "cannot read is refused (422 naming `locale`)")


def _canonical_locale(v: str | None) -> str | None:
    return None if v is None else canonical_locale(v)  # its ValueError says why: a 422 naming the field


class DeviceIn(BaseModel):
    device_id: ClientId
    customer_id: ClientId
    platform: Literal["android", "ios", "web"]
    push_token: str = Field(min_length=1, max_length=MAX_PUSH_TOKEN_CHARS,
                            description="the platform's push token (checked per platform: kernel.contracts.push_tokens)")
    timezone: str = "Europe/Rome"
    locale: str | None = Field(None, max_length=MAX_LOCALE_TAG_CHARS, description=LOCALE_DESCRIPTION,
                               examples=["it-IT"])

    _locale = field_validator("locale")(_canonical_locale)

    @field_validator("push_token")
    @classmethod
    def _push_token(cls, v: str, info: ValidationInfo) -> str:
        platform = info.data.get("platform")
        if platform is not None:  # else the platform's own error says what is wrong
            problem = push_token_problem(platform, v)
            if problem is not None:
                raise ValueError(f"not a {platform} push token: {problem}")
        return v

    @field_validator("timezone")
    @classmethod
    def _tz(cls, v: str) -> str:
        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"{v!r} is not an IANA time zone") from None
        return v


RFC3339 = {"format": "date-time", "examples": ["2026-12-06T05:46:40.123Z"]}


class DeviceOut(BaseModel):
    device_id: str
    customer_id: str
    platform: str
    token: str
    token_expires_at: str = Field(json_schema_extra=RFC3339, description="RFC 3339, UTC")
    rotated: bool = Field(description="true when an earlier registration (and its token) was replaced")


class DeviceTokenOut(BaseModel):
    device_id: str
    token: str = Field(description="the new device token: send it from now on")
    token_expires_at: str = Field(json_schema_extra=RFC3339, description="RFC 3339, UTC; refresh before then")
    previous_token_valid_until: str = Field(json_schema_extra=RFC3339, description="the token presented keeps "
                                            "working until then (the grace period), but may not refresh again")


class PushTokenIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    push_token: str = Field(min_length=1, max_length=MAX_PUSH_TOKEN_CHARS,
                            description="the platform's new push token (checked for the device's platform: "
                                        "kernel.contracts.push_tokens)")


class DeviceLocaleIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    locale: str | None = Field(max_length=MAX_LOCALE_TAG_CHARS, description=LOCALE_DESCRIPTION + "; null forgets it",
                               examples=["en-GB"])

    _locale = field_validator("locale")(_canonical_locale)


class DeviceLocaleOut(BaseModel):
    device_id: str
    locale: str | None = Field(description="as stored: canonical BCP 47")
    locale_updated_at: str = Field(json_schema_extra=RFC3339)


class PushTokenOut(BaseModel):
    device_id: str
    platform: str
    push_token_updated_at: str = Field(json_schema_extra=RFC3339)


class RegionOut(BaseModel):
    store_id: str
    lat: float = Field(description="centre of a circle that encloses the store's whole fence")
    lon: float
    radius_m: float
    distance_m: float = Field(description="from the point to the fence (0 inside it)")


class RegionsOut(BaseModel):
    device_id: str
    lat: float = Field(description="the point asked about: the centre of the resync circle")
    lon: float
    resync_radius_m: float = Field(description="ask again when the phone leaves this circle; no store left out "
                                   "of `regions` reaches into it (0: ask again on any move)")
    regions: list[RegionOut] = Field(description="the nearest stores' fences as circles, nearest fence first")


class ConsentIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    location: bool
    marketing: bool
    personalisation: bool


class ConsentChangeOut(BaseModel):
    at: InstantOut
    by: str = Field(description="who set it: `admin`, `key:<key_id>` or `device:<device_id>`")
    location: bool
    marketing: bool
    personalisation: bool
    source: str | None = Field(None, description="where a batch change came from (e.g. `crm-import`), as its "
                                                 "caller named it")


class ConsentOut(BaseModel):
    customer_id: str
    location: bool
    marketing: bool
    personalisation: bool
    updated_at: InstantOut | None
    history: list[ConsentChangeOut] = Field(default_factory=list, description="audit trail, newest first")


MAX_CONSENT_BATCH = 1000
CONSENT_SOURCE_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,63}$"


class ConsentPurposesIn(BaseModel):
    """The purposes a batch item sets; one left out keeps its current value (none set: False)."""
    model_config = ConfigDict(extra="forbid")

    location: bool | None = None
    marketing: bool | None = None
    personalisation: bool | None = None


class ConsentBatchItemIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    customer_id: ClientId
    consent: ConsentPurposesIn
    source: Annotated[str, StringConstraints(pattern=CONSENT_SOURCE_PATTERN)] | None = Field(
        None, description="where the change comes from (e.g. `crm-import`), kept in its audit entry")


class ConsentBatchIn(BaseModel):
    """Each item is judged alone: a bad one is rejected with its reasons, the others are recorded."""
    items: list[ConsentBatchItemIn] = Field(min_length=1, max_length=MAX_CONSENT_BATCH)


class ConsentRecordOut(BaseModel):
    location: bool
    marketing: bool
    personalisation: bool
    updated_at: InstantOut | None


class FieldErrorOut(BaseModel):
    field: str
    message: str


class ConsentBatchResultOut(BaseModel):
    index: int
    customer_id: str | None
    status: Literal["ok", "rejected"]
    consent: ConsentRecordOut | None = Field(None, description="the consent as recorded (status ok)")
    errors: list[FieldErrorOut] | None = Field(None, description="why the item was rejected (status rejected)")


class ConsentBatchOut(BaseModel):
    ok: int
    rejected: int
    results: list[ConsentBatchResultOut] = Field(description="one per item, in order")


class BulkStoresOut(BaseModel):
    created: int
    updated: int
    rejected: list[dict]
    warnings: list[dict]


class NearbyStoreOut(BaseModel):
    store_id: str
    distance_m: float
    feature: dict


FEATURE_SCHEMA = {
    "type": "object",
    "required": ["type", "geometry"],
    "properties": {
        "type": {"const": "Feature"},
        "id": {"type": "string"},
        "geometry": {"type": "object", "description": "Point (with properties.radius_m), Polygon or MultiPolygon"},
        "properties": {"type": "object", "properties": {
            "name": {"type": "string"}, "brand": {"type": "string"},
            "radius_m": {"type": "number", "minimum": 10, "maximum": 10000},
            "dwell_s": {"type": "number"}, "opening_hours": {"type": "string"},
            "timezone": {"type": "string"}, "enabled": {"type": "boolean"}}},
    },
}


# errors every /v1 route may answer (each authenticates its caller and validates its input)
PROBLEMS = {401: problem("missing, invalid, expired or replaced token"),
            403: problem("this token may not do this (admin-only route, or another device's or customer's data)"),
            404: problem("no such resource (or route)"),
            422: problem("invalid input; `errors` lists each invalid field"),
            429: problem("this device token or API key is over its rate limit; `Retry-After` says when to retry")}
class DeviceRegistrationOut(BaseModel):
    device_id: str
    customer_id: str
    platform: str
    timezone: str
    locale: str | None = Field(description="canonical BCP 47; null when the app sent none")
    registered_at: str = Field(json_schema_extra=RFC3339)
    location_consent: bool


class LocationDataErasureOut(BaseModel):
    customer_id: str
    devices_removed: int
    events_dropped: int
