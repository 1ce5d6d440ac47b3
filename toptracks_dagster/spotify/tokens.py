"""The client-credentials access token one Spotify client shares between its threads."""

from __future__ import annotations

import threading
import time

import requests

from toptracks_dagster.spotify.answers import json_or_none, transport_problem
from toptracks_dagster.spotify.errors import SpotifyCredentialsError, SpotifyRequestFailed, SpotifyUnreachable
from toptracks_dagster.spotify.stats import FetchStats


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
                f"Spotify token endpoint {self._token_url} is unreachable ({transport_problem(error)}, "
                f"{type(error).__name__}) after retries: check SPOTIFY_TOKEN_URL and the network"
            ) from None
        body = json_or_none(response)
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
