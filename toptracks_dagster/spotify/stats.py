"""What one Spotify client's workers and its token manager count together."""

from __future__ import annotations

from dataclasses import dataclass

from toptracks_dagster.counters import ThreadSafeCounters


@dataclass
class FetchStats(ThreadSafeCounters):
    """Counters shared by all workers of one client (guarded by a lock). `requests` counts HTTP requests sent
    to the API, retries included; `retries` is the part of them that repeated an earlier try."""

    requests: int = 0
    status_2xx: int = 0
    status_401: int = 0
    status_404: int = 0
    status_429: int = 0
    status_5xx: int = 0
    transport_errors: int = 0  # connection resets, timeouts, bodies cut short
    malformed_bodies: int = 0
    retries: int = 0
    token_requests: int = 0
    bytes: int = 0
    paused_s: float = 0.0  # summed over workers: time spent waiting for the pacer (rate spacing and 429 pauses)
