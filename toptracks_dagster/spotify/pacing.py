"""Pacing shared by every worker of a Spotify client: the request rate, 429 pauses, retries and the request cap.

Hand-written because no kept library does it: rate-limit libraries (pyrate-limiter, ratelimit, limits) enforce a
fixed rate per caller, and none pauses all callers on a server's Retry-After or adapts the rate to 429s; urllib3's
Retry sleeps only in the thread that got the 429. See docs/spotify-client.md.
"""

from __future__ import annotations

import threading
import time
from typing import Callable

from urllib3.util.retry import Retry

from toptracks_dagster.spotify.errors import SpotifyBudgetExhausted, _Stopped

_NEVER = threading.Event()  # the stop signal of calls made outside iter_top_tracks: never set


class RequestPacer:
    """Spaces requests across all threads to a rate, and holds all of them during a 429's Retry-After.

    Hand-written: see the module docstring for why no rate-limit library fits. Behaviour:
    - requests are spaced 1/rate apart (no start-up burst, no burst after an idle spell), at `headroom` below
      the configured rate, so scheduling jitter of a few milliseconds never tips a server's rolling window
      over its limit;
    - a 429 sets a pause every thread honours, including threads already sleeping towards a slot that now
      falls inside the pause (they queue again behind it);
    - AIMD: the rate halves once per congestion event (a 429 on a request sent before the last decrease is
      the same event, so a burst of 429s from in-flight requests halves it once), not below `min_rate`, and
      climbs back by 1 % of the configured rate per success.
    """

    def __init__(self, requests_per_second: float | None, min_rate: float = 0.5, headroom: float = 0.03):
        self.max_rate = requests_per_second if requests_per_second and requests_per_second > 0 else None
        self.rate = self.max_rate
        self._min_rate = min(min_rate, self.max_rate) if self.max_rate else min_rate
        self._spacing_factor = 1.0 / (1.0 - min(max(headroom, 0.0), 0.5))
        self._lock = threading.Lock()
        self._next_slot = 0.0
        self._paused_until = 0.0
        self._epoch = 0  # bumped by every rate decrease

    def wait(self, stop: threading.Event = _NEVER) -> tuple[float, int]:
        """Block until this thread may send; returns (seconds waited, rate epoch to pass to `pause`).

        Raises _Stopped as soon as `stop` is set.
        """
        waited = 0.0
        while True:
            if stop.is_set():
                raise _Stopped("fetch stopped after an error in another worker")
            with self._lock:
                now = time.monotonic()
                start = max(now, self._paused_until)
                if self.rate:
                    start = max(start, self._next_slot)
                    self._next_slot = start + self._spacing_factor / self.rate
                epoch = self._epoch
            delay = start - now
            if delay <= 0:
                return waited, epoch
            if stop.wait(delay):
                raise _Stopped("fetch stopped after an error in another worker")
            waited += delay
            with self._lock:
                if time.monotonic() >= self._paused_until:
                    return waited, self._epoch
            # A 429 arrived while this thread slept and the pause is still on: take a new slot behind it.

    def pause(self, seconds: float, epoch: int) -> bool:
        """Hold every thread for `seconds`; returns True if this 429 started a new congestion event."""
        with self._lock:
            self._paused_until = max(self._paused_until, time.monotonic() + seconds)
            if epoch != self._epoch:
                return False
            self._epoch += 1
            if self.rate:
                self.rate = max(self._min_rate, self.rate / 2)
            return True

    def success(self) -> None:
        if self.rate and self.max_rate and self.rate < self.max_rate:
            with self._lock:
                self.rate = min(self.max_rate, self.rate + max(0.05, self.max_rate / 100))


class RequestAllowance:
    """A hard cap on the HTTP requests one client sends to the API (TOPTRACKS_REQUESTS_PER_DAY's per-run share).

    Every request takes a unit *before* it is sent: first tries, urllib3's retries of 5xx and resets, repeats
    after 401, 429 and malformed bodies. When none is left the request is not sent and SpotifyBudgetExhausted is
    raised, which ends the fetch; outcomes already delivered stay valid. `used` is therefore an upper bound of
    what reached the server (a unit taken for a request that then failed to connect still counts).
    Cost: one lock acquisition per request.
    """

    def __init__(self, limit: int | None):
        self.limit = limit
        self.used = 0
        self._lock = threading.Lock()

    def take(self) -> None:
        with self._lock:
            if self.limit is not None and self.used >= self.limit:
                raise SpotifyBudgetExhausted(f"request allowance of {self.limit} spent: no further request sent")
            self.used += 1


class _PacedRetry(Retry):
    """urllib3's Retry (it decides what to retry, counts tries and computes the exponential backoff with
    jitter) whose sleep also takes a pacer slot, so transport retries respect the shared rate and 429 pauses,
    and stop at once when the fetch is doomed. Only `sleep` and `new` are overridden."""

    pacer: RequestPacer | None = None
    allowance: RequestAllowance | None = None
    current_stop: Callable[[], threading.Event] = staticmethod(lambda: _NEVER)

    def new(self, **kw):  # type: ignore[override]
        retry = super().new(**kw)
        retry.pacer, retry.allowance, retry.current_stop = self.pacer, self.allowance, self.current_stop
        return retry

    def sleep(self, response=None) -> None:  # type: ignore[override]
        # Retry-After is not honoured here (respect_retry_after_header=False): 429 belongs to the shared pacer.
        stop = self.current_stop()
        if stop.wait(self.get_backoff_time()):
            raise _Stopped("fetch stopped after an error in another worker")
        if self.pacer is not None:
            self.pacer.wait(stop)
        if self.allowance is not None:
            self.allowance.take()  # the retry about to be sent
