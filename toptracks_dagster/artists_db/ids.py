"""Artist ids as they come out of the `artists` table, screened before any of them reaches a URL."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

from toptracks_dagster.common import is_valid_spotify_id


@dataclass
class ScreenedArtistIds:
    valid: list[str] = field(default_factory=list)  # trimmed, unique, in first-seen order
    invalid: list[str] = field(default_factory=list)  # repr() of each rejected value, unique
    duplicates: int = 0  # rows that repeated an id already seen (after trimming)
    rows: int = 0


def screen_artist_ids(values: Iterable[object]) -> ScreenedArtistIds:
    """Trim, de-duplicate and validate raw `artists.id` values (str, bytes or anything a driver returns)."""
    screened = ScreenedArtistIds()
    seen: set[str] = set()
    invalid_seen: set[str] = set()
    for value in values:
        screened.rows += 1
        if isinstance(value, (bytes, bytearray)):
            value = bytes(value).decode("utf-8", errors="replace")
        text = value.strip() if isinstance(value, str) else None
        if text is None or not is_valid_spotify_id(text):
            shown = repr(value)[:80]
            if shown not in invalid_seen:
                invalid_seen.add(shown)
                screened.invalid.append(shown)
            continue
        if text in seen:
            screened.duplicates += 1
            continue
        seen.add(text)
        screened.valid.append(text)
    return screened
