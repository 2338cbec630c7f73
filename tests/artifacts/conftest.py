"""Fixtures: every backend behind one `case` fixture, with raw access to plant damage."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import pytest

from artifacts import BlobStore, CachingStore, LocalStore, S3Store, make_client
from tests.support.moto import TEST_CREDENTIALS, moto_s3_server


class Raw(NamedTuple):
    """Access to a backend's storage that bypasses the store (and its checks).

    Paths are layout paths ("blobs/sha256/<hex>", "refs/<name>") relative to the
    store's root directory or S3 prefix.
    """

    read: Callable[[str], bytes | None]
    write: Callable[[str, bytes], None]
    listing: Callable[[str], list[str]]

    def corrupt(self, digest: str) -> None:
        path = f"blobs/sha256/{digest}"
        data = self.read(path)
        assert data, f"nothing to corrupt at {path}"
        # Same length on purpose: a size check alone must not be enough to notice.
        self.write(path, bytes([data[0] ^ 0xFF]) + data[1:])


@dataclass
class StoreCase:
    """A store under test; `raw` is its store of record (the inner one for a cache)."""

    name: str
    store: BlobStore
    raw: Raw
    cache: LocalStore | None = None

    def corrupt(self, digest: str) -> None:
        """Damage the blob everywhere this store could read it from."""
        self.raw.corrupt(digest)
        if self.cache is not None:
            local_raw(self.cache.root).corrupt(digest)


def local_raw(root: Path) -> Raw:
    def read(path: str) -> bytes | None:
        try:
            return (root / path).read_bytes()
        except FileNotFoundError:
            return None

    def write(path: str, data: bytes) -> None:
        # Replace rather than write in place: works even if the file is read-only.
        tmp = root / (path + ".planted")
        tmp.write_bytes(data)
        os.replace(tmp, root / path)

    def listing(path: str) -> list[str]:
        base = root / path
        return sorted(str(p.relative_to(base)) for p in base.rglob("*") if p.is_file())

    return Raw(read, write, listing)


def s3_raw(client: Any, bucket: str, prefix: str) -> Raw:
    def key(path: str) -> str:
        return f"{prefix}/{path}" if prefix else path

    def read(path: str) -> bytes | None:
        try:
            return client.get_object(Bucket=bucket, Key=key(path))["Body"].read()
        except client.exceptions.NoSuchKey:
            return None

    def write(path: str, data: bytes) -> None:
        client.put_object(Bucket=bucket, Key=key(path), Body=data)

    def listing(path: str) -> list[str]:
        start = key(path) + "/"
        pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=start)
        return sorted(o["Key"][len(start) :] for page in pages for o in page.get("Contents", []))

    return Raw(read, write, listing)


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    with moto_s3_server() as endpoint:
        yield endpoint


@pytest.fixture(scope="session")
def s3_client(s3_endpoint: str) -> Any:
    return make_client(s3_endpoint, **TEST_CREDENTIALS)


@pytest.fixture
def bucket(s3_client: Any) -> str:
    # moto's state is process-global, so isolation comes from fresh bucket names.
    name = f"kiln-test-{uuid.uuid4().hex[:16]}"
    s3_client.create_bucket(Bucket=name)
    return name


@pytest.fixture
def make_s3_store(s3_client: Any, bucket: str) -> Callable[..., S3Store]:
    def make(prefix: str = "", **kwargs: Any) -> S3Store:
        return S3Store(bucket, prefix, client=s3_client, **kwargs)

    return make


@pytest.fixture(params=["local", "s3", "cached-s3"])
def case(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    s3_client: Any,
    bucket: str,
    make_s3_store: Callable[..., S3Store],
) -> StoreCase:
    kind = request.param
    if kind == "local":
        root = tmp_path / "store"
        return StoreCase(kind, LocalStore(root), local_raw(root))
    if kind == "s3":
        # A prefix here, none for the cached case: both key layouts get exercised.
        return StoreCase(kind, make_s3_store("ci/kiln"), s3_raw(s3_client, bucket, "ci/kiln"))
    cache = LocalStore(tmp_path / "cache")
    store = CachingStore(make_s3_store(), cache)
    return StoreCase(kind, store, s3_raw(s3_client, bucket, ""), cache=cache)
