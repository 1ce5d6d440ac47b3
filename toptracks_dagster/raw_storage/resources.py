"""Raw storage: the artist-id snapshot, the raw Spotify answers and small ledgers, as text.

Writes are atomic and streamed; `write_aside` lets an object be read back and checked before it is published.
`update` is a read-modify-write of a small object that no concurrent writer (process, Dagster instance) undoes.
"""

import errno
import fcntl
import hashlib
import os
import tempfile
import time
from abc import ABC, abstractmethod
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Callable, Iterator

from dagster import ConfigurableResource
from pydantic import Field

from toptracks_dagster.common import process_alive
from toptracks_dagster.config import PermanentError

SMALL_OBJECT_LIMIT = 1 << 20  # characters `read_small` and `update` accept: ledgers, never partitions
LOCK_TIMEOUT_S = 30.0  # the lock is held for one small read and write; longer means a hung filesystem


class RawObjectMissing(FileNotFoundError):
    """A raw object that an asset needs has not been written yet."""


class RawStorageError(PermanentError):
    """Raw storage refused a read or write (full disk, quota, permissions, read-only, oversized object)."""


def check_small(text, uri: str):  # str or bytes
    if len(text) > SMALL_OBJECT_LIMIT:
        raise RawStorageError(f"raw object {uri} is over {SMALL_OBJECT_LIMIT:,} characters: not a small object")
    return text


class PendingObject:
    """An object written aside: readable with `open_for_read`, published under its key only by `publish`."""

    def __init__(self, path: Path, publish: Callable[[Path], None], uri: str):
        self.path, self.uri, self._publish = path, uri, publish  # uri: where it will be published

    @contextmanager
    def open_for_read(self) -> Iterator[IO[str]]:
        with _local_io(f"{self.uri} (temp file {self.path})", "read"), self.path.open(encoding="utf-8") as stream:
            yield stream

    def sha256(self) -> str:
        with self.path.open("rb") as stream:
            return hashlib.file_digest(stream, "sha256").hexdigest()

    def publish(self) -> None:
        try:
            self._publish(self.path)
        finally:
            self.discard()  # after a publish there is nothing left to remove; after a failure, the temp file

    def discard(self) -> None:
        self.path.unlink(missing_ok=True)


class RawStorage(ConfigurableResource, ABC):
    @contextmanager
    def write_aside(self, key: str) -> Iterator[tuple[IO[str], PendingObject]]:
        """A text stream and its PendingObject, complete after the block; the caller publishes or discards it."""
        pending = self._pending(key)
        try:
            with _local_io(f"{pending.uri} (temp file {pending.path})", "write"):
                with pending.path.open("w", encoding="utf-8") as stream:
                    yield stream, pending
        except BaseException:
            pending.discard()
            raise

    @contextmanager
    def open_for_write(self, key: str) -> Iterator[IO[str]]:
        """A text stream; the object appears under `key` only if the block exits without an error."""
        with self.write_aside(key) as (stream, pending):
            yield stream
        pending.publish()

    def read_small(self, key: str) -> str | None:
        """A small object's text, None when there is none."""
        try:
            with self.open_for_read(key) as stream:
                return check_small(stream.read(SMALL_OBJECT_LIMIT + 1), self.uri(key))
        except RawObjectMissing:
            return None

    @abstractmethod
    def update(self, key: str, change: Callable[[str | None], str]) -> None:
        """Replace a small object by `change(its text or None)`; `change` may run again if another writer won."""

    @abstractmethod
    def _pending(self, key: str) -> PendingObject:
        """A fresh local file that `publish` turns into the object under `key`."""

    @abstractmethod
    @contextmanager
    def open_for_read(self, key: str) -> Iterator[IO[str]]:
        """A text stream over the object; RawObjectMissing when there is none."""

    @abstractmethod
    def uri(self, key: str) -> str:
        """Where the object lives, with its scheme (file://, s3://)."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove the object if it exists."""


class LocalRawStorage(RawStorage):
    """A local directory (TOPTRACKS_RAW_DIR, default ./data/raw)."""

    base_dir: str = Field(default="./data/raw")

    def _path(self, key: str) -> Path:
        return Path(self.base_dir) / key

    def uri(self, key: str) -> str:
        return self._path(key).resolve().as_uri()

    def delete(self, key: str) -> None:
        with _local_io(self._path(key), "delete"):
            self._path(key).unlink(missing_ok=True)

    def _pending(self, key: str) -> PendingObject:
        path = self._path(key)
        with _local_io(path, "write"):
            path.parent.mkdir(parents=True, exist_ok=True)
            _remove_orphaned_temp_files(path.parent)
            # In the target directory, so that publishing is an atomic rename.
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp")
        os.close(fd)

        def publish(tmp_path: Path) -> None:
            with _local_io(path, "publish"):
                os.replace(tmp_path, path)

        return PendingObject(Path(tmp), publish, self.uri(key))

    @contextmanager
    def open_for_read(self, key: str) -> Iterator[IO[str]]:
        path = self._path(key)
        with _local_io(path, "read"):
            try:
                stream = path.open(encoding="utf-8")
            except FileNotFoundError:
                raise RawObjectMissing(f"raw object {path} does not exist") from None
            with stream:
                yield stream

    def update(self, key: str, change: Callable[[str | None], str]) -> None:
        # The lock is a file of its own: the object is replaced by a rename, so a lock on it would not hold.
        path = self._path(key)
        lock_path = path.with_name(path.name + ".lock")
        with _local_io(lock_path, "lock"):
            path.parent.mkdir(parents=True, exist_ok=True)
            lock = lock_path.open("a")
        with lock:
            for _ in range(int(LOCK_TIMEOUT_S / 0.005)):
                try:
                    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    time.sleep(0.005)
            else:
                raise TimeoutError(f"raw storage lock {lock_path} held for over {LOCK_TIMEOUT_S:g} s")
            text = change(self.read_small(key))
            with self.open_for_write(key) as stream:
                stream.write(text)


# Errors of the disk or the filesystem; any other OSError raised inside a block (a reset connection) is left as is.
_STORAGE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO, errno.EFBIG}


@contextmanager
def _local_io(what, doing: str) -> Iterator[None]:
    try:
        yield
    except OSError as error:
        if error.errno not in _STORAGE_ERRNOS:
            raise
        cause = f"{error.strerror} ({errno.errorcode[error.errno]})"
        raise RawStorageError(f"raw storage cannot {doing} {what}: {cause}") from error


def _remove_orphaned_temp_files(directory: Path) -> None:
    """Temp files of writers that died (kill -9) never become objects; remove those whose process is gone."""
    for entry in directory.glob(".*.*.*.tmp"):  # .{name}.{pid}.{random}.tmp
        pid = entry.name.rsplit(".", 3)[1]
        if pid.isdigit() and not process_alive(int(pid)):
            entry.unlink(missing_ok=True)
