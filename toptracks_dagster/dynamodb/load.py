"""One market's load: read each artist's items, make them equal the raw partition, read back what changed.

Every write is derived from (raw partition, items just read), so a load that stopped anywhere is repaired by the
next one. An artist's changes go in one transaction whose every put and delete is conditional on the stored
`fetched_at` being no newer than this list's: two loads racing on one table (even from different Dagster
instances) never replace newer data with older, and an artist is changed whole or not at all. An
artist whose answer was unusable, or whose items DynamoDB cannot store, keeps its items and is named; nothing
else waits for it.
"""

from __future__ import annotations

import hashlib
import heapq
import json
import math
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from decimal import Decimal, DecimalException
from typing import Any, Callable, Iterator

from boto3.dynamodb.types import TypeDeserializer, TypeSerializer
from botocore.exceptions import ClientError

from toptracks_dagster.check_results import Sample
from toptracks_dagster.common import utc_now_iso
from toptracks_dagster.config import ALLOW_MASS_DELETE_TAG, PermanentError
from toptracks_dagster.dynamodb.table import (
    GSI_NAME,
    MAX_ITEM_BYTES,
    MAX_SORT_KEY_BYTES,
    PARTITION_KEY,
    PIPELINE_ATTRIBUTES,
    SORT_KEY,
    sort_key,
)

_CONFLICT_RETRIES = 4  # a transaction that met another load's on the same artist is tried again
_serializer = TypeSerializer()
_deserializer = TypeDeserializer()
# DynamoDB returns numbers written out in full, and boto3 reads back at most 38 digits: a number of 10^38 or
# more could be stored but not read.
_TOO_LARGE = 10**38


class MassDeletionRefused(PermanentError):
    """The load would delete more than the allowed share of a market's items; nothing was written."""


class NotStorable(ValueError):
    """A track holds a value DynamoDB cannot store; the message names the field."""


# ------------------------------------------------------------------------------------------ items
def storable(value: Any) -> Any:
    """A JSON value as DynamoDB stores it: floats as Decimal, NaN/Infinity as null; NotStorable for a number
    that could not be read back."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, (int, float)):
        if isinstance(value, float) and not math.isfinite(value):
            return None
        if abs(value) >= _TOO_LARGE:
            raise NotStorable(f"{value!r:.40} is 10^38 or more, beyond what DynamoDB's readers get back")
        return Decimal(repr(value)) if isinstance(value, float) else value
    if isinstance(value, dict):
        return {str(k): storable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [storable(v) for v in value]
    return value


def wanted_items(market: str, outcome) -> dict[str, dict]:
    """'<market>#<track id>' -> the item (without `fetched_at`) for one artist's outcome: the tracks of a 200 answer
    with a usable id, first occurrence wins, rank = position in Spotify's list. A 404 artist has none. NotStorable
    names the track and field DynamoDB cannot hold."""
    wanted: dict[str, dict] = {}
    if outcome.status != 200:
        return wanted
    for rank, track in enumerate(outcome.tracks or [], start=1):
        track_id = track.get("id") if isinstance(track, dict) else None
        if not isinstance(track_id, str) or not track_id:
            continue
        key = sort_key(market, track_id)
        if len(key.encode()) > MAX_SORT_KEY_BYTES or key in wanted:
            continue
        item = {}
        for name, value in track.items():
            if name not in PIPELINE_ATTRIBUTES:
                try:
                    item[name] = storable(value)
                except NotStorable as error:
                    raise NotStorable(f"track {track_id}: field {name!r}: {error}") from None
        popularity = track.get("popularity")
        if isinstance(popularity, bool) or not isinstance(popularity, int):
            # The GSI range key must be a number: 0 (Spotify's value for unplayed tracks), flagged.
            item["popularity"], item["popularity_missing"] = 0, True
        item.update({PARTITION_KEY: outcome.artist_id, SORT_KEY: key, "country": market, "rank": rank})
        wanted[key] = item
    return wanted


def serialize(item: dict) -> dict:
    """An item as DynamoDB attribute values (boto3's rules); NotStorable names the field it cannot store."""
    found = {}
    for name, value in item.items():
        try:
            found[name] = _serializer.serialize(value)
        except (DecimalException, TypeError, ValueError) as error:
            shown = repr(value if not isinstance(value, (dict, list)) else type(value).__name__)[:60]
            raise NotStorable(
                f"track {item.get(SORT_KEY)}: field {name!r} ({shown}) cannot be stored in DynamoDB "
                f"(numbers: at most 38 significant digits): {type(error).__name__}"
            ) from None
    return found


def same(a: Any, b: Any) -> bool:
    """Equality of stored values without Python's True == 1 (booleans only equal booleans)."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, (int, Decimal)) and isinstance(b, (int, Decimal)):
        return a == b
    return type(a) is type(b) and a == b


def differing(wanted: dict, stored: dict | None) -> list[str]:
    """The attributes in which a stored item differs from the wanted one (`fetched_at` aside)."""
    if stored is None:
        return ["(missing)"]
    names = (wanted.keys() | stored.keys()) - {"fetched_at"}
    return sorted(n for n in names if n not in wanted or n not in stored or not same(wanted[n], stored[n]))


# ------------------------------------------------------------------------------------------ reads
def artist_items(client, table: str, market: str, artist_id: str) -> tuple[dict[str, dict], int]:
    """'<market>#<track id>' -> item of one artist in one market (consistent, paged Query), and the pages read."""
    found, pages = {}, 0
    for page in client.get_paginator("query").paginate(
        TableName=table,
        KeyConditionExpression="#pk = :artist AND begins_with(#sk, :prefix)",
        ExpressionAttributeNames={"#pk": PARTITION_KEY, "#sk": SORT_KEY},
        ExpressionAttributeValues={":artist": {"S": artist_id}, ":prefix": {"S": f"{market}#"}},
        ConsistentRead=True,
    ):
        pages += 1
        for raw_item in page.get("Items", []):
            item = {k: _deserializer.deserialize(v) for k, v in raw_item.items()}
            found[item[SORT_KEY]] = item
    return found, pages


def market_artists(client, table: str, market: str) -> Iterator[str]:
    """Artist ids with items in the market, from a keys-only sweep of the GSI (eventually consistent)."""
    for page in client.get_paginator("query").paginate(
        TableName=table,
        IndexName=GSI_NAME,
        KeyConditionExpression="#c = :m",
        ProjectionExpression="#pk",
        ExpressionAttributeNames={"#c": "country", "#pk": PARTITION_KEY},
        ExpressionAttributeValues={":m": {"S": market}},
    ):
        for item in page.get("Items", []):
            yield item[PARTITION_KEY]["S"]


def market_item_count(client, table: str, market: str) -> int:
    pages = client.get_paginator("query").paginate(
        TableName=table,
        IndexName=GSI_NAME,
        KeyConditionExpression="#c = :m",
        ExpressionAttributeNames={"#c": "country"},
        ExpressionAttributeValues={":m": {"S": market}},
        Select="COUNT",
    )
    return sum(page.get("Count", 0) for page in pages)


def rotating_sample(artist_ids, exclude: set[str], size: int, seed: str) -> list[str]:
    """`size` artists outside `exclude`, by a hash of (seed, id): each run reads another sample."""

    def rank(artist_id: str) -> str:
        return hashlib.sha256(f"{seed}|{artist_id}".encode()).hexdigest()

    return [a for _, a in heapq.nsmallest(size, ((rank(a), a) for a in artist_ids if a not in exclude))]


# ------------------------------------------------------------------------------------------ the load
@dataclass
class _Change:
    """One artist's conditional puts and deletes, and what to do once they are applied."""

    artist_id: str
    actions: list[dict]
    written: Callable[[], None]


@dataclass
class MarketLoad:
    """What one market's load did and found; every count is about this market's data."""

    market: str
    full: bool = False
    artists_read: int = 0
    artists_changed: int = 0
    artists_removed: int = 0
    items_written: int = 0
    items_deleted: int = 0
    items_unchanged: int = 0
    artists_read_back: int = 0
    read_requests: int = 0
    write_requests: int = 0
    quarantined: Sample = field(default_factory=Sample)  # {artist_id, reason}: kept their previous items
    superseded: Sample = field(default_factory=Sample)  # newer data of another load was already there
    mismatched: Sample = field(default_factory=Sample)  # read back after writing and still not equal

    @property
    def changed(self) -> bool:
        return bool(self.items_written or self.items_deleted)


class MarketLoader:
    """Reconciles chosen artists (or, `full`, every artist and every item of the market) with a raw partition."""

    def __init__(
        self,
        client,
        table: str,
        market: str,
        concurrency: int = 8,
        log: Callable[[str], None] = print,
        read_back: int | None = None,
    ):
        """`read_back`: how many written artists are read again to confirm what DynamoDB stored (None: all). A
        successful transaction stored exactly what was sent, so a sample catches what could still differ (how
        values are encoded) at a fraction of the reads."""
        self.client, self.table, self.market, self.log = client, table, market, log
        self._read_back_left = read_back
        self.concurrency = max(1, concurrency)
        self.result = MarketLoad(market)
        self._lock = threading.Lock()
        self._known_empty = False
        self._pending: list[_Change] = []

    def _add(self, **counts: int) -> None:
        with self._lock:
            for name, value in counts.items():
                setattr(self.result, name, getattr(self.result, name) + value)

    def load(self, raw, artists: set[str] | None, max_delete_share: float, delete_allowed: bool) -> MarketLoad:
        """`artists`: those to reconcile (listed or not); None: all of them, plus every item of an unlisted
        artist that the GSI shows. Raises MassDeletionRefused before the first write."""
        full = artists is None
        self.result.full = full
        listed = set(raw.requested_at)
        unlisted = set()
        if full:
            unlisted = set(market_artists(self.client, self.table, self.market)) - listed
        else:
            unlisted = artists - listed
        if unlisted or full:
            stored = market_item_count(self.client, self.table, self.market)
            # A market with no item at all (its first load) needs no read per artist before writing.
            self._known_empty = full and stored == 0
            if not delete_allowed:
                self._refuse_mass_deletion(raw, stored, len(unlisted), max_delete_share)
        outcomes = raw.outcomes(only=None if full else artists & listed)
        with ThreadPoolExecutor(self.concurrency, thread_name_prefix=f"load-{self.market}") as pool:
            slots = threading.BoundedSemaphore(self.concurrency * 2)  # memory: a few artists in flight
            futures = []

            def submit(artist_id: str, outcome) -> None:
                slots.acquire()
                future = pool.submit(self._reconcile, artist_id, outcome)
                future.add_done_callback(lambda _: slots.release())
                futures.append(future)

            for outcome in outcomes:
                submit(outcome.artist_id, outcome)
            for artist_id in sorted(unlisted):
                submit(artist_id, None)
            for future in futures:
                future.result()
        self._flush()
        return self.result

    def _refuse_mass_deletion(self, raw, stored: int, unlisted: int, share: float) -> None:
        """A raw partition that would leave far fewer items than the table holds needs consent."""
        # The merge counted the partition's tracks in its end record: no second pass over the partition.
        expected = int(raw.end.get("tracks", 0))
        if stored and stored - expected > share * stored:
            raise MassDeletionRefused(
                f"the load of {self.market} would leave {expected} of the table's {stored} items "
                f"({100 * (stored - expected) / stored:.0f} % fewer, above TOPTRACKS_MAX_DELETE_SHARE="
                f"{100 * share:.0f} %; {unlisted} artist(s) no longer listed). Nothing was written. If this is "
                f"intended, re-run with the run tag {ALLOW_MASS_DELETE_TAG}=true"
            )

    def _reconcile(self, artist_id: str, outcome) -> None:
        stored, pages = {}, 0
        if not self._known_empty:
            stored, pages = artist_items(self.client, self.table, self.market, artist_id)
        self._add(artists_read=1, read_requests=pages)
        if outcome is not None and outcome.status not in (200, 404):
            reason = (outcome.error or {}).get("message") or f"status {outcome.status}"
            self._quarantine(artist_id, f"unusable answer ({reason}); kept its {len(stored)} item(s)")
            self._add(items_unchanged=len(stored))
            return
        try:
            wanted = wanted_items(self.market, outcome) if outcome is not None else {}
        except NotStorable as error:
            self._quarantine(artist_id, f"{error}; kept its {len(stored)} item(s)")
            self._add(items_unchanged=len(stored))
            return
        puts = {k: item for k, item in wanted.items() if differing(item, stored.get(k))}
        deletes = [k for k in stored if k not in wanted]
        self._add(items_unchanged=len(wanted) - len(puts))
        if not puts and not deletes:
            return
        fetched_at = outcome.requested_at if outcome is not None else utc_now_iso()
        try:
            encoded = [serialize({**item, "fetched_at": fetched_at}) for item in puts.values()]
            for item in encoded:
                size = len(json.dumps(item, separators=(",", ":")).encode())
                if size > MAX_ITEM_BYTES:  # the encoded form is never smaller than DynamoDB's count of the item
                    raise NotStorable(f"track {item[SORT_KEY]['S']} is {size:,} bytes encoded, above 400 KB")
        except NotStorable as error:
            self._quarantine(artist_id, f"{error}; kept its {len(stored)} item(s)")
            self._add(items_unchanged=len(stored))
            return
        requests = [{"Item": item} for item in encoded]
        requests += [{"Key": {PARTITION_KEY: {"S": artist_id}, SORT_KEY: {"S": key}}} for key in deletes]

        def written() -> None:
            self._add(
                items_written=len(puts),
                items_deleted=len(deletes),
                artists_changed=1 if outcome is not None else 0,
                artists_removed=1 if outcome is None else 0,
            )
            self._read_back(artist_id, wanted)

        self._enqueue(_Change(artist_id, self._actions(requests, fetched_at), written))

    def _read_back(self, artist_id: str, wanted: dict[str, dict]) -> None:
        with self._lock:
            if self._read_back_left is not None:
                if self._read_back_left <= 0:
                    return
                self._read_back_left -= 1
        after, pages = artist_items(self.client, self.table, self.market, artist_id)
        self._add(read_requests=pages, artists_read_back=1)
        for key in wanted.keys() | after.keys():
            if key not in wanted:
                self._mismatch(artist_id, key, ["(extra)"])
            elif attributes := differing(wanted[key], after.get(key)):
                self._mismatch(artist_id, key, attributes)

    def _actions(self, requests: list[dict], fetched_at: str) -> list[dict]:
        """Puts (`Item`) and deletes (`Key`), each conditional on the stored item being no newer than this list: a
        load holding older data never replaces newer."""
        fence = {
            "TableName": self.table,
            "ConditionExpression": "attribute_not_exists(#f) OR #f <= :f",
            "ExpressionAttributeNames": {"#f": "fetched_at"},
            "ExpressionAttributeValues": {":f": {"S": fetched_at}},
        }
        return [{"Put" if "Item" in r else "Delete": {**r, **fence}} for r in requests]

    def _enqueue(self, change: "_Change") -> None:
        """Artists' changes travel together, up to a transaction's 100 actions: each artist is still changed whole
        or not at all, in a fraction of the requests."""
        with self._lock:
            full = sum(len(c.actions) for c in self._pending) + len(change.actions) > 100
            ready, self._pending = (self._pending, [change]) if full else ([], [*self._pending, change])
        self._apply(ready)

    def _flush(self) -> None:
        with self._lock:
            ready, self._pending = self._pending, []
        self._apply(ready)

    def _apply(self, changes: list["_Change"]) -> None:
        if len(changes) > 1:
            try:
                self.client.transact_write_items(TransactItems=[a for c in changes for a in c.actions])
                self._add(write_requests=1)
                for change in changes:
                    change.written()
                return
            except ClientError:
                pass  # a superseded, refused or conflicting artist among them: each on its own finds which
        for change in changes:
            if self._write(change.artist_id, change.actions):
                change.written()

    def _write(self, artist_id: str, actions: list[dict]) -> bool:
        """One artist's actions in one transaction, all or none. False when the artist was superseded or
        refused instead."""
        for start in range(0, len(actions), 100):  # a transaction's limit; a top list is 10 tracks at most
            for attempt in range(_CONFLICT_RETRIES + 1):
                try:
                    self.client.transact_write_items(TransactItems=actions[start : start + 100])
                    self._add(write_requests=1)
                    break
                except ClientError as error:
                    reasons = [r.get("Code") for r in error.response.get("CancellationReasons") or []]
                    message = error.response.get("Error", {}).get("Message", "")
                    if "ConditionalCheckFailed" in reasons:
                        self._supersede(artist_id)
                        return False
                    if (
                        "ValidationError" in reasons
                        or error.response.get("Error", {}).get("Code") == "ValidationException"
                    ):
                        self._quarantine(artist_id, f"DynamoDB refused its items: {message[:300]}")
                        return False
                    if "TransactionConflict" not in reasons or attempt == _CONFLICT_RETRIES:
                        raise
                    time.sleep(random.uniform(0, 0.05 * 2**attempt))  # another load writes this artist now
        return True

    def _supersede(self, artist_id: str) -> None:
        with self._lock:
            self.result.superseded.add(artist_id)
        self.log(f"{self.market}: artist {artist_id} has newer items from another load; left as they are")

    def _quarantine(self, artist_id: str, reason: str) -> None:
        with self._lock:
            self.result.quarantined.add({"artist_id": artist_id, "reason": reason})
        self.log(f"{self.market}: artist {artist_id} quarantined: {reason}")

    def _mismatch(self, artist_id: str, key: str, attributes: list[str]) -> None:
        with self._lock:
            self.result.mismatched.add({"artist_id": artist_id, SORT_KEY: key, "differing": attributes[:20]})
