"""A BlobStore in a local directory (also the building block of the read cache)."""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO

from artifacts.store import (
    BLOB_DIR,
    REF_DIR,
    BlobNotFound,
    BlobStore,
    Verifier,
    check_chunk_size,
    parse_ref_value,
    read_chunks,
    stream_file,
    validate_digest,
    validate_ref_name,
    verify_bytes,
)

# A missing ref can also show up as a path whose parent is a file, or which is a
# directory: refs "a" and "a/b" cannot both exist on a filesystem.
_ABSENT = (FileNotFoundError, NotADirectoryError, IsADirectoryError)
_SPOOL_IN_MEMORY = 8 << 20


def _open_temp(directory: Path) -> tuple[int, Path]:
    """Create a fresh temp file in `directory`; same dir so rename/link stay atomic.

    os.open with mode 0o666 (rather than mkstemp's 0o600) lets the umask decide
    the final permissions, as for any other file the caller writes.
    """
    while True:
        path = directory / f".tmp-{secrets.token_hex(8)}"
        try:
            return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), path
        except FileExistsError:
            continue


def write_verified(dest: str | os.PathLike[str], digest: str, chunks: Iterable[bytes]) -> None:
    """Write `chunks` to `dest`, but only if they hash to `digest`.

    The bytes go to a temp file beside `dest` and are renamed into place after
    the hash checks out, so a bad blob never replaces or creates `dest`.
    """
    verifier = Verifier(digest)
    dest = Path(dest)
    fd, tmp = _open_temp(dest.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            for chunk in chunks:
                verifier.update(chunk)
                f.write(chunk)
            verifier.check()
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def spool_verified(digest: str, chunks: Iterable[bytes]) -> IO[bytes]:
    """Collect `chunks` into a temp file rewound to the start, if they hash to `digest`.

    Small blobs stay in memory; larger ones spill to an anonymous file that the
    OS removes once it is closed, even if the reader abandons it.
    """
    spool = tempfile.SpooledTemporaryFile(max_size=_SPOOL_IN_MEMORY)
    try:
        verifier = Verifier(digest)
        for chunk in chunks:
            verifier.update(chunk)
            spool.write(chunk)
        verifier.check()
        spool.seek(0)
    except BaseException:
        spool.close()
        raise
    return spool  # type: ignore[return-value]  # SpooledTemporaryFile is IO-like


class LocalStore(BlobStore):
    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self._blobs = self.root / BLOB_DIR
        self._refs = self.root / REF_DIR
        self._blobs.mkdir(parents=True, exist_ok=True)
        self._refs.mkdir(parents=True, exist_ok=True)

    def __repr__(self) -> str:
        return f"LocalStore({str(self.root)!r})"

    def blob_path(self, digest: str) -> Path:
        """Where the blob lives (or would live).  Treat the file as read-only: it is
        shared by everyone using the store, and its name is a promise about content."""
        return self._blobs / validate_digest(digest)

    # -- writing -----------------------------------------------------------

    def _publish(self, tmp: Path, final: Path) -> bool:
        """Make `tmp` visible as `final` unless `final` exists; always remove `tmp`.

        os.link fails on an existing name instead of replacing it, which gives
        create-only semantics: of two racing writers exactly one wins and the
        other sees FileExistsError.  Returns whether this call created `final`.
        """
        try:
            os.link(tmp, final)
            return True
        except FileExistsError:
            return False
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)

    def _write_temp(self, directory: Path, chunks: Iterable[bytes]) -> tuple[Path, str]:
        """Write chunks durably to a temp file; return it and the sha256 of what was written."""
        h = hashlib.sha256()
        fd, tmp = _open_temp(directory)
        try:
            with os.fdopen(fd, "wb") as f:
                for chunk in chunks:
                    h.update(chunk)
                    f.write(chunk)
                f.flush()
                # A crash must not leave a short file under a digest name: put is a
                # no-op for existing names, so such a blob could never be repaired.
                os.fsync(f.fileno())
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        return tmp, h.hexdigest()

    def put_bytes(self, data: bytes) -> str:
        digest = hashlib.sha256(data).hexdigest()
        final = self._blobs / digest
        if not final.exists():
            tmp, _ = self._write_temp(self._blobs, [data])
            self._publish(tmp, final)
        return digest

    def put_file(self, path: str | os.PathLike[str]) -> str:
        # Copy and hash in one pass: we name the blob after what we actually
        # wrote, so a source file changing underneath us cannot corrupt the store.
        with open(path, "rb") as src:
            tmp, digest = self._write_temp(self._blobs, read_chunks(src))
        self._publish(tmp, self._blobs / digest)
        return digest

    # -- reading -----------------------------------------------------------

    def _open_blob(self, digest: str) -> IO[bytes]:
        try:
            return open(self.blob_path(digest), "rb")
        except FileNotFoundError:
            raise BlobNotFound(digest) from None

    def has(self, digest: str) -> bool:
        return self.blob_path(digest).is_file()

    def size(self, digest: str) -> int | None:
        try:
            return self.blob_path(digest).stat().st_size
        except FileNotFoundError:
            return None

    def get_bytes(self, digest: str) -> bytes:
        with self._open_blob(digest) as f:
            return verify_bytes(digest, f.read())

    def get_file(self, digest: str, dest: str | os.PathLike[str]) -> None:
        with self._open_blob(digest) as f:
            write_verified(dest, digest, read_chunks(f))

    def iter_chunks(self, digest: str, chunk_size: int = 1 << 20) -> Iterator[bytes]:
        # Hash and stream through the same open file: a concurrent os.replace of
        # the path cannot swap different bytes in between check and use.
        check_chunk_size(chunk_size)
        f = self._open_blob(digest)
        try:
            verifier = Verifier(digest)
            for chunk in read_chunks(f):
                verifier.update(chunk)
            verifier.check()
            f.seek(0)
        except BaseException:
            f.close()
            raise
        return stream_file(f, chunk_size)

    # -- refs ----------------------------------------------------------------

    def _ref_path(self, name: str) -> Path:
        return self._refs / validate_ref_name(name)

    def put_ref(self, name: str, digest: str) -> str:
        validate_digest(digest)
        path = self._ref_path(name)
        # A directory tree cannot hold both "a" and "a/b" (S3 can): refuse clearly.
        collision = ValueError(f"ref name {name!r} collides with an existing ref on this filesystem")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            raise collision from None
        while True:
            tmp, _ = self._write_temp(path.parent, [digest.encode("ascii")])
            if self._publish(tmp, path):
                return digest
            existing = self.get_ref(name)
            if existing is not None:
                return existing
            if path.is_dir():
                raise collision
            # Deleted between our link attempt and the read: try to create again.

    def get_ref(self, name: str) -> str | None:
        try:
            raw = self._ref_path(name).read_bytes()
        except _ABSENT:
            return None
        return parse_ref_value(name, raw)

    def delete_ref(self, name: str) -> None:
        # Empty parent directories are left behind on purpose: removing them
        # would race with a concurrent put_ref creating a sibling inside them.
        with contextlib.suppress(*_ABSENT):
            os.unlink(self._ref_path(name))
