"""Local emulator of the two Spotify Web API endpoints the pipeline uses.

Spotify is unreachable from development and CI machines (and since February 2026 it no longer serves top
tracks to Development-Mode apps), so the pipeline runs against this emulator instead: a real HTTP/1.1 server
on loopback implementing the client-credentials token endpoint and "Get Artist's Top Tracks" with Spotify's
response and error shapes, a deterministic realistic catalog, fault modes switchable at runtime (also over
HTTP from another process, see the ``/_emulator/*`` admin endpoints) and request statistics.

This module is the server (``SpotifyEmulator``) and the standalone process; what it answers is emulator_api.py,
the catalogue emulator_catalog.py (ids and names: emulator_names.py), the knobs and counters
emulator_settings.py. Their public names are importable from here too.

In-process::

    with SpotifyEmulator("id", "secret", settings=EmulatorSettings(latency_ms=20)) as emulator:
        requests.post(emulator.token_url, data={"grant_type": "client_credentials"}, auth=("id", "secret"))

Standalone (the secret is read from the named environment variable, never from the command line)::

    python -m toptracks_dagster.dev.spotify_emulator --port 8787 --client-id ID --client-secret-env VAR
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import socketserver
import struct
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from toptracks_dagster.dev.emulator_api import EmulatorApi, Response, api_error
from toptracks_dagster.dev.emulator_catalog import Catalog
from toptracks_dagster.dev.emulator_names import demo_artist_ids
from toptracks_dagster.dev.emulator_settings import EmulatorSettings, EmulatorStats

__all__ = ["Catalog", "EmulatorSettings", "EmulatorStats", "SpotifyEmulator", "demo_artist_ids"]

_TOP_TRACKS_PATH_RE = re.compile(r"^/v1/artists/([^/]*)/top-tracks/?$")


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
            self._send(emulator.api.answer_admin(self.command, url.path, body))
            return
        match = _TOP_TRACKS_PATH_RE.match(url.path) if self.command == "GET" else None
        kind = "top_tracks" if match else "token" if (self.command, url.path) == ("POST", "/api/token") else "other"
        emulator.stats._begin()
        counted = False
        try:
            time.sleep(emulator.settings.latency_ms / 1000)
            if match:
                response = emulator.api.answer_top_tracks(unquote(match.group(1)), parse_qs(url.query), self.headers)
            elif kind == "token":
                response = emulator.api.answer_token(self.headers, body)
            else:
                response = api_error(404, "Service not found")
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
    def _encode(response: Response) -> bytes:
        body = json.dumps(response.payload, ensure_ascii=False, separators=(",", ":")).encode()
        return body[: len(body) // 2] if response.truncate else body

    def _send(self, response: Response, body: bytes | None = None) -> int:
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
        self.settings = settings if settings is not None else EmulatorSettings()
        self.catalog = catalog if catalog is not None else Catalog(seed=self.settings.seed)
        self.stats = EmulatorStats()
        self.api = EmulatorApi(client_id, client_secret, self.settings, self.catalog, self.stats)
        self._address = (host, port)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

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
