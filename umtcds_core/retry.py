"""The project's one retry/backoff policy: exponential backoff with jitter, honouring ``Retry-After``.

Used by the crawler (``fetch.Fetcher``: 429/503 from a campus web server) and the LLM clients
(``llm.call_with_retries``: 429/5xx/timeouts from an API). Each caller decides *what* is retryable; this module decides
*how long to wait*.
"""

from __future__ import annotations

import email.utils
import random
import time
from dataclasses import dataclass
from typing import Any


@dataclass
class RetryPolicy:
    """Exponential backoff with jitter: wait ``base * 2**attempt`` (capped at ``max_delay``) times a random factor in
    [0.5, 1], or what ``Retry-After`` asks (capped at ``max_retry_after``)."""

    max_attempts: int = 6
    base_delay: float = 1.0
    max_delay: float = 30.0
    max_retry_after: float = 120.0

    def delay(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(retry_after, self.max_retry_after)
        return min(self.max_delay, self.base_delay * 2**attempt) * random.uniform(0.5, 1.0)


def parse_retry_after(headers: Any, now: float | None = None) -> float | None:
    """Seconds to wait from ``Retry-After`` (seconds or an HTTP date) or ``retry-after-ms``; None when absent."""
    try:
        ms = headers.get("retry-after-ms")
        if ms is not None:
            return max(0.0, float(ms) / 1000)
        value = headers.get("retry-after")
    except AttributeError:
        return None
    if value is None:
        return None
    value = str(value).strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))
