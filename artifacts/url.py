"""Turn a store URL from configuration into a BlobStore."""

from __future__ import annotations

from urllib.parse import unquote, urlsplit

from artifacts.cache import CachingStore
from artifacts.local import LocalStore
from artifacts.s3 import S3Store
from artifacts.store import BlobStore


def open_store(
    url: str,
    *,
    s3_endpoint_url: str | None = None,
    cache_dir: str | None = None,
) -> BlobStore:
    """Open the store named by `url`.

    * ``file:///abs/path`` or a plain path: a LocalStore there.
    * ``s3://bucket`` or ``s3://bucket/prefix``: an S3Store.  The endpoint is
      `s3_endpoint_url` if given; otherwise boto3 resolves it as usual (which
      includes the AWS_ENDPOINT_URL / AWS_ENDPOINT_URL_S3 variables), and
      credentials come from boto3's normal chain.

    With `cache_dir` the store is wrapped in a CachingStore using that directory.
    """
    store = _open_uncached(url, s3_endpoint_url)
    if cache_dir is not None:
        return CachingStore(store, LocalStore(cache_dir))
    return store


def _open_uncached(url: str, s3_endpoint_url: str | None) -> BlobStore:
    if not url:
        raise ValueError("empty artifact store URL")
    parts = urlsplit(url)
    if parts.scheme == "":
        return LocalStore(url)
    if parts.scheme == "file":
        # Only local files: a host part would mean a network share we cannot open.
        if parts.netloc not in ("", "localhost") or not parts.path.startswith("/"):
            raise ValueError(f"unsupported file URL {url!r}: want file:///absolute/path")
        return LocalStore(unquote(parts.path))
    if parts.scheme == "s3":
        if not parts.netloc:
            raise ValueError(f"S3 URL {url!r} names no bucket")
        if parts.query or parts.fragment:
            raise ValueError(f"S3 URL {url!r} must not have a query or fragment")
        return S3Store(parts.netloc, unquote(parts.path).strip("/"), endpoint_url=s3_endpoint_url)
    raise ValueError(f"unsupported artifact store URL {url!r}: want file://, s3:// or a path")
