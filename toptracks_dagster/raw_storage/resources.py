"""Raw storage: where the artist-id snapshot and the raw Spotify answers are kept, as JSON text.

Writers are atomic (a reader never sees a half-written object) and streamed (nothing is held in memory).
"""

from __future__ import annotations

import os
import tempfile
from abc import ABC, abstractmethod
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Iterator

from dagster import ConfigurableResource, ResourceDependency
from dagster_aws.s3 import S3Resource
from pydantic import Field


class RawObjectMissing(FileNotFoundError):
    """A raw object that an asset needs has not been written yet."""


class RawStorage(ConfigurableResource, ABC):
    @abstractmethod
    @contextmanager
    def open_for_write(self, key: str) -> Iterator[IO[str]]:
        """A text stream; the object appears under `key` only if the block exits without an error."""

    @abstractmethod
    @contextmanager
    def open_for_read(self, key: str) -> Iterator[IO[str]]:
        """A text stream over the object; RawObjectMissing when there is none."""

    @abstractmethod
    def uri(self, key: str) -> str:
        """Where the object lives, for metadata."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove the object if it exists."""


class LocalRawStorage(RawStorage):
    """A local directory (TOPTRACKS_RAW_DIR, default ./data/raw)."""

    base_dir: str = Field(default="./data/raw")

    def _path(self, key: str) -> Path:
        return Path(self.base_dir) / key

    def uri(self, key: str) -> str:
        return str(self._path(key).resolve())

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    @contextmanager
    def open_for_write(self, key: str) -> Iterator[IO[str]]:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as stream:
                yield stream
            os.replace(tmp_name, path)  # atomic on POSIX: readers see the old or the new object
        except BaseException:
            Path(tmp_name).unlink(missing_ok=True)
            raise

    @contextmanager
    def open_for_read(self, key: str) -> Iterator[IO[str]]:
        path = self._path(key)
        try:
            stream = path.open("r", encoding="utf-8")
        except FileNotFoundError:
            raise RawObjectMissing(f"raw object {path} does not exist") from None
        with stream:
            yield stream


class S3RawStorage(RawStorage):
    """An S3 bucket through dagster-aws's S3Resource (TOPTRACKS_RAW_S3_BUCKET)."""

    s3: ResourceDependency[S3Resource]
    bucket: str
    prefix: str = Field(default="toptracks/raw")

    def _key(self, key: str) -> str:
        return f"{self.prefix.strip('/')}/{key}" if self.prefix.strip("/") else key

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._key(key)}"

    def delete(self, key: str) -> None:
        self.s3.get_client().delete_object(Bucket=self.bucket, Key=self._key(key))

    @contextmanager
    def open_for_write(self, key: str) -> Iterator[IO[str]]:
        # Spool to a local temp file, then upload_file: multipart, streamed, and nothing lands on failure.
        with tempfile.NamedTemporaryFile("w+", encoding="utf-8", suffix=".json") as spool:
            yield spool
            spool.flush()
            self.s3.get_client().upload_file(spool.name, self.bucket, self._key(key))

    @contextmanager
    def open_for_read(self, key: str) -> Iterator[IO[str]]:
        client = self.s3.get_client()
        with tempfile.NamedTemporaryFile("w+b", suffix=".json") as spool:
            try:
                client.download_fileobj(self.bucket, self._key(key), spool)
            except client.exceptions.ClientError as error:
                if error.response.get("Error", {}).get("Code") in ("404", "NoSuchKey"):
                    raise RawObjectMissing(f"raw object {self.uri(key)} does not exist") from None
                raise
            spool.flush()
            with open(spool.name, encoding="utf-8") as stream:
                yield stream
