"""Fetching many pairs on a thread pool: results in input order, bounded memory, and the first error in any
worker stops them all."""

from __future__ import annotations

import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Callable, Iterable, Iterator, TypeVar

from toptracks_dagster.spotify.errors import FATAL_ERRORS, SpotifyError, _Stopped

Item = TypeVar("Item")
Result = TypeVar("Result")
_NO_MORE = object()


class _Run:
    """One map_in_order call: its stop signal and the errors that ended it."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self._lock = threading.Lock()
        self.first_error: BaseException | None = None
        self.fatal: BaseException | None = None

    def fail(self, error: BaseException) -> None:
        with self._lock:
            if self.first_error is None:
                self.first_error = error
            if self.fatal is None and isinstance(error, FATAL_ERRORS):
                self.fatal = error
        self.stop.set()

    def cause(self, error: BaseException | None = None) -> BaseException:
        """The error to raise: the first fatal one, else the first one (never a worker's _Stopped)."""
        with self._lock:
            if self.fatal is not None:
                return self.fatal
            if error is not None and not isinstance(error, _Stopped):
                return error
            return self.first_error or error or SpotifyError("fetch stopped")


def map_in_order(
    fetch: Callable[[Item, threading.Event], Result],
    items: Iterable[Item],
    concurrency: int,
    thread_name_prefix: str,
) -> Iterator[Result]:
    """`fetch(item, stop)` for every item, yielded in the order of `items`, run by `concurrency` threads with at
    most 2x that in flight. `stop` is set once any worker fails; the first error is raised at once (a fatal one
    in preference), and a worker's own stop (_Stopped) never surfaces."""
    run = _Run()
    remaining = iter(items)
    in_flight: deque[Future[Result]] = deque()
    pool = ThreadPoolExecutor(concurrency, thread_name_prefix=thread_name_prefix)

    def work(item: Item) -> Result:
        if run.stop.is_set():
            raise _Stopped("fetch stopped after an error in another worker")
        try:
            return fetch(item, run.stop)
        except _Stopped:
            raise
        except BaseException as error:
            run.fail(error)
            raise

    def submit_next() -> None:
        item = next(remaining, _NO_MORE)
        if item is not _NO_MORE:
            in_flight.append(pool.submit(work, item))

    try:
        for _ in range(concurrency * 2):
            submit_next()
        while in_flight:
            head = in_flight[0]
            while True:
                try:
                    result = head.result(timeout=0.05)
                    break
                except FutureTimeout:
                    if run.stop.is_set():  # a later item failed: no need to wait for this one
                        raise run.cause() from None
                except BaseException as error:
                    raise run.cause(error) from None
            in_flight.popleft()
            submit_next()
            yield result
    except BaseException:
        run.stop.set()
        for future in in_flight:
            future.cancel()
        # Do not wait for fetches still in flight: their results are no longer wanted, and each one ends within
        # its timeouts (its next pacer wait or backoff raises _Stopped).
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
