"""The Spotify client over real HTTP, one test per fault mode: against the emulator, and against the stand-in
(tests/spotify/stand_in.py) for the faults the emulator does not play.

Each test asserts the exact outcome: every pair's tracks equal to the emulator's catalog, a quarantined pair
naming its cause, or the named error. Backoffs are configured small.
"""

from __future__ import annotations

import secrets
import time

import pytest
from dagster import DagsterEventType, materialize

from tests.conftest import TEST_CLIENT_ID
from tests.spotify.stand_in import TRACKS, StandIn
from toptracks_dagster.artists_db.assets import write_artist_ids_snapshot
from toptracks_dagster.artists_db.resources import screen_artist_ids
from toptracks_dagster.config import PermanentError
from toptracks_dagster.raw_storage.resources import LocalRawStorage
from toptracks_dagster.spotify.assets import raw_top_tracks
from toptracks_dagster.spotify.client import (
    QUARANTINE_RUN_LIMIT,
    RequestPacer,
    SpotifyClient,
    SpotifyError,
    SpotifyFatal,
)
from toptracks_dagster.spotify.resources import SpotifyResource


def make_client(emulator, client_secret, **overrides) -> SpotifyClient:
    options = dict(
        client_id=TEST_CLIENT_ID,
        client_secret=client_secret,
        api_base_url=emulator.base_url,
        token_url=emulator.token_url,
        concurrency=8,
        requests_per_second=None,
        max_retry_after_s=30.0,
        max_attempts=8,
        backoff_s=0.02,
        backoff_max_s=0.2,
        connect_timeout_s=2.0,
        read_timeout_s=5.0,
    )
    options.update(overrides)
    return SpotifyClient(**options)


def fetch_all(client: SpotifyClient, ids: list[str], market: str = "US"):
    with client:
        return list(client.iter_top_tracks(ids, market))


def assert_exact(outcomes, emulator, ids: list[str], market: str = "US") -> None:
    assert [o.artist_id for o in outcomes] == ids  # every pair, in input order
    for outcome in outcomes:
        expected = emulator.catalog.top_tracks(outcome.artist_id, market)
        assert outcome.market == market
        assert outcome.status == (404 if expected is None else 200), outcome
        assert outcome.tracks == expected, outcome.artist_id


def served(emulator) -> dict:
    """The emulator's stats once no request is in flight: a client can read its last answer before the
    emulator's handler thread has finished counting it."""
    deadline = time.monotonic() + 5
    while emulator.stats.as_dict()["in_flight"] and time.monotonic() < deadline:
        time.sleep(0.01)
    return emulator.stats.as_dict()


def served_5xx(emulator) -> int:
    return sum(count for status, count in served(emulator)["by_status"].items() if status >= 500)


# ------------------------------------------------------------------------------------------ all tracks fetched
def test_latency_fetched_in_parallel_in_order(emulator, client_secret, some_artist_ids):
    emulator.settings.latency_ms = 100
    client = make_client(emulator, client_secret)
    outcomes = fetch_all(client, some_artist_ids)
    assert_exact(outcomes, emulator, some_artist_ids)
    stats_now = served(emulator)
    assert 4 <= stats_now["peak_in_flight"] <= 8  # really parallel, never beyond the configured concurrency
    assert stats_now["requests"] == len(some_artist_ids)
    assert client.stats.snapshot()["requests"] == len(some_artist_ids)


def test_not_found_is_an_outcome(emulator, client_secret, some_artist_ids):
    emulator.catalog.set_missing(some_artist_ids[3])
    outcomes = fetch_all(make_client(emulator, client_secret), some_artist_ids)
    assert_exact(outcomes, emulator, some_artist_ids)
    assert outcomes[3].status == 404 and outcomes[3].tracks is None
    assert outcomes[3].error == {"status": 404, "message": "non existing id"}
    missing = sum(1 for a in some_artist_ids if emulator.catalog.top_tracks(a, "US") is None)
    assert missing >= 1  # the forced one (and any the catalog itself does not know)
    assert sum(1 for o in outcomes if o.status == 404) == missing


def test_server_errors_are_retried(emulator, client_secret, some_artist_ids):
    emulator.settings.error_5xx_share = 0.3
    client = make_client(emulator, client_secret)
    outcomes = fetch_all(client, some_artist_ids)
    assert_exact(outcomes, emulator, some_artist_ids)
    stats = client.stats.snapshot()
    assert served_5xx(emulator) > 0
    assert stats["status_5xx"] == served_5xx(emulator)
    assert stats["retries"] == served_5xx(emulator)  # every 5xx was repeated, nothing else was
    assert stats["requests"] == served(emulator)["requests"]


def test_connection_resets_are_retried(emulator, client_secret, some_artist_ids):
    emulator.settings.reset_share = 0.2
    client = make_client(emulator, client_secret)
    outcomes = fetch_all(client, some_artist_ids)
    assert_exact(outcomes, emulator, some_artist_ids)
    resets = served(emulator)["resets"]
    assert resets > 0
    assert client.stats.snapshot()["transport_errors"] == resets


def test_slow_responses_time_out_and_are_retried(emulator, client_secret, some_artist_ids):
    emulator.settings.slow_share = 0.25
    emulator.settings.slow_response_s = 1.5
    client = make_client(emulator, client_secret, read_timeout_s=0.3)
    outcomes = fetch_all(client, some_artist_ids)
    assert_exact(outcomes, emulator, some_artist_ids)
    stats = client.stats.snapshot()
    assert stats["transport_errors"] > 0  # read timeouts happened, and were retried
    assert stats["retries"] == stats["transport_errors"]


def test_truncated_json_is_retried(emulator, client_secret, some_artist_ids):
    emulator.settings.truncated_json_share = 0.3
    client = make_client(emulator, client_secret)
    outcomes = fetch_all(client, some_artist_ids)
    assert_exact(outcomes, emulator, some_artist_ids)
    stats = client.stats.snapshot()
    assert stats["malformed_bodies"] > 0
    assert stats["retries"] == stats["malformed_bodies"]
    assert served(emulator)["requests"] == len(some_artist_ids) + stats["malformed_bodies"]


def test_short_token_lifetime_is_refreshed_before_expiry(emulator, client_secret, some_artist_ids):
    emulator.settings.token_lifetime_s = 2
    client = make_client(emulator, client_secret, requests_per_second=10)  # 30 pairs take ~3 s: > 1 lifetime
    outcomes = fetch_all(client, some_artist_ids)
    assert_exact(outcomes, emulator, some_artist_ids)
    stats_now = served(emulator)
    assert client.stats.snapshot()["token_requests"] >= 2
    assert stats_now["token_requests"] == client.stats.snapshot()["token_requests"]
    assert stats_now["by_status"].get(401, 0) == 0  # refreshed ahead of expiry, never sent an expired token


def test_expired_token_is_refreshed_once_on_401(emulator, client_secret, some_artist_ids):
    client = make_client(emulator, client_secret)
    client.check_credentials()  # a token the client believes is good for an hour
    emulator.settings.token_lifetime_s = 1  # ... but the server now expires tokens after 1 s
    time.sleep(1.1)
    outcomes = fetch_all(client, some_artist_ids[:12])
    assert_exact(outcomes, emulator, some_artist_ids[:12])
    stats = client.stats.snapshot()
    expired = served(emulator)["by_status"].get(401, 0)
    assert 1 <= expired <= 8  # at most the first request of each worker
    assert stats["status_401"] == expired
    assert stats["token_requests"] == 2  # one refresh shared by every worker


def test_429_burst_pauses_all_workers(emulator, client_secret, some_artist_ids):
    emulator.settings.latency_ms = 20
    emulator.settings.burst_429_count = 3
    emulator.settings.burst_retry_after_s = 1
    client = make_client(emulator, client_secret, concurrency=8)
    outcomes = fetch_all(client, some_artist_ids)
    assert_exact(outcomes, emulator, some_artist_ids)
    assert served(emulator)["rate_limited"] == 3
    assert client.stats.snapshot()["status_429"] == 3
    # Every worker, not just the ones that got a 429, spent about a second paused.
    assert client.stats.snapshot()["paused_s"] >= 8 * 0.7


def test_rate_limited_under_a_rolling_window(emulator, client_secret, some_artist_ids):
    emulator.settings.rate_limit_requests = 20  # 10 requests/s over a rolling 2 s window
    emulator.settings.rate_limit_window_s = 2.0
    client = make_client(emulator, client_secret, requests_per_second=10)
    outcomes = fetch_all(client, some_artist_ids)
    assert_exact(outcomes, emulator, some_artist_ids)
    stats_now = served(emulator)
    assert stats_now["rate_limited"] <= 1  # the shared pacer keeps 8 workers under the limit
    assert stats_now["peak_in_flight"] <= 8


def test_rolling_window_above_the_configured_rate_is_survived(emulator, client_secret, some_artist_ids):
    emulator.settings.rate_limit_requests = 10  # the server allows 10/s, the client is told 40/s
    emulator.settings.rate_limit_window_s = 1.0
    client = make_client(emulator, client_secret, requests_per_second=40)
    outcomes = fetch_all(client, some_artist_ids)
    assert_exact(outcomes, emulator, some_artist_ids)
    limited = served(emulator)["rate_limited"]
    assert limited > 0
    assert client.stats.snapshot()["status_429"] == limited
    assert client.pacer.rate < 40  # the rate adapted down


def test_pacer_halves_once_per_congestion_event_and_recovers():
    pacer = RequestPacer(20.0, headroom=0.0)
    _, epoch = pacer.wait()
    assert pacer.pause(0.0, epoch) is True
    assert pacer.rate == 10.0
    assert pacer.pause(0.0, epoch) is False  # a 429 on a request sent before the decrease: same event
    assert pacer.rate == 10.0
    _, epoch = pacer.wait()
    assert pacer.pause(0.0, epoch) is True
    assert pacer.rate == 5.0
    for _ in range(100):
        pacer.success()
    assert pacer.rate == 20.0  # back up, never above the configured rate


# ------------------------------------------------------------------------------------------ quarantined, not fatal
def test_server_errors_every_time_quarantine_the_pair_after_bounded_tries(emulator, client_secret, some_artist_ids):
    emulator.settings.error_5xx_share = 1.0
    artist = some_artist_ids[0]
    with make_client(emulator, client_secret, max_attempts=3) as client:
        outcome = client.top_tracks(artist, "US")
    assert outcome.status in (500, 502, 503) and outcome.tracks is None and outcome.attempts == 3
    assert outcome.error["status"] == outcome.status
    assert outcome.error["message"].startswith(f"HTTP {outcome.status}") and "after 3 tries" in outcome.error["message"]
    assert served(emulator)["requests"] == 3  # bounded tries, no retry layer underneath
    assert client.stats.snapshot()["quarantined"] == 1


def test_truncated_json_every_time_quarantines_the_pair(emulator, client_secret, some_artist_ids):
    emulator.settings.truncated_json_share = 1.0
    with make_client(emulator, client_secret, max_attempts=3) as client:
        outcome = client.top_tracks(some_artist_ids[0], "US")
    assert outcome.status == 0 and outcome.tracks is None
    assert outcome.error == {"status": 0, "message": outcome.error["message"]}
    assert "malformed body" in outcome.error["message"] and "after 3 tries" in outcome.error["message"]
    assert served(emulator)["requests"] == 3


def test_an_outage_stops_the_fetch_after_a_run_of_quarantined_pairs(emulator, client_secret, some_artist_ids):
    emulator.settings.error_5xx_share = 1.0
    fetched = []
    client = make_client(emulator, client_secret, max_attempts=1, concurrency=2)
    with client, pytest.raises(SpotifyError, match=r"20 pairs in a row quarantined at .*/top-tracks") as raised:
        fetched.extend(client.iter_pairs((a, "US") for a in some_artist_ids))
    assert not isinstance(raised.value, PermanentError)  # an outage may pass: the run is retried
    assert "HTTP 50" in str(raised.value)
    assert [o.artist_id for o in fetched] == some_artist_ids[: QUARANTINE_RUN_LIMIT - 1]


@pytest.fixture
def stand_in():
    with StandIn(drip_every_s=1.0) as running:
        yield running


def stand_in_client(stand_in: StandIn, **overrides) -> SpotifyClient:
    options = dict(
        client_id=TEST_CLIENT_ID,
        client_secret="stand-in-secret",
        api_base_url=stand_in.base_url,
        token_url=stand_in.token_url,
        concurrency=4,
        max_attempts=2,
        backoff_s=0.01,
        backoff_max_s=0.05,
    )
    options.update(overrides)
    return SpotifyClient(**options)


def test_bad_records_are_quarantined_and_the_rest_fetched(stand_in, some_artist_ids):
    stand_in.modes = {some_artist_ids[2]: "null", some_artist_ids[5]: "500"}
    with stand_in_client(stand_in) as client:
        outcomes = list(client.iter_pairs((a, "US") for a in some_artist_ids))
    assert [o.artist_id for o in outcomes] == some_artist_ids
    null, server_error = outcomes[2], outcomes[5]
    assert (null.status, null.tracks, null.error["status"]) == (0, None, 0)
    assert "'tracks' list" in null.error["message"]
    assert (server_error.status, server_error.tracks) == (500, None)
    assert server_error.error == {"status": 500, "message": "HTTP 500 (Server error) after 2 tries"}
    others = [o for i, o in enumerate(outcomes) if i not in (2, 5)]
    assert all(o.status == 200 and o.tracks == TRACKS and o.error is None for o in others)
    assert client.stats.snapshot()["quarantined"] == 2


def test_a_dripping_body_ends_at_the_request_deadline(stand_in, some_artist_ids):
    stand_in.default_mode = "drip"  # one byte a second, each read well within the read timeout
    with stand_in_client(stand_in, request_timeout_s=2.0, read_timeout_s=10.0, max_attempts=1) as client:
        outcome = client.top_tracks(some_artist_ids[0], "US")
    assert (outcome.status, outcome.tracks) == (0, None)
    assert "within the request deadline of 2 s" in outcome.error["message"]
    assert client.stats.snapshot()["transport_errors"] == 1


def test_a_gzip_bomb_is_cut_at_the_size_limit(stand_in, some_artist_ids):
    stand_in.modes = {some_artist_ids[0]: "bomb"}
    with stand_in_client(stand_in, max_attempts=1) as client:
        bomb, fine = list(client.iter_pairs([(some_artist_ids[0], "US"), (some_artist_ids[1], "US")]))
    assert (bomb.status, bomb.tracks) == (0, None)
    assert "above the size limit of 2048 KiB (decoded)" in bomb.error["message"]
    assert fine.status == 200 and fine.tracks == TRACKS
    assert client.stats.snapshot()["bytes"] < 4 * 1024 * 1024  # the 1 GiB was never counted, let alone held


# ------------------------------------------------------------------------------------------ fatal errors, fast
def test_a_429_naming_a_quota_is_fatal(stand_in, some_artist_ids):
    stand_in.default_mode = "quota"
    with stand_in_client(stand_in) as client, pytest.raises(SpotifyFatal, match="quota.*QUOTA_EXCEEDED") as raised:
        list(client.iter_pairs((a, "US") for a in some_artist_ids))
    assert isinstance(raised.value, PermanentError)
    assert stand_in.requests <= 4  # at most the first request of each worker
    assert client.stats.snapshot()["status_429"] >= 1 and client.stats.snapshot()["status_2xx"] == 0


def test_a_base_url_answering_404_without_spotify_error_body_is_fatal(stand_in, some_artist_ids):
    stand_in.default_mode = "html404"
    with stand_in_client(stand_in) as client:
        with pytest.raises(SpotifyFatal, match=r"SPOTIFY_API_BASE_URL \(http://127\.0\.0\.1:\d+/v1\)"):
            list(client.iter_pairs((a, "US") for a in some_artist_ids))
    assert stand_in.requests <= 4


def test_an_unreachable_token_endpoint_is_fatal_naming_it(stand_in):
    token_url = stand_in.token_url
    stand_in.__exit__()  # nothing listens on its port any more
    with stand_in_client(stand_in, connect_timeout_s=1.0) as client:
        with pytest.raises(SpotifyFatal, match=rf"token endpoint {token_url} \(SPOTIFY_TOKEN_URL\) is unreachable"):
            client.check_credentials()
    assert client.stats.snapshot()["token_requests"] == 2  # max_attempts, then stop


def test_forbidden_stops_at_once_with_the_access_message(emulator, client_secret, some_artist_ids):
    emulator.settings.forbid_all = True
    with pytest.raises(SpotifyFatal) as raised:
        fetch_all(make_client(emulator, client_secret, concurrency=8), some_artist_ids * 10)
    message = str(raised.value)
    assert "Development Mode" in message and "February 2026" in message and "extended quota" in message
    stats_now = served(emulator)
    assert 1 <= stats_now["requests"] <= 8  # at most the first request of each worker
    assert stats_now["by_status"].get(403) == stats_now["requests"]  # (by_status also counts the token's 200)


def test_retry_after_above_the_cap_fails_fast_naming_the_wait(emulator, client_secret, some_artist_ids):
    emulator.settings.burst_429_count = 1
    emulator.settings.burst_retry_after_s = 3600
    with pytest.raises(SpotifyFatal, match=r"wait 3600 s .*above the cap of 60 s"):
        fetch_all(make_client(emulator, client_secret, max_retry_after_s=60), some_artist_ids)
    assert served(emulator)["requests"] <= 16  # stopped at once, not after all 30


def test_bad_credentials_fail_at_once_without_the_secret(emulator, client_secret, some_artist_ids):
    wrong_secret = secrets.token_urlsafe(24)
    with make_client(emulator, wrong_secret) as client:
        with pytest.raises(SpotifyFatal) as raised:
            client.check_credentials()
    for text in (str(raised.value), repr(raised.value)):
        assert "invalid_client" in text and TEST_CLIENT_ID in text
        assert wrong_secret not in text and client_secret not in text
    assert raised.value.__cause__ is None and raised.value.__context__ is None

    with pytest.raises(SpotifyFatal, match="invalid_client") as raised:
        fetch_all(make_client(emulator, wrong_secret), some_artist_ids)
    assert wrong_secret not in str(raised.value)
    assert served(emulator)["requests"] == 0  # no top-tracks request without a token


def test_raw_asset_fails_fast_without_retry_on_403(emulator, client_secret, some_artist_ids, tmp_path):
    emulator.settings.forbid_all = True
    storage = LocalRawStorage(base_dir=str(tmp_path))
    write_artist_ids_snapshot(storage, screen_artist_ids(some_artist_ids), "test", "now").publish()
    spotify = SpotifyResource(
        client_id=TEST_CLIENT_ID,
        client_secret=client_secret,
        api_base_url=emulator.base_url,
        token_url=emulator.token_url,
    )
    result = materialize(
        [raw_top_tracks],
        partition_key="US",
        resources={"spotify": spotify, "raw_storage": storage},
        raise_on_error=False,
    )
    assert not result.success
    event_types = [event.event_type for event in result.all_events]
    assert DagsterEventType.STEP_UP_FOR_RETRY not in event_types
    assert event_types.count(DagsterEventType.STEP_FAILURE) == 1
    failure = next(event for event in result.all_events if event.is_step_failure)
    message = failure.step_failure_data.error.message
    assert "Development Mode" in message and "February 2026" in message
    assert client_secret not in message
    assert served(emulator)["requests"] <= spotify.concurrency
    assert not list(tmp_path.rglob("*.jsonl")) and not list(tmp_path.rglob("*.tmp"))  # no partial raw object
