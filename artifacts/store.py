"""The blob-store interface shared by every backend, plus its errors and name rules.

Blobs are addressed by the sha256 of their content, so a blob can never change
once written; refs are the one mutable thing (a small name -> digest map used as
an action cache).  Both backends use the same layout so a bucket and a directory
can be copied into each other with ordinary tools:

    blobs/sha256/<hex>   the blob bytes
    refs/<name>          the hex digest as text
"""

from __future__ import annotations

import abc
import base64
import hashlib
import os
import re
from collections.abc import Iterator
from typing import IO

BLOB_DIR = "blobs/sha256"
REF_DIR = "refs"
# Big enough that syscall/request overhead is negligible, small enough for memory.
COPY_CHUNK = 1 << 20

_DIGEST_RE = re.compile(r"[0-9a-f]{64}")
_REF_RE = re.compile(r"[a-z0-9][a-z0-9._/-]{0,200}")


class BlobNotFound(KeyError):
    """No blob is stored under the digest."""

    def __init__(self, digest: str) -> None:
        super().__init__(digest)
        self.digest = digest

    def __str__(self) -> str:
        # KeyError.__str__ would repr() the argument; we want a readable sentence.
        return f"blob sha256:{self.digest} not found"


class BlobCorrupt(IOError):
    """The stored bytes do not hash to the digest they are stored under."""

    def __init__(self, digest: str, actual: str | None = None) -> None:
        detail = f" (content hashes to {actual})" if actual else ""
        super().__init__(f"blob sha256:{digest} is corrupt{detail}")
        self.digest = digest
        self.actual = actual


def validate_digest(digest: str) -> str:
    """Return `digest` unchanged, or raise ValueError if it is not lowercase sha256 hex."""
    if not isinstance(digest, str) or not _DIGEST_RE.fullmatch(digest):
        raise ValueError(f"invalid sha256 digest {digest!r}: want 64 lowercase hex chars")
    return digest


def validate_ref_name(name: str) -> str:
    """Return `name` unchanged, or raise ValueError.

    Beyond the character rules we also reject empty and "." path segments: on a
    filesystem "a//b", "a/./b" and "a/b" are the same file while in S3 they are
    three keys, and the two backends must agree on what a name means.
    """
    if (
        not isinstance(name, str)
        or not _REF_RE.fullmatch(name)
        or ".." in name
        or any(part in ("", ".") for part in name.split("/"))
    ):
        raise ValueError(f"invalid ref name {name!r}")
    return name


def blob_key(digest: str) -> str:
    return f"{BLOB_DIR}/{validate_digest(digest)}"


def ref_key(name: str) -> str:
    return f"{REF_DIR}/{validate_ref_name(name)}"


class Verifier:
    """Incremental sha256 check of a stream against the digest it claims to be."""

    def __init__(self, digest: str) -> None:
        self.digest = validate_digest(digest)
        self._hash = hashlib.sha256()

    def update(self, chunk: bytes) -> None:
        self._hash.update(chunk)

    def check(self) -> None:
        actual = self._hash.hexdigest()
        if actual != self.digest:
            raise BlobCorrupt(self.digest, actual)


def verify_bytes(digest: str, data: bytes) -> bytes:
    verifier = Verifier(digest)
    verifier.update(data)
    verifier.check()
    return data


def md5_b64(data: bytes) -> str:
    """Base64 MD5, as S3's Content-MD5 header wants it."""
    # usedforsecurity=False keeps this working on FIPS-mode hosts; MD5 is only a
    # transport check for S3 here, the integrity check that matters is sha256.
    return base64.b64encode(hashlib.md5(data, usedforsecurity=False).digest()).decode()


def hash_file(path: str | os.PathLike[str]) -> tuple[str, str, int]:
    """sha256 hex, base64 MD5 and size of a file, in one pass over it."""
    sha = hashlib.sha256()
    md5 = hashlib.md5(usedforsecurity=False)
    size = 0
    with open(path, "rb") as f:
        for chunk in read_chunks(f):
            sha.update(chunk)
            md5.update(chunk)
            size += len(chunk)
    return sha.hexdigest(), base64.b64encode(md5.digest()).decode(), size


def read_chunks(f: IO[bytes], chunk_size: int = COPY_CHUNK) -> Iterator[bytes]:
    """Read `f` to the end in chunks (without closing it)."""
    while chunk := f.read(chunk_size):
        yield chunk


def check_chunk_size(chunk_size: int) -> int:
    if chunk_size <= 0:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    return chunk_size


def stream_file(f: IO[bytes], chunk_size: int) -> Iterator[bytes]:
    """Yield `f` from its current position in chunks, closing it when done or abandoned."""
    with f:
        yield from read_chunks(f, chunk_size)


class BlobStore(abc.ABC):
    """Content-addressed, create-only blob storage with a small ref map on the side.

    Every read verifies sha256 before handing anything out, so callers never see
    bytes that disagree with their digest.  Nothing partial is ever visible: a
    blob or ref either exists completely or not at all.
    """

    @abc.abstractmethod
    def put_bytes(self, data: bytes) -> str:
        """Store `data`; return its sha256 hex.  Storing existing content is a no-op
        (the copy already there is trusted, not re-checked: reads verify anyway)."""

    @abc.abstractmethod
    def put_file(self, path: str | os.PathLike[str]) -> str:
        """Store the file's content, streaming from disk; return its sha256 hex."""

    @abc.abstractmethod
    def has(self, digest: str) -> bool: ...

    @abc.abstractmethod
    def size(self, digest: str) -> int | None:
        """Size in bytes, or None if absent."""

    @abc.abstractmethod
    def get_bytes(self, digest: str) -> bytes:
        """The verified content; raises BlobNotFound or BlobCorrupt."""

    @abc.abstractmethod
    def get_file(self, digest: str, dest: str | os.PathLike[str]) -> None:
        """Write the content to `dest` atomically; a bad blob leaves `dest` untouched."""

    @abc.abstractmethod
    def iter_chunks(self, digest: str, chunk_size: int = 1 << 20) -> Iterator[bytes]:
        """Stream the content.  Verification happens before the first chunk is
        produced, so a consumer never acts on bytes that turn out to be bad."""

    @abc.abstractmethod
    def put_ref(self, name: str, digest: str) -> str:
        """Create-only: point `name` at `digest` unless it already points somewhere.
        Returns the digest stored under `name` afterwards (the first writer wins)."""

    @abc.abstractmethod
    def get_ref(self, name: str) -> str | None: ...

    @abc.abstractmethod
    def delete_ref(self, name: str) -> None:
        """Forget `name` (e.g. to disown a bad result).  Absent names are fine."""


def parse_ref_value(name: str, raw: bytes) -> str:
    """Decode a stored ref; a garbled one is reported rather than trusted."""
    text = raw.decode("ascii", errors="replace").strip()
    try:
        return validate_digest(text)
    except ValueError:
        raise ValueError(f"ref {name!r} holds an invalid digest {text!r}") from None
