"""A Spotify Web API client for "Get Artist's Top Tracks" that survives the real API.

requests pools the connections; everything else is this file's one policy, in one place:
- one retry layer: a pair is tried at most `max_attempts` times on 5xx, transport errors, the request deadline
  and unusable bodies, with exponential backoff and jitter (the adapter retries nothing); 429 waits and the one
  token refresh after a 401 are not tries, and at most MAX_429_PER_REQUEST 429s are waited out per pair;
- a pair whose tries are spent is quarantined (an outcome with `error`), so one bad record costs only itself,
  until QUARANTINE_RUN_LIMIT pairs in a row end that way: then the endpoint is down and the fetch stops;
- what no retry can fix is `SpotifyFatal` and stops every worker at once;
- every request has a deadline for connect + all reads, and every body a size limit on its decoded bytes.
Why the pacer and the parallel fetch are hand-written: docs/spotify-client.md.
"""

from __future__ import annotations

import itertools
import json
import random
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, fields
from typing import Callable, Iterable, Iterator

import requests
import urllib3
from requests.adapters import HTTPAdapter
from requests.exceptions import InvalidSchema, InvalidURL, MissingSchema

from toptracks_dagster.common import is_valid_spotify_id, utc_now_iso
from toptracks_dagster.config import PermanentError

MAX_429_PER_REQUEST = 20  # 429s waited out for one pair before the fetch stops (each wait capped by Retry-After)
QUARANTINE_RUN_LIMIT = 20  # this many quarantined pairs in a row mean an outage, not bad records
MAX_BODY_BYTES = 2 * 1024 * 1024  # decoded; a real top-tracks answer is a few tens of KB

ACCESS_DENIED_HINT = (
    "Spotify answered 403 to GET /artists/{id}/top-tracks: this app has no access to the top-tracks endpoint. "
    "Since February 2026 Spotify has removed it for apps in Development Mode; only apps with extended quota "
    "keep it. Apply for extended quota in the Spotify developer dashboard, or point SPOTIFY_API_BASE_URL at a "
    "Spotify-compatible endpoint you are allowed to use."
)


class SpotifyError(RuntimeError):
    """Base of every error this client raises; one that is not SpotifyFatal may pass on a later run."""


class SpotifyFatal(SpotifyError, PermanentError):
    """No retry can fix it (credentials, access, quota, configuration): every worker stops at once."""


class SpotifyBudgetExhausted(SpotifyError):
    """The run's request allowance is spent: no further request was sent."""


class _Stopped(SpotifyError):
    """Raised in a worker once another worker's error has doomed the fetch; never surfaces from iter_pairs."""


class _Unusable(Exception):
    """One try brought no usable answer (transport error, deadline, size limit): retried, then quarantined."""


_NEVER = threading.Event()  # the stop signal of calls made outside iter_pairs: never set


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


@dataclass
class TopTracksOutcome:
    """One (artist, market) pair: tracks (200), a missing artist (404), or quarantined (`error`, status of the
    last answer, 0 when there was none or its body was unusable)."""

    artist_id: str
    market: str
    requested_at: str
    status: int
    tracks: list[dict] | None
    error: dict | None = None
    attempts: int = 1  # HTTP requests sent for this pair, 429 waits and the 401 refresh included
    bytes: int = 0
    history: dict | None = None  # freshness.History of the pair, set by the merge that stores the outcome

    @property
    def quarantined(self) -> bool:
        return self.tracks is None and self.status != 404

    def to_json(self) -> dict:
        # Shallow: the JSON encoder walks the tracks itself (asdict would deep-copy every track first).
        return {name: getattr(self, name) for name in _OUTCOME_FIELDS}


_OUTCOME_FIELDS = tuple(f.name for f in fields(TopTracksOutcome))


@dataclass
class _Pair:
    """One (artist, market) pair being fetched, and what its requests came to so far."""

    artist_id: str
    market: str
    url: str
    sent: int = 0  # every HTTP request for this pair (TopTracksOutcome.attempts)
    limited: int = 0  # 429s answered to it
    refreshed: bool = False  # the token was refreshed once after a 401

    @property
    def where(self) -> str:
        return f"top-tracks for artist {self.artist_id} market {self.market}"


@dataclass
class FetchStats(ThreadSafeCounters):
    """Shared by all workers of one client. `requests` counts HTTP requests to the API, repeats included;
    `retries` the part of them that repeated an earlier request of the same pair."""

    requests: int = 0
    status_2xx: int = 0
    status_401: int = 0
    status_404: int = 0
    status_429: int = 0
    status_5xx: int = 0
    transport_errors: int = 0  # resets, timeouts, the request deadline, bodies cut short or above the size limit
    malformed_bodies: int = 0
    retries: int = 0
    token_requests: int = 0
    bytes: int = 0
    paused_s: float = 0.0  # summed over workers: time spent waiting for the pacer (rate spacing and 429 pauses)
    quarantined: int = 0


class RequestPacer:
    """Spaces requests of all threads 1/rate apart (at `headroom` below the rate, so scheduling jitter never tips
    a server's rolling window) and holds all of them during a 429's Retry-After. AIMD: the rate halves once per
    congestion event (a 429 on a request sent before the last decrease is the same event), not below `min_rate`,
    and climbs back by 1 % of the configured rate per success."""

    def __init__(self, requests_per_second: float | None, min_rate: float = 0.5, headroom: float = 0.03):
        self.max_rate = requests_per_second if requests_per_second and requests_per_second > 0 else None
        self.rate = self.max_rate
        self._min_rate = min(min_rate, self.max_rate) if self.max_rate else min_rate
        self._spacing = 1.0 / (1.0 - min(max(headroom, 0.0), 0.5))
        self._lock = threading.Lock()
        self._next_slot = 0.0
        self._paused_until = 0.0
        self._epoch = 0  # bumped by every rate decrease

    def wait(self, stop: threading.Event = _NEVER) -> tuple[float, int]:
        """Block until this thread may send: (seconds waited, rate epoch for `pause`); _Stopped once `stop` is set."""
        waited = 0.0
        while True:
            with self._lock:
                now = time.monotonic()
                start = max(now, self._paused_until)
                if self.rate:
                    start = max(start, self._next_slot)
                    self._next_slot = start + self._spacing / self.rate
                epoch = self._epoch
            if stop.wait(max(0.0, start - now)):
                raise _Stopped("fetch stopped after an error in another worker")
            waited += max(0.0, start - now)
            with self._lock:
                if time.monotonic() >= self._paused_until:  # else a 429 came in meanwhile: queue behind it
                    return waited, epoch if start <= now else self._epoch

    def pause(self, seconds: float, epoch: int) -> bool:
        """Hold every thread for `seconds`; True if this 429 started a new congestion event."""
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
    """A hard cap on the HTTP requests one client sends, repeats included: a unit is taken before each request,
    so `used` bounds what reached the server, and none left raises SpotifyBudgetExhausted instead of sending."""

    def __init__(self, limit: int | None):
        self.limit = limit
        self.used = 0
        self._lock = threading.Lock()

    def take(self) -> None:
        with self._lock:
            if self.limit is not None and self.used >= self.limit:
                raise SpotifyBudgetExhausted(f"request allowance of {self.limit} spent: no further request sent")
            self.used += 1


def _api_error(body: object) -> dict | None:
    """Spotify's `{"error": {"status", "message"}}`, or None when the body is not one."""
    error = body.get("error") if isinstance(body, dict) else None
    return (
        {"status": error.get("status"), "message": str(error.get("message", ""))} if isinstance(error, dict) else None
    )


def _message(body: object, status: int) -> str:
    return (_api_error(body) or {"message": f"HTTP {status}"})["message"]


def _json(raw: bytes) -> object:
    try:
        return json.loads(raw)
    except ValueError:
        return None


def _described(error: BaseException) -> str:
    return f"{type(error).__name__}: {str(error)[:300]}"


class SpotifyClient:
    """Thread-safe top-tracks client; `iter_pairs` fetches many pairs in parallel, in order, in bounded memory."""

    def __init__(
        self,
        *,
        client_id: str,
        client_secret: str,
        api_base_url: str,
        token_url: str,
        concurrency: int = 8,
        requests_per_second: float | None = None,
        max_retry_after_s: float = 300.0,
        max_attempts: int = 5,
        backoff_s: float = 0.3,
        backoff_max_s: float = 10.0,
        connect_timeout_s: float = 5.0,
        read_timeout_s: float = 20.0,
        request_timeout_s: float = 30.0,
        rate_headroom: float = 0.03,
        max_requests: int | None = None,
        log: Callable[[str], None] | None = None,
    ):
        self.api_base_url = api_base_url.rstrip("/")
        self.token_url = token_url
        self.concurrency = max(1, concurrency)
        self.max_retry_after_s = max_retry_after_s
        self.max_attempts = max(1, max_attempts)
        self.request_timeout_s = request_timeout_s
        self._backoff = (backoff_s, backoff_max_s)
        self._timeout = (min(connect_timeout_s, request_timeout_s), min(read_timeout_s, request_timeout_s))
        self._log = log or (lambda message: None)
        self._credentials = (client_id, client_secret)
        self.stats = FetchStats()
        self.pacer = RequestPacer(requests_per_second, headroom=rate_headroom)
        self.allowance = RequestAllowance(max_requests)
        self._session = requests.Session()
        adapter = HTTPAdapter(pool_maxsize=self.concurrency + 2, max_retries=0)  # retries are this client's
        for scheme in ("http://", "https://"):
            self._session.mount(scheme, adapter)
        self._token_lock = threading.Lock()  # held while fetching, so one thread refreshes and the others wait
        self._token: str | None = None
        self._refresh_at = 0.0

    def close(self) -> None:
        self._session.close()

    def __enter__(self) -> "SpotifyClient":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _send(self, method: str, url: str, **kwargs) -> tuple[requests.Response, bytes]:
        """(response, decoded body) within the request deadline and the size limit, else _Unusable."""
        deadline = time.monotonic() + self.request_timeout_s
        try:
            response = self._session.request(method, url, stream=True, timeout=self._timeout, **kwargs)
        except (InvalidURL, MissingSchema, InvalidSchema) as error:
            raise SpotifyFatal(f"unusable URL {url} (SPOTIFY_API_BASE_URL, SPOTIFY_TOKEN_URL): {error}") from None
        except requests.RequestException as error:
            raise _Unusable(_described(error)) from None
        chunks, size = [], 0
        late = f"no complete answer within the request deadline of {self.request_timeout_s:g} s"
        try:
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise _Unusable(late)
                sock = getattr(response.raw.connection, "sock", None)
                if sock is not None:  # a read that would outlast the deadline ends at it
                    sock.settimeout(min(remaining, self._timeout[1]))
                try:  # read1: what one socket read brings, decoded 64 KiB at a time (a gzip bomb stays small)
                    chunk = response.raw.read1(64 * 1024, decode_content=True)
                except (urllib3.exceptions.HTTPError, OSError) as error:
                    timed_out = isinstance(error, (urllib3.exceptions.ReadTimeoutError, TimeoutError))
                    if timed_out and remaining <= self._timeout[1]:
                        raise _Unusable(late) from None
                    raise _Unusable(f"body broke off ({_described(error)})") from None
                if not chunk:
                    return response, b"".join(chunks)
                size += len(chunk)
                if size > MAX_BODY_BYTES:
                    raise _Unusable(f"body above the size limit of {MAX_BODY_BYTES // 1024} KiB (decoded)")
                chunks.append(chunk)
        except BaseException:
            response.close()  # the connection holds an unread body: never back to the pool
            raise

    def check_credentials(self) -> None:
        """Fetch a token now, so bad credentials fail before any artist is requested."""
        self._get_token()

    def _get_token(self) -> str:
        with self._token_lock:
            if self._token is None or time.monotonic() >= self._refresh_at:
                requested = time.monotonic()
                self._token, lifetime = self._request_token()
                # Refresh a little early: 10 % of the lifetime, at most a minute, counted from the request.
                self._refresh_at = requested + lifetime - min(60.0, lifetime / 10)
            return self._token

    def _invalidate_token(self, token: str) -> None:
        with self._token_lock:
            if self._token == token:  # else another thread replaced it already
                self._token = None

    def _request_token(self) -> tuple[str, float]:
        where = f"Spotify token endpoint {self.token_url} (SPOTIFY_TOKEN_URL)"
        for attempt in range(1, self.max_attempts + 1):
            self.stats.add(token_requests=1)
            try:
                response, raw = self._send(
                    "POST", self.token_url, data={"grant_type": "client_credentials"}, auth=self._credentials
                )
            except _Unusable as unusable:
                status, problem = 0, f"is unreachable ({unusable})"
            else:
                body, status = _json(raw), response.status_code
                if status in (400, 401) and isinstance(body, dict) and "error" in body:
                    raise SpotifyFatal(
                        f"{where} rejected client id {self._credentials[0]!r}: {body.get('error')}: "
                        f"{body.get('error_description', '')} (check SPOTIFY_CLIENT_ID / SPOTIFY_CLIENT_SECRET)"
                    )
                if status == 200 and isinstance(body, dict) and isinstance(body.get("access_token"), str):
                    lifetime = body.get("expires_in")
                    lifetime = float(lifetime) if isinstance(lifetime, (int, float)) else 3600.0
                    return body["access_token"], max(1.0, lifetime)
                if status < 500:
                    raise SpotifyFatal(f"{where} answered HTTP {status} without a token")
                problem = f"answered HTTP {status}"
            if attempt < self.max_attempts:
                self._back_off(attempt, _NEVER)
        raise (SpotifyFatal if status == 0 else SpotifyError)(f"{where} {problem} after {self.max_attempts} tries")

    def top_tracks(self, artist_id: str, market: str) -> TopTracksOutcome:
        """One pair: tracks, a 404, or quarantined; a SpotifyError when no retry can help."""
        return self._fetch(artist_id, market, _NEVER)

    def _back_off(self, tries: int, stop: threading.Event) -> None:
        base, cap = self._backoff
        if stop.wait(min(cap, base * 2 ** (tries - 1)) * random.uniform(0.5, 1.5)):
            raise _Stopped("fetch stopped after an error in another worker")

    def _fetch(self, artist_id: str, market: str, stop: threading.Event) -> TopTracksOutcome:
        """Request one pair until it has an outcome; the policy is in the module docstring."""
        if not is_valid_spotify_id(artist_id):
            # Ids are screened upstream; this guard keeps an unvalidated id out of the URL path regardless.
            raise ValueError(f"refusing to request malformed artist id {artist_id!r}")
        pair = _Pair(artist_id, market, f"{self.api_base_url}/artists/{artist_id}/top-tracks")
        tries = 0
        while True:
            waited, epoch = self.pacer.wait(stop)
            token = self._get_token()
            self.allowance.take()
            pair.sent += 1
            self.stats.add(requests=1, retries=int(pair.sent > 1), paused_s=waited)
            requested_at, raw = utc_now_iso(), b""
            try:
                response, raw = self._send(
                    "GET", pair.url, params={"market": market}, headers={"Authorization": f"Bearer {token}"}
                )
            except _Unusable as unusable:
                self.stats.add(transport_errors=1)
                status, verdict = 0, str(unusable)
            else:
                self.stats.add(bytes=len(raw))
                status, verdict = response.status_code, self._judge(pair, response, _json(raw), token, epoch)
            if verdict is None:  # a 401 refresh or a 429 wait: repeat, not a try
                continue
            if isinstance(verdict, tuple):
                return TopTracksOutcome(artist_id, market, requested_at, status, *verdict, pair.sent, len(raw))
            # A 200 with an unusable body quarantines as 0; an unexpected 4xx is not worth another try.
            status = 0 if status == 200 else status
            tries = tries + 1 if status == 0 or status >= 500 else self.max_attempts
            if tries >= self.max_attempts:
                self.stats.add(quarantined=1)
                self._log(f"{pair.where} quarantined: {verdict} after {tries} tries")
                error = {"status": status, "message": f"{verdict} after {tries} tries"}
                return TopTracksOutcome(artist_id, market, requested_at, status, None, error, pair.sent, len(raw))
            self._back_off(tries, stop)

    def _judge(
        self, pair: _Pair, response: requests.Response, body: object, token: str, epoch: int
    ) -> tuple[list[dict] | None, dict | None] | str | None:
        """One answer: (tracks, error) for the outcome, None to repeat it without a try, a problem to try again,
        or SpotifyFatal."""
        status = response.status_code
        if status == 200:
            tracks = body.get("tracks") if isinstance(body, dict) else None
            if isinstance(tracks, list) and all(isinstance(t, dict) for t in tracks):
                self.stats.add(status_2xx=1)
                self.pacer.success()
                return tracks, None
            self.stats.add(malformed_bodies=1)
            return "malformed body: no JSON object with a 'tracks' list of objects"
        if status == 404:
            self.stats.add(status_404=1)
            if _api_error(body) is None:
                raise SpotifyFatal(
                    f"GET {pair.url} answered 404 without Spotify's error body: SPOTIFY_API_BASE_URL "
                    f"({self.api_base_url}) does not point at a Spotify Web API"
                )
            self.pacer.success()
            return None, _api_error(body)
        if status == 401:
            self.stats.add(status_401=1)
            if pair.refreshed:
                raise SpotifyFatal(f"{pair.where}: Spotify still answers 401 ({_message(body, 401)}) after a refresh")
            self._invalidate_token(token)
            pair.refreshed = True
            return None
        if status == 403:
            raise SpotifyFatal(
                f"{ACCESS_DENIED_HINT} (first refused: artist {pair.artist_id} market {pair.market}; "
                f"API message: {_message(body, 403)})"
            )
        if status == 429:
            self.stats.add(status_429=1)
            pair.limited += 1
            self._on_rate_limited(pair, response, body, epoch)
            return None
        if status >= 500:
            self.stats.add(status_5xx=1)
        return f"HTTP {status} ({_message(body, status)})"

    def _on_rate_limited(self, pair: _Pair, response: requests.Response, body: object, epoch: int) -> None:
        """429: every worker pauses for Retry-After; a quota, or a wait above the cap, is fatal."""
        message = _message(body, 429)
        if "quota" in message.lower():
            raise SpotifyFatal(f"{pair.where}: Spotify answered 429 naming a quota ({message}): no retry helps")
        try:
            wait_s = max(0.0, urllib3.Retry().parse_retry_after(response.headers.get("Retry-After") or "1"))
        except urllib3.exceptions.InvalidHeader:
            wait_s = 1.0
        if wait_s > self.max_retry_after_s:
            raise SpotifyFatal(
                f"Spotify rate limit: asked to wait {wait_s:.0f} s (Retry-After, on {pair.where}), above the cap of "
                f"{self.max_retry_after_s:.0f} s (SPOTIFY_MAX_RETRY_AFTER_S); failing now instead of sleeping. "
                "Re-run after the wait, or lower SPOTIFY_REQUESTS_PER_SECOND."
            )
        if pair.limited > MAX_429_PER_REQUEST:
            raise SpotifyError(f"{pair.where}: still 429 after {MAX_429_PER_REQUEST} waits for Retry-After")
        if self.pacer.pause(wait_s, epoch):
            rate = f"rate lowered to {self.pacer.rate:.2f} req/s" if self.pacer.rate else "no rate configured"
            self._log(f"Spotify answered 429: all workers pause {wait_s:.1f} s (Retry-After); {rate}")

    def iter_top_tracks(self, artist_ids: Iterable[str], market: str) -> Iterator[TopTracksOutcome]:
        return self.iter_pairs((artist_id, market) for artist_id in artist_ids)

    def iter_pairs(self, pairs: Iterable[tuple[str, str]]) -> Iterator[TopTracksOutcome]:
        """Outcomes of (artist id, market) pairs in their order, fetched by `concurrency` threads with at most 2x
        that in flight. The first error in any worker stops them all and is raised (a fatal one in preference);
        QUARANTINE_RUN_LIMIT quarantined pairs in a row raise a SpotifyError naming the endpoint."""
        stop, errors, in_flight, in_a_row = threading.Event(), [], deque(), 0
        remaining = iter(pairs)
        pool = ThreadPoolExecutor(self.concurrency, thread_name_prefix="spotify")

        def work(artist_id: str, market: str) -> TopTracksOutcome:
            try:
                return self._fetch(artist_id, market, stop)
            except _Stopped:
                raise
            except BaseException as error:
                errors.append(error)  # before `stop`, so whoever sees `stop` finds the cause
                stop.set()
                raise

        def cause() -> BaseException:
            return next(
                (e for e in errors if isinstance(e, SpotifyFatal)), errors[0] if errors else SpotifyError("stopped")
            )

        try:
            for pair in itertools.islice(remaining, self.concurrency * 2):
                in_flight.append(pool.submit(work, *pair))
            while in_flight:
                try:
                    outcome = in_flight[0].result(timeout=0.05)
                except FutureTimeout:
                    if stop.is_set():  # a later pair failed: no need to wait for this one
                        raise cause() from None
                    continue
                except BaseException:
                    raise cause() from None
                in_flight.popleft()
                in_a_row = in_a_row + 1 if outcome.quarantined else 0
                if in_a_row >= QUARANTINE_RUN_LIMIT:
                    raise SpotifyError(
                        f"{in_a_row} pairs in a row quarantined at {self.api_base_url}/artists/{{id}}/top-tracks: "
                        f"the endpoint looks down; last: artist {outcome.artist_id} market {outcome.market}: "
                        f"{outcome.error['message']}"
                    )
                for pair in itertools.islice(remaining, 1):
                    in_flight.append(pool.submit(work, *pair))
                yield outcome
        except BaseException:
            stop.set()
            # Fetches still in flight end within their deadline; their results are no longer wanted.
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        pool.shutdown(wait=True)
