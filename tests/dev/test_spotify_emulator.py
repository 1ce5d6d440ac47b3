"""The Spotify emulator, exercised over real HTTP the way the pipeline's client talks to it."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from toptracks_dagster.common import SPOTIFY_ID_RE
from toptracks_dagster.dev.spotify_emulator import (
    Catalog,
    EmulatorSettings,
    SpotifyEmulator,
    demo_artist_ids,
)

CLIENT_ID = "emulator-test-client"
CLIENT_SECRET = "emulator-test-secret"
SEED = 7
PROJECT_ROOT = Path(__file__).resolve().parents[2]
TRACK_URI_RE = re.compile(r"^spotify:track:[0-9A-Za-z]{22}$")


@pytest.fixture
def emu() -> Iterator[SpotifyEmulator]:
    with SpotifyEmulator(CLIENT_ID, CLIENT_SECRET, settings=EmulatorSettings(seed=SEED)) as running:
        yield running


@pytest.fixture
def http() -> Iterator[requests.Session]:
    with requests.Session() as session:
        yield session


def fetch_token(emu: SpotifyEmulator, http: requests.Session) -> str:
    response = http.post(
        emu.token_url, data={"grant_type": "client_credentials"}, auth=(CLIENT_ID, CLIENT_SECRET), timeout=5
    )
    assert response.status_code == 200, response.text
    return response.json()["access_token"]


@pytest.fixture
def token(emu: SpotifyEmulator, http: requests.Session) -> str:
    return fetch_token(emu, http)


def top_tracks(
    emu: SpotifyEmulator, http: requests.Session, token: str, artist_id: str, market: str = "US", timeout: float = 5
) -> requests.Response:
    return http.get(
        f"{emu.base_url}/artists/{artist_id}/top-tracks",
        params={"market": market},
        headers={"Authorization": f"Bearer {token}"},
        timeout=timeout,
    )


def full_list_artists(catalog: Catalog, count: int) -> list[str]:
    """Demo artists whose US top list has the full 10 tracks."""
    found = [a for a in demo_artist_ids(100, SEED) if len(catalog.top_tracks(a, "US") or []) == 10]
    return found[:count]


@pytest.fixture
def artist_id(emu: SpotifyEmulator) -> str:
    return full_list_artists(emu.catalog, 1)[0]


def track_ids(response: requests.Response) -> list[str]:
    assert response.status_code == 200, response.text
    return [track["id"] for track in response.json()["tracks"]]


def error_of(response: requests.Response) -> tuple[int, str]:
    assert response.headers["Content-Type"] == "application/json; charset=utf-8"
    error = response.json()["error"]
    assert error["status"] == response.status_code
    return response.status_code, error["message"]


# ------------------------------------------------------------------------------------------------ token


def test_token_success(emu: SpotifyEmulator, http: requests.Session) -> None:
    response = http.post(
        emu.token_url, data={"grant_type": "client_credentials"}, auth=(CLIENT_ID, CLIENT_SECRET), timeout=5
    )
    assert response.status_code == 200
    body = response.json()
    assert body["token_type"] == "Bearer" and body["expires_in"] == 3600
    assert isinstance(body["access_token"], str) and len(body["access_token"]) > 40


@pytest.mark.parametrize("auth", [(CLIENT_ID, "wrong-secret"), ("wrong-id", CLIENT_SECRET), None])
def test_token_rejects_bad_credentials(emu: SpotifyEmulator, http: requests.Session, auth: tuple | None) -> None:
    response = http.post(emu.token_url, data={"grant_type": "client_credentials"}, auth=auth, timeout=5)
    assert response.status_code == 400
    assert response.json() == {"error": "invalid_client", "error_description": "Invalid client"}


@pytest.mark.parametrize("data", [{}, {"grant_type": "password"}])
def test_token_rejects_other_grant_types(emu: SpotifyEmulator, http: requests.Session, data: dict) -> None:
    response = http.post(emu.token_url, data=data, auth=(CLIENT_ID, CLIENT_SECRET), timeout=5)
    assert response.status_code == 400
    assert response.json()["error"] == "unsupported_grant_type"


# ------------------------------------------------------------------------------------------------ top tracks


def test_top_tracks_shape(emu: SpotifyEmulator, http: requests.Session, token: str) -> None:
    checked = 0
    for artist in demo_artist_ids(20, SEED):
        response = top_tracks(emu, http, token, artist)
        if response.status_code == 404:
            continue
        assert response.status_code == 200
        assert response.headers["Cache-Control"] == "private, max-age=0"
        tracks = response.json()["tracks"]
        assert len(tracks) <= 10
        for track in tracks:
            checked += 1
            assert "available_markets" not in track and "available_markets" not in track["album"]
            assert SPOTIFY_ID_RE.match(track["id"]) and TRACK_URI_RE.match(track["uri"])
            assert track["type"] == "track" and track["is_local"] is False
            assert track["href"] == f"https://api.spotify.com/v1/tracks/{track['id']}"
            assert track["external_urls"]["spotify"] == f"https://open.spotify.com/track/{track['id']}"
            assert isinstance(track["name"], str) and track["name"]
            assert isinstance(track["popularity"], int) and 0 <= track["popularity"] <= 100
            assert 120_000 <= track["duration_ms"] <= 360_000
            assert isinstance(track["explicit"], bool) and isinstance(track["is_playable"], bool)
            assert track["disc_number"] >= 1 and 1 <= track["track_number"] <= track["album"]["total_tracks"]
            assert track["preview_url"] is None or track["preview_url"].startswith("https://p.scdn.co/mp3-preview/")
            assert track["artists"][0]["id"] == artist
            for linked in [track["artists"], track["album"]["artists"]]:
                assert all(a["type"] == "artist" and a["uri"] == f"spotify:artist:{a['id']}" for a in linked)
            album = track["album"]
            assert album["type"] == "album" and album["uri"] == f"spotify:album:{album['id']}"
            assert album["album_type"] in {"album", "single"} and isinstance(album["name"], str)
            assert [(i["width"], i["height"]) for i in album["images"]] == [(640, 640), (300, 300), (64, 64)]
            assert album["release_date_precision"] == "day" and re.fullmatch(
                r"\d{4}-\d{2}-\d{2}", album["release_date"]
            )
    assert checked > 100


def test_catalog_looks_like_real_data() -> None:
    catalog = Catalog(seed=SEED)
    lists = [catalog.top_tracks(artist, "SE") for artist in demo_artist_ids(400, SEED)]
    existing = [tracks for tracks in lists if tracks is not None]
    tracks = [track for top in existing for track in top]
    assert 0.01 < 1 - len(existing) / len(lists) < 0.08  # missing artists
    assert any(top == [] for top in existing) and any(0 < len(top) < 10 for top in existing)
    assert any(track["popularity"] > 90 for track in tracks) and any(track["popularity"] < 30 for track in tracks)
    assert any(not track["name"].isascii() for track in tracks) and any('"' in track["name"] for track in tracks)
    assert 0.2 < sum(track["preview_url"] is None for track in tracks) / len(tracks) < 0.4
    assert any(len(track["artists"]) > 1 for track in tracks)
    assert any(track["album"]["name"] == "" for track in tracks)  # real data has nameless albums


def test_markets_share_tracks_in_different_orders(emu: SpotifyEmulator, http: requests.Session, token: str) -> None:
    reordered = 0
    for artist in full_list_artists(emu.catalog, 5):
        us, ca = top_tracks(emu, http, token, artist, "US"), top_tracks(emu, http, token, artist, "CA")
        us_ids, ca_ids = track_ids(us), track_ids(ca)
        assert len(set(us_ids) & set(ca_ids)) >= 7
        reordered += us_ids != ca_ids
        ca_by_id = {track["id"]: track for track in ca.json()["tracks"]}
        for track in us.json()["tracks"]:  # the same track object, whatever the market
            if track["id"] in ca_by_id:
                assert (track["name"], track["popularity"], track["album"]) == (
                    ca_by_id[track["id"]]["name"],
                    ca_by_id[track["id"]]["popularity"],
                    ca_by_id[track["id"]]["album"],
                )
    assert reordered >= 1


def test_same_seed_same_catalog(http: requests.Session) -> None:
    artists = demo_artist_ids(5, SEED)
    bodies = []
    for _ in range(2):
        with SpotifyEmulator(CLIENT_ID, CLIENT_SECRET, settings=EmulatorSettings(seed=SEED)) as running:
            token = fetch_token(running, http)
            bodies.append([top_tracks(running, http, token, artist).json() for artist in artists])
    assert bodies[0] == bodies[1]
    other_seed = [Catalog(seed=SEED + 1).top_tracks(artist, "US") for artist in artists]
    assert other_seed != [body.get("tracks") for body in bodies[0]]


def test_invalid_input_is_400(emu: SpotifyEmulator, http: requests.Session, token: str, artist_id: str) -> None:
    assert error_of(top_tracks(emu, http, token, "not-a-base62-id")) == (400, "Invalid base62 id")
    assert error_of(top_tracks(emu, http, token, artist_id[:-1])) == (400, "Invalid base62 id")
    assert error_of(top_tracks(emu, http, token, artist_id, "us")) == (400, "Invalid market code")
    no_market = http.get(
        f"{emu.base_url}/artists/{artist_id}/top-tracks", headers={"Authorization": f"Bearer {token}"}, timeout=5
    )
    assert error_of(no_market) == (400, "Invalid market code")


def test_missing_artist_is_404(emu: SpotifyEmulator, http: requests.Session, token: str, artist_id: str) -> None:
    emu.catalog.set_missing(artist_id)
    assert error_of(top_tracks(emu, http, token, artist_id)) == (404, "non existing id")
    emu.catalog.set_missing(artist_id, False)
    assert top_tracks(emu, http, token, artist_id).status_code == 200


def test_unknown_path_is_404(emu: SpotifyEmulator, http: requests.Session) -> None:
    response = http.get(emu.base_url + "/me", timeout=5)
    assert error_of(response) == (404, "Service not found")


# ------------------------------------------------------------------------------------------------ auth


def test_missing_and_invalid_tokens_are_401(emu: SpotifyEmulator, http: requests.Session, artist_id: str) -> None:
    no_header = http.get(f"{emu.base_url}/artists/{artist_id}/top-tracks", params={"market": "US"}, timeout=5)
    assert error_of(no_header) == (401, "No token provided")
    assert error_of(top_tracks(emu, http, "made-up-token", artist_id)) == (401, "Invalid access token")


def test_expired_token_is_401(http: requests.Session) -> None:
    settings = EmulatorSettings(seed=SEED, token_lifetime_s=1)
    with SpotifyEmulator(CLIENT_ID, CLIENT_SECRET, settings=settings) as running:
        artist = full_list_artists(running.catalog, 1)[0]
        token = fetch_token(running, http)
        assert top_tracks(running, http, token, artist).status_code == 200
        time.sleep(1.1)
        assert error_of(top_tracks(running, http, token, artist)) == (401, "The access token expired")
        assert top_tracks(running, http, fetch_token(running, http), artist).status_code == 200


# ------------------------------------------------------------------------------------------------ faults


def test_forbid_all_is_403(emu: SpotifyEmulator, http: requests.Session, token: str, artist_id: str) -> None:
    emu.settings.forbid_all = True
    assert error_of(top_tracks(emu, http, token, artist_id)) == (403, "Forbidden")


def test_burst_429(emu: SpotifyEmulator, http: requests.Session, token: str, artist_id: str) -> None:
    emu.settings.burst_429_count, emu.settings.burst_retry_after_s = 2, 7
    for _ in range(2):
        response = top_tracks(emu, http, token, artist_id)
        assert error_of(response) == (429, "API rate limit exceeded")
        assert response.headers["Retry-After"] == "7"
    assert top_tracks(emu, http, token, artist_id).status_code == 200
    assert emu.settings.burst_429_count == 0


def test_rolling_rate_limit(emu: SpotifyEmulator, http: requests.Session, token: str, artist_id: str) -> None:
    emu.settings.rate_limit_requests, emu.settings.rate_limit_window_s = 5, 1.0
    assert [top_tracks(emu, http, token, artist_id).status_code for _ in range(5)] == [200] * 5
    limited = top_tracks(emu, http, token, artist_id)
    assert error_of(limited) == (429, "API rate limit exceeded")
    retry_after = int(limited.headers["Retry-After"])
    assert retry_after >= 1
    time.sleep(retry_after)
    assert top_tracks(emu, http, token, artist_id).status_code == 200
    assert emu.stats.as_dict()["rate_limited"] == 1


def test_server_errors(emu: SpotifyEmulator, http: requests.Session, token: str, artist_id: str) -> None:
    emu.settings.error_5xx_share = 1.0
    errors = {error_of(top_tracks(emu, http, token, artist_id)) for _ in range(30)}
    assert errors == {(500, "Server error."), (502, "Bad gateway."), (503, "Service unavailable")}


def test_connection_reset(emu: SpotifyEmulator, http: requests.Session, token: str, artist_id: str) -> None:
    emu.settings.reset_share = 1.0
    with pytest.raises(requests.ConnectionError):
        top_tracks(emu, http, token, artist_id)
    emu.settings.reset_share = 0.0
    assert top_tracks(emu, http, token, artist_id).status_code == 200
    assert emu.stats.as_dict()["resets"] == 1


def test_truncated_json(emu: SpotifyEmulator, http: requests.Session, token: str, artist_id: str) -> None:
    emu.settings.truncated_json_share = 1.0
    response = top_tracks(emu, http, token, artist_id)
    assert response.status_code == 200
    assert len(response.content) == int(response.headers["Content-Length"])
    with pytest.raises(ValueError):
        response.json()


def test_slow_responses(emu: SpotifyEmulator, http: requests.Session, token: str, artist_id: str) -> None:
    emu.settings.slow_share, emu.settings.slow_response_s = 1.0, 0.5
    with pytest.raises(requests.ReadTimeout):
        top_tracks(emu, http, token, artist_id, timeout=0.2)


def test_latency(emu: SpotifyEmulator, http: requests.Session, token: str, artist_id: str) -> None:
    emu.settings.latency_ms = 1000
    with pytest.raises(requests.ReadTimeout):  # token and API requests alike are delayed
        http.post(
            emu.token_url, data={"grant_type": "client_credentials"}, auth=(CLIENT_ID, CLIENT_SECRET), timeout=0.2
        )
    with pytest.raises(requests.ReadTimeout):
        top_tracks(emu, http, token, artist_id, timeout=0.2)


def test_revision_changes_the_lists(emu: SpotifyEmulator, http: requests.Session, token: str) -> None:
    for artist in full_list_artists(emu.catalog, 3):
        before = track_ids(top_tracks(emu, http, token, artist))
        emu.catalog.set_revision(artist, 1)
        after = track_ids(top_tracks(emu, http, token, artist))
        assert after != before and len(set(before) & set(after)) >= 5
        emu.catalog.set_revision(artist, 0)
        assert track_ids(top_tracks(emu, http, token, artist)) == before


# ------------------------------------------------------------------------------------------------ admin, stats


def test_admin_endpoints(emu: SpotifyEmulator, http: requests.Session, token: str, artist_id: str) -> None:
    admin = emu.base_url.removesuffix("/v1") + "/_emulator"
    updated = http.post(f"{admin}/settings", json={"forbid_all": True, "latency_ms": 1}, timeout=5)
    assert updated.status_code == 200 and updated.json()["forbid_all"] is True
    assert emu.settings.forbid_all is True and emu.settings.latency_ms == 1
    assert top_tracks(emu, http, token, artist_id).status_code == 403
    bad = [{"no_such_setting": 1}, {"forbid_all": True, "latency_ms": "slow"}, {"rate_limit_requests": 2.5}, [1], 3]
    for body in bad:
        assert http.post(f"{admin}/settings", json=body, timeout=5).status_code == 400, body
    assert http.post(f"{admin}/settings", data=b"{not json", timeout=5).status_code == 400
    assert emu.settings.latency_ms == 1 and emu.settings.forbid_all is True  # a rejected update changes nothing
    http.post(f"{admin}/settings", json={"forbid_all": False}, timeout=5).raise_for_status()
    assert top_tracks(emu, http, token, artist_id).status_code == 200

    stats = http.get(f"{admin}/stats", timeout=5).json()
    # JSON turns the status keys into strings; the fixture's token request is one of the 200s.
    assert stats["requests"] == 2 and stats["by_status"] == {"200": 2, "403": 1}
    assert http.post(f"{admin}/reset-stats", timeout=5).json()["requests"] == 0
    assert emu.stats.as_dict()["by_status"] == {}
    assert http.get(f"{admin}/nothing", timeout=5).status_code == 404


def test_stats_count_by_status(emu: SpotifyEmulator, http: requests.Session, artist_id: str) -> None:
    token = fetch_token(emu, http)
    top_tracks(emu, http, token, artist_id)
    top_tracks(emu, http, token, "bad-id")
    top_tracks(emu, http, token, artist_id, "us")
    top_tracks(emu, http, "bad-token", artist_id)
    http.post(emu.token_url, data={"grant_type": "client_credentials"}, auth=("wrong", "creds"), timeout=5)
    stats = emu.stats.as_dict()
    assert stats["requests"] == 4 and stats["token_requests"] == 2
    assert stats["by_status"] == {200: 2, 400: 3, 401: 1} and stats["in_flight"] == 0
    emu.stats.reset()
    assert emu.stats.as_dict()["requests"] == 0


def test_oversized_request_bodies_are_refused(emu: SpotifyEmulator, http: requests.Session) -> None:
    with pytest.raises(requests.ConnectionError):
        http.post(emu.token_url, data=b"x" * (1024 * 1024), auth=(CLIENT_ID, CLIENT_SECRET), timeout=5)
    assert fetch_token(emu, http)  # the emulator still serves


def test_concurrent_clients(emu: SpotifyEmulator) -> None:
    emu.settings.latency_ms = 10
    artists = demo_artist_ids(40, SEED)
    local = threading.local()

    def fetch(artist: str) -> int:
        if not hasattr(local, "session"):
            local.session = requests.Session()
            local.token = fetch_token(emu, local.session)
        return top_tracks(emu, local.session, local.token, artist).status_code

    with ThreadPoolExecutor(16) as pool:
        statuses = list(pool.map(fetch, artists * 8))
    assert set(statuses) <= {200, 404} and statuses.count(200) > 0
    stats = emu.stats.as_dict()
    assert stats["requests"] == 320 and stats["peak_in_flight"] > 1


def test_stop_closes_keep_alive_connections(emu: SpotifyEmulator, http: requests.Session) -> None:
    token_url = emu.token_url
    fetch_token(emu, http)
    emu.stop()
    with pytest.raises(requests.ConnectionError):
        http.post(token_url, data={"grant_type": "client_credentials"}, auth=(CLIENT_ID, CLIENT_SECRET), timeout=2)


# ------------------------------------------------------------------------------------------------ standalone


def test_standalone_process() -> None:
    env = {**os.environ, "EMULATOR_TEST_SECRET": CLIENT_SECRET}
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "toptracks_dagster.dev.spotify_emulator",
            "--port",
            "0",
            "--client-id",
            CLIENT_ID,
            "--client-secret-env",
            "EMULATOR_TEST_SECRET",
            "--seed",
            str(SEED),
        ],
        cwd=PROJECT_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    watchdog = threading.Timer(30, process.kill)
    watchdog.start()
    try:
        ready = process.stdout.readline()
        match = re.fullmatch(r"spotify emulator listening on (http://127\.0\.0\.1:\d+)\n", ready)
        assert match, ready + process.stderr.read()
        with requests.Session() as http:
            response = http.post(
                match.group(1) + "/api/token",
                data={"grant_type": "client_credentials"},
                auth=(CLIENT_ID, CLIENT_SECRET),
                timeout=5,
            )
            assert response.status_code == 200
        process.send_signal(signal.SIGTERM)
        stdout, stderr = process.communicate(timeout=10)
        assert process.returncode == 0, stderr
        assert CLIENT_SECRET not in ready + stdout + stderr
    finally:
        watchdog.cancel()
        process.kill()
        process.wait()
