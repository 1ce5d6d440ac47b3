"""A small stand-in for the Spotify API, for the faults the emulator does not play: each artist (or every artist)
can be given a fault mode. The token endpoint always answers."""

from __future__ import annotations

import gzip
import json
import re
import threading
import time
from functools import cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

TRACKS = [{"id": "0" * 22, "name": "stand-in track", "popularity": 50}]
_PATH = re.compile(r"^/v1/artists/([0-9A-Za-z]{22})/top-tracks(\?.*)?$")


@cache
def gzip_bomb() -> bytes:
    """About 1 MB of gzip that decodes to 1 GiB of zeros: 64 members of 16 MiB each."""
    return gzip.compress(bytes(16 * 1024 * 1024), 9) * 64


class StandIn:
    """`modes[artist_id]` or `default_mode`: ok, null, 500, drip, bomb, quota, html404 (every path but the token)."""

    def __init__(self, drip_every_s: float = 1.0):
        self.modes: dict[str, str] = {}
        self.default_mode = "ok"
        self.drip_every_s = drip_every_s
        self.requests = 0
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._server.handle_error = lambda request, address: None  # a client hanging up on a fault is the point
        self.base_url = f"http://127.0.0.1:{self._server.server_port}/v1"
        self.token_url = f"http://127.0.0.1:{self._server.server_port}/api/token"

    def __enter__(self) -> "StandIn":
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                self.answer(200, json.dumps({"access_token": "stand-in", "expires_in": 3600}).encode())

            def do_GET(self) -> None:
                stand_in.requests += 1
                match = _PATH.match(self.path)
                mode = stand_in.modes.get(match.group(1), stand_in.default_mode) if match else "html404"
                if mode == "html404":
                    self.answer(404, b"<html><body><h1>Not Found</h1></body></html>", "text/html")
                elif mode == "null":
                    self.answer(200, b'{"tracks": null}')
                elif mode == "500":
                    self.answer(500, b'{"error": {"status": 500, "message": "Server error"}}')
                elif mode == "quota":
                    self.answer(429, b'{"error": {"status": 429, "message": "QUOTA_EXCEEDED"}}')
                elif mode == "bomb":
                    self.answer(200, gzip_bomb(), headers={"Content-Encoding": "gzip"})
                elif mode == "drip":
                    self.drip(json.dumps({"tracks": TRACKS}).encode())
                else:
                    self.answer(200, json.dumps({"tracks": TRACKS}).encode())

            def answer(
                self, status: int, body: bytes, kind: str = "application/json", headers: dict | None = None
            ) -> None:
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                try:
                    self.wfile.write(body)
                except OSError:  # the client gave up on it
                    self.close_connection = True

            def drip(self, body: bytes) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                try:
                    for byte in body:
                        self.wfile.write(bytes([byte]))
                        self.wfile.flush()
                        time.sleep(stand_in.drip_every_s)
                except OSError:
                    pass
                self.close_connection = True

        return Handler
