"""An in-process stack: Spotify emulator + DynamoDB (moto server) + a seeded SQLite artists table, living as long
as the `with` block. For tests and scripts that want services of their own for their own lifetime; the
`local` deployment's background stack (`toptracks stack`, started on demand) is in `stack.py`, and shares
the demo artists seeding below.
"""

from __future__ import annotations

import logging
import secrets
import sqlite3
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path

from toptracks_dagster import config
from toptracks_dagster.dev.spotify_emulator import (
    Catalog,
    EmulatorSettings,
    SpotifyEmulator,
    demo_artist_ids,
)

DEMO_ARTISTS = 200
LOCAL_CLIENT_ID = "toptracks-local-demo"


def seed_demo_artists(path: str, count: int = DEMO_ARTISTS) -> bool:
    """Create the SQLite `artists` table with `count` demo artists unless it exists.

    One id is padded with whitespace and one repeated, so the screening shows in the metadata while every
    asset check passes (malformed ids would be a WARN by design).
    """
    db_path = Path(path)
    if db_path.exists():
        return False
    db_path.parent.mkdir(parents=True, exist_ok=True)
    ids = demo_artist_ids(count)
    rows = [f"  {ids[0]} ", ids[1], *ids[1:]]
    with closing(sqlite3.connect(db_path)) as connection:
        connection.execute("CREATE TABLE artists (id TEXT)")
        connection.executemany("INSERT INTO artists (id) VALUES (?)", [(r,) for r in rows])
        connection.commit()
    return True


@dataclass
class LocalStack:
    spotify_port: int = 0
    dynamodb_port: int = 0
    artists_db_path: str = config.DEFAULT_LOCAL_ARTISTS_DB
    emulator_settings: EmulatorSettings = field(default_factory=EmulatorSettings)
    emulator: SpotifyEmulator | None = None
    _moto = None

    def start(self) -> "LocalStack":
        from moto.server import ThreadedMotoServer  # heavy import, dev only

        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's server logs every request otherwise

        seed_demo_artists(self.artists_db_path)
        # Per-start throwaway credentials: nothing in the repo, nothing worth leaking.
        self._client_secret = secrets.token_urlsafe(24)
        self._aws_secret = secrets.token_hex(16)
        self.emulator = SpotifyEmulator(
            LOCAL_CLIENT_ID,
            self._client_secret,
            port=self.spotify_port,
            settings=self.emulator_settings,
            catalog=Catalog(seed=self.emulator_settings.seed),
        ).start()
        self._moto = ThreadedMotoServer(ip_address="127.0.0.1", port=self.dynamodb_port, verbose=False)
        self._moto.start()
        self.dynamodb_port = self._moto.get_host_and_port()[1]
        return self

    def stop(self) -> None:
        if self.emulator:
            self.emulator.stop()
        if self._moto:
            self._moto.stop()

    def __enter__(self) -> "LocalStack":
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def dynamodb_endpoint(self) -> str:
        return f"http://127.0.0.1:{self.dynamodb_port}"

    def environment(self) -> dict[str, str]:
        """Variables that point the `local` deployment at this stack."""
        assert self.emulator is not None, "start() first"
        return {
            "DAGSTER_DEPLOYMENT": config.LOCAL,
            "SPOTIFY_CLIENT_ID": LOCAL_CLIENT_ID,
            "SPOTIFY_CLIENT_SECRET": self._client_secret,
            "SPOTIFY_API_BASE_URL": self.emulator.base_url,
            "SPOTIFY_TOKEN_URL": self.emulator.token_url,
            "DYNAMODB_ENDPOINT_URL": self.dynamodb_endpoint,
            "TOPTRACKS_LOCAL_ARTISTS_DB": str(Path(self.artists_db_path).resolve()),
            # moto accepts any credentials; throwaway ones keep real AWS keys away from the local stack.
            "AWS_ACCESS_KEY_ID": "toptrackslocal",
            "AWS_SECRET_ACCESS_KEY": self._aws_secret,
            "AWS_SESSION_TOKEN": "",
        }
