"""Kiln's content-addressed artifact store: one small interface, two backends.

Typical use: ``store = open_store("s3://bucket/prefix", cache_dir="/var/cache/kiln")``,
then ``digest = store.put_file("out.cubin")`` and ``store.put_ref("jobs/<key>", digest)``.
"""

from artifacts.cache import CachingStore
from artifacts.local import LocalStore
from artifacts.s3 import S3Store, make_client
from artifacts.store import (
    BlobCorrupt,
    BlobNotFound,
    BlobStore,
    validate_digest,
    validate_ref_name,
)
from artifacts.url import open_store

__all__ = [
    "BlobCorrupt",
    "BlobNotFound",
    "BlobStore",
    "CachingStore",
    "LocalStore",
    "S3Store",
    "make_client",
    "open_store",
    "validate_digest",
    "validate_ref_name",
]
