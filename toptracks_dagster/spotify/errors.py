"""What the Spotify client raises: each error named by its cause."""


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


class SpotifyUnreachable(SpotifyRequestFailed):
    """The token endpoint could not be reached at all after the client's own retries (refused, DNS, timeout)."""


class SpotifyBudgetExhausted(SpotifyError):
    """The run's request allowance is spent: no further request was sent (see `RequestAllowance`)."""


class _Stopped(SpotifyError):
    """Raised in a worker once another worker's error has doomed the fetch; never surfaces from iter_top_tracks."""


# Errors that no retry can fix: the whole fetch stops at the first one.
FATAL_ERRORS = (SpotifyCredentialsError, SpotifyAccessDenied, SpotifyRetryAfterTooLong)
