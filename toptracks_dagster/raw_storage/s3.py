"""Raw storage in an S3 bucket (TOPTRACKS_RAW_S3_BUCKET); its own module, so local storage never imports boto3."""

# No `from __future__ import annotations`: Dagster must see `ResourceDependency[S3Resource]` as a type, not a
# string, or S3RawStorage(s3=S3Resource(...)) fails validation.

import os
import random
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Callable, Iterator

from dagster import ResourceDependency
from dagster_aws.s3 import S3Resource
from pydantic import Field, PrivateAttr

from toptracks_dagster.raw_storage import resources as raw

UPDATE_ATTEMPTS = 30  # conditional writes lost to other writers before `update` gives up
_LOST_RACE = ("PreconditionFailed", "ConditionalRequestConflict")  # 412: changed since read; 409: a write at once


def _code(error) -> str:
    return error.response.get("Error", {}).get("Code", "")


class S3RawStorage(raw.RawStorage):
    """An S3 bucket through dagster-aws's S3Resource (TOPTRACKS_RAW_S3_BUCKET)."""

    s3: ResourceDependency[S3Resource]
    bucket: str
    prefix: str = Field(default="toptracks/raw")
    _client = PrivateAttr(default=None)

    def _s3(self):
        if self._client is None:  # building a client is slow: one per resource
            self._client = self.s3.get_client()
        return self._client

    def _key(self, key: str) -> str:
        return f"{self.prefix.strip('/')}/{key}" if self.prefix.strip("/") else key

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._key(key)}"

    def delete(self, key: str) -> None:
        self._s3().delete_object(Bucket=self.bucket, Key=self._key(key))

    def _pending(self, key: str) -> raw.PendingObject:
        fd, name = tempfile.mkstemp(suffix=".jsonl")
        os.close(fd)

        def publish(path: Path) -> None:
            self._s3().upload_file(str(path), self.bucket, self._key(key))  # multipart, streamed

        return raw.PendingObject(Path(name), publish, self.uri(key))

    @contextmanager
    def open_for_read(self, key: str) -> Iterator[IO[str]]:
        client = self._s3()
        with tempfile.NamedTemporaryFile("w+b", suffix=".json") as spool:
            try:
                client.download_fileobj(self.bucket, self._key(key), spool)
            except client.exceptions.ClientError as error:
                if _code(error) in ("404", "NoSuchKey"):
                    raise raw.RawObjectMissing(f"raw object {self.uri(key)} does not exist") from None
                raise
            spool.flush()
            with open(spool.name, encoding="utf-8") as stream:
                yield stream

    def update(self, key: str, change: Callable[[str | None], str]) -> None:
        # Optimistic: write only if the object is still what was read (If-Match its ETag, or If-None-Match when
        # there was none); a writer that lost the race reads again.
        client = self._s3()
        for attempt in range(UPDATE_ATTEMPTS):
            try:
                got = client.get_object(Bucket=self.bucket, Key=self._key(key))
                with got["Body"] as body:
                    text = raw.check_small(body.read(raw.SMALL_OBJECT_LIMIT + 1), self.uri(key)).decode("utf-8")
                condition = {"IfMatch": got["ETag"]}
            except client.exceptions.NoSuchKey:
                text, condition = None, {"IfNoneMatch": "*"}
            try:
                body = change(text).encode("utf-8")
                client.put_object(Bucket=self.bucket, Key=self._key(key), Body=body, **condition)
                return
            except client.exceptions.ClientError as error:
                if _code(error) not in _LOST_RACE:
                    raise
            time.sleep(random.uniform(0, min(1.0, 0.01 * 2**attempt)))
        raise TimeoutError(f"{self.uri(key)}: {UPDATE_ATTEMPTS} conditional writes in a row lost to other writers")
