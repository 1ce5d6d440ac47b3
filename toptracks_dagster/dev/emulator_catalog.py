"""The Spotify emulator's catalogue: top tracks per (artist, market) as Spotify's TrackObjects, a pure
function of (seed, artist, market, revision), with artists that change, vanish (404) or have no tracks."""

from __future__ import annotations

import string
from dataclasses import dataclass
from typing import Any

from toptracks_dagster.dev.emulator_names import (
    artist_name,
    base62_id,
    hex_digest,
    seeded_rng,
    song_title,
    unit_float,
)

_API = "https://api.spotify.com/v1"
_OPEN = "https://open.spotify.com"
_MAX_TOP_TRACKS = 10
_ISRC_COUNTRIES = ["US", "GB", "SE", "DE", "FR", "JP", "CA", "AU", "NL", "KR", "BR"]
# Real i.scdn.co cover URLs start with a size-specific prefix.
_COVER_SIZES = [(640, "ab67616d0000b273"), (300, "ab67616d00001e02"), (64, "ab67616d00004851")]
_VARIOUS_ARTISTS_ID = "0LyfQWJT6nXafLPZqxe9Of"  # the real "Various Artists" id


def _artist_ref(artist_id: str, name: str) -> dict[str, Any]:
    """A SimplifiedArtistObject."""
    return {
        "external_urls": {"spotify": f"{_OPEN}/artist/{artist_id}"},
        "href": f"{_API}/artists/{artist_id}",
        "id": artist_id,
        "name": name,
        "type": "artist",
        "uri": f"spotify:artist:{artist_id}",
    }


@dataclass(frozen=True)
class _Artist:
    """What stays fixed about an artist across revisions."""

    id: str
    name: str
    list_size: int  # length of every market's top list
    pool_size: int  # candidate tracks the market lists are picked from
    popularity: int  # track popularities scatter below this
    album_count: int


class Catalog:
    """Deterministic catalog: top_tracks(artist_id, market) is a pure function of
    (seed, artist_id, market, revision)."""

    def __init__(self, seed: int = 0, missing_share: float = 0.04) -> None:
        self.seed = seed
        self.missing_share = missing_share
        # Plain dict reads and writes are atomic, so request threads need no lock here.
        self._revisions: dict[str, int] = {}
        self._forced_missing: dict[str, bool] = {}

    def set_revision(self, artist_id: str, revision: int) -> None:
        """Move an artist to another revision: 1-3 pool tracks replaced per step and popularities re-drawn,
        so its lists lose tracks, gain tracks and change order. Revision 0 is the initial state."""
        if revision < 0:
            raise ValueError("revision must be >= 0")
        self._revisions[artist_id] = revision

    def set_missing(self, artist_id: str, missing: bool = True) -> None:
        """Force the artist to answer 404 (or, with missing=False, to exist)."""
        self._forced_missing[artist_id] = missing

    def is_missing(self, artist_id: str) -> bool:
        forced = self._forced_missing.get(artist_id)
        if forced is not None:
            return forced
        return unit_float(self.seed, "missing", artist_id) < self.missing_share

    def top_tracks(self, artist_id: str, market: str) -> list[dict[str, Any]] | None:
        """The artist's top tracks in `market` as Spotify returns them, or None when the artist does not exist."""
        if self.is_missing(artist_id):
            return None
        artist = self._artist(artist_id)
        pool = self._pool(artist, self._revisions.get(artist_id, 0))
        # Popularity is global; the market-seeded bonus makes neighbouring markets share most tracks in
        # different orders, with the tracks near the cut-off swapping in and out.
        pool.sort(
            key=lambda track: track["popularity"] + 8 * unit_float(self.seed, "market", track["id"], market),
            reverse=True,
        )
        return [self._localize(track, market) for track in pool[: artist.list_size]]

    def _artist(self, artist_id: str) -> _Artist:
        rng = seeded_rng(self.seed, "artist", artist_id)
        roll = rng.random()
        if roll < 0.02:  # some artists have no top tracks at all: a valid, empty 200
            list_size = 0
        elif roll < 0.10:
            list_size = rng.randint(3, 9)
        else:
            list_size = _MAX_TOP_TRACKS
        pool_size = rng.randint(12, 16) if list_size == _MAX_TOP_TRACKS else list_size
        popularity = round(rng.triangular(10, 100, 55))
        return _Artist(
            artist_id, artist_name(self.seed, artist_id), list_size, pool_size, popularity, rng.randint(2, 6)
        )

    def _pool(self, artist: _Artist, revision: int) -> list[dict[str, Any]]:
        # A slot's generation is the revision that last replaced its track (0 = original).
        generations = [0] * artist.pool_size
        for step in range(1, revision + 1):
            rng = seeded_rng(self.seed, "revision", artist.id, step)
            for slot in rng.sample(range(artist.pool_size), min(artist.pool_size, rng.randint(1, 3))):
                generations[slot] = step
        return [self._track(artist, slot, generation, revision) for slot, generation in enumerate(generations)]

    def _track(self, artist: _Artist, slot: int, generation: int, revision: int) -> dict[str, Any]:
        """A market-independent TrackObject (as returned with `market` set: no available_markets)."""
        rng = seeded_rng(self.seed, "track", artist.id, slot, generation)
        track_id = base62_id(self.seed, "track-id", artist.id, slot, generation)
        if generation:  # tracks a revision brings in are fresh singles
            album = self._album(artist, ("single", slot, generation), fresh=True)
        else:
            album = self._album(artist, ("album", rng.randrange(artist.album_count)))
        artists = [_artist_ref(artist.id, artist.name)]
        name = song_title(rng)
        if rng.random() < 0.15:
            # Featured artists come from the demo id space so their names agree with their own lists.
            featured_id = base62_id("artist", self.seed, rng.randrange(1000))
            if featured_id != artist.id:
                featured_name = artist_name(self.seed, featured_id)
                artists.append(_artist_ref(featured_id, featured_name))
                name += f" (feat. {featured_name})"
        track_number = rng.randint(1, album["total_tracks"])
        disc_number = 2 if album["total_tracks"] >= 16 and rng.random() < 0.2 else 1
        year = int(album["release_date"][:4])
        registrant = "".join(rng.choices(string.ascii_uppercase + string.digits, k=3))
        isrc = f"{rng.choice(_ISRC_COUNTRIES)}{registrant}{year % 100:02d}{rng.randint(0, 99999):05d}"
        duration_ms = rng.randint(120_000, 360_000)
        explicit = rng.random() < 0.25
        has_preview = rng.random() >= 0.3
        # New releases enter high; every revision re-draws a small drift so the order changes.
        popularity = (
            artist.popularity
            - rng.uniform(0, 30)
            + (8 if generation else 0)
            + seeded_rng(self.seed, "drift", track_id, revision).uniform(-5, 5)
        )
        return {
            "album": album,
            "artists": artists,
            "disc_number": disc_number,
            "duration_ms": duration_ms,
            "explicit": explicit,
            "external_ids": {"isrc": isrc},
            "external_urls": {"spotify": f"{_OPEN}/track/{track_id}"},
            "href": f"{_API}/tracks/{track_id}",
            "id": track_id,
            "is_local": False,
            "is_playable": True,
            "name": name,
            "popularity": max(0, min(100, round(popularity))),
            "preview_url": f"https://p.scdn.co/mp3-preview/{hex_digest(40, 'preview', track_id)}"
            if has_preview
            else None,
            "track_number": track_number,
            "type": "track",
            "uri": f"spotify:track:{track_id}",
        }

    def _album(self, artist: _Artist, key: tuple[object, ...], fresh: bool = False) -> dict[str, Any]:
        """A SimplifiedAlbumObject (without available_markets, as with `market` set)."""
        rng = seeded_rng(self.seed, "album", artist.id, *key)
        album_id = base62_id(self.seed, "album-id", artist.id, *key)
        roll = rng.random()
        if fresh or 0.1 <= roll < 0.3:
            album_type, total_tracks = "single", rng.randint(1, 4)
        elif roll < 0.1:
            album_type, total_tracks = "compilation", rng.randint(16, 30)
        else:
            album_type, total_tracks = "album", rng.randint(8, 18)
        year = rng.randint(2025, 2026) if fresh else rng.randint(1968, 2025)
        if rng.random() < 0.15:  # old catalog entries often only know the year
            release_date, precision = str(year), "year"
        else:
            release_date, precision = f"{year}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}", "day"
        name = "" if rng.random() < 0.02 else song_title(rng)  # real data has nameless albums
        cover = hex_digest(24, "cover", album_id)
        return {
            "album_type": album_type,
            "total_tracks": total_tracks,
            "external_urls": {"spotify": f"{_OPEN}/album/{album_id}"},
            "href": f"{_API}/albums/{album_id}",
            "id": album_id,
            "images": [
                {"url": f"https://i.scdn.co/image/{prefix}{cover}", "height": size, "width": size}
                for size, prefix in _COVER_SIZES
            ],
            "name": name,
            "release_date": release_date,
            "release_date_precision": precision,
            "type": "album",
            "uri": f"spotify:album:{album_id}",
            "artists": [
                _artist_ref(_VARIOUS_ARTISTS_ID, "Various Artists")
                if album_type == "compilation"
                else _artist_ref(artist.id, artist.name)
            ],
            "is_playable": True,
        }

    def _localize(self, track: dict[str, Any], market: str) -> dict[str, Any]:
        """Add the market-specific parts: a few tracks are unplayable there, a few are relinked."""
        roll = unit_float(self.seed, "relink", track["id"], market)
        if roll < 0.03:
            track["is_playable"] = False
            track["restrictions"] = {"reason": "market"}
        elif roll < 0.08:
            original_id = base62_id(self.seed, "original", track["id"], market)
            track["linked_from"] = {
                "external_urls": {"spotify": f"{_OPEN}/track/{original_id}"},
                "href": f"{_API}/tracks/{original_id}",
                "id": original_id,
                "type": "track",
                "uri": f"spotify:track:{original_id}",
            }
        return track
