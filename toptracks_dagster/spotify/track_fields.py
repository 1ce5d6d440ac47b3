"""What a Spotify TrackObject must hold: the fields the table and its readers rely on."""

from __future__ import annotations

from typing import Callable

from toptracks_dagster.common import SPOTIFY_ID_RE


def track_problems(track: object) -> list[tuple[str, str]]:
    """(field, problem) for every required field of a TrackObject that is missing or of the wrong type."""
    if not isinstance(track, dict):
        return [("track", f"is {type(track).__name__}, not an object")]
    problems: list[tuple[str, str]] = []

    def require(name: str, ok: Callable[[object], bool], wanted: str) -> None:
        if name not in track:
            problems.append((name, "missing"))
        elif not ok(track[name]):
            problems.append((name, f"{_shown(track[name])} is not {wanted}"))

    def is_int(value: object) -> bool:
        return isinstance(value, int) and not isinstance(value, bool)

    require("id", lambda v: isinstance(v, str) and bool(SPOTIFY_ID_RE.match(v)), "a base62 id of 22 characters")
    require("name", lambda v: isinstance(v, str), "a string")
    require("popularity", lambda v: is_int(v) and 0 <= v <= 100, "an integer in 0..100")
    require("type", lambda v: v == "track", '"track"')
    require("uri", lambda v: isinstance(v, str) and v.startswith("spotify:track:"), "a spotify:track: URI")
    require("duration_ms", lambda v: is_int(v) and v >= 0, "a non-negative integer")
    require("explicit", lambda v: isinstance(v, bool), "a boolean")
    require("is_local", lambda v: isinstance(v, bool), "a boolean")
    require("track_number", is_int, "an integer")
    require("disc_number", is_int, "an integer")
    require(
        "artists",
        lambda v: (
            isinstance(v, list)
            and bool(v)
            and all(isinstance(a, dict) and isinstance(a.get("id"), str) and isinstance(a.get("name"), str) for a in v)
        ),
        "a non-empty list of artists with id and name",
    )
    # Album names may be "" in real data; the album must still be an object with an id.
    require(
        "album",
        lambda v: isinstance(v, dict) and isinstance(v.get("id"), str) and isinstance(v.get("name"), str),
        "an album object with id and name",
    )
    require("external_urls", lambda v: isinstance(v, dict), "an object")
    require("preview_url", lambda v: v is None or isinstance(v, str), "a string or null")
    return problems


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
