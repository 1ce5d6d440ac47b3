"""Counters that worker threads add to at once (Spotify fetch stats, DynamoDB load stats)."""

from __future__ import annotations

import threading
from dataclasses import fields


class ThreadSafeCounters:
    """Base for a @dataclass of numeric counters: `add(name=delta, ...)` atomically, read with `as_dict()`."""

    def __post_init__(self) -> None:
        self._lock = threading.Lock()

    def add(self, **deltas: float) -> None:
        with self._lock:
            for name, delta in deltas.items():
                setattr(self, name, getattr(self, name) + delta)

    def as_dict(self) -> dict[str, float]:
        with self._lock:
            return {f.name: getattr(self, f.name) for f in fields(self)}

    snapshot = as_dict
