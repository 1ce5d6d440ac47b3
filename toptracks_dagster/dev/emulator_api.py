"""What the Spotify emulator answers: the token endpoint, "Get Artist's Top Tracks" (auth, faults, the rolling
rate-limit window and input checks, in Spotify's order) and the `/_emulator/*` admin endpoints, with Spotify's
response and error shapes. The HTTP server around it is spotify_emulator.py."""

from __future__ import annotations

import base64
import json
import math
import random
import re
import secrets
import threading
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import parse_qs

from toptracks_dagster.common import SPOTIFY_ID_RE
from toptracks_dagster.dev.emulator_catalog import Catalog
from toptracks_dagster.dev.emulator_settings import EmulatorSettings, EmulatorStats

_MARKET_RE = re.compile(r"^[A-Z]{2}$")


@dataclass
class Response:
    """An answer to send: the status, a JSON payload and extra headers; `truncate` cuts the body in half."""

    status: int
    payload: Any
    headers: dict[str, str] = field(default_factory=dict)
    truncate: bool = False


def api_error(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    return Response(status, {"error": {"status": status, "message": message}}, headers or {})


def _unauthorized(message: str) -> Response:
    challenge = f'Bearer realm="spotify", error="invalid_token", error_description="{message}"'
    return api_error(401, message, {"WWW-Authenticate": challenge})


def _oauth_error(error: str, description: str) -> Response:
    return Response(400, {"error": error, "error_description": description})


_SERVER_ERRORS = {500: "Server error.", 502: "Bad gateway.", 503: "Service unavailable"}


def _json_object(body: bytes) -> dict[str, Any]:
    value = json.loads(body or b"{}")
    if not isinstance(value, dict):
        raise ValueError("expected a JSON object")
    return value


def _field(request: dict[str, Any], name: str, kind: type) -> Any:
    value = request.get(name)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ValueError(f"{name} must be a {kind.__name__}")
    return value


class EmulatorApi:
    """The answers to the emulator's requests, called from the server's request threads. Answers None where the
    connection is to be reset instead."""

    def __init__(
        self, client_id: str, client_secret: str, settings: EmulatorSettings, catalog: Catalog, stats: EmulatorStats
    ) -> None:
        self.client_id = client_id
        self._client_secret = client_secret
        self.settings = settings
        self.catalog = catalog
        self.stats = stats
        self._lock = threading.Lock()  # guards the tokens, the fault rng, the rate-limit window and burst count
        self._tokens: dict[str, float] = {}  # access token -> monotonic issue time
        self._fault_seed = settings.seed
        self._fault_rng = random.Random(self._fault_seed)
        self._window: deque[float] = deque()  # monotonic times of the top-tracks requests in the rolling window

    def answer_token(self, headers: Mapping[str, str], body: bytes) -> Response:
        form = parse_qs(body.decode("utf-8", "replace"))
        if form.get("grant_type", [""])[0] != "client_credentials":
            return _oauth_error("unsupported_grant_type", "grant_type parameter is missing")
        if not self._valid_client(headers.get("Authorization") or "", form):
            return _oauth_error("invalid_client", "Invalid client")
        token = "BQ" + secrets.token_urlsafe(80)
        with self._lock:
            self._tokens[token] = time.monotonic()
        return Response(
            200, {"access_token": token, "token_type": "Bearer", "expires_in": self.settings.token_lifetime_s}
        )

    def _valid_client(self, authorization: str, form: dict[str, list[str]]) -> bool:
        scheme, _, encoded = authorization.partition(" ")
        if scheme.lower() == "basic":
            try:
                client_id, _, client_secret = base64.b64decode(encoded.strip(), validate=True).decode().partition(":")
            except ValueError:  # bad base64 or bad UTF-8
                return False
        else:  # Spotify also accepts the credentials as form fields
            client_id = form.get("client_id", [""])[0]
            client_secret = form.get("client_secret", [""])[0]
        return secrets.compare_digest(client_id.encode(), self.client_id.encode()) and secrets.compare_digest(
            client_secret.encode(), self._client_secret.encode()
        )

    def answer_top_tracks(
        self, artist_id: str, query: dict[str, list[str]], headers: Mapping[str, str]
    ) -> Response | None:
        """The response, or None to reset the connection. Checks run in Spotify's order: auth, faults, input."""
        scheme, _, token = (headers.get("Authorization") or "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            return _unauthorized("No token provided")
        settings = self.settings
        with self._lock:
            issued_at = self._tokens.get(token)
        if issued_at is None:
            return _unauthorized("Invalid access token")
        if time.monotonic() - issued_at >= settings.token_lifetime_s:
            return _unauthorized("The access token expired")

        with self._lock:
            if settings.seed != self._fault_seed:  # the seed was changed at runtime
                self._fault_seed = settings.seed
                self._fault_rng = random.Random(settings.seed)
            rng = self._fault_rng
            # Disabled faults draw nothing, so a given configuration sees a reproducible fault sequence.
            if settings.reset_share and rng.random() < settings.reset_share:
                return None
            if settings.forbid_all:
                return api_error(403, "Forbidden")
            if settings.burst_429_count > 0:
                settings.burst_429_count -= 1
                return self._rate_limited(settings.burst_retry_after_s)
            retry_after = self._admit_to_window(settings)
            if retry_after is not None:
                return self._rate_limited(retry_after)
            if settings.error_5xx_share and rng.random() < settings.error_5xx_share:
                status = rng.choice(sorted(_SERVER_ERRORS))
                return api_error(status, _SERVER_ERRORS[status])
            slow = bool(settings.slow_share) and rng.random() < settings.slow_share
            truncate = bool(settings.truncated_json_share) and rng.random() < settings.truncated_json_share
        if slow:
            time.sleep(settings.slow_response_s)

        if not SPOTIFY_ID_RE.fullmatch(artist_id):
            return api_error(400, "Invalid base62 id")
        market = query.get("market", [""])[0]
        if not _MARKET_RE.fullmatch(market):
            return api_error(400, "Invalid market code")
        tracks = self.catalog.top_tracks(artist_id, market)
        if tracks is None:
            return api_error(404, "non existing id")
        return Response(200, {"tracks": tracks}, truncate=truncate)

    def _admit_to_window(self, settings: EmulatorSettings) -> int | None:
        """Record a request in the rolling window, or return its Retry-After when the window is full.

        Refused requests are not recorded, so a client that honours Retry-After gets through. Caller holds _lock.
        """
        limit = settings.rate_limit_requests
        if limit is None:
            return None
        now = time.monotonic()
        window_s = settings.rate_limit_window_s
        while self._window and self._window[0] <= now - window_s:
            self._window.popleft()
        if len(self._window) < limit:
            self._window.append(now)
            return None
        if limit <= 0:
            return max(1, math.ceil(window_s))
        # A slot frees when the oldest request leaves (or, after the limit was lowered, enough of them have).
        return max(1, math.ceil(self._window[len(self._window) - limit] + window_s - now))

    @staticmethod
    def _rate_limited(retry_after_s: int) -> Response:
        return api_error(429, "API rate limit exceeded", {"Retry-After": str(retry_after_s)})

    def answer_admin(self, method: str, path: str, body: bytes) -> Response:
        try:
            if (method, path) == ("GET", "/_emulator/stats"):
                return Response(200, self.stats.as_dict())
            if path == "/_emulator/settings" and method in ("GET", "POST"):
                if method == "POST":
                    self.settings.update(_json_object(body))
                return Response(200, asdict(self.settings))
            if (method, path) == ("POST", "/_emulator/revision"):
                request = _json_object(body)
                artist_id, revision = _field(request, "artist_id", str), _field(request, "revision", int)
                self.catalog.set_revision(artist_id, revision)
                return Response(200, {"artist_id": artist_id, "revision": revision})
            if (method, path) == ("POST", "/_emulator/missing"):
                request = _json_object(body)
                artist_id, missing = _field(request, "artist_id", str), request.get("missing", True)
                if not isinstance(missing, bool):
                    raise ValueError("missing must be a bool")
                self.catalog.set_missing(artist_id, missing)
                return Response(200, {"artist_id": artist_id, "missing": missing})
            if (method, path) == ("POST", "/_emulator/reset-stats"):
                self.stats.reset()
                return Response(200, self.stats.as_dict())
        except ValueError as error:  # includes malformed JSON
            return api_error(400, str(error))
        return api_error(404, "Service not found")
