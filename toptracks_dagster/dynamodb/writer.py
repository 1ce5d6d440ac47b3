"""Batched, parallel writes to the table that survive throttling, UnprocessedItems and dropped connections."""

from __future__ import annotations

import random
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from botocore.exceptions import ClientError

from toptracks_dagster.counters import ThreadSafeCounters
from toptracks_dagster.dynamodb.items import _key
from toptracks_dagster.dynamodb.table import (
    BATCH_SIZE,
    PARTITION_KEY,
    RETRYABLE_ERROR_CODES,
    SORT_KEY,
    TRANSIENT_EXCEPTIONS,
    DynamoDBWriteIncomplete,
)
from toptracks_dagster.dynamodb.wire import batch_body, consumed_capacity_mode, encoded, send_batch_write_body


@dataclass
class LoadStats(ThreadSafeCounters):
    artists: int = 0
    not_found: int = 0
    duplicate_artists: int = 0
    artists_kept_after_error: int = 0
    artists_with_oversized_items: int = 0
    items_written: int = 0
    items_unchanged: int = 0
    items_deleted: int = 0
    stale_artist_items_deleted: int = 0
    artists_skipped_unchanged: int = 0  # same list digest as the last successful load: no read, no write
    tracks_without_id: int = 0
    duplicate_tracks: int = 0
    tracks_without_popularity: int = 0
    write_requests: int = 0
    read_requests: int = 0
    unprocessed_items: int = 0  # write requests DynamoDB handed back in UnprocessedItems (summed over tries)
    unprocessed_retries: int = 0  # BatchWriteItem calls resending UnprocessedItems
    error_retries: int = 0  # whole batches resent after throttling / dropped connections
    sdk_retries: int = 0  # botocore's own retries (ResponseMetadata.RetryAttempts)
    consumed_write_capacity: float = 0.0
    consumed_read_capacity: float = 0.0


def _capacity(response: dict) -> float:
    """Capacity units a response reports (a list for BatchWriteItem, one object for Query), 0 if none."""
    consumed = response.get("ConsumedCapacity") or []
    if isinstance(consumed, dict):
        consumed = [consumed]
    return float(sum(c.get("CapacityUnits", 0.0) or 0.0 for c in consumed))


class BatchWriter:
    """BatchWriteItem in batches of 25, several in flight, UnprocessedItems resent with backoff and jitter.

    Hand-written because boto3's `batch_writer` resends UnprocessedItems at once, without backoff, and spins
    under throttling; it also cannot run batches in parallel or report what it could not write.
    """

    def __init__(
        self,
        client,
        table_name: str,
        stats: LoadStats,
        concurrency: int = 8,
        max_retries: int = 8,
        base_delay_s: float = 0.05,
        max_delay_s: float = 5.0,
    ):
        self._client = client
        self.capacity_mode = consumed_capacity_mode(client)  # ReturnConsumedCapacity of this client's requests
        self._table = table_name
        self._stats = stats
        self._max_retries = max_retries
        self._base_delay_s = base_delay_s
        self._max_delay_s = max_delay_s
        self._lock = threading.Lock()
        self._pending: list[str] = []  # write requests encoded as JSON
        self._pending_keys: set[tuple[str, str]] = set()
        self._pool = ThreadPoolExecutor(concurrency, thread_name_prefix="dynamodb-write")
        self._slots = threading.BoundedSemaphore(concurrency * 2)  # bounds memory: batches queued or in flight
        self._unwritten = 0
        self._errors: list[str] = []

    def put(self, serialized_item: dict) -> None:
        key = (serialized_item[PARTITION_KEY]["S"], serialized_item[SORT_KEY]["S"])
        self._add(encoded({"PutRequest": {"Item": serialized_item}}), key)

    def put_encoded(self, artist_id: str, country_track_id: str, item_json: str) -> None:
        """An item already encoded as DynamoDB JSON (items.item_json): encoded once, sized and sent as is."""
        self._add(f'{{"PutRequest":{{"Item":{item_json}}}}}', (artist_id, country_track_id))

    def delete(self, artist_id: str, country_track_id: str) -> None:
        request = {"DeleteRequest": {"Key": _key(artist_id, country_track_id)}}
        self._add(encoded(request), (artist_id, country_track_id))

    def _add(self, request: str, key: tuple[str, str]) -> None:
        batch = None
        with self._lock:
            # Two requests for one key in a batch make DynamoDB reject the whole batch: cut the batch first.
            if key in self._pending_keys or len(self._pending) >= BATCH_SIZE:
                batch = self._take_pending()
            self._pending.append(request)
            self._pending_keys.add(key)
        if batch:
            self._submit(batch)

    def _take_pending(self) -> list[str]:
        batch, self._pending, self._pending_keys = self._pending, [], set()
        return batch

    def _submit(self, batch: list[str]) -> None:
        self._slots.acquire()
        try:
            future = self._pool.submit(self._send, batch)
        except RuntimeError:  # the writer was aborted: the load is failing anyway
            self._slots.release()
            raise
        future.add_done_callback(lambda done: self._batch_finished(done, len(batch)))

    def _batch_finished(self, future: Future, size: int) -> None:
        self._slots.release()
        # _send records its own failures; anything that still escapes it must not pass silently either.
        error = None if future.cancelled() else future.exception()
        if error is not None:
            self._record_failure(size, f"{type(error).__name__}: {error}")

    def _delay(self, attempt: int) -> float:
        # Exponential backoff with full jitter (AWS's advice for UnprocessedItems and throttling).
        return random.uniform(0, min(self._max_delay_s, self._base_delay_s * 2**attempt))

    def _send(self, batch: list[str]) -> None:
        requests = batch
        detail = ""
        for attempt in range(self._max_retries + 1):
            if attempt:
                time.sleep(self._delay(attempt - 1))
            try:
                response = send_batch_write_body(
                    self._client, [self._table], batch_body(self._table, requests, self.capacity_mode)
                )
            except ClientError as error:
                info = error.response.get("Error", {})
                code = info.get("Code", "ClientError")
                detail = f"{code}: {info.get('Message', '')}"
                self._stats.add(
                    write_requests=1, sdk_retries=error.response.get("ResponseMetadata", {}).get("RetryAttempts", 0)
                )
                if code not in RETRYABLE_ERROR_CODES:
                    break
                if attempt < self._max_retries:
                    self._stats.add(error_retries=1)
                continue
            except TRANSIENT_EXCEPTIONS as error:  # a dropped connection or timeout after botocore's own retries
                detail = f"{type(error).__name__}: {error}"
                self._stats.add(write_requests=1)
                if attempt < self._max_retries:
                    self._stats.add(error_retries=1)
                continue
            except Exception as error:  # anything else is not worth retrying; it is reported at close()
                detail = f"{type(error).__name__}: {error}"
                break
            self._stats.add(
                write_requests=1,
                consumed_write_capacity=_capacity(response),
                sdk_retries=response.get("ResponseMetadata", {}).get("RetryAttempts", 0),
            )
            requests = [encoded(r) for r in (response.get("UnprocessedItems") or {}).get(self._table, [])]
            if not requests:
                return
            left = len(requests)
            detail = f"{left} item(s) still in UnprocessedItems"
            self._stats.add(unprocessed_items=left)
            if attempt < self._max_retries:
                self._stats.add(unprocessed_retries=1)
        self._record_failure(len(requests), f"{detail} (after {self._max_retries} resend(s) at most)")

    def _record_failure(self, count: int, detail: str) -> None:
        with self._lock:
            self._unwritten += count
            if len(self._errors) < 5:
                self._errors.append(detail)

    def close(self) -> None:
        """Send what is pending, wait for every batch, and raise if anything was not written."""
        with self._lock:
            batch = self._take_pending()
        if batch:
            self._submit(batch)
        self._pool.shutdown(wait=True)
        if self._unwritten:
            raise DynamoDBWriteIncomplete(self._unwritten, "; ".join(self._errors))

    def abort(self) -> None:
        """After a failure elsewhere: drop what was not sent yet and wait for the batches in flight.

        Nothing is lost by dropping: every write is derived from the raw data and the table's state, so the
        next load recomputes and sends whatever is still missing.
        """
        with self._lock:
            self._take_pending()
        self._pool.shutdown(wait=True, cancel_futures=True)
