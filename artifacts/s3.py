"""A BlobStore in an S3 bucket (or any S3-compatible service) via boto3."""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
from collections.abc import Callable, Iterator
from typing import IO, Any

import boto3
from botocore.client import BaseClient
from botocore.config import Config
from botocore.exceptions import ClientError

from artifacts.local import spool_verified, write_verified
from artifacts.store import (
    COPY_CHUNK,
    BlobCorrupt,
    BlobNotFound,
    BlobStore,
    Verifier,
    blob_key,
    check_chunk_size,
    hash_file,
    md5_b64,
    parse_ref_value,
    read_chunks,
    ref_key,
    stream_file,
    validate_digest,
    verify_bytes,
)

MIN_PART_SIZE = 5 << 20  # S3 rejects smaller parts (except the last one)
MAX_PARTS = 10_000
# Real S3 answers 409 when two conditional writes to one key overlap and asks
# the loser to retry; the retry then settles it with 200 or 412.
_CONFLICT_RETRIES = 5

# Checksums "when_required" because many S3-compatible services reject the
# newer CRC trailers botocore would otherwise add; we send Content-MD5 ourselves
# and verify sha256 on every read anyway.  Path-style addressing works with
# local endpoints (moto, MinIO) that have no per-bucket DNS names.
CLIENT_CONFIG = Config(
    request_checksum_calculation="when_required",
    response_checksum_validation="when_required",
    retries={"max_attempts": 5, "mode": "standard"},
    s3={"addressing_style": "path"},
)


def make_client(endpoint_url: str | None = None, **client_kwargs: Any) -> BaseClient:
    """An S3 client with Kiln's settings; credentials and region come from
    `client_kwargs` or boto3's usual chain (env, config files, instance role)."""
    # A private session: boto3's default session is process-global and creating
    # clients from it is not thread-safe.
    session = boto3.session.Session()
    return session.client("s3", endpoint_url=endpoint_url, config=CLIENT_CONFIG, **client_kwargs)


def _error(err: ClientError) -> tuple[str, int]:
    code = str(err.response.get("Error", {}).get("Code", ""))
    status = int(err.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))
    return code, status


class S3Store(BlobStore):
    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str | None = None,
        client: BaseClient | None = None,
        multipart_threshold: int = 64 << 20,
        part_size: int = 16 << 20,
    ) -> None:
        if not bucket:
            raise ValueError("S3Store needs a bucket name")
        if client is not None and endpoint_url is not None:
            raise ValueError("pass either client or endpoint_url, not both")
        if part_size < MIN_PART_SIZE:
            raise ValueError(f"part_size {part_size} is below the S3 minimum {MIN_PART_SIZE}")
        if multipart_threshold < 1:
            raise ValueError(f"multipart_threshold must be positive, got {multipart_threshold}")
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.multipart_threshold = multipart_threshold
        self.part_size = part_size
        self.client = client if client is not None else make_client(endpoint_url)

    def __repr__(self) -> str:
        return f"S3Store(bucket={self.bucket!r}, prefix={self.prefix!r})"

    def key(self, relative: str) -> str:
        """The object key for a layout path such as "blobs/sha256/<hex>"."""
        return f"{self.prefix}/{relative}" if self.prefix else relative

    def ensure_bucket(self) -> None:
        """Create the bucket if it does not exist yet (for tests and local clusters)."""
        try:
            self.client.head_bucket(Bucket=self.bucket)
            return
        except ClientError as err:
            if _error(err)[1] != 404:
                raise
        region = self.client.meta.region_name
        # us-east-1 is the one region that refuses an explicit LocationConstraint.
        where = {} if region in (None, "us-east-1") else {"CreateBucketConfiguration": {"LocationConstraint": region}}
        try:
            self.client.create_bucket(Bucket=self.bucket, **where)
        except ClientError as err:
            if _error(err)[0] != "BucketAlreadyOwnedByYou":  # lost a creation race
                raise

    # -- low-level helpers ---------------------------------------------------

    def _create_only(self, call: Callable[[], Any]) -> bool:
        """Run a conditional (IfNoneMatch="*") write.  True if it created the key,
        False if the key already existed."""
        for attempt in range(_CONFLICT_RETRIES):
            try:
                call()
                return True
            except ClientError as err:
                code, status = _error(err)
                if code == "PreconditionFailed" or status == 412:
                    return False
                if status != 409 or attempt == _CONFLICT_RETRIES - 1:
                    raise
        raise AssertionError("unreachable")

    def _head(self, key: str) -> dict[str, Any] | None:
        try:
            return self.client.head_object(Bucket=self.bucket, Key=key)
        except ClientError as err:
            if _error(err)[1] == 404:
                return None
            raise

    def _get_body(self, key: str) -> Any | None:
        """The streaming body of `key`, or None if there is no such key.
        A missing bucket is a configuration error and is not turned into None."""
        try:
            return self.client.get_object(Bucket=self.bucket, Key=key)["Body"]
        except ClientError as err:
            if _error(err)[0] == "NoSuchKey":
                return None
            raise

    def _blob(self, digest: str) -> str:
        return self.key(blob_key(digest))

    def _open_blob(self, digest: str) -> Any:
        body = self._get_body(self._blob(digest))
        if body is None:
            raise BlobNotFound(digest)
        return body

    # -- writing -----------------------------------------------------------

    def _put_object(self, key: str, body: bytes | IO[bytes], md5: str) -> bool:
        def call() -> None:
            if not isinstance(body, bytes):
                body.seek(0)  # a 409 retry must resend from the start
            self.client.put_object(Bucket=self.bucket, Key=key, Body=body, ContentMD5=md5, IfNoneMatch="*")

        return self._create_only(call)

    def put_bytes(self, data: bytes) -> str:
        digest = hashlib.sha256(data).hexdigest()
        self._put_object(self._blob(digest), data, md5_b64(data))
        return digest

    def put_file(self, path: str | os.PathLike[str]) -> str:
        # The key is the content hash, so we must read the file once before
        # uploading; that pass also lets us skip uploads of known content.
        digest, md5, size = hash_file(path)
        key = self._blob(digest)
        if self._head(key) is not None:
            return digest
        if size >= self.multipart_threshold:
            self._put_multipart(key, path, digest, size)
        else:
            # If the file changed since hashing, S3 rejects the upload (BadDigest)
            # because the body no longer matches the Content-MD5 we computed.
            with open(path, "rb") as f:
                self._put_object(key, f, md5)
        return digest

    def _put_multipart(self, key: str, path: str | os.PathLike[str], digest: str, size: int) -> None:
        part_size = max(self.part_size, math.ceil(size / MAX_PARTS))
        upload_id = self.client.create_multipart_upload(Bucket=self.bucket, Key=key)["UploadId"]
        upload = {"Bucket": self.bucket, "Key": key, "UploadId": upload_id}
        completed = False
        try:
            parts = []
            # Re-hash what we actually send: if the file changed after the first
            # pass we must not publish it under the old digest.
            sent = Verifier(digest)
            with open(path, "rb") as f:
                for number, chunk in enumerate(read_chunks(f, part_size), start=1):
                    sent.update(chunk)
                    resp = self.client.upload_part(**upload, PartNumber=number, Body=chunk, ContentMD5=md5_b64(chunk))
                    parts.append({"PartNumber": number, "ETag": resp["ETag"]})
            try:
                sent.check()
            except BlobCorrupt:
                raise OSError(f"{os.fspath(path)} changed while it was being uploaded") from None
            completed = self._create_only(
                lambda: self.client.complete_multipart_upload(**upload, MultipartUpload={"Parts": parts}, IfNoneMatch="*")
            )
        finally:
            if not completed:
                # An error, or someone else stored the blob first: drop our parts,
                # which S3 would otherwise keep (and bill) indefinitely.  Best
                # effort, since an original error matters more than this one.
                with contextlib.suppress(ClientError):
                    self.client.abort_multipart_upload(**upload)

    # -- reading -----------------------------------------------------------

    def has(self, digest: str) -> bool:
        return self._head(self._blob(digest)) is not None

    def size(self, digest: str) -> int | None:
        head = self._head(self._blob(digest))
        return None if head is None else int(head["ContentLength"])

    def get_bytes(self, digest: str) -> bytes:
        with contextlib.closing(self._open_blob(digest)) as body:
            return verify_bytes(digest, body.read())

    def get_file(self, digest: str, dest: str | os.PathLike[str]) -> None:
        with contextlib.closing(self._open_blob(digest)) as body:
            write_verified(dest, digest, body.iter_chunks(COPY_CHUNK))

    def iter_chunks(self, digest: str, chunk_size: int = 1 << 20) -> Iterator[bytes]:
        # Verification must precede the first chunk, so download everything first.
        check_chunk_size(chunk_size)
        with contextlib.closing(self._open_blob(digest)) as body:
            spool = spool_verified(digest, body.iter_chunks(COPY_CHUNK))
        return stream_file(spool, chunk_size)

    # -- refs ----------------------------------------------------------------

    def put_ref(self, name: str, digest: str) -> str:
        validate_digest(digest)
        key = self.key(ref_key(name))
        value = digest.encode("ascii")
        while True:
            if self._put_object(key, value, md5_b64(value)):
                return digest
            existing = self.get_ref(name)
            if existing is not None:
                return existing
            # Deleted between our conditional put and the read: try to create again.

    def get_ref(self, name: str) -> str | None:
        body = self._get_body(self.key(ref_key(name)))
        if body is None:
            return None
        with body:
            return parse_ref_value(name, body.read())

    def delete_ref(self, name: str) -> None:
        # S3 deletes are idempotent: deleting a missing key succeeds.
        self.client.delete_object(Bucket=self.bucket, Key=self.key(ref_key(name)))
