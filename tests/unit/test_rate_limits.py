"""The pure side of rate limits: intervals, bucket keys, and what a refusal tells the client."""
from __future__ import annotations

import re

import pytest

from vicino.services.kernel.rate_limits import (DEVICE, DEVICE_LOCATIONS, DEVICE_TOKEN, KEY, RateLimit, Verdict, bucket_key,
                                               device_class)
from vicino.services.geo.settings import GeoSettings


def test_interval_is_the_time_one_request_costs():
    assert RateLimit(per_s=1, burst=5).interval_us == 1_000_000
    assert RateLimit(per_s=500, burst=5).interval_us == 2_000
    assert RateLimit(per_s=1e9, burst=5).interval_us == 1  # never 0: a zero interval would admit everything


def test_a_bucket_key_has_its_own_hash_tag_and_no_client_id():
    key = bucket_key(DEVICE_LOCATIONS, "phone-{evil}:x")
    assert re.fullmatch(r"vicino:\{rl:[0-9a-f]{16}\}:dev-loc", key)
    assert "evil" not in key
    assert bucket_key(DEVICE, "a") != bucket_key(DEVICE_LOCATIONS, "a") != bucket_key(DEVICE, "b")
    # the tag differs per caller: buckets spread over a Cluster's slots
    assert bucket_key(KEY, "a").split("}")[0] != bucket_key(KEY, "b").split("}")[0]


@pytest.mark.parametrize("wait_us, seconds", [(0, 1), (1, 1), (999_999, 1), (1_000_000, 1), (1_000_001, 2),
                                               (59_500_000, 60)])
def test_retry_after_is_whole_seconds_rounded_up_and_never_zero(wait_us, seconds):
    assert Verdict(False, 0, wait_us, wait_us).retry_after_s == seconds


def test_refusal_headers():
    h = Verdict(False, 0, 2_500_000, 120_000_000).headers(RateLimit(per_s=1, burst=120))
    assert h == {"Retry-After": "3", "RateLimit-Limit": "120", "RateLimit-Remaining": "0",
                 "RateLimit-Reset": "120", "RateLimit-Policy": "120;w=120"}


def test_settings_give_one_limit_per_class_and_none_when_off():
    s = GeoSettings(redis_url="redis://x", admin_token="a" * 20, token_secret="b" * 20)
    assert s.rate_limit_policies() == {DEVICE_LOCATIONS: RateLimit(2.0, 120), DEVICE: RateLimit(2.0, 60),
                                       KEY: RateLimit(500.0, 5000), DEVICE_TOKEN: RateLimit(0.01, 5)}
    off = GeoSettings(redis_url="redis://x", admin_token="a" * 20, token_secret="b" * 20, rate_limits=False)
    assert off.rate_limit_policies() == {}


@pytest.mark.parametrize("method, path, kind", [
    ("POST", "/v1/locations", DEVICE_LOCATIONS),
    ("POST", "/v1/devices/phone-1/token", DEVICE_TOKEN),
    ("GET", "/v1/devices/phone-1/token", DEVICE),
    ("POST", "/v1/devices/phone-1/token/x", DEVICE),
    ("POST", "/v1/devices", DEVICE),
    ("PUT", "/v1/devices/phone-1/push-token", DEVICE),
    ("GET", "/v1/devices/phone-1/regions", DEVICE),
    ("POST", "/v1/stores/token", DEVICE),
])
def test_a_device_request_is_classed_by_route(method, path, kind):
    assert device_class(method, path) == kind
