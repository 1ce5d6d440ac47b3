"""Small pieces every room uses: Spotify id syntax, timestamps, processes."""

from __future__ import annotations

import os
import re
from datetime import datetime, timezone

# Spotify ids (artists, tracks) are base62, 22 characters. Anything else must never be put into a URL path.
SPOTIFY_ID_RE = re.compile(r"^[0-9A-Za-z]{22}$")


def is_valid_spotify_id(value: object) -> bool:
    return isinstance(value, str) and bool(SPOTIFY_ID_RE.match(value))


def utc_now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_iso(value: str) -> datetime:
    """An ISO-8601 timestamp as written by utc_now_iso (a trailing Z is UTC)."""
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def process_alive(pid: int) -> bool:
    """Whether a process with this pid exists on this host (it may belong to another user)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
