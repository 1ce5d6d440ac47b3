"""A Spotify Web API client for "Get Artist's Top Tracks" that survives the real API.

Libraries do the connection pooling (requests) and the retry decisions and backoff on 5xx, resets and timeouts
(urllib3 `Retry`). Written here: one shared client-credentials token refreshed before expiry and once on 401,
the shared pacer (pacing.py), and the error policy: 404 is an outcome, 403 and bad credentials stop everything,
a Retry-After above the cap fails fast, and the first error in any worker stops the whole fetch. Why each piece
is hand-written: docs/spotify-client.md.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import asdict, dataclass
from typing import Callable, Iterable, Iterator

import requests
from requests.adapters import HTTPAdapter
from urllib3.exceptions import MaxRetryError
from urllib3.util.retry import Retry

from toptracks_dagster.common import is_valid_spotify_id, utc_now_iso
from toptracks_dagster.counters import ThreadSafeCounters
from toptracks_dagster.spotify.errors import (  # noqa: F401  (re-exported: the client's public errors)
    FATAL_ERRORS,
    SpotifyAccessDenied,
    SpotifyBudgetExhausted,
    SpotifyCredentialsError,
    SpotifyError,
    SpotifyRequestFailed,
    SpotifyRetryAfterTooLong,
    SpotifyUnreachable,
    _Stopped,
)
from toptracks_dagster.spotify.pacing import _NEVER, RequestAllowance, RequestPacer, _PacedRetry  # noqa: F401

# A request answered 429 this many times in a row gives up (each wait is bounded by the Retry-After cap).
MAX_429_PER_REQUEST = 20

ACCESS_DENIED_HINT = (
    "Spotify answered 403 to GET /artists/{id}/top-tracks: this app has no access to the top-tracks endpoint. "
    "Since February 2026 Spotify has removed it for apps in Development Mode; only apps with extended quota "
    "keep it. Apply for extended quota in the Spotify developer dashboard, or point SPOTIFY_API_BASE_URL at a "
    "Spotify-compatible endpoint you are allowed to use."
)

_SERVER_ERRORS = (500, 502, 503, 504)
# What requests raises when an answer breaks off after its headers, a part urllib3's Retry does not cover.
_BODY_ERRORS = (
    requests.ConnectionError,
    requests.Timeout,
    requests.exceptions.ChunkedEncodingError,
    requests.exceptions.ContentDecodingError,
)


@dataclass
class TopTracksOutcome:
    """What one (artist, market) request came back with: tracks (200) or a missing artist (404)."""

    artist_id: str
    market: str
    requested_at: str
    status: int
    tracks: list[dict] | None
    error: dict | None = None
    attempts: int = 1  # HTTP requests sent for this pair, transport retries included (429 waits too)
    bytes: int = 0

    def to_json(self) -> dict:
        return asdict(self)


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


class AccessTokenProvider:
    """One client-credentials token shared by all threads; refreshed shortly before it expires.

    The lock is held during the token request, so an expiry makes exactly one thread fetch the new token while
    the others wait for it.
    """

    def __init__(
        self,
        session: requests.Session,
        token_url: str,
        client_id: str,
        client_secret: str,
        timeout: tuple[float, float],
        stats: FetchStats,
    ):
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
                requested = time.monotonic()
                self._token, lifetime = self._request_token()
                # Refresh a little early: 10 % of the lifetime, at most a minute, counted from the request.
                self._refresh_at = requested + lifetime - min(60.0, lifetime / 10)
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
            # The exception text holds no credentials (they travel in a header), but keep it short anyway.
            raise SpotifyUnreachable(
                f"Spotify token endpoint {self._token_url} is unreachable ({_transport_problem(error)}, "
                f"{type(error).__name__}) after retries: check SPOTIFY_TOKEN_URL and the network"
            ) from None
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
        try:
            lifetime = float(body.get("expires_in") or 3600)
        except (TypeError, ValueError):
            lifetime = 3600.0
        return body["access_token"], max(lifetime, 1.0)


class _Run:
    """One iter_top_tracks call: its stop signal and the errors that ended it."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self._lock = threading.Lock()
        self.first_error: BaseException | None = None
        self.fatal: BaseException | None = None

    def fail(self, error: BaseException) -> None:
        with self._lock:
            if self.first_error is None:
                self.first_error = error
            if self.fatal is None and isinstance(error, FATAL_ERRORS):
                self.fatal = error
        self.stop.set()

    def cause(self, error: BaseException | None = None) -> BaseException:
        """The error to raise: the first fatal one, else the first one (never a worker's _Stopped)."""
        with self._lock:
            if self.fatal is not None:
                return self.fatal
            if error is not None and not isinstance(error, _Stopped):
                return error
            return self.first_error or error or SpotifyError("fetch stopped")


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
        backoff_max_s: float = 10.0,
        connect_timeout_s: float = 5.0,
        read_timeout_s: float = 20.0,
        rate_headroom: float = 0.03,
        max_requests: int | None = None,
        log: Callable[[str], None] | None = None,
    ):
        self.api_base_url = api_base_url.rstrip("/")
        self.concurrency = max(1, concurrency)
        self.max_retry_after_s = max_retry_after_s
        self.max_attempts = max(1, max_attempts)
        self._backoff_s = backoff_s
        self._backoff_max_s = backoff_max_s
        self._timeout = (connect_timeout_s, read_timeout_s)
        self._log = log or (lambda message: None)
        self.stats = FetchStats()
        self.pacer = RequestPacer(requests_per_second, headroom=rate_headroom)
        self.allowance = RequestAllowance(max_requests)
        self._worker = threading.local()  # .stop: the stop Event of the fetch the current thread works for

        retry_options = dict(
            total=self.max_attempts - 1,
            backoff_factor=backoff_s,
            backoff_jitter=backoff_s,
            backoff_max=backoff_max_s,
            status_forcelist=_SERVER_ERRORS,
            allowed_methods=("GET", "POST"),
            respect_retry_after_header=False,  # 429 is handled by the shared pacer, never by one thread
            raise_on_status=False,
        )
        api_retry = _PacedRetry(**retry_options)
        api_retry.pacer, api_retry.allowance, api_retry.current_stop = self.pacer, self.allowance, self._current_stop
        self._session = requests.Session()
        adapter = HTTPAdapter(pool_connections=2, pool_maxsize=self.concurrency + 2, max_retries=api_retry)
        self._session.mount("http://", adapter)
        self._session.mount("https://", adapter)
        # The token endpoint (another host in production) is not paced: its retries use a plain Retry.
        self._session.mount(
            token_url, HTTPAdapter(pool_connections=1, pool_maxsize=2, max_retries=Retry(**retry_options))
        )
        self._tokens = AccessTokenProvider(
            self._session, token_url, client_id, client_secret, self._timeout, self.stats
        )

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
        """One (artist, market) pair; 404 is an outcome, anything unrecoverable a SpotifyError."""
        return self._fetch(artist_id, market, _NEVER)

    def _current_stop(self) -> threading.Event:
        return getattr(self._worker, "stop", None) or _NEVER

    def _fetch(self, artist_id: str, market: str, stop: threading.Event) -> TopTracksOutcome:
        if not is_valid_spotify_id(artist_id):
            # Ids are screened upstream; this guard keeps an unvalidated id out of the URL path regardless.
            raise ValueError(f"refusing to request malformed artist id {artist_id!r}")
        where = f"top-tracks for artist {artist_id} market {market}"
        url = f"{self.api_base_url}/artists/{artist_id}/top-tracks"
        tries = 0  # HTTP requests sent for this pair, urllib3's retries included (429s are not tries)
        sent = 0  # every HTTP request for this pair, 429 and 401 repeats included (TopTracksOutcome.attempts)
        refreshed_after_401 = False
        rate_limited = 0
        while True:
            waited, epoch = self.pacer.wait(stop)
            self.stats.add(paused_s=waited)
            token = self._tokens.get()
            self.allowance.take()
            requested_at = utc_now_iso()
            try:
                response = self._session.get(
                    url, params={"market": market}, headers={"Authorization": f"Bearer {token}"}, timeout=self._timeout
                )
            except requests.RequestException as error:
                if _retries_exhausted(error):
                    # urllib3 already spent its tries on resets / timeouts (and maybe 5xx) of this request.
                    self.stats.add(
                        requests=self.max_attempts,
                        retries=self.max_attempts - 1 + (1 if sent else 0),
                        transport_errors=1,
                    )
                    raise SpotifyRequestFailed(
                        f"{where}: {_transport_problem(error)} after {tries + self.max_attempts} tries "
                        f"({_short(error)})"
                    ) from None
                if not isinstance(error, _BODY_ERRORS):  # a bad URL or the like: no retry can help
                    raise SpotifyRequestFailed(f"{where}: {type(error).__name__} ({_short(error)})") from None
                # The body broke off after the headers (urllib3's Retry only covers up to the headers).
                tries += 1
                sent += 1
                self.stats.add(requests=1, retries=1 if sent > 1 else 0, transport_errors=1)
                problem = f"{type(error).__name__} while reading the body"
                self._back_off_or_fail(where, problem, tries, stop)
                continue

            status = response.status_code
            history = response.raw.retries.history if getattr(response.raw, "retries", None) else ()
            this_request = 1 + len(history)
            tries += this_request
            sent += this_request
            self.stats.add(
                requests=this_request,
                retries=this_request - 1 + (1 if sent > this_request else 0),
                status_5xx=sum(1 for h in history if h.status is not None and h.status >= 500)
                + (1 if status >= 500 else 0),
                transport_errors=sum(1 for h in history if h.error is not None),
                bytes=len(response.content),
            )
            body = _json_or_none(response)

            if status == 200:
                tracks = body.get("tracks") if isinstance(body, dict) else None
                if isinstance(tracks, list) and all(isinstance(t, dict) for t in tracks):
                    self.stats.add(status_2xx=1)
                    self.pacer.success()
                    return TopTracksOutcome(
                        artist_id, market, requested_at, 200, tracks, None, sent, len(response.content)
                    )
                self.stats.add(malformed_bodies=1)
                problem = (
                    "malformed JSON body (no 'tracks' list)"
                    if body is None or isinstance(body, dict)
                    else "unexpected JSON body"
                )
                self._back_off_or_fail(where, problem, tries, stop)
                continue
            if status == 404:
                self.stats.add(status_404=1)
                self.pacer.success()
                return TopTracksOutcome(
                    artist_id, market, requested_at, 404, None, _api_error(body, 404), sent, len(response.content)
                )
            if status == 401:
                self.stats.add(status_401=1)
                if refreshed_after_401:
                    raise SpotifyCredentialsError(
                        f"{where}: Spotify still answers 401 ({_api_error(body, 401)['message']}) after a token refresh"
                    )
                # Expired or revoked token: get a new one once, then repeat this request (not a failed try).
                self._tokens.invalidate(token)
                refreshed_after_401 = True
                tries -= 1
                continue
            if status == 403:
                raise SpotifyAccessDenied(
                    f"{ACCESS_DENIED_HINT} (first refused: artist {artist_id} market {market}; "
                    f"API message: {_api_error(body, 403)['message']})"
                )
            if status == 429:
                self.stats.add(status_429=1)
                rate_limited += 1
                tries -= 1  # a 429 is not a failed try; the cap below bounds the wait
                wait_s = _retry_after_seconds(response)
                if wait_s > self.max_retry_after_s:
                    raise SpotifyRetryAfterTooLong(
                        f"Spotify rate limit: asked to wait {wait_s:.0f} s (Retry-After, on {where}), above the "
                        f"cap of {self.max_retry_after_s:.0f} s (SPOTIFY_MAX_RETRY_AFTER_S); failing now instead "
                        "of sleeping. Re-run after the wait, or lower SPOTIFY_REQUESTS_PER_SECOND."
                    )
                if rate_limited > MAX_429_PER_REQUEST:
                    raise SpotifyRequestFailed(f"{where}: still 429 after {MAX_429_PER_REQUEST} waits for Retry-After")
                if self.pacer.pause(wait_s, epoch):
                    rate = f"rate lowered to {self.pacer.rate:.2f} req/s" if self.pacer.rate else "no rate configured"
                    self._log(f"Spotify answered 429: all workers pause {wait_s:.1f} s (Retry-After); {rate}")
                continue
            if status >= 500:
                raise SpotifyRequestFailed(
                    f"{where}: HTTP {status} ({_api_error(body, status)['message']}) after {tries} tries"
                )
            raise SpotifyRequestFailed(f"{where}: unexpected HTTP {status} ({_api_error(body, status)['message']})")

    def _back_off_or_fail(self, where: str, problem: str, tries: int, stop: threading.Event) -> None:
        """Sleep before repeating a request whose answer was unusable, or fail once its tries are spent.

        Hand-written: urllib3's Retry decides on statuses and transport errors, never on the body it returns.
        """
        if tries >= self.max_attempts:
            raise SpotifyRequestFailed(f"{where}: {problem} after {tries} tries")
        delay = min(self._backoff_max_s, self._backoff_s * 2 ** (tries - 1) * random.uniform(0.5, 1.5))
        if stop.wait(delay):
            raise _Stopped("fetch stopped after an error in another worker")

    def iter_top_tracks(self, artist_ids: Iterable[str], market: str) -> Iterator[TopTracksOutcome]:
        """Outcomes for one market in the order of `artist_ids` (see `iter_pairs`)."""
        return self.iter_pairs((artist_id, market) for artist_id in artist_ids)

    def iter_pairs(self, pairs: Iterable[tuple[str, str]]) -> Iterator[TopTracksOutcome]:
        """Outcomes of (artist id, market) pairs in their order, fetched by `concurrency` threads, at most 2x that
        in flight; pairs of several markets share this client's token and pacer.

        The first error in any worker stops every worker and is raised at once (a fatal one in preference).
        """
        run = _Run()
        ids = iter(pairs)
        in_flight: deque[Future[TopTracksOutcome]] = deque()
        pool = ThreadPoolExecutor(self.concurrency, thread_name_prefix="spotify")

        def work(pair: tuple[str, str]) -> TopTracksOutcome:
            artist_id, market = pair
            if run.stop.is_set():
                raise _Stopped("fetch stopped after an error in another worker")
            self._worker.stop = run.stop
            try:
                return self._fetch(artist_id, market, run.stop)
            except _Stopped:
                raise
            except BaseException as error:
                run.fail(error)
                raise
            finally:
                self._worker.stop = None

        def submit_next() -> None:
            pair = next(ids, None)
            if pair is not None:
                in_flight.append(pool.submit(work, pair))

        try:
            for _ in range(self.concurrency * 2):
                submit_next()
            while in_flight:
                head = in_flight[0]
                while True:
                    try:
                        outcome = head.result(timeout=0.05)
                        break
                    except FutureTimeout:
                        if run.stop.is_set():  # a later pair failed: no need to wait for this one
                            raise run.cause() from None
                    except BaseException as error:
                        raise run.cause(error) from None
                in_flight.popleft()
                submit_next()
                yield outcome
        except BaseException:
            run.stop.set()
            for future in in_flight:
                future.cancel()
            # Do not wait for requests still in flight: their answers are no longer wanted, and each one ends
            # within its timeouts (its next pacer wait or backoff raises _Stopped).
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        pool.shutdown(wait=True)


def _retries_exhausted(error: requests.RequestException) -> bool:
    """True when requests wrapped urllib3's MaxRetryError (the error happened before the response headers)."""
    return any(isinstance(arg, MaxRetryError) for arg in error.args)


def _transport_problem(error: requests.RequestException) -> str:
    if isinstance(error, requests.Timeout) or "timed out" in str(error).lower():
        return "timeout"
    return "connection failure"


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
    value = response.headers.get("Retry-After")
    if not value:
        return 1.0
    try:
        return max(0.0, Retry().parse_retry_after(value))  # seconds or an HTTP date
    except Exception:  # urllib3's InvalidHeader on garbage
        return 1.0


def _short(error: Exception) -> str:
    text = str(error)
    return text if len(text) <= 200 else text[:200] + "..."
