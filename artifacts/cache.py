"""A read-through cache: a LocalStore in front of any other BlobStore."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import TypeVar

from artifacts.local import LocalStore
from artifacts.store import BlobCorrupt, BlobNotFound, BlobStore

T = TypeVar("T")


class CachingStore(BlobStore):
    """Serve blobs from a local directory, fetching misses from `inner`.

    The cache only ever holds verified copies: misses are fetched with the inner
    store's verifying get_file, and puts are written through.  Two consequences
    are intended, not accidents:

    * once a blob is cached, reads keep succeeding even if the inner copy is
      later corrupted (the cached bytes still match the digest, so they are the
      right bytes);
    * a cold cache never masks corruption: the inner copy is verified on fetch
      and a bad one raises BlobCorrupt without being cached.

    A cached copy that rots on local disk is detected on read and re-fetched.
    Refs are passed straight through, never cached: delete_ref exists to disown
    a bad result, and a cached ref would keep handing it out.
    """

    def __init__(self, inner: BlobStore, cache: LocalStore | str | os.PathLike[str]) -> None:
        self.inner = inner
        self.cache = cache if isinstance(cache, LocalStore) else LocalStore(cache)

    def __repr__(self) -> str:
        return f"CachingStore({self.inner!r}, cache={self.cache!r})"

    def _fetch(self, digest: str) -> None:
        # get_file verifies before its atomic rename, so a corrupt inner blob
        # never lands in the cache, and a rotten cached copy is replaced whole.
        self.inner.get_file(digest, self.cache.blob_path(digest))

    def _read(self, digest: str, read: Callable[[], T]) -> T:
        try:
            return read()
        except (BlobNotFound, BlobCorrupt):
            self._fetch(digest)
        return read()

    # -- writes go to the inner store first, so the cache never holds a blob
    #    that the store of record failed to take.

    def put_bytes(self, data: bytes) -> str:
        digest = self.inner.put_bytes(data)
        self.cache.put_bytes(data)
        return digest

    def put_file(self, path: str | os.PathLike[str]) -> str:
        digest = self.inner.put_file(path)
        self.cache.put_file(path)
        return digest

    # -- reads ------------------------------------------------------------

    def has(self, digest: str) -> bool:
        return self.cache.has(digest) or self.inner.has(digest)

    def size(self, digest: str) -> int | None:
        cached = self.cache.size(digest)
        return cached if cached is not None else self.inner.size(digest)

    def get_bytes(self, digest: str) -> bytes:
        return self._read(digest, lambda: self.cache.get_bytes(digest))

    def get_file(self, digest: str, dest: str | os.PathLike[str]) -> None:
        self._read(digest, lambda: self.cache.get_file(digest, dest))

    def iter_chunks(self, digest: str, chunk_size: int = 1 << 20) -> Iterator[bytes]:
        return self._read(digest, lambda: self.cache.iter_chunks(digest, chunk_size))

    # -- refs ---------------------------------------------------------------

    def put_ref(self, name: str, digest: str) -> str:
        return self.inner.put_ref(name, digest)

    def get_ref(self, name: str) -> str | None:
        return self.inner.get_ref(name)

    def delete_ref(self, name: str) -> None:
        self.inner.delete_ref(name)
