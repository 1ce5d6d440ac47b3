"""A local emulator of the two Spotify Web API endpoints the pipeline uses, the client-credentials token endpoint
and "Get Artist's Top Tracks": Spotify's response and error shapes, a deterministic catalog, fault modes
switchable at runtime (`settings`, or POST /_emulator/settings) and request counters, on 127.0.0.1 for tests,
benchmarks and the local stack, which cannot reach Spotify. Standalone (the secret is read from the named
environment variable, never from the command line)::

    python -m toptracks_dagster.dev.spotify_emulator --port 8787 --client-id ID --client-secret-env VAR
"""

from __future__ import annotations

import argparse
import base64
import contextlib
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
from dataclasses import asdict, dataclass, fields
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from toptracks_dagster.common import SPOTIFY_ID_RE


# SHA-256 of the inputs, never Python's per-process salted hash(), so a seed gives the same catalog everywhere.
def _digest(*parts: object) -> bytes:
    return hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()


def _rng(*parts: object) -> random.Random:
    return random.Random(int.from_bytes(_digest(*parts)[:16], "big"))


def _base62_id(*parts: object) -> str:
    """A 22-character base62 id like Spotify's."""
    return "".join((string.digits + string.ascii_letters)[byte % 62] for byte in _digest(*parts)[:22])


def demo_artist_ids(n: int, seed: int = 0) -> list[str]:
    """`n` distinct valid artist ids, the same for the same seed; a catalog of that seed answers 404 for about
    `Catalog.missing_share` of them, like stale ids in a real database."""
    return [_base62_id("artist", seed, index) for index in range(n)]


_ADJECTIVES = "Golden Electric Silent Broken Midnight Neon Velvet Wild Lonely Crystal Burning Paper Hollow".split()
_NOUNS = "Heart River Dream Fire Ocean Highway Mirror Garden Thunder Shadow Rain City Echo Horizon Moon".split()
_PEOPLE = "Ava Leo Mila Jonas Zoe Mateo Ines Kai Nora Theo Luz Yuki Omar Freya Rivers Stone Tanaka Reyes".split()
# Non-ASCII and punctuated names, as real catalogs are full of: they catch encoding and quoting bugs downstream.
_SPECIAL = """Café Noir|夜に駆ける|Niño del Mar|Déjà Vu|Über den Wolken|君の名前|Мечта|사랑해요|Say "Goodbye"|\
Don't Stop Now|Rock 'n' Roll Heart|¿Dónde Estás?|Sigur Lúna|Zoë & The Kites|The 'Quoted' Band""".split("|")


def _name(rng: random.Random, person: bool = False) -> str:
    """A song, album or (with person) artist name."""
    roll, pick = rng.random(), rng.choice
    if roll < 0.08:
        return pick(_SPECIAL)
    if roll < 0.5:
        return f"{pick(_PEOPLE)} {pick(_PEOPLE)}" if person else f"{pick(_ADJECTIVES)} {pick(_NOUNS)}"
    return f"The {pick(_ADJECTIVES)} {pick(_NOUNS)}s" if roll < 0.8 else f"{pick(_NOUNS)} - Live"


def _link(kind: str, item_id: str, **extra: Any) -> dict[str, Any]:
    """The reference fields every Spotify object carries."""
    urls = {"external_urls": {"spotify": f"https://open.spotify.com/{kind}/{item_id}"}}
    link = {**urls, "href": f"https://api.spotify.com/v1/{kind}s/{item_id}", "id": item_id}
    return {**link, **extra, "type": kind, "uri": f"spotify:{kind}:{item_id}"}


class Catalog:
    """top_tracks(artist_id, market) as Spotify's TrackObjects (as returned with `market` set: no
    available_markets), a pure function of (seed, artist, market, revision)."""

    missing_share = 0.04  # artists that answer 404

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed
        # Plain dict reads and writes are atomic, so request threads need no lock here.
        self._revisions: dict[str, int] = {}
        self._forced_missing: dict[str, bool] = {}

    def set_revision(self, artist_id: str, revision: int) -> None:
        """Move an artist to another revision (0 is the first): each step replaces 1-3 of its tracks and re-draws
        popularities, so its lists lose tracks, gain tracks and change order."""
        if revision < 0:
            raise ValueError("revision must be >= 0")
        self._revisions[artist_id] = revision

    def set_missing(self, artist_id: str, missing: bool = True) -> None:
        """Force the artist to answer 404 (or, with missing=False, to exist)."""
        self._forced_missing[artist_id] = missing

    def is_missing(self, artist_id: str) -> bool:
        forced = self._forced_missing.get(artist_id)
        return forced if forced is not None else _rng(self.seed, "missing", artist_id).random() < self.missing_share

    def top_tracks(self, artist_id: str, market: str) -> list[dict[str, Any]] | None:
        """The artist's top tracks in `market`, or None when the artist does not exist."""
        if self.is_missing(artist_id):
            return None
        rng = _rng(self.seed, "artist", artist_id)
        roll = rng.random()
        list_size = 0 if roll < 0.02 else rng.randint(3, 9) if roll < 0.10 else 10  # some lists are empty: a 200
        pool_size = rng.randint(12, 16) if list_size == 10 else list_size  # the tracks the lists are picked from
        artist = (artist_id, _name(_rng(self.seed, "artist-name", artist_id), person=True))
        popularity, albums = round(rng.triangular(10, 100, 55)), rng.randint(2, 6)
        revision = self._revisions.get(artist_id, 0)
        generations = [0] * pool_size  # per pool slot, the revision that last replaced its track
        for step in range(1, revision + 1):
            rng = _rng(self.seed, "revision", artist_id, step)
            for slot in rng.sample(range(pool_size), min(pool_size, rng.randint(1, 3))):
                generations[slot] = step
        pool = [self._track(artist, popularity, albums, slot, gen, revision) for slot, gen in enumerate(generations)]
        # A market-seeded bonus: neighbouring markets share most tracks, in different orders.
        pool.sort(key=lambda t: t["popularity"] + 8 * _rng(self.seed, "market", t["id"], market).random(), reverse=True)
        return pool[:list_size]

    def _track(self, artist: tuple, popularity: int, albums: int, slot: int, gen: int, revision: int) -> dict:
        rng = _rng(self.seed, "track", artist[0], slot, gen)
        track_id = _base62_id(self.seed, "track-id", artist[0], slot, gen)
        album = self._album(artist, ("single", slot, gen) if gen else ("album", rng.randrange(albums)))  # fresh singles
        artists, name = [_link("artist", artist[0], name=artist[1])], _name(rng)
        featured = _base62_id("artist", self.seed, rng.randrange(1000))  # from the demo ids: its name is its own
        if rng.random() < 0.15 and featured != artist[0]:
            artists.append(_link("artist", featured, name=_name(_rng(self.seed, "artist-name", featured), True)))
            name += f" (feat. {artists[-1]['name']})"
        # New releases enter high; every revision re-draws a small drift, so the order changes.
        drift = (8 if gen else 0) + _rng(self.seed, "drift", track_id, revision).uniform(-5, 5)
        track = {"album": album, "artists": artists, "disc_number": 1, "duration_ms": rng.randint(120_000, 360_000)}
        track.update(explicit=rng.random() < 0.25, **_link("track", track_id, is_local=False, is_playable=True))
        preview = f"https://p.scdn.co/mp3-preview/{_digest(track_id).hex()[:40]}" if rng.random() >= 0.3 else None
        track.update(name=name, popularity=max(0, min(100, round(popularity - rng.uniform(0, 30) + drift))))
        return {**track, "preview_url": preview, "track_number": rng.randint(1, album["total_tracks"])}

    def _album(self, artist: tuple, key: tuple) -> dict[str, Any]:
        """A SimplifiedAlbumObject."""
        rng, album_id = _rng(self.seed, "album", artist[0], *key), _base62_id(self.seed, "album-id", artist[0], *key)
        single, cover = key[0] == "single" or rng.random() < 0.2, _digest("cover", album_id).hex()[:24]
        year = rng.randint(2025, 2026) if key[0] == "single" else rng.randint(1968, 2025)
        images = [{"url": f"https://i.scdn.co/image/{cover}", "height": px, "width": px} for px in (640, 300, 64)]
        album = {"album_type": "single" if single else "album", "total_tracks": rng.randint(1, 4) if single else 12}
        date = f"{year}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"
        dated = {"release_date": date, "release_date_precision": "day"}
        name = "" if rng.random() < 0.02 else _name(rng)  # real data has nameless albums
        album.update(images=images, **_link("album", album_id, name=name, **dated))
        return {**album, "artists": [_link("artist", artist[0], name=artist[1])], "is_playable": True}


@dataclass
class EmulatorSettings:
    """Behaviour knobs, read on every request, so a change applies to the next one. Shares are 0..1."""

    latency_ms: float = 0.0  # added to every API and token response
    rate_limit_requests: int | None = None  # at most this many top-tracks requests per rolling window
    rate_limit_window_s: float = 30.0
    burst_429_count: int = 0  # the next N top-tracks requests get 429
    burst_retry_after_s: int = 1  # Retry-After of burst 429s
    error_5xx_share: float = 0.0  # answered 500/502/503
    reset_share: float = 0.0  # connection reset without any response
    slow_share: float = 0.0  # delayed by slow_response_s before answering
    slow_response_s: float = 0.0
    truncated_json_share: float = 0.0  # 200 bodies cut in half (a consistent Content-Length: malformed JSON)
    token_lifetime_s: int = 3600  # expires_in of issued tokens; older tokens get 401
    forbid_all: bool = False  # every top-tracks request gets 403, as Spotify answers Development-Mode apps
    seed: int = 0  # seeds the fault draws (at start) and, unless a catalog is given, the catalog

    def update(self, changes: Any) -> None:
        """Apply named changes all or nothing; ValueError on an unknown name or a value of the wrong type."""
        accepted = {"float": (int, float), "int": (int,), "bool": (bool,), "int | None": (int, type(None))}
        types = {f.name: str(f.type) for f in fields(self)}
        changes = dict(changes)  # TypeError or ValueError when it is no mapping
        for name, value in changes.items():
            kind = types.get(name)
            # bool is an int subclass, but `true` for a number is a caller's mistake.
            if kind is None or isinstance(value, bool) != (kind == "bool") or not isinstance(value, accepted[kind]):
                raise ValueError(f"unknown setting or invalid value: {name}={value!r}")
        for name, value in changes.items():
            setattr(self, name, value)


class EmulatorStats:
    """Counters of the served requests (admin requests are not counted), shared by the request threads."""

    _NAMES = ("requests", "token_requests", "other_requests", "resets", "rate_limited", "in_flight", "peak_in_flight")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts, self._by_status = dict.fromkeys(self._NAMES, 0), {}  # by_status: every answered request

    def as_dict(self) -> dict[str, Any]:
        with self._lock:
            return {**self._counts, "by_status": dict(self._by_status)}

    def reset(self) -> None:
        with self._lock:
            running = self._counts["in_flight"]  # requests still running finish normally
            self._counts = {**dict.fromkeys(self._NAMES, 0), "in_flight": running, "peak_in_flight": running}
            self._by_status = {}

    def _add(self, status: int | None = None, **deltas: int) -> None:
        with self._lock:
            for name, delta in deltas.items():
                self._counts[name] += delta
            self._counts["peak_in_flight"] = max(self._counts["peak_in_flight"], self._counts["in_flight"])
            if status is not None:
                self._by_status[status] = self._by_status.get(status, 0) + 1


Answer = tuple[int, Any, dict[str, str]]  # (status, a JSON payload or the body's bytes, extra headers)


def _json(payload: Any) -> bytes:
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()


def _error(status: int, message: str, **headers: str) -> Answer:
    return status, {"error": {"status": status, "message": message}}, headers


def _unauthorized(message: str) -> Answer:
    challenge = f'Bearer realm="spotify", error="invalid_token", error_description="{message}"'
    return _error(401, message, **{"WWW-Authenticate": challenge})


_SERVER_ERRORS = {500: "Server error.", 502: "Bad gateway.", 503: "Service unavailable"}
_TOP_TRACKS_PATH, _MARKET = re.compile(r"^/v1/artists/([^/]*)/top-tracks/?$"), re.compile(r"^[A-Z]{2}$")
_MAX_BODY = 64 * 1024  # a token request or a settings change is far smaller


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: every response carries a Content-Length
    disable_nagle_algorithm = True  # headers and body are separate writes; Nagle would delay the second
    timeout = 60  # an idle keep-alive connection releases its thread

    def log_message(self, format: str, *args: Any) -> None:
        """Silent: a run sends thousands of requests."""

    def do_GET(self) -> None:
        emulator, url = self.server.emulator, urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        if emulator._server is None or length > _MAX_BODY:  # stopped (keep-alive connections too), or abuse
            return self._reset_connection()
        body = self.rfile.read(length)  # always drained, for keep-alive
        if url.path.startswith("/_emulator/"):  # never delayed, faulted or counted
            return self._send(emulator._admin(self.command, url.path, body))
        match = _TOP_TRACKS_PATH.match(url.path) if self.command == "GET" else None
        token = (self.command, url.path) == ("POST", "/api/token")
        kind = "requests" if match else "token_requests" if token else "other_requests"
        emulator.stats._add(in_flight=1)
        answer = None
        try:
            time.sleep(emulator.settings.latency_ms / 1000)
            if match:
                answer = emulator._top_tracks(unquote(match.group(1)), parse_qs(url.query), self.headers)
            else:
                answer = emulator._token(self.headers, body) if token else _error(404, "Service not found")
        finally:  # counted before the answer leaves, so a client reading the stats next sees its own request
            status = answer[0] if answer else None
            emulator.stats._add(status, in_flight=-1, resets=status is None, rate_limited=status == 429, **{kind: 1})
        return self._send(answer) if answer else self._reset_connection()

    do_POST = do_PUT = do_DELETE = do_PATCH = do_GET

    def _send(self, answer: Answer) -> None:
        status, payload, headers = answer
        body = payload if isinstance(payload, bytes) else _json(payload)
        self.send_response(status)
        headers = {"Content-Type": "application/json; charset=utf-8", "Cache-Control": "private, max-age=0", **headers}
        for name, value in {**headers, "Content-Length": str(len(body))}.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def _reset_connection(self) -> None:
        # With SO_LINGER on and a zero timeout, close() sends RST instead of FIN: the client sees ECONNRESET.
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.close_connection = True
        self.connection.close()


# Not http.server's HTTPServer: its server_bind looks up the host's FQDN, a reverse-DNS query that can stall offline.
class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = allow_reuse_address = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients hang up mid-response (timeouts, their own resets): that is no emulator error.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class SpotifyEmulator:
    """The Spotify token and top-tracks endpoints, served on 127.0.0.1 (only) from a daemon thread."""

    def __init__(
        self,
        client_id: str,
        client_secret: str,
        port: int = 0,
        settings: EmulatorSettings | None = None,
        catalog: Catalog | None = None,
    ) -> None:
        self.settings = settings if settings is not None else EmulatorSettings()
        self.catalog = catalog if catalog is not None else Catalog(seed=self.settings.seed)
        self.stats = EmulatorStats()
        self._basic = "Basic " + base64.b64encode(f"{client_id}:{client_secret}".encode()).decode()
        self._port, self._server = port, None
        self._lock = threading.Lock()  # guards the tokens, the fault draws, the rate-limit window, the burst count
        self._tokens: dict[str, float] = {}  # access token -> monotonic issue time
        self._faults = random.Random(self.settings.seed)
        self._window: deque[float] = deque()  # monotonic times of the top-tracks requests in the rolling window

    def start(self) -> SpotifyEmulator:
        if self._server is not None:
            raise RuntimeError("emulator already started")
        self._server = _Server(("127.0.0.1", self._port), _Handler)
        self._server.emulator = self
        self.port = int(self._server.server_address[1])
        self.base_url, self.token_url = f"http://127.0.0.1:{self.port}/v1", f"http://127.0.0.1:{self.port}/api/token"
        # A short poll interval keeps stop() quick; tests start and stop many emulators.
        threading.Thread(target=self._server.serve_forever, args=(0.05,), name="spotify-emulator", daemon=True).start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()

    def __enter__(self) -> SpotifyEmulator:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _token(self, headers: Any, body: bytes) -> Answer:
        if parse_qs(body.decode("utf-8", "replace")).get("grant_type") != ["client_credentials"]:
            return 400, {"error": "unsupported_grant_type", "error_description": "grant_type parameter is missing"}, {}
        if not secrets.compare_digest((headers.get("Authorization") or "").strip().encode(), self._basic.encode()):
            return 400, {"error": "invalid_client", "error_description": "Invalid client"}, {}
        token, now, lifetime = "BQ" + secrets.token_urlsafe(80), time.monotonic(), self.settings.token_lifetime_s
        with self._lock:  # tokens older than an hour (or their lifetime) are forgotten: the table stays small
            self._tokens = {t: at for t, at in self._tokens.items() if now - at < max(lifetime, 3600)}
            self._tokens[token] = now
        return 200, {"access_token": token, "token_type": "Bearer", "expires_in": lifetime}, {}

    def _top_tracks(self, artist_id: str, query: dict[str, list[str]], headers: Any) -> Answer | None:
        """The answer, or None to reset the connection. Checks run in Spotify's order: auth, faults, input."""
        scheme, _, token = (headers.get("Authorization") or "").partition(" ")
        settings = self.settings
        with self._lock:
            issued_at = self._tokens.get(token.strip())
        if scheme.lower() != "bearer" or not token.strip():
            return _unauthorized("No token provided")
        if issued_at is None:
            return _unauthorized("Invalid access token")
        if time.monotonic() - issued_at >= settings.token_lifetime_s:
            return _unauthorized("The access token expired")
        with self._lock:
            draw = self._faults.random  # disabled faults draw nothing: a configuration gets a reproducible sequence
            if settings.reset_share and draw() < settings.reset_share:
                return None
            if settings.forbid_all:
                return _error(403, "Forbidden")
            retry_after = settings.burst_retry_after_s if settings.burst_429_count > 0 else self._admit()
            settings.burst_429_count = max(0, settings.burst_429_count - 1)
            if retry_after is not None:
                return _error(429, "API rate limit exceeded", **{"Retry-After": str(retry_after)})
            if settings.error_5xx_share and draw() < settings.error_5xx_share:
                status = self._faults.choice(sorted(_SERVER_ERRORS))
                return _error(status, _SERVER_ERRORS[status])
            slow = bool(settings.slow_share) and draw() < settings.slow_share
            truncate = bool(settings.truncated_json_share) and draw() < settings.truncated_json_share
        time.sleep(settings.slow_response_s if slow else 0)
        if not SPOTIFY_ID_RE.fullmatch(artist_id):
            return _error(400, "Invalid base62 id")
        market = query.get("market", [""])[0]
        if not _MARKET.fullmatch(market):
            return _error(400, "Invalid market code")
        tracks = self.catalog.top_tracks(artist_id, market)
        if tracks is None:
            return _error(404, "non existing id")
        body = _json({"tracks": tracks})
        return 200, body[: len(body) // 2] if truncate else body, {}

    def _admit(self) -> int | None:
        """Record the request in the rolling window, or return its Retry-After (refused ones are not recorded)."""
        limit, window_s, now = self.settings.rate_limit_requests, self.settings.rate_limit_window_s, time.monotonic()
        if limit is None:
            return None
        while self._window and self._window[0] <= now - window_s:
            self._window.popleft()
        if len(self._window) < limit:
            self._window.append(now)
            return None
        # A slot frees when the oldest request leaves (or, after the limit was lowered, enough of them have).
        frees_at = self._window[len(self._window) - limit] + window_s if limit > 0 else now + window_s
        return max(1, math.ceil(frees_at - now))

    def _admin(self, method: str, path: str, body: bytes) -> Answer:
        try:
            if (method, path) == ("POST", "/_emulator/settings"):
                self.settings.update(json.loads(body or b"{}"))
                return 200, asdict(self.settings), {}
            if (method, path) == ("POST", "/_emulator/reset-stats"):
                self.stats.reset()
            if path in ("/_emulator/stats", "/_emulator/reset-stats"):
                return 200, self.stats.as_dict(), {}
        except (TypeError, ValueError) as error:  # malformed JSON included
            return _error(400, str(error))
        return _error(404, "Service not found")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Serve a local emulator of Spotify's token and top-tracks endpoints.")
    parser.add_argument("--port", type=int, default=8787, help="0 picks a free port")
    parser.add_argument("--client-id", required=True)
    parser.add_argument("--client-secret-env", required=True, metavar="VAR", help="variable holding the secret")
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    client_secret = os.environ.get(args.client_secret_env)
    if not client_secret:
        parser.error(f"environment variable {args.client_secret_env} is unset or empty")
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # SIGTERM stops it like Ctrl-C
    settings = EmulatorSettings(latency_ms=args.latency_ms, seed=args.seed)
    with SpotifyEmulator(args.client_id, client_secret, args.port, settings) as emulator:
        print(f"spotify emulator listening on {emulator.base_url.removesuffix('/v1')}", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            signal.pause()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
