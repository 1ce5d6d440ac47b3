"""Local emulator of the two Spotify Web API endpoints the pipeline uses.

Spotify is unreachable from development and CI machines (and since February 2026 it no longer serves top
tracks to Development-Mode apps), so the pipeline runs against this emulator instead: a real HTTP/1.1 server
on loopback implementing the client-credentials token endpoint and "Get Artist's Top Tracks" with Spotify's
response and error shapes, a deterministic realistic catalog, fault modes switchable at runtime (also over
HTTP from another process, see the ``/_emulator/*`` admin endpoints) and request statistics.

In-process::

    with SpotifyEmulator("id", "secret", settings=EmulatorSettings(latency_ms=20)) as emulator:
        requests.post(emulator.token_url, data={"grant_type": "client_credentials"}, auth=("id", "secret"))

Standalone (the secret is read from the named environment variable, never from the command line)::

    python -m toptracks_dagster.dev.spotify_emulator --port 8787 --client-id ID --client-secret-env VAR
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import math
import os
import random
import re
import secrets
import signal
import socket
import socketserver
import string
import struct
import sys
import threading
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

ARTIST_ID_RE = re.compile(r"^[0-9A-Za-z]{22}$")
_MARKET_RE = re.compile(r"^[A-Z]{2}$")
_TOP_TRACKS_PATH_RE = re.compile(r"^/v1/artists/([^/]*)/top-tracks/?$")
_BASE62 = string.digits + string.ascii_uppercase + string.ascii_lowercase
_API = "https://api.spotify.com/v1"
_OPEN = "https://open.spotify.com"
_MAX_TOP_TRACKS = 10


# ---------------------------------------------------------------------------------------------------------
# Deterministic derivation: everything hashes its inputs with SHA-256, never Python's per-process salted hash().


def _digest(*parts: object) -> bytes:
    return hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()


def _rng(*parts: object) -> random.Random:
    return random.Random(int.from_bytes(_digest(*parts)[:16], "big"))


def _unit(*parts: object) -> float:
    """A uniform float in [0, 1) that depends only on `parts`."""
    return int.from_bytes(_digest(*parts)[:8], "big") / 2**64


def _hex(length: int, *parts: object) -> str:
    return _digest(*parts).hex()[:length]


def _base62_id(*parts: object) -> str:
    """A 22-character base62 id like Spotify's (131 bits, so distinct inputs never collide in practice)."""
    number = int.from_bytes(_digest(*parts), "big")
    chars = []
    for _ in range(22):
        number, digit = divmod(number, 62)
        chars.append(_BASE62[digit])
    return "".join(chars)


def demo_artist_ids(n: int, seed: int = 0) -> list[str]:
    """`n` distinct valid artist ids, the same for the same seed, for seeding demo databases.

    They are ordinary catalog ids, so a catalog with the same seed answers 404 for about `missing_share` of
    them, like stale ids in a real database.
    """
    return [_base62_id("artist", seed, index) for index in range(n)]


# ---------------------------------------------------------------------------------------------------------
# Catalog

_ADJECTIVES = [
    "Golden",
    "Electric",
    "Silent",
    "Broken",
    "Midnight",
    "Neon",
    "Velvet",
    "Wild",
    "Lonely",
    "Crystal",
    "Burning",
    "Paper",
    "Hollow",
    "Sweet",
    "Cold",
    "Summer",
    "Violet",
    "Endless",
    "Lucky",
]
_NOUNS = [
    "Heart",
    "River",
    "Dream",
    "Fire",
    "Ocean",
    "Highway",
    "Mirror",
    "Garden",
    "Thunder",
    "Shadow",
    "Rain",
    "City",
    "Echo",
    "Horizon",
    "Signal",
    "Stranger",
    "Moon",
    "Window",
    "Satellite",
    "Paradise",
]
_VERBS = ["Running", "Falling", "Dancing", "Waiting", "Chasing", "Holding On", "Dreaming", "Driving"]
_PREPOSITIONS = ["to", "through", "under", "across", "into", "beyond"]
# Real catalogs are full of non-ASCII and punctuated titles; they catch encoding and quoting bugs downstream.
_SPECIAL_TITLES = [
    "Café Noir",
    "夜に駆ける",
    "Niño del Mar",
    "Ça plane pour moi",
    "Déjà Vu",
    "Sólo Tú",
    "Über den Wolken",
    "君の名前",
    "Мечта",
    "사랑해요",
    'Say "Goodbye"',
    "Don't Stop Now",
    "Rock 'n' Roll Heart",
    "L'amour toujours",
    "¿Dónde Estás?",
    "Smörgåsbord Blues",
]
_TITLE_SUFFIXES = [" - Remastered 2011", " - Live", " (Acoustic)", " - Radio Edit", " (Remix)"]
_FIRST_NAMES = [
    "Ava",
    "Leo",
    "Mila",
    "Jonas",
    "Zoe",
    "Mateo",
    "Ines",
    "Kai",
    "Nora",
    "Theo",
    "Luz",
    "Yuki",
    "Omar",
    "Freya",
    "Dario",
    "Amara",
]
_LAST_NAMES = [
    "Rivers",
    "Stone",
    "Moreau",
    "Kowalski",
    "Haddad",
    "Lindqvist",
    "Okafor",
    "Tanaka",
    "Reyes",
    "Novak",
    "Byrne",
    "Silva",
]
_SPECIAL_ARTISTS = [
    "Sigur Lúna",
    "Mø Rose",
    "ヨルシカ風",
    "Zoë & The Kites",
    "Ólöf Storm",
    "Beyoncé Cover Band",
    "The 'Quoted' Band",
    "Niños del Sol",
]
_ISRC_COUNTRIES = ["US", "GB", "SE", "DE", "FR", "JP", "CA", "AU", "NL", "KR", "BR"]
# Real i.scdn.co cover URLs start with a size-specific prefix.
_COVER_SIZES = [(640, "ab67616d0000b273"), (300, "ab67616d00001e02"), (64, "ab67616d00004851")]


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


_VARIOUS_ARTISTS_ID = "0LyfQWJT6nXafLPZqxe9Of"  # the real "Various Artists" id


def _artist_name(seed: int, artist_id: str) -> str:
    rng = _rng(seed, "artist-name", artist_id)
    roll = rng.random()
    if roll < 0.06:
        return rng.choice(_SPECIAL_ARTISTS)
    if roll < 0.40:
        return f"{rng.choice(_FIRST_NAMES)} {rng.choice(_LAST_NAMES)}"
    if roll < 0.65:
        return f"The {rng.choice(_ADJECTIVES)} {rng.choice(_NOUNS)}s"
    if roll < 0.80:
        return f"{rng.choice(_FIRST_NAMES)} & The {rng.choice(_NOUNS)}s"
    if roll < 0.90:
        return f"DJ {rng.choice(_NOUNS)}"
    return f"{rng.choice(_ADJECTIVES)} {rng.choice(_NOUNS)}"


def _song_title(rng: random.Random) -> str:
    roll = rng.random()
    if roll < 0.08:
        title = rng.choice(_SPECIAL_TITLES)
    elif roll < 0.40:
        title = f"{rng.choice(_ADJECTIVES)} {rng.choice(_NOUNS)}"
    elif roll < 0.60:
        title = f"{rng.choice(_VERBS)} {rng.choice(_PREPOSITIONS)} the {rng.choice(_NOUNS)}"
    elif roll < 0.75:
        title = f"{rng.choice(_NOUNS)} of {rng.choice(_NOUNS)}s"
    else:
        title = rng.choice(_NOUNS)
    if rng.random() < 0.08:
        title += rng.choice(_TITLE_SUFFIXES)
    return title


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
        return _unit(self.seed, "missing", artist_id) < self.missing_share

    def top_tracks(self, artist_id: str, market: str) -> list[dict[str, Any]] | None:
        """The artist's top tracks in `market` as Spotify returns them, or None when the artist does not exist."""
        if self.is_missing(artist_id):
            return None
        artist = self._artist(artist_id)
        pool = self._pool(artist, self._revisions.get(artist_id, 0))
        # Popularity is global; the market-seeded bonus makes neighbouring markets share most tracks in
        # different orders, with the tracks near the cut-off swapping in and out.
        pool.sort(
            key=lambda track: track["popularity"] + 8 * _unit(self.seed, "market", track["id"], market), reverse=True
        )
        return [self._localize(track, market) for track in pool[: artist.list_size]]

    def _artist(self, artist_id: str) -> _Artist:
        rng = _rng(self.seed, "artist", artist_id)
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
            artist_id, _artist_name(self.seed, artist_id), list_size, pool_size, popularity, rng.randint(2, 6)
        )

    def _pool(self, artist: _Artist, revision: int) -> list[dict[str, Any]]:
        # A slot's generation is the revision that last replaced its track (0 = original).
        generations = [0] * artist.pool_size
        for step in range(1, revision + 1):
            rng = _rng(self.seed, "revision", artist.id, step)
            for slot in rng.sample(range(artist.pool_size), min(artist.pool_size, rng.randint(1, 3))):
                generations[slot] = step
        return [self._track(artist, slot, generation, revision) for slot, generation in enumerate(generations)]

    def _track(self, artist: _Artist, slot: int, generation: int, revision: int) -> dict[str, Any]:
        """A market-independent TrackObject (as returned with `market` set: no available_markets)."""
        rng = _rng(self.seed, "track", artist.id, slot, generation)
        track_id = _base62_id(self.seed, "track-id", artist.id, slot, generation)
        if generation:  # tracks a revision brings in are fresh singles
            album = self._album(artist, ("single", slot, generation), fresh=True)
        else:
            album = self._album(artist, ("album", rng.randrange(artist.album_count)))
        artists = [_artist_ref(artist.id, artist.name)]
        name = _song_title(rng)
        if rng.random() < 0.15:
            # Featured artists come from the demo id space so their names agree with their own lists.
            featured_id = _base62_id("artist", self.seed, rng.randrange(1000))
            if featured_id != artist.id:
                featured_name = _artist_name(self.seed, featured_id)
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
            + _rng(self.seed, "drift", track_id, revision).uniform(-5, 5)
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
            "preview_url": f"https://p.scdn.co/mp3-preview/{_hex(40, 'preview', track_id)}" if has_preview else None,
            "track_number": track_number,
            "type": "track",
            "uri": f"spotify:track:{track_id}",
        }

    def _album(self, artist: _Artist, key: tuple[object, ...], fresh: bool = False) -> dict[str, Any]:
        """A SimplifiedAlbumObject (without available_markets, as with `market` set)."""
        rng = _rng(self.seed, "album", artist.id, *key)
        album_id = _base62_id(self.seed, "album-id", artist.id, *key)
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
        name = "" if rng.random() < 0.02 else _song_title(rng)  # real data has nameless albums
        cover = _hex(24, "cover", album_id)
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
        roll = _unit(self.seed, "relink", track["id"], market)
        if roll < 0.03:
            track["is_playable"] = False
            track["restrictions"] = {"reason": "market"}
        elif roll < 0.08:
            original_id = _base62_id(self.seed, "original", track["id"], market)
            track["linked_from"] = {
                "external_urls": {"spotify": f"{_OPEN}/track/{original_id}"},
                "href": f"{_API}/tracks/{original_id}",
                "id": original_id,
                "type": "track",
                "uri": f"spotify:track:{original_id}",
            }
        return track


# ---------------------------------------------------------------------------------------------------------
# Settings and statistics

# Accepted JSON value types per EmulatorSettings annotation (annotations are strings under postponed evaluation).
_SETTING_TYPES: dict[str, tuple[type, ...]] = {
    "float": (int, float),
    "int": (int,),
    "bool": (bool,),
    "int | None": (int, type(None)),
}


@dataclass
class EmulatorSettings:
    """Behaviour knobs, read on every request, so changes apply to the next request. Shares are 0..1."""

    latency_ms: float = 0.0  # added to every API and token response
    rate_limit_requests: int | None = None  # at most this many top-tracks requests per rolling window
    rate_limit_window_s: float = 30.0
    burst_429_count: int = 0  # the next N top-tracks requests get 429 (decremented per 429 served)
    burst_retry_after_s: int = 1  # Retry-After of burst 429s
    error_5xx_share: float = 0.0  # answered 500/502/503
    reset_share: float = 0.0  # connection reset without any response
    slow_share: float = 0.0  # delayed by slow_response_s before answering
    slow_response_s: float = 0.0
    truncated_json_share: float = 0.0  # 200 bodies cut in half (a consistent Content-Length: malformed JSON)
    token_lifetime_s: int = 3600  # expires_in of issued tokens; older tokens get 401
    forbid_all: bool = False  # every top-tracks request gets 403 (Development-Mode apps since Feb 2026)
    seed: int = 0  # seeds the fault draws and, unless a catalog is given, the catalog

    def update(self, changes: Mapping[str, Any]) -> None:
        """Apply named changes all-or-nothing; ValueError on an unknown field or a value of the wrong type."""
        types = {f.name: str(f.type) for f in fields(self)}
        for name, value in changes.items():
            if name not in types:
                raise ValueError(f"unknown setting: {name}")
            # bool is an int subclass, but `true` for a number is a caller's mistake worth rejecting.
            wrong_bool = isinstance(value, bool) and types[name] != "bool"
            if wrong_bool or not isinstance(value, _SETTING_TYPES[types[name]]):
                raise ValueError(f"invalid value for {name}: {value!r}")
        for name, value in changes.items():
            setattr(self, name, value)


@dataclass
class EmulatorStats:
    """Thread-safe request counters (admin requests are never counted); snapshot with as_dict()."""

    requests: int = 0  # top-tracks requests, whatever their outcome (resets included)
    token_requests: int = 0
    other_requests: int = 0  # unknown paths and methods
    by_status: dict[int, int] = field(default_factory=dict)  # every answered non-admin request
    resets: int = 0
    rate_limited: int = 0  # 429s, burst and rolling window
    bytes_sent: int = 0  # response body bytes
    connections: int = 0  # accepted TCP connections (admin ones included): far below requests with keep-alive
    in_flight: int = 0
    peak_in_flight: int = 0  # most non-admin requests served at once: the client's real concurrency
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def as_dict(self) -> dict[str, Any]:
        with self._lock:
            snapshot = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "_lock"}
            snapshot["by_status"] = dict(self.by_status)
        return snapshot

    def reset(self) -> None:
        with self._lock:
            self.requests = self.token_requests = self.other_requests = 0
            self.resets = self.rate_limited = self.bytes_sent = self.connections = 0
            self.by_status = {}
            self.peak_in_flight = self.in_flight  # requests still running finish normally

    def _connection_accepted(self) -> None:
        with self._lock:
            self.connections += 1

    def _begin(self) -> None:
        with self._lock:
            self.in_flight += 1
            self.peak_in_flight = max(self.peak_in_flight, self.in_flight)

    def _end(self, kind: str, status: int | None, body_bytes: int) -> None:
        with self._lock:
            self.in_flight -= 1
            if kind == "top_tracks":
                self.requests += 1
            elif kind == "token":
                self.token_requests += 1
            else:
                self.other_requests += 1
            if status is None:
                self.resets += 1
                return
            self.by_status[status] = self.by_status.get(status, 0) + 1
            if status == 429:
                self.rate_limited += 1
            self.bytes_sent += body_bytes


# ---------------------------------------------------------------------------------------------------------
# HTTP


@dataclass
class _Response:
    status: int
    payload: Any
    headers: dict[str, str] = field(default_factory=dict)
    truncate: bool = False


def _api_error(status: int, message: str, headers: dict[str, str] | None = None) -> _Response:
    return _Response(status, {"error": {"status": status, "message": message}}, headers or {})


def _unauthorized(message: str) -> _Response:
    challenge = f'Bearer realm="spotify", error="invalid_token", error_description="{message}"'
    return _api_error(401, message, {"WWW-Authenticate": challenge})


def _oauth_error(error: str, description: str) -> _Response:
    return _Response(400, {"error": error, "error_description": description})


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


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: every response carries a Content-Length
    disable_nagle_algorithm = True  # headers and body are separate writes; Nagle would delay the second
    timeout = 60  # idle keep-alive connections release their thread eventually
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        """Silenced: ~1000 requests per run would flood stderr."""

    def do_GET(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    do_PUT = do_DELETE = do_PATCH = do_GET  # answered 404 "Service not found" like unknown paths

    def _dispatch(self) -> None:
        emulator = self.server.emulator
        url = urlsplit(self.path)
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))  # always drained, for keep-alive
        if url.path.startswith("/_emulator/"):  # never delayed, faulted or counted
            self._send(emulator._answer_admin(self.command, url.path, body))
            return
        match = _TOP_TRACKS_PATH_RE.match(url.path) if self.command == "GET" else None
        kind = "top_tracks" if match else "token" if (self.command, url.path) == ("POST", "/api/token") else "other"
        emulator.stats._begin()
        counted = False
        try:
            time.sleep(emulator.settings.latency_ms / 1000)
            if match:
                response = emulator._answer_top_tracks(unquote(match.group(1)), parse_qs(url.query), self.headers)
            elif kind == "token":
                response = emulator._answer_token(self.headers, body)
            else:
                response = _api_error(404, "Service not found")
            if response is None:
                self._reset_connection()
            else:
                payload = self._encode(response)
                # Counted before the answer leaves, so a client that reads the stats after its response
                # always sees its own request.
                emulator.stats._end(kind, response.status, len(payload))
                counted = True
                self._send(response, payload)
        finally:
            if not counted:  # a reset, or a crash, which the client sees as a dropped connection too
                emulator.stats._end(kind, None, 0)

    @staticmethod
    def _encode(response: _Response) -> bytes:
        body = json.dumps(response.payload, ensure_ascii=False, separators=(",", ":")).encode()
        return body[: len(body) // 2] if response.truncate else body

    def _send(self, response: _Response, body: bytes | None = None) -> int:
        body = self._encode(response) if body is None else body
        self.send_response(response.status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Cache-Control", "private, max-age=0")
        self.send_header("Content-Length", str(len(body)))
        for name, value in response.headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)
        return len(body)

    def _reset_connection(self) -> None:
        # With SO_LINGER on and a zero timeout, close() sends RST instead of FIN: the client sees ECONNRESET.
        # The descriptor really closes once finish() closes rfile, which holds a reference to the socket.
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.close_connection = True
        self.connection.close()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], emulator: SpotifyEmulator) -> None:
        self.emulator = emulator
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind resolves the host's FQDN, a reverse-DNS lookup that can stall offline.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = str(self.server_address[0]), int(self.server_address[1])

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        self.emulator.stats._connection_accepted()
        with self._connections_lock:
            self._connections.add(request)
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self._connections_lock:
                self._connections.discard(request)

    def close_connections(self) -> None:
        """Hang up on open keep-alive connections, so a stopped emulator really stops answering."""
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients hang up mid-response all the time (timeouts, their own resets); that is no emulator error.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class SpotifyEmulator:
    """The Spotify token and top-tracks endpoints, served on loopback from a daemon thread."""

    def __init__(
        self,
        client_id: str,
        client_secret: str,
        host: str = "127.0.0.1",
        port: int = 0,
        settings: EmulatorSettings | None = None,
        catalog: Catalog | None = None,
    ) -> None:
        self.client_id = client_id
        self._client_secret = client_secret
        self.settings = settings if settings is not None else EmulatorSettings()
        self.catalog = catalog if catalog is not None else Catalog(seed=self.settings.seed)
        self.stats = EmulatorStats()
        self._address = (host, port)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()  # guards the tokens, the fault rng, the rate-limit window and burst count
        self._tokens: dict[str, float] = {}  # access token -> monotonic issue time
        self._fault_seed = self.settings.seed
        self._fault_rng = random.Random(self._fault_seed)
        self._window: deque[float] = deque()  # monotonic times of the top-tracks requests in the rolling window

    def start(self) -> SpotifyEmulator:
        if self._server is not None:
            raise RuntimeError("emulator already started")
        self._server = _Server(self._address, self)
        # A short poll interval keeps stop() fast; tests start and stop many emulators.
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"spotify-emulator-{self.port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        server.close_connections()
        if self._thread is not None:
            self._thread.join()

    def reset_stats(self) -> None:
        self.stats.reset()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("emulator not started")
        return int(self._server.server_address[1])

    @property
    def base_url(self) -> str:
        return f"http://{self._address[0]}:{self.port}/v1"

    @property
    def token_url(self) -> str:
        return f"http://{self._address[0]}:{self.port}/api/token"

    def __enter__(self) -> SpotifyEmulator:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # Request handling, called from the server's request threads.

    def _answer_token(self, headers: Mapping[str, str], body: bytes) -> _Response:
        form = parse_qs(body.decode("utf-8", "replace"))
        if form.get("grant_type", [""])[0] != "client_credentials":
            return _oauth_error("unsupported_grant_type", "grant_type parameter is missing")
        if not self._valid_client(headers.get("Authorization") or "", form):
            return _oauth_error("invalid_client", "Invalid client")
        token = "BQ" + secrets.token_urlsafe(80)
        with self._lock:
            self._tokens[token] = time.monotonic()
        return _Response(
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

    def _answer_top_tracks(
        self, artist_id: str, query: dict[str, list[str]], headers: Mapping[str, str]
    ) -> _Response | None:
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
                return _api_error(403, "Forbidden")
            if settings.burst_429_count > 0:
                settings.burst_429_count -= 1
                return self._rate_limited(settings.burst_retry_after_s)
            retry_after = self._admit_to_window(settings)
            if retry_after is not None:
                return self._rate_limited(retry_after)
            if settings.error_5xx_share and rng.random() < settings.error_5xx_share:
                status = rng.choice(sorted(_SERVER_ERRORS))
                return _api_error(status, _SERVER_ERRORS[status])
            slow = bool(settings.slow_share) and rng.random() < settings.slow_share
            truncate = bool(settings.truncated_json_share) and rng.random() < settings.truncated_json_share
        if slow:
            time.sleep(settings.slow_response_s)

        if not ARTIST_ID_RE.fullmatch(artist_id):
            return _api_error(400, "Invalid base62 id")
        market = query.get("market", [""])[0]
        if not _MARKET_RE.fullmatch(market):
            return _api_error(400, "Invalid market code")
        tracks = self.catalog.top_tracks(artist_id, market)
        if tracks is None:
            return _api_error(404, "non existing id")
        return _Response(200, {"tracks": tracks}, truncate=truncate)

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
    def _rate_limited(retry_after_s: int) -> _Response:
        return _api_error(429, "API rate limit exceeded", {"Retry-After": str(retry_after_s)})

    def _answer_admin(self, method: str, path: str, body: bytes) -> _Response:
        try:
            if (method, path) == ("GET", "/_emulator/stats"):
                return _Response(200, self.stats.as_dict())
            if path == "/_emulator/settings" and method in ("GET", "POST"):
                if method == "POST":
                    self.settings.update(_json_object(body))
                return _Response(200, asdict(self.settings))
            if (method, path) == ("POST", "/_emulator/revision"):
                request = _json_object(body)
                artist_id, revision = _field(request, "artist_id", str), _field(request, "revision", int)
                self.catalog.set_revision(artist_id, revision)
                return _Response(200, {"artist_id": artist_id, "revision": revision})
            if (method, path) == ("POST", "/_emulator/missing"):
                request = _json_object(body)
                artist_id, missing = _field(request, "artist_id", str), request.get("missing", True)
                if not isinstance(missing, bool):
                    raise ValueError("missing must be a bool")
                self.catalog.set_missing(artist_id, missing)
                return _Response(200, {"artist_id": artist_id, "missing": missing})
            if (method, path) == ("POST", "/_emulator/reset-stats"):
                self.reset_stats()
                return _Response(200, self.stats.as_dict())
        except ValueError as error:  # includes malformed JSON
            return _api_error(400, str(error))
        return _api_error(404, "Service not found")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Serve a local emulator of Spotify's token and top-tracks endpoints.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8787, help="0 picks a free port")
    parser.add_argument("--client-id", required=True)
    parser.add_argument(
        "--client-secret-env",
        required=True,
        metavar="VAR",
        help="name of the environment variable holding the client secret",
    )
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--rate-limit-requests", type=int)
    parser.add_argument("--rate-limit-window-s", type=float, default=30.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    client_secret = os.environ.get(args.client_secret_env)
    if not client_secret:
        parser.error(f"environment variable {args.client_secret_env} is unset or empty")
    settings = EmulatorSettings(
        latency_ms=args.latency_ms,
        rate_limit_requests=args.rate_limit_requests,
        rate_limit_window_s=args.rate_limit_window_s,
        seed=args.seed,
    )
    stop_requested = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop_requested.set())
    with SpotifyEmulator(args.client_id, client_secret, args.host, args.port, settings) as emulator:
        print(f"spotify emulator listening on http://{args.host}:{emulator.port}", flush=True)
        stop_requested.wait()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
