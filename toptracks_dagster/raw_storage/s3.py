"""Raw storage in an S3 bucket (TOPTRACKS_RAW_S3_BUCKET), through dagster-aws's S3Resource.

Its own module so that a deployment on local storage never imports dagster-aws (0.4-0.5 s per run).
"""

# No `from __future__ import annotations`: Dagster must see `ResourceDependency[S3Resource]` as a type, not a
# string, or S3RawStorage(s3=S3Resource(...)) fails validation.

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Iterator

from dagster import ResourceDependency
from dagster_aws.s3 import S3Resource
from pydantic import Field

from toptracks_dagster.raw_storage.resources import PendingObject, RawObjectMissing, RawStorage


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

    def fingerprint(self, key: str) -> str:
        # The ETag changes with every upload of new content: one HEAD request, not a download.
        client = self.s3.get_client()
        try:
            head = client.head_object(Bucket=self.bucket, Key=self._key(key))
        except client.exceptions.ClientError as error:
            if error.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                raise RawObjectMissing(f"raw object {self.uri(key)} does not exist") from None
            raise
        return f"etag:{head['ETag'].strip(chr(34))}:{head.get('ContentLength', 0)}"

    def _pending(self, key: str) -> PendingObject:
        fd, name = tempfile.mkstemp(suffix=".jsonl")
        os.close(fd)

        def publish(path: Path) -> None:
            self.s3.get_client().upload_file(str(path), self.bucket, self._key(key))
            path.unlink(missing_ok=True)

        return PendingObject(Path(name), publish, self.uri(key))

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
