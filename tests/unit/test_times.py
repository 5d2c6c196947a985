"""kernel.times: RFC 3339 out (UTC, `Z`, milliseconds), RFC 3339 with an offset or epoch seconds in."""
from __future__ import annotations

import pytest
from hypothesis import given, strategies as st
from pydantic import BaseModel, ValidationError

from vicino.services.kernel.times import BadInstant, InstantIn, parse_instant, rfc3339, rfc3339_fields


def test_rfc3339_is_utc_with_z_to_the_millisecond():
    assert rfc3339(1_765_000_000.1234) == "2025-12-06T05:46:40.123Z" and rfc3339(1_765_000_000.1239).endswith(".124Z")
    assert rfc3339(0) == "1970-01-01T00:00:00.000Z" and rfc3339(None) is None
    assert rfc3339_fields({"at": 1.5, "n": 2, "gone": None}, "at", "gone", "absent") == \
        {"at": "1970-01-01T00:00:01.500Z", "n": 2, "gone": None}


@given(st.integers(min_value=0, max_value=10 ** 14 - 1))
def test_a_written_millisecond_reads_back_exactly(ms):
    assert round(parse_instant(rfc3339(ms / 1000)) * 1000) == ms


@pytest.mark.parametrize("text, expected", [
    ("2025-12-06T05:46:40Z", 1_765_000_000.0), ("2025-12-06t05:46:40z", 1_765_000_000.0),
    ("2025-12-06T06:46:40+01:00", 1_765_000_000.0), ("2025-12-06T05:46:40.5Z", 1_765_000_000.5),
    (" 1765000000 ", 1_765_000_000.0), ("1765000000.25", 1_765_000_000.25), (1_765_000_000, 1_765_000_000.0),
    (1.5, 1.5)])
def test_either_form_is_read(text, expected):
    assert parse_instant(text) == expected


@pytest.mark.parametrize("value, words", [
    ("2025-12-06T05:46:40", "UTC offset"), ("2025-12-06", "UTC offset"), ("yesterday", "not RFC 3339"),
    ("2025-13-06T05:46:40Z", "not RFC 3339"), ("", "not RFC 3339"), (True, "boolean"), (None, "not NoneType"),
    (1_765_000_000_000, "milliseconds"), (-1, "before 1970"), (float("nan"), "finite"), ("inf", "finite"),
    (10 ** 400, "out of range")])
def test_anything_else_is_refused_with_a_reason(value, words):
    with pytest.raises(BadInstant, match=words):
        parse_instant(value)


def test_the_field_type_reads_either_form_and_documents_both():
    class Body(BaseModel):
        ts: InstantIn

    assert Body(ts="2025-12-06T05:46:40Z").ts == Body(ts=1_765_000_000).ts == 1_765_000_000.0
    with pytest.raises(ValidationError, match="UTC offset"):
        Body(ts="2025-12-06T05:46:40")
    schema = Body.model_json_schema()["properties"]["ts"]
    assert {"type": "string", "format": "date-time"} in schema["anyOf"] and {"type": "number"} in schema["anyOf"]
