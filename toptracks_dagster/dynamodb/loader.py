"""MarketLoader: makes one market's items equal a raw partition, writing only what changed."""

from __future__ import annotations

import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Iterable

from toptracks_dagster.dynamodb.items import (
    content_hash,
    gsi_popularity,
    item_json,
    list_digest,
    valid_track_id,
)
from toptracks_dagster.dynamodb.reads import artist_item_pages, keys_of, market_key_pages
from toptracks_dagster.dynamodb.table import (
    SORT_KEY,
    TRANSIENT_EXCEPTIONS,
    DynamoDBUnavailable,
    ItemTooLarge,
    endpoint_of,
    sort_key,
)
from toptracks_dagster.dynamodb.writer import BatchWriter, LoadStats, _capacity


def wanted_items(outcome, market: str, stats: LoadStats | None = None) -> dict[str, tuple[int, dict, str]]:
    """'<market>#<track id>' -> (rank, track, content hash), as the load stores one artist's outcome (a 404 or
    empty list: none). Tracks without a usable id are skipped; a repeated track keeps its first rank. Items are
    built only for what is written (item_attributes)."""
    wanted: dict[str, tuple[int, dict, str]] = {}
    if outcome.status != 200:
        return wanted
    for rank, track in enumerate(outcome.tracks or [], start=1):
        track_id = track.get("id") if isinstance(track, dict) else None
        if not valid_track_id(market, track_id):
            if stats:
                stats.add(tracks_without_id=1)
            continue
        key = sort_key(market, track_id)
        if key in wanted:
            if stats:
                stats.add(duplicate_tracks=1)
            continue
        wanted[key] = (rank, track, content_hash(market, rank, track))
    return wanted


def _hashes(wanted: dict[str, tuple[int, dict, str]]) -> dict[str, str]:
    return {key: digest for key, (_, _, digest) in wanted.items()}


def _without_popularity(wanted: dict[str, tuple[int, dict, str]]) -> int:
    return sum(1 for _, track, _ in wanted.values() if gsi_popularity(track.get("popularity")) is None)


def outcome_digest(outcome, market: str) -> tuple[str, int] | None:
    """(list digest, item count) of an outcome as the load would write it; None for an error outcome, whose
    artist keeps its previous items."""
    if outcome.status not in (200, 404):
        return None
    wanted = wanted_items(outcome, market)
    return list_digest(_hashes(wanted)), len(wanted)


class MarketLoader:
    """Makes the table's items for one market equal a raw partition, writing only what changed.

    Per artist: read the artist's items for the market (consistent Query on the key, projection of key and
    hash), put new and changed tracks, delete tracks that left the list; a 404 artist keeps no items. Then a
    sweep of the market's GSI deletes items of artists absent from the partition (removed from RDS).

    Idempotent: every write is derived from (raw data, current table), so a re-run after a crash at any point
    computes and sends exactly what is still missing.
    """

    def __init__(
        self,
        client,
        table_name: str,
        market: str,
        *,
        concurrency: int = 8,
        max_batch_retries: int = 8,
        log: Callable[[str], None] | None = None,
        base_delay_s: float = 0.05,
        max_delay_s: float = 5.0,
        previous_ledger: dict[str, str] | None = None,
        untrusted: set[str] | None = None,
        known_digests: dict[str, tuple[str, int]] | None = None,
    ):
        # previous_ledger: {artist_id: list digest} of the last successful load of this market into this table,
        # or None when unknown. With it, an artist whose list digest is unchanged is skipped without reading
        # the table, and only artists of the ledger can have items to sweep. `ledger` is this load's, filled as
        # artists are refreshed; store it only after load() returns.
        # untrusted: artists whose ledger entry a crashed load may have invalidated (read from the table).
        # known_digests: {artist_id: (list digest, item count)} computed before the load, to skip unchanged
        # artists without rebuilding their items.
        self._previous = previous_ledger
        self._untrusted = untrusted or set()
        self._known_digests = known_digests or {}
        self.ledger: dict[str, str] = {}
        self.item_counts: dict[str, int] = {}  # items this load left for each artist it wrote or confirmed
        self._ledger_lock = threading.Lock()
        self._client = client
        self._table = table_name
        self._market = market
        self._concurrency = concurrency
        self._log = log or (lambda message: None)
        self.stats = LoadStats()
        self._writer = BatchWriter(
            client,
            table_name,
            self.stats,
            concurrency,
            max_batch_retries,
            base_delay_s=base_delay_s,
            max_delay_s=max_delay_s,
        )
        self._oversized: list[ItemTooLarge] = []
        self._oversized_lock = threading.Lock()

    def load(self, outcomes: Iterable) -> LoadStats:
        """`outcomes`: TopTracksOutcome-like objects (artist_id, market, status, tracks, requested_at), streamed.

        Raises DynamoDBWriteIncomplete (with the count) when writes could not be applied, ItemTooLarge after
        loading everything else when some tracks were too large (those artists keep their previous items),
        DynamoDBUnavailable when the endpoint cannot be reached.
        """
        try:
            seen_artists = self._refresh_artists(outcomes)
            if self._previous is None:
                self._delete_absent_artists(seen_artists)
            else:
                self._delete_artists(sorted((self._previous.keys() | self._untrusted) - seen_artists))
        except TRANSIENT_EXCEPTIONS as error:
            self._writer.abort()
            raise DynamoDBUnavailable(
                f"DynamoDB at {endpoint_of(self._client)} failed during the load of {self._market}: {error}"
            ) from error
        except BaseException:
            self._writer.abort()
            raise
        self._writer.close()
        if self._oversized:
            first = self._oversized[0]
            raise ItemTooLarge(
                f"{len(self._oversized)} artist(s) in {self._market} have items above the 400 KB limit and kept "
                f"their previous items; first: {first}",
                first.artist_id,
                first.key,
                first.size,
            )
        return self.stats

    def _refresh_artists(self, outcomes: Iterable) -> set[str]:
        seen_artists: set[str] = set()
        pool = ThreadPoolExecutor(self._concurrency, thread_name_prefix="dynamodb-diff")
        try:
            slots = threading.BoundedSemaphore(self._concurrency * 2)
            failed = threading.Event()  # stop reading outcomes at the first failed artist

            def done(future: Future) -> None:
                slots.release()
                if not future.cancelled() and future.exception() is not None:
                    failed.set()

            futures: list[Future] = []
            for outcome in outcomes:
                if failed.is_set():
                    break
                market = getattr(outcome, "market", self._market)
                if market != self._market:
                    raise ValueError(
                        f"outcome for artist {outcome.artist_id} is for market {market}, "
                        f"not {self._market}: refusing to load it into {self._market}"
                    )
                if outcome.artist_id in seen_artists:
                    # Two refreshes of one artist would race; the raw partition has one outcome per artist.
                    self.stats.add(duplicate_artists=1)
                    continue
                seen_artists.add(outcome.artist_id)
                slots.acquire()
                future = pool.submit(self._refresh_artist, outcome)
                future.add_done_callback(done)
                futures.append(future)
                if len(futures) > 1000:
                    futures = self._raise_first_error(futures)
            self._raise_first_error(futures, wait=True)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        return seen_artists

    @staticmethod
    def _raise_first_error(futures: list[Future], wait: bool = False) -> list[Future]:
        for future in futures:
            if wait or future.done():
                future.result()
        return [f for f in futures if not f.done()]

    def _refresh_artist(self, outcome) -> None:
        self.stats.add(artists=1)
        if outcome.status == 404:
            self.stats.add(not_found=1)
        elif outcome.status != 200:
            # Not a top list: the latest successful list stays (deleting it would lose data on a glitch).
            self.stats.add(artists_kept_after_error=1)
            self._log(f"artist {outcome.artist_id}: status {outcome.status} in the raw data, kept its items")
            if self._previous and outcome.artist_id in self._previous:
                self._remember(outcome.artist_id, self._previous[outcome.artist_id])
            return
        known = self._known_digests.get(outcome.artist_id)
        if (
            known is not None
            and self._previous is not None
            and outcome.artist_id not in self._untrusted
            and self._previous.get(outcome.artist_id) == known[0]
        ):
            # Same list as the last successful load wrote (digest computed before the load): nothing to do.
            self.stats.add(items_unchanged=known[1], artists_skipped_unchanged=1)
            self._remember(outcome.artist_id, known[0], known[1])
            return
        wanted = wanted_items(outcome, self._market, self.stats)
        digest = list_digest(_hashes(wanted))
        if (
            self._previous is not None
            and outcome.artist_id not in self._untrusted
            and self._previous.get(outcome.artist_id) == digest
        ):
            # Same list as the last successful load wrote: nothing to read, nothing to write.
            self.stats.add(
                items_unchanged=len(wanted),
                artists_skipped_unchanged=1,
                tracks_without_popularity=_without_popularity(wanted),
            )
            self._remember(outcome.artist_id, digest, len(wanted))
            return
        if self._previous is None or outcome.artist_id in self._previous or outcome.artist_id in self._untrusted:
            existing = self._existing_hashes(outcome.artist_id)
        else:
            existing = {}  # the ledger covers every artist with items in this market: this one has none
        changed = {key: planned for key, planned in wanted.items() if existing.get(key) != planned[2]}
        try:  # every changed item is checked before any is written: an artist is refreshed whole or not at all
            encoded = [
                (key, item_json(outcome.artist_id, self._market, rank, track, outcome.requested_at, digest))
                for key, (rank, track, digest) in changed.items()
            ]
        except ItemTooLarge as error:
            with self._oversized_lock:
                self._oversized.append(error)
            self.stats.add(artists_with_oversized_items=1)
            self._log(str(error))
            return
        for key, item in encoded:
            self._writer.put_encoded(outcome.artist_id, key, item)
        gone = existing.keys() - wanted.keys()
        for key in gone:
            self._writer.delete(outcome.artist_id, key)
        self._remember(outcome.artist_id, digest, len(wanted))
        self.stats.add(
            items_unchanged=len(wanted) - len(changed),
            items_written=len(changed),
            items_deleted=len(gone),
            tracks_without_popularity=_without_popularity(wanted),
        )

    def _remember(self, artist_id: str, digest: str, items: int | None = None) -> None:
        with self._ledger_lock:
            self.ledger[artist_id] = digest
            if items is not None:
                self.item_counts[artist_id] = items

    def _delete_artists(self, artist_ids: list[str]) -> None:
        """Delete every item of these artists in this market (consistent reads: exact, no GSI lag)."""
        deleted = 0
        for artist_id in artist_ids:
            for key in self._existing_hashes(artist_id):
                self._writer.delete(artist_id, key)
                deleted += 1
        self._count_stale_deletions(deleted)

    def _existing_hashes(self, artist_id: str) -> dict[str, str | None]:
        """Sort key -> content hash of the artist's items in this market (consistent: exact, no GSI lag)."""
        hashes: dict[str, str | None] = {}
        pages = artist_item_pages(
            self._client,
            self._table,
            self._market,
            artist_id,
            attributes=(SORT_KEY, "content_hash"),
            ReturnConsumedCapacity=self._writer.capacity_mode,
        )
        for page in pages:
            self.stats.add(read_requests=1, consumed_read_capacity=_capacity(page))
            for item in page.get("Items", []):
                hashes[item[SORT_KEY]["S"]] = item.get("content_hash", {}).get("S")
        return hashes

    def _delete_absent_artists(self, present: set[str]) -> None:
        # The GSI is eventually consistent: an item written a split second ago may be missing here. The items
        # this sweep looks for were written by earlier loads, so in practice it sees them; the next load
        # catches any it missed.
        deleted = 0
        for page in market_key_pages(
            self._client, self._table, self._market, ReturnConsumedCapacity=self._writer.capacity_mode
        ):
            self.stats.add(read_requests=1, consumed_read_capacity=_capacity(page))
            for artist_id, key in keys_of(page):
                if artist_id not in present:
                    self._writer.delete(artist_id, key)
                    deleted += 1
        self._count_stale_deletions(deleted)

    def _count_stale_deletions(self, deleted: int) -> None:
        if deleted:
            self._log(f"deleting {deleted} item(s) of artists no longer in the artist list for {self._market}")
        self.stats.add(items_deleted=deleted, stale_artist_items_deleted=deleted)
