"""What a provider's answer means, in a small closed set: every adapter translates its own
protocol's errors into one of these at the edge, and the delivery logic knows nothing else."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Delivered:
    provider_message_id: str | None = None


@dataclass(frozen=True, slots=True)
class RetryLater:
    """Throttled, the provider failing, or unreachable: try again after a pause (at least
    `retry_after_s` when the provider said so)."""

    reason: str
    retry_after_s: float | None = None


@dataclass(frozen=True, slots=True)
class TokenInvalid:
    """The device's push token will never work again: remove it from the device."""

    reason: str


@dataclass(frozen=True, slots=True)
class GiveUp:
    """The message itself is wrong (too big, rejected as invalid): retrying cannot help."""

    reason: str


ProviderOutcome = Delivered | RetryLater | TokenInvalid | GiveUp
