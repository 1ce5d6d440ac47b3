"""The Spotify emulator's behaviour knobs (faults, rate limit, token lifetime), switchable at runtime, and its
request counters."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

# Accepted JSON value types per EmulatorSettings annotation (annotations are strings under postponed evaluation).
_SETTING_TYPES: dict[str, tuple[type, ...]] = {
    "float": (int, float),
    "int": (int,),
    "bool": (bool,),
    "int | None": (int, type(None)),
}


@dataclass
class EmulatorSettings:
    """Behaviour knobs, read on every request, so changes apply to the next request. Shares are 0..1."""

    latency_ms: float = 0.0  # added to every API and token response
    rate_limit_requests: int | None = None  # at most this many top-tracks requests per rolling window
    rate_limit_window_s: float = 30.0
    burst_429_count: int = 0  # the next N top-tracks requests get 429 (decremented per 429 served)
    burst_retry_after_s: int = 1  # Retry-After of burst 429s
    error_5xx_share: float = 0.0  # answered 500/502/503
    reset_share: float = 0.0  # connection reset without any response
    slow_share: float = 0.0  # delayed by slow_response_s before answering
    slow_response_s: float = 0.0
    truncated_json_share: float = 0.0  # 200 bodies cut in half (a consistent Content-Length: malformed JSON)
    token_lifetime_s: int = 3600  # expires_in of issued tokens; older tokens get 401
    forbid_all: bool = False  # every top-tracks request gets 403 (Development-Mode apps since Feb 2026)
    seed: int = 0  # seeds the fault draws and, unless a catalog is given, the catalog

    def update(self, changes: Mapping[str, Any]) -> None:
        """Apply named changes all-or-nothing; ValueError on an unknown field or a value of the wrong type."""
        types = {f.name: str(f.type) for f in fields(self)}
        for name, value in changes.items():
            if name not in types:
                raise ValueError(f"unknown setting: {name}")
            # bool is an int subclass, but `true` for a number is a caller's mistake worth rejecting.
            wrong_bool = isinstance(value, bool) and types[name] != "bool"
            if wrong_bool or not isinstance(value, _SETTING_TYPES[types[name]]):
                raise ValueError(f"invalid value for {name}: {value!r}")
        for name, value in changes.items():
            setattr(self, name, value)


@dataclass
class EmulatorStats:
    """Thread-safe request counters (admin requests are never counted); snapshot with as_dict()."""

    requests: int = 0  # top-tracks requests, whatever their outcome (resets included)
    token_requests: int = 0
    other_requests: int = 0  # unknown paths and methods
    by_status: dict[int, int] = field(default_factory=dict)  # every answered non-admin request
    resets: int = 0
    rate_limited: int = 0  # 429s, burst and rolling window
    bytes_sent: int = 0  # response body bytes
    connections: int = 0  # accepted TCP connections (admin ones included): far below requests with keep-alive
    in_flight: int = 0
    peak_in_flight: int = 0  # most non-admin requests served at once: the client's real concurrency
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def as_dict(self) -> dict[str, Any]:
        with self._lock:
            snapshot = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "_lock"}
            snapshot["by_status"] = dict(self.by_status)
        return snapshot

    def reset(self) -> None:
        with self._lock:
            self.requests = self.token_requests = self.other_requests = 0
            self.resets = self.rate_limited = self.bytes_sent = self.connections = 0
            self.by_status = {}
            self.peak_in_flight = self.in_flight  # requests still running finish normally

    def _connection_accepted(self) -> None:
        with self._lock:
            self.connections += 1

    def _begin(self) -> None:
        with self._lock:
            self.in_flight += 1
            self.peak_in_flight = max(self.peak_in_flight, self.in_flight)

    def _end(self, kind: str, status: int | None, body_bytes: int) -> None:
        with self._lock:
            self.in_flight -= 1
            if kind == "top_tracks":
                self.requests += 1
            elif kind == "token":
                self.token_requests += 1
            else:
                self.other_requests += 1
            if status is None:
                self.resets += 1
                return
            self.by_status[status] = self.by_status.get(status, 0) + 1
            if status == 429:
                self.rate_limited += 1
            self.bytes_sent += body_bytes
