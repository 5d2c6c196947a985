"""The log provider: writes the message it would send (the default of `make run`, so the demo
shows what a phone would get). Never prints the push token."""
from __future__ import annotations

import logging
import sys

import orjson

from ...domain.messages import Notification
from ...domain.outcomes import Delivered, ProviderOutcome

log = logging.getLogger("vicino.push.log_provider")


class LogProvider:
    name = "log"

    def __init__(self, stream=None) -> None:
        self._stream = stream or sys.stdout

    async def send(self, n: Notification, attempt: int) -> ProviderOutcome:
        line = {"push": {"delivery_id": n.delivery_id, "platform": n.platform, "device_id": n.device_id,
                         "title": n.title, "body": n.body, "image_url": n.image_url, "data": n.data,
                         "collapse_key": n.collapse_key}}
        self._stream.write(orjson.dumps(line).decode() + "\n")
        self._stream.flush()
        return Delivered(n.delivery_id)
