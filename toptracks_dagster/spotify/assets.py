"""`raw_top_tracks`: every artist's top tracks for one market, as returned by Spotify, kept as raw JSON."""

import time
from typing import Iterator

from dagster import (
    AssetExecutionContext,
    Backoff,
    BackfillPolicy,
    Failure,
    Jitter,
    MaterializeResult,
    MetadataValue,
    RetryPolicy,
    asset,
)

from toptracks_dagster.artists_db.assets import artist_ids
from toptracks_dagster.artists_db.snapshot import read_artist_ids
from toptracks_dagster.partitions import country_partitions
from toptracks_dagster.raw_storage.resources import RawStorage
from toptracks_dagster.spotify.client import FATAL_ERRORS, SpotifyError, TopTracksOutcome
from toptracks_dagster.spotify.raw import raw_top_tracks_key, write_raw_partition
from toptracks_dagster.spotify.resources import SpotifyResource


@asset(
    key="raw_top_tracks",
    group_name="toptracks",
    deps=[artist_ids],
    partitions_def=country_partitions,
    backfill_policy=BackfillPolicy.single_run(),
    pool="spotify_api",  # concurrent runs share the Spotify budget
    # Transient trouble (5xx storms, resets) gets two more tries; fatal errors (403, bad credentials,
    # a Retry-After above the cap) raise Failure(allow_retries=False) and stop at once.
    retry_policy=RetryPolicy(max_retries=2, delay=30, backoff=Backoff.EXPONENTIAL, jitter=Jitter.PLUS_MINUS),
    kinds={"spotify", "json"},
    owners=["team:data-eng"],
    description=(
        "Raw Spotify 'Get Artist's Top Tracks' answers for every valid artist id, one JSON Lines object per "
        "market: what was asked, when, and what came back (tracks, or 404 for unknown artists). The load "
        "into DynamoDB replays it without calling Spotify again."
    ),
)
def raw_top_tracks(context: AssetExecutionContext, spotify: SpotifyResource, raw_storage: RawStorage) -> MaterializeResult:
    ids = read_artist_ids(raw_storage)
    per_market: dict[str, dict] = {}
    for market in context.partition_keys:
        per_market[market] = _fetch_market(context, spotify, raw_storage, ids, market)
    if len(per_market) == 1:
        return MaterializeResult(metadata=next(iter(per_market.values())))
    return MaterializeResult(metadata={
        "markets": MetadataValue.json({m: _plain(md) for m, md in per_market.items()}),
        "dagster/row_count": sum(md["dagster/row_count"] for md in per_market.values()),
    })


def _fetch_market(context: AssetExecutionContext, spotify: SpotifyResource, raw_storage: RawStorage,
                  ids: list[str], market: str) -> dict:
    started = time.monotonic()
    with spotify.get_client(log=context.log.warning) as client:
        try:
            client.check_credentials()
            summary = write_raw_partition(
                raw_storage, market, spotify.api_base_url, len(ids),
                _with_progress(context, client.iter_top_tracks(ids, market), len(ids), market),
            )
        except FATAL_ERRORS as error:
            raise Failure(description=str(error), allow_retries=False) from None
        except SpotifyError as error:
            raise Failure(description=f"market {market}: {error}") from None
        stats = client.stats.snapshot()
    wall_s = time.monotonic() - started
    preview = "\n".join(
        f"| {i} | {t['track']} | {t['artist_id']} | {t['popularity']} |" for i, t in enumerate(summary.top_preview, 1)
    )
    return {
        "dagster/row_count": summary.tracks,
        "market": market,
        "artists_requested": summary.outcomes,
        "artists_with_tracks": summary.with_tracks,
        "artists_not_found_404": summary.not_found,
        "tracks": summary.tracks,
        "mean_popularity": summary.mean_popularity,
        "requests": int(stats["requests"]),
        "responses_2xx": int(stats["status_2xx"]),
        "responses_404": int(stats["status_404"]),
        "responses_429": int(stats["status_429"]),
        "responses_5xx": int(stats["status_5xx"]),
        "responses_401": int(stats["status_401"]),
        "transport_errors": int(stats["transport_errors"]),
        "malformed_bodies": int(stats["malformed_bodies"]),
        "pacer_wait_s": round(float(stats["paused_s"]), 3),
        "retries": int(stats["retries"]),
        "token_requests": int(stats["token_requests"]),
        "bytes_received": int(stats["bytes"]),
        "wall_time_s": round(wall_s, 3),
        "requests_per_second": round(stats["requests"] / wall_s, 2) if wall_s > 0 else 0.0,
        "raw_object": MetadataValue.path(raw_storage.uri(raw_top_tracks_key(market))),
        "top_tracks_preview": MetadataValue.md(
            f"**Most popular tracks in {market}**\n\n| # | track | artist | popularity |\n|---|---|---|---|\n{preview}"
        ),
    }


def _with_progress(context: AssetExecutionContext, outcomes: Iterator[TopTracksOutcome], total: int,
                   market: str) -> Iterator[TopTracksOutcome]:
    step = max(1, total // 10)
    for done, outcome in enumerate(outcomes, start=1):
        if done % step == 0 or done == total:
            context.log.info(f"{market}: {done}/{total} artists fetched ({100 * done // max(total, 1)} %)")
        yield outcome


def _plain(metadata: dict) -> dict:
    return {k: v for k, v in metadata.items() if isinstance(v, (int, float, str))}
