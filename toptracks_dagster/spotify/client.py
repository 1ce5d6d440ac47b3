"""A Spotify Web API client for "Get Artist's Top Tracks" that survives the real API.

Libraries do the connection pooling (requests) and the retry decisions and backoff on 5xx, resets and timeouts
(urllib3 `Retry`). Written here: the error policy, one handler per kind of answer (404 is an outcome, 403 and
bad credentials stop everything, a 401 refreshes the token once, a Retry-After above the cap fails fast).
Beside it: the shared token (tokens.py), the shared pacer and request cap (pacing.py), and the parallel fetch
whose first error in any worker stops the whole fetch (parallel.py). Why each piece is hand-written:
docs/spotify-client.md.
"""

from __future__ import annotations

import random
import threading
from dataclasses import dataclass, fields
from typing import Callable, Iterable, Iterator

import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from toptracks_dagster.common import is_valid_spotify_id, utc_now_iso
from toptracks_dagster.spotify.answers import (
    api_error,
    json_or_none,
    retries_exhausted,
    retry_after_seconds,
    short,
    transport_problem,
)
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
from toptracks_dagster.spotify.parallel import map_in_order
from toptracks_dagster.spotify.stats import FetchStats
from toptracks_dagster.spotify.tokens import AccessTokenProvider

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
        # Shallow: the JSON encoder walks the tracks itself (asdict would deep-copy every track first).
        return {name: getattr(self, name) for name in _OUTCOME_FIELD_NAMES}


_OUTCOME_FIELD_NAMES = tuple(f.name for f in fields(TopTracksOutcome))


@dataclass
class _PairRequest:
    """One (artist, market) pair being fetched, and what its requests came to so far."""

    artist_id: str
    market: str
    stop: threading.Event
    tries: int = 0  # requests that count against max_attempts, urllib3's retries included (429s and 401s do not)
    sent: int = 0  # every HTTP request for this pair, 429 and 401 repeats included (TopTracksOutcome.attempts)
    refreshed_after_401: bool = False
    rate_limited: int = 0  # 429s answered to this pair

    @property
    def where(self) -> str:
        return f"top-tracks for artist {self.artist_id} market {self.market}"

    def outcome(self, answer: _Answer, status: int, tracks: list[dict] | None, error: dict | None) -> TopTracksOutcome:
        size = len(answer.response.content)
        return TopTracksOutcome(
            self.artist_id, self.market, answer.requested_at, status, tracks, error, self.sent, size
        )


@dataclass
class _Answer:
    """A response to one request of a pair, with what that request was sent with."""

    response: requests.Response
    body: object  # the parsed JSON, or None
    token: str  # the access token the request carried (a 401 invalidates exactly this one)
    epoch: int  # the pacer's rate epoch when it was sent (a 429 lowers the rate once per epoch)
    requested_at: str


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
        self._status_handlers = {
            200: self._on_ok,
            401: self._on_unauthorized,
            403: self._on_forbidden,
            404: self._on_not_found,
            429: self._on_rate_limited,
        }

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
        """Request one pair until it has an outcome. Each answer goes to the handler of its status, which returns
        the outcome, returns None to send the request again, or raises."""
        if not is_valid_spotify_id(artist_id):
            # Ids are screened upstream; this guard keeps an unvalidated id out of the URL path regardless.
            raise ValueError(f"refusing to request malformed artist id {artist_id!r}")
        pair = _PairRequest(artist_id, market, stop)
        url = f"{self.api_base_url}/artists/{artist_id}/top-tracks"
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
                self._on_transport_error(pair, error)
                continue
            self._count_sent(pair, response)
            answer = _Answer(response, json_or_none(response), token, epoch, requested_at)
            handler = self._status_handlers.get(response.status_code)
            if handler is None:
                handler = self._on_server_error if response.status_code >= 500 else self._on_unexpected_status
            outcome = handler(pair, answer)
            if outcome is not None:
                return outcome

    def _count_sent(self, pair: _PairRequest, response: requests.Response) -> None:
        """Count the request and urllib3's retries of it (the response's retry history)."""
        history = response.raw.retries.history if getattr(response.raw, "retries", None) else ()
        this_request = 1 + len(history)
        pair.tries += this_request
        pair.sent += this_request
        self.stats.add(
            requests=this_request,
            retries=this_request - 1 + (1 if pair.sent > this_request else 0),
            status_5xx=sum(1 for h in history if h.status is not None and h.status >= 500)
            + (1 if response.status_code >= 500 else 0),
            transport_errors=sum(1 for h in history if h.error is not None),
            bytes=len(response.content),
        )

    # One handler per outcome of a request: return the pair's outcome, None to repeat the request, or raise.

    def _on_ok(self, pair: _PairRequest, answer: _Answer) -> TopTracksOutcome | None:
        """200: the tracks; a body without a `tracks` list of objects is repeated like a failed try."""
        body = answer.body
        tracks = body.get("tracks") if isinstance(body, dict) else None
        if isinstance(tracks, list) and all(isinstance(t, dict) for t in tracks):
            self.stats.add(status_2xx=1)
            self.pacer.success()
            return pair.outcome(answer, 200, tracks, None)
        self.stats.add(malformed_bodies=1)
        problem = (
            "malformed JSON body (no 'tracks' list)"
            if body is None or isinstance(body, dict)
            else "unexpected JSON body"
        )
        self._back_off_or_fail(pair, problem)
        return None

    def _on_not_found(self, pair: _PairRequest, answer: _Answer) -> TopTracksOutcome:
        """404: the artist is gone; an outcome, not an error."""
        self.stats.add(status_404=1)
        self.pacer.success()
        return pair.outcome(answer, 404, None, api_error(answer.body, 404))

    def _on_unauthorized(self, pair: _PairRequest, answer: _Answer) -> None:
        """401: the token expired or was revoked. Get a new one once, then repeat the request (not a failed try)."""
        self.stats.add(status_401=1)
        if pair.refreshed_after_401:
            raise SpotifyCredentialsError(
                f"{pair.where}: Spotify still answers 401 ({api_error(answer.body, 401)['message']}) "
                "after a token refresh"
            )
        self._tokens.invalidate(answer.token)
        pair.refreshed_after_401 = True
        pair.tries -= 1

    def _on_forbidden(self, pair: _PairRequest, answer: _Answer) -> None:
        """403: this app may not use the endpoint; no retry can change that."""
        raise SpotifyAccessDenied(
            f"{ACCESS_DENIED_HINT} (first refused: artist {pair.artist_id} market {pair.market}; "
            f"API message: {api_error(answer.body, 403)['message']})"
        )

    def _on_rate_limited(self, pair: _PairRequest, answer: _Answer) -> None:
        """429: every worker pauses for Retry-After (the shared pacer), then the request is repeated; a wait above
        the cap fails at once instead of sleeping."""
        self.stats.add(status_429=1)
        pair.rate_limited += 1
        pair.tries -= 1  # a 429 is not a failed try; the cap below bounds the wait
        wait_s = retry_after_seconds(answer.response)
        if wait_s > self.max_retry_after_s:
            raise SpotifyRetryAfterTooLong(
                f"Spotify rate limit: asked to wait {wait_s:.0f} s (Retry-After, on {pair.where}), above the "
                f"cap of {self.max_retry_after_s:.0f} s (SPOTIFY_MAX_RETRY_AFTER_S); failing now instead "
                "of sleeping. Re-run after the wait, or lower SPOTIFY_REQUESTS_PER_SECOND."
            )
        if pair.rate_limited > MAX_429_PER_REQUEST:
            raise SpotifyRequestFailed(f"{pair.where}: still 429 after {MAX_429_PER_REQUEST} waits for Retry-After")
        if self.pacer.pause(wait_s, answer.epoch):
            rate = f"rate lowered to {self.pacer.rate:.2f} req/s" if self.pacer.rate else "no rate configured"
            self._log(f"Spotify answered 429: all workers pause {wait_s:.1f} s (Retry-After); {rate}")

    def _on_server_error(self, pair: _PairRequest, answer: _Answer) -> None:
        """5xx still, after urllib3 spent this request's retries on it."""
        status = answer.response.status_code
        raise SpotifyRequestFailed(
            f"{pair.where}: HTTP {status} ({api_error(answer.body, status)['message']}) after {pair.tries} tries"
        )

    def _on_unexpected_status(self, pair: _PairRequest, answer: _Answer) -> None:
        status = answer.response.status_code
        raise SpotifyRequestFailed(
            f"{pair.where}: unexpected HTTP {status} ({api_error(answer.body, status)['message']})"
        )

    def _on_transport_error(self, pair: _PairRequest, error: requests.RequestException) -> None:
        """No response to use. Resets and timeouts before the headers are urllib3's to retry, so its tries are spent
        by now; a body that broke off after the headers (where urllib3's Retry stops) is repeated here; anything
        else, a bad URL or the like, no retry can help."""
        if retries_exhausted(error):
            self.stats.add(
                requests=self.max_attempts,
                retries=self.max_attempts - 1 + (1 if pair.sent else 0),
                transport_errors=1,
            )
            raise SpotifyRequestFailed(
                f"{pair.where}: {transport_problem(error)} after {pair.tries + self.max_attempts} tries "
                f"({short(error)})"
            ) from None
        if not isinstance(error, _BODY_ERRORS):
            raise SpotifyRequestFailed(f"{pair.where}: {type(error).__name__} ({short(error)})") from None
        pair.tries += 1
        pair.sent += 1
        self.stats.add(requests=1, retries=1 if pair.sent > 1 else 0, transport_errors=1)
        self._back_off_or_fail(pair, f"{type(error).__name__} while reading the body")

    def _back_off_or_fail(self, pair: _PairRequest, problem: str) -> None:
        """Sleep before repeating a request whose answer was unusable, or fail once its tries are spent.

        Hand-written: urllib3's Retry decides on statuses and transport errors, never on the body it returns.
        """
        if pair.tries >= self.max_attempts:
            raise SpotifyRequestFailed(f"{pair.where}: {problem} after {pair.tries} tries")
        delay = min(self._backoff_max_s, self._backoff_s * 2 ** (pair.tries - 1) * random.uniform(0.5, 1.5))
        if pair.stop.wait(delay):
            raise _Stopped("fetch stopped after an error in another worker")

    def iter_top_tracks(self, artist_ids: Iterable[str], market: str) -> Iterator[TopTracksOutcome]:
        """Outcomes for one market in the order of `artist_ids` (see `iter_pairs`)."""
        return self.iter_pairs((artist_id, market) for artist_id in artist_ids)

    def iter_pairs(self, pairs: Iterable[tuple[str, str]]) -> Iterator[TopTracksOutcome]:
        """Outcomes of (artist id, market) pairs in their order, fetched by `concurrency` threads, at most 2x that
        in flight; pairs of several markets share this client's token and pacer.

        The first error in any worker stops every worker and is raised at once (a fatal one in preference).
        """
        return map_in_order(self._fetch_in_worker, pairs, self.concurrency, thread_name_prefix="spotify")

    def _fetch_in_worker(self, pair: tuple[str, str], stop: threading.Event) -> TopTracksOutcome:
        self._worker.stop = stop  # read by the paced urllib3 retries of this thread's requests
        try:
            return self._fetch(*pair, stop)
        finally:
            self._worker.stop = None
