"""The Spotify resource: configuration of the API client, with the client secret from the environment."""

from typing import Callable

from dagster import ConfigurableResource
from pydantic import Field

from toptracks_dagster.config import DEFAULT_SPOTIFY_API_BASE_URL, DEFAULT_SPOTIFY_TOKEN_URL
from toptracks_dagster.spotify.client import SpotifyClient


class SpotifyResource(ConfigurableResource):
    client_id: str = Field(default="", description="SPOTIFY_CLIENT_ID")
    client_secret: str = Field(
        default="", description="SPOTIFY_CLIENT_SECRET; pass EnvVar('SPOTIFY_CLIENT_SECRET'), never a literal"
    )
    api_base_url: str = Field(default=DEFAULT_SPOTIFY_API_BASE_URL, description="SPOTIFY_API_BASE_URL")
    token_url: str = Field(default=DEFAULT_SPOTIFY_TOKEN_URL, description="SPOTIFY_TOKEN_URL")
    concurrency: int = Field(default=8, description="Parallel requests per run (SPOTIFY_CONCURRENCY)")
    requests_per_second: float = Field(
        default=20.0, description="Request rate cap shared by all workers; 0 = none (SPOTIFY_REQUESTS_PER_SECOND)"
    )
    max_retry_after_s: float = Field(
        default=300.0, description="Longest Retry-After to wait; longer fails the partition (SPOTIFY_MAX_RETRY_AFTER_S)"
    )
    max_attempts: int = Field(default=5, description="Tries per pair on 5xx, transport errors and unusable bodies")
    connect_timeout_s: float = 5.0
    read_timeout_s: float = Field(default=20.0, description="Longest wait for any one socket read")
    request_timeout_s: float = Field(default=30.0, description="Deadline of one request: connect and every read")

    local_stack: bool = Field(default=False, description="Use the local stack's emulator and its credentials")

    def settings(self) -> dict:
        """Credentials and addresses: the fields, or (`local_stack`) the local stack's, found or started now."""
        found = {"client_id": self.client_id, "client_secret": self.client_secret}
        found.update(api_base_url=self.api_base_url, token_url=self.token_url)
        if self.local_stack:
            from toptracks_dagster.dev.stack import ensure_local_stack

            stack = ensure_local_stack()
            found = {
                "client_id": stack["SPOTIFY_CLIENT_ID"],
                "client_secret": stack["SPOTIFY_CLIENT_SECRET"],
                "api_base_url": stack["SPOTIFY_API_BASE_URL"],
                "token_url": stack["SPOTIFY_TOKEN_URL"],
            }
        return found

    def get_client(self, log: Callable[[str], None] | None = None, max_requests: int | None = None) -> SpotifyClient:
        """`max_requests`: hard cap on the client's API requests, repeats included (None: none)."""
        return SpotifyClient(
            **self.settings(),
            concurrency=self.concurrency,
            requests_per_second=self.requests_per_second or None,
            max_retry_after_s=self.max_retry_after_s,
            max_attempts=self.max_attempts,
            connect_timeout_s=self.connect_timeout_s,
            read_timeout_s=self.read_timeout_s,
            request_timeout_s=self.request_timeout_s,
            max_requests=max_requests,
            log=log,
        )
