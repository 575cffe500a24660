"""The Archive over any S3-compatible object store (AWS S3, R2, MinIO, Ceph, ...).

Configured by a URL, ``s3://BUCKET[/PREFIX][?endpoint=URL&region=NAME]``; credentials come
from boto3's usual chain (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, a profile, an
instance role). Objects are ``<PREFIX>/<session id>/<name>``. The bucket must exist.

boto3 is a blocking client; every call runs on a thread of its own so the event loop
never waits for the network. A PUT is atomic and, once answered 200, durable: that is all
``put`` needs (the hub reads each new object back before trusting it).
"""

from __future__ import annotations

import asyncio
import io
from typing import IO, TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlsplit

import boto3
from botocore.config import Config as BotoConfig
from botocore.exceptions import BotoCoreError, ClientError

from agentsync.archive.base import check_key
from agentsync.protocol import Unavailable

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

CONNECT_TIMEOUT = 5.0
READ_TIMEOUT = 60.0
DELETE_BATCH = 1000  # the most keys one DeleteObjects request takes
MISSING = frozenset({"NoSuchKey", "404", "NotFound"})
COPY_CHUNK = 1 << 20


class S3Archive:
    """The Archive protocol (archive/base.py) over an S3 bucket; see the module docstring."""

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
    ) -> None:
        if not bucket:
            raise ValueError("an S3 archive needs a bucket: s3://BUCKET/PREFIX")
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.endpoint_url = endpoint_url
        self.region = region
        self._client: S3Client | None = None

    @classmethod
    def from_url(cls, url: str) -> S3Archive:
        """``s3://BUCKET/PREFIX?endpoint=http://127.0.0.1:9000&region=us-east-1``."""
        parts = urlsplit(url)
        if parts.scheme != "s3":
            raise ValueError(f"not an S3 URL (s3://BUCKET/PREFIX): {url!r}")
        query = dict(parse_qsl(parts.query))
        unknown = set(query) - {"endpoint", "region"}
        if unknown:
            raise ValueError(f"unknown S3 URL parameters {sorted(unknown)}: use endpoint, region")
        return cls(
            parts.netloc,
            parts.path,
            endpoint_url=query.get("endpoint") or None,
            region=query.get("region") or None,
        )

    def __repr__(self) -> str:
        where = f" at {self.endpoint_url}" if self.endpoint_url else ""
        return f"S3Archive(s3://{self.bucket}/{self.prefix}{where})"

    def _prefix(self, session_id: str) -> str:
        """The key prefix of a session's objects, ending with a slash."""
        folder = check_key(session_id) + "/"
        return f"{self.prefix}/{folder}" if self.prefix else folder

    def _key(self, session_id: str, name: str) -> str:
        return self._prefix(session_id) + check_key(name)

    # -- lifecycle ----------------------------------------------------------------------

    async def open(self) -> None:
        if self._client is not None:
            return
        config = BotoConfig(
            connect_timeout=CONNECT_TIMEOUT,
            read_timeout=READ_TIMEOUT,
            retries={"max_attempts": 3, "mode": "standard"},
            # Path-style addressing works with every S3-compatible server.
            s3={"addressing_style": "path"},
        )

        def make() -> S3Client:
            return boto3.session.Session().client(
                "s3", endpoint_url=self.endpoint_url, region_name=self.region, config=config
            )

        self._client = await asyncio.to_thread(make)

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await asyncio.to_thread(client.close)

    async def ping(self) -> None:
        await self._call(lambda c: c.head_bucket(Bucket=self.bucket))

    async def _call(self, run: Any) -> Any:
        client = self._client
        if client is None:
            raise Unavailable("the S3 archive is not open")
        try:
            return await asyncio.to_thread(run, client)
        except (BotoCoreError, ClientError) as exc:
            raise Unavailable(f"the S3 archive failed: {exc}") from exc

    # -- the protocol -------------------------------------------------------------------

    async def put(self, session_id: str, name: str, blob: bytes) -> None:
        await self.put_file(session_id, name, io.BytesIO(blob))

    async def put_file(self, session_id: str, name: str, source: IO[bytes]) -> None:
        key = self._key(session_id, name)
        # One PUT, whatever the size (up to S3's 5 GB): botocore streams a file body.
        await self._call(
            lambda c: c.put_object(
                Bucket=self.bucket, Key=key, Body=source, ContentType="application/gzip"
            )
        )

    async def get(self, session_id: str, name: str) -> bytes | None:
        sink = io.BytesIO()
        return sink.getvalue() if await self.get_file(session_id, name, sink) else None

    async def get_file(self, session_id: str, name: str, sink: IO[bytes]) -> bool:
        key = self._key(session_id, name)

        def read(client: S3Client) -> bool:
            try:
                response = client.get_object(Bucket=self.bucket, Key=key)
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") in MISSING:
                    return False
                raise
            body = response["Body"]
            try:
                for chunk in body.iter_chunks(COPY_CHUNK):
                    sink.write(chunk)
            finally:
                body.close()
            return True

        found: bool = await self._call(read)
        return found

    async def delete(self, session_id: str, name: str) -> None:
        key = self._key(session_id, name)
        await self._call(lambda c: c.delete_object(Bucket=self.bucket, Key=key))

    async def delete_session(self, session_id: str) -> None:
        prefix = self._prefix(session_id)

        def remove_all(client: S3Client) -> None:
            while True:  # listing again after each deletion: objects put meanwhile go too
                listed = client.list_objects_v2(
                    Bucket=self.bucket, Prefix=prefix, MaxKeys=DELETE_BATCH
                )
                keys = [{"Key": o["Key"]} for o in listed.get("Contents", []) if "Key" in o]
                if not keys:
                    return
                answer = client.delete_objects(
                    Bucket=self.bucket,
                    Delete={"Objects": keys, "Quiet": True},  # type: ignore[typeddict-item]
                )
                errors = answer.get("Errors", [])
                if errors:
                    raise Unavailable(f"the S3 archive kept {len(errors)} objects: {errors[0]}")

        await self._call(remove_all)

    async def names(self, session_id: str) -> list[str]:
        prefix = self._prefix(session_id)

        def listing(client: S3Client) -> list[str]:
            found: list[str] = []
            for page in client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=prefix
            ):
                found.extend(o["Key"][len(prefix) :] for o in page.get("Contents", []))
            return sorted(found)

        result: list[str] = await self._call(listing)
        return result
