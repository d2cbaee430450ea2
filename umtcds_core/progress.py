"""Progress for long steps: a tqdm bar on the terminal and a JSON file the dashboard polls.

A step started by :mod:`umtcds_core.jobs` gets ``UMTCDS_PROGRESS_FILE`` in its environment; :class:`Progress` then
rewrites that file (atomically, at most a few times per second) with ``done``/``total``/counters/ETA, so the page shows
the same numbers as the CLI without parsing logs.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

from tqdm import tqdm

from .fileio import read_json, write_json_atomic

ENV_VAR = "UMTCDS_PROGRESS_FILE"


class Progress:
    """``with Progress(total, "pages") as p: p.update(1, saved=3)`` — counters are free-form key/values."""

    def __init__(
        self, total: int | None, unit: str = "it", desc: str = "", path: str | None = None, min_interval: float = 0.5
    ):
        self.total = total
        self.unit = unit
        self.desc = desc
        self.done = 0
        self.counters: dict[str, Any] = {}
        self.message = ""
        self.path = path or os.environ.get(ENV_VAR)
        self.min_interval = min_interval
        self.started = time.time()
        self.eta_override: float | None = None
        self._last_write = 0.0
        self._bar = tqdm(total=total, unit=unit, desc=desc, file=sys.stderr, dynamic_ncols=True, disable=None)

    def __enter__(self) -> Progress:
        self._write(force=True)
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def set_total(self, total: int) -> None:
        self.total = total
        self._bar.total = total
        self._bar.refresh()
        self._write(force=True)

    def update(self, n: int = 1, message: str | None = None, **counters: Any) -> None:
        self.done += n
        if message is not None:
            self.message = message
        for k, v in counters.items():
            self.counters[k] = v
        self._bar.update(n)
        if counters:
            self._bar.set_postfix(
                {k: v for k, v in self.counters.items() if not isinstance(v, (dict, list))}, refresh=False
            )
        self._write()

    def set_eta(self, seconds: float | None) -> None:
        """An ETA the step knows better than ``done``/``total`` can (e.g. from tokens while no page has finished
        yet); ``None`` goes back to the rate of finished units."""
        self.eta_override = seconds

    def count(self, **increments: int) -> None:
        """Increment named counters without advancing the bar (e.g. ``count(errors=1)``)."""
        for k, v in increments.items():
            self.counters[k] = self.counters.get(k, 0) + v
        self._write()

    def snapshot(self) -> dict:
        elapsed = time.time() - self.started
        eta = self.eta_override
        if eta is None and self.total and self.done:
            eta = elapsed / self.done * max(0, self.total - self.done)
        return {
            "desc": self.desc,
            "unit": self.unit,
            "done": self.done,
            "total": self.total,
            "elapsed_s": round(elapsed, 2),
            "eta_s": None if eta is None else round(eta, 1),
            "message": self.message,
            "counters": self.counters,
            "time": time.time(),
        }

    def _write(self, force: bool = False) -> None:
        if not self.path:
            return
        now = time.time()
        if force or now - self._last_write >= self.min_interval:
            self._last_write = now
            try:
                write_json_atomic(self.path, self.snapshot(), indent=None)
            except OSError:
                pass  # progress is best effort; never fail the step for it

    def close(self) -> None:
        self._write(force=True)
        self._bar.close()


def read_progress(path: str | os.PathLike) -> dict | None:
    return read_json(path)
