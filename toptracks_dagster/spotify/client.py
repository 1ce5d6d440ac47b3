"""A Spotify Web API client for "Get Artist's Top Tracks" that survives the real API.

What comes from libraries: connection pooling (requests), retries with exponential backoff and jitter on
5xx, resets and timeouts (urllib3 `Retry`). What is written here, because no kept library does it:
- one client-credentials token per client, shared by all threads, refreshed before expiry and once on 401;
- a request pacer shared by all threads: spaces requests to the configured rate, and on a 429 pauses *every*
  worker for Retry-After (per-request retry libraries only pause the request that got the 429) and lowers the
  rate, which then climbs back after successes;
- the error policy: 404 is an outcome, 403 and bad credentials stop everything, a Retry-After above the cap
  fails fast with the wait in the message instead of sleeping for an hour.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from typing import Callable, Iterable, Iterator

import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from toptracks_dagster.artists_db.ids import is_valid_artist_id


class SpotifyError(RuntimeError):
    """Base of every error this client raises."""


class SpotifyCredentialsError(SpotifyError):
    """The token endpoint rejected the client credentials (the message carries the OAuth error, never the secret)."""


class SpotifyAccessDenied(SpotifyError):
    """403 on top-tracks: the app has no access to the endpoint."""


class SpotifyRetryAfterTooLong(SpotifyError):
    """Spotify asked to wait longer than the configured cap."""


class SpotifyRequestFailed(SpotifyError):
    """A request still failed after its bounded tries."""


# A request answered 429 this many times in a row gives up (each wait is bounded by the Retry-After cap).
MAX_429_PER_REQUEST = 20

# Errors that no retry can fix: the whole fetch stops at the first one.
FATAL_ERRORS = (SpotifyCredentialsError, SpotifyAccessDenied, SpotifyRetryAfterTooLong)

ACCESS_DENIED_HINT = (
    "Spotify answered 403 to GET /artists/{id}/top-tracks: this app has no access to the top-tracks endpoint. "
    "Since February 2026 Spotify has removed it for apps in Development Mode; only apps with extended quota "
    "keep it. Apply for extended quota in the Spotify developer dashboard, or point SPOTIFY_API_BASE_URL at a "
    "Spotify-compatible endpoint you are allowed to use."
)


def utc_now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass
class TopTracksOutcome:
    """What one (artist, market) request came back with: tracks (200) or a missing artist (404)."""

    artist_id: str
    market: str
    requested_at: str
    status: int
    tracks: list[dict] | None
    error: dict | None = None
    attempts: int = 1
    bytes: int = 0

    def to_json(self) -> dict:
        return asdict(self)


@dataclass
class FetchStats:
    """Counters shared by all workers of one client (guarded by a lock)."""

    requests: int = 0
    status_2xx: int = 0
    status_404: int = 0
    status_429: int = 0
    status_5xx: int = 0
    retries: int = 0
    token_requests: int = 0
    bytes: int = 0
    paused_s: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, **deltas: float) -> None:
        with self._lock:
            for name, delta in deltas.items():
                setattr(self, name, getattr(self, name) + delta)

    def snapshot(self) -> dict[str, float]:
        with self._lock:
            return {f.name: getattr(self, f.name) for f in fields(self) if not f.name.startswith("_")}


class AccessTokenProvider:
    """One client-credentials token shared by all threads; refreshed shortly before it expires."""

    def __init__(self, session: requests.Session, token_url: str, client_id: str, client_secret: str,
                 timeout: tuple[float, float], stats: FetchStats):
        self._session = session
        self._token_url = token_url
        self._client_id = client_id
        self._client_secret = client_secret
        self._timeout = timeout
        self._stats = stats
        self._lock = threading.Lock()
        self._token: str | None = None
        self._refresh_at = 0.0

    def get(self) -> str:
        with self._lock:
            if self._token is None or time.monotonic() >= self._refresh_at:
                self._token, lifetime = self._request_token()
                # Refresh a little early: 10 % of the lifetime, at most a minute.
                self._refresh_at = time.monotonic() + lifetime - min(60.0, lifetime / 10)
            return self._token

    def invalidate(self, token: str) -> None:
        """Drop `token` after a 401 (unless another thread already replaced it)."""
        with self._lock:
            if self._token == token:
                self._token = None

    def _request_token(self) -> tuple[str, float]:
        self._stats.add(token_requests=1)
        try:
            response = self._session.post(
                self._token_url,
                data={"grant_type": "client_credentials"},
                auth=(self._client_id, self._client_secret),
                timeout=self._timeout,
            )
        except requests.RequestException as error:
            raise SpotifyRequestFailed(f"Spotify token endpoint {self._token_url} unreachable: {type(error).__name__}") from None
        body = _json_or_none(response)
        if response.status_code in (400, 401) and isinstance(body, dict) and "error" in body:
            raise SpotifyCredentialsError(
                f"Spotify token endpoint {self._token_url} rejected client id {self._client_id!r}: "
                f"{body.get('error')}: {body.get('error_description', '')} "
                "(check SPOTIFY_CLIENT_ID / SPOTIFY_CLIENT_SECRET)"
            )
        if response.status_code != 200 or not isinstance(body, dict) or not isinstance(body.get("access_token"), str):
            raise SpotifyRequestFailed(
                f"Spotify token endpoint {self._token_url} answered HTTP {response.status_code} without a token"
            )
        return body["access_token"], float(body.get("expires_in") or 3600)


class RequestPacer:
    """Spaces requests across all threads to a rate, and holds all of them during a 429's Retry-After.

    The rate follows AIMD: halved on each 429 (not below `min_rate`), and it climbs back towards the
    configured rate by a small step after each success.
    """

    def __init__(self, requests_per_second: float | None, min_rate: float = 1.0):
        self.max_rate = requests_per_second if requests_per_second and requests_per_second > 0 else None
        self.rate = self.max_rate
        self._min_rate = min_rate
        self._lock = threading.Lock()
        self._next_slot = 0.0
        self._paused_until = 0.0

    def wait(self) -> float:
        """Block until this thread may send; returns the seconds waited."""
        with self._lock:
            now = time.monotonic()
            start = max(now, self._paused_until)
            if self.rate:
                start = max(start, self._next_slot)
                self._next_slot = start + 1.0 / self.rate
        delay = start - now
        if delay > 0:
            time.sleep(delay)
        return max(delay, 0.0)

    def pause(self, seconds: float) -> None:
        with self._lock:
            self._paused_until = max(self._paused_until, time.monotonic() + seconds)
            if self.rate:
                self.rate = max(self._min_rate, self.rate / 2)

    def success(self) -> None:
        if self.rate and self.max_rate and self.rate < self.max_rate:
            with self._lock:
                self.rate = min(self.max_rate, self.rate + max(0.05, self.max_rate / 100))


class SpotifyClient:
    """Thread-safe top-tracks client. Use `iter_top_tracks` for many artists (parallel, ordered, bounded memory)."""

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
        connect_timeout_s: float = 5.0,
        read_timeout_s: float = 20.0,
        log: Callable[[str], None] | None = None,
    ):
        self.api_base_url = api_base_url.rstrip("/")
        self.concurrency = max(1, concurrency)
        self.max_retry_after_s = max_retry_after_s
        self.max_attempts = max(1, max_attempts)
        self._backoff_s = backoff_s
        self._timeout = (connect_timeout_s, read_timeout_s)
        self._log = log or (lambda message: None)
        self.stats = FetchStats()
        self.pacer = RequestPacer(requests_per_second)
        self._stop = threading.Event()

        retry = Retry(
            total=self.max_attempts - 1,
            backoff_factor=backoff_s,
            backoff_jitter=backoff_s,
            backoff_max=10.0,
            status_forcelist=(500, 502, 503, 504),
            allowed_methods=("GET", "POST"),
            respect_retry_after_header=False,  # 429 is handled by the shared pacer, never by one thread
            raise_on_status=False,
        )
        self._session = requests.Session()
        adapter = HTTPAdapter(pool_connections=2, pool_maxsize=self.concurrency + 2, max_retries=retry)
        self._session.mount("http://", adapter)
        self._session.mount("https://", adapter)
        self._tokens = AccessTokenProvider(self._session, token_url, client_id, client_secret, self._timeout, self.stats)

    def close(self) -> None:
        self._session.close()

    def __enter__(self) -> "SpotifyClient":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def check_credentials(self) -> None:
        """Fetch a token now, so bad credentials fail before any artist is requested."""
        self._tokens.get()

    def top_tracks(self, artist_id: str, market: str) -> TopTracksOutcome:
        if not is_valid_artist_id(artist_id):
            # Ids are screened upstream; this guard keeps an unvalidated id out of the URL path regardless.
            raise ValueError(f"refusing to request malformed artist id {artist_id!r}")
        url = f"{self.api_base_url}/artists/{artist_id}/top-tracks"
        attempts = 0
        refreshed_after_401 = False
        rate_limited = 0
        last_problem = ""
        while True:
            if self._stop.is_set():
                raise SpotifyError("fetch stopped after a fatal error in another worker")
            attempts += 1
            self.stats.add(paused_s=self.pacer.wait())
            token = self._tokens.get()
            requested_at = utc_now_iso()
            try:
                response = self._session.get(
                    url, params={"market": market}, headers={"Authorization": f"Bearer {token}"}, timeout=self._timeout
                )
            except requests.RequestException as error:
                self.stats.add(requests=1, retries=self.max_attempts - 1)
                raise SpotifyRequestFailed(
                    f"top-tracks for artist {artist_id} market {market}: {type(error).__name__} after "
                    f"{self.max_attempts} tries ({_short(error)})"
                ) from None
            status = response.status_code
            retried = len(response.raw.retries.history) if getattr(response.raw, "retries", None) else 0
            self.stats.add(requests=1, retries=retried, bytes=len(response.content))
            body = _json_or_none(response)

            if status == 200:
                tracks = body.get("tracks") if isinstance(body, dict) else None
                if isinstance(tracks, list) and all(isinstance(t, dict) for t in tracks):
                    self.stats.add(status_2xx=1)
                    self.pacer.success()
                    return TopTracksOutcome(artist_id, market, requested_at, 200, tracks, None, attempts, len(response.content))
                last_problem = "malformed JSON body (no 'tracks' list)"
            elif status == 404:
                self.stats.add(status_404=1)
                self.pacer.success()
                return TopTracksOutcome(artist_id, market, requested_at, 404, None, _api_error(body, 404), attempts, len(response.content))
            elif status == 401 and not refreshed_after_401:
                # Expired or revoked token: get a new one once, then retry this request.
                self._tokens.invalidate(token)
                refreshed_after_401 = True
                attempts -= 1
                continue
            elif status == 401:
                raise SpotifyCredentialsError(
                    f"Spotify still answers 401 ({_api_error(body, 401)['message']}) after a token refresh"
                )
            elif status == 403:
                self._stop.set()
                raise SpotifyAccessDenied(f"{ACCESS_DENIED_HINT} (API message: {_api_error(body, 403)['message']})")
            elif status == 429:
                self.stats.add(status_429=1)
                rate_limited += 1
                wait_s = _retry_after_seconds(response)
                if rate_limited > MAX_429_PER_REQUEST:
                    raise SpotifyRequestFailed(
                        f"top-tracks for artist {artist_id} market {market}: still 429 after {rate_limited} waits"
                    )
                if wait_s > self.max_retry_after_s:
                    self._stop.set()
                    raise SpotifyRetryAfterTooLong(
                        f"Spotify rate limit: asked to wait {wait_s:.0f} s (Retry-After), above the cap of "
                        f"{self.max_retry_after_s:.0f} s (SPOTIFY_MAX_RETRY_AFTER_S); failing now instead of "
                        "sleeping. Re-run after the wait, or lower SPOTIFY_REQUESTS_PER_SECOND."
                    )
                self._log(f"Spotify answered 429: all workers pause {wait_s:.1f} s (Retry-After); "
                          f"rate lowered to {self.pacer.rate or 0:.1f} req/s")
                self.pacer.pause(wait_s)
                attempts -= 1  # a 429 is not a failed try; the cap above bounds the wait
                continue
            elif status >= 500:
                self.stats.add(status_5xx=1)
                raise SpotifyRequestFailed(
                    f"top-tracks for artist {artist_id} market {market}: HTTP {status} "
                    f"({_api_error(body, status)['message']}) after {retried + 1} tries"
                )
            else:
                raise SpotifyRequestFailed(
                    f"top-tracks for artist {artist_id} market {market}: unexpected HTTP {status} "
                    f"({_api_error(body, status)['message']})"
                )

            if attempts >= self.max_attempts:
                raise SpotifyRequestFailed(
                    f"top-tracks for artist {artist_id} market {market}: {last_problem} after {attempts} tries"
                )
            self.stats.add(retries=1)
            time.sleep(self._backoff_s * 2 ** (attempts - 1) * random.uniform(0.5, 1.5))

    def iter_top_tracks(self, artist_ids: Iterable[str], market: str) -> Iterator[TopTracksOutcome]:
        """Outcomes in the order of `artist_ids`, fetched by `concurrency` threads, at most 2x that in flight."""
        self._stop.clear()
        ids = iter(artist_ids)
        in_flight: deque[Future[TopTracksOutcome]] = deque()
        with ThreadPoolExecutor(self.concurrency, thread_name_prefix="spotify") as pool:

            def submit_next() -> None:
                artist_id = next(ids, None)
                if artist_id is not None:
                    in_flight.append(pool.submit(self.top_tracks, artist_id, market))

            for _ in range(self.concurrency * 2):
                submit_next()
            try:
                while in_flight:
                    outcome = in_flight.popleft().result()
                    submit_next()
                    yield outcome
            except BaseException:
                self._stop.set()
                for future in in_flight:
                    future.cancel()
                raise


def _json_or_none(response: requests.Response) -> object:
    try:
        return json.loads(response.content)
    except ValueError:
        return None


def _api_error(body: object, status: int) -> dict:
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        return {"status": error.get("status", status), "message": str(error.get("message", ""))}
    return {"status": status, "message": f"HTTP {status}"}


def _retry_after_seconds(response: requests.Response) -> float:
    try:
        return max(0.0, float(response.headers.get("Retry-After", "1")))
    except ValueError:
        return 1.0


def _short(error: Exception) -> str:
    text = str(error)
    return text if len(text) <= 200 else text[:200] + "..."
