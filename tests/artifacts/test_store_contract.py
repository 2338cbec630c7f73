"""The BlobStore contract, run against LocalStore, S3Store (moto) and CachingStore(S3Store)."""

from __future__ import annotations

import hashlib
import random
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from artifacts import BlobCorrupt, BlobNotFound

if TYPE_CHECKING:
    from tests.artifacts.conftest import StoreCase

ABSENT = hashlib.sha256(b"never stored").hexdigest()
BAD_DIGESTS = ["", "abc", "0" * 63, "0" * 65, "A" * 64, "g" * 64, " " + "0" * 63, "0" * 63 + "\n"]
BAD_REF_NAMES = [
    "",
    "A",
    "Jobs/x",
    "-x",
    ".x",
    "_x",
    "/x",
    "x/",
    "a//b",
    "a/./b",
    "a/../b",
    "a..b",
    "..",
    "a b",
    "x\n",
    "a" * 202,
]


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def payload(size: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size)


# -- round trips --------------------------------------------------------------


@pytest.mark.parametrize("data", [b"", b"x", b"hello kiln" * 1000], ids=["empty", "one", "10k"])
def test_bytes_round_trip(case: StoreCase, data: bytes) -> None:
    digest = case.store.put_bytes(data)
    assert digest == sha(data)
    assert case.store.has(digest)
    assert case.store.size(digest) == len(data)
    assert case.store.get_bytes(digest) == data
    assert b"".join(case.store.iter_chunks(digest)) == data


def test_file_round_trip(case: StoreCase, tmp_path: Path) -> None:
    data = payload(3 * (1 << 20) + 17)  # spans several internal copy chunks
    src = tmp_path / "src.bin"
    src.write_bytes(data)
    digest = case.store.put_file(src)
    assert digest == sha(data)
    assert case.store.size(digest) == len(data)
    dest = tmp_path / "out" / "dest.bin"
    dest.parent.mkdir()
    case.store.get_file(digest, dest)
    assert dest.read_bytes() == data
    assert sorted(p.name for p in dest.parent.iterdir()) == ["dest.bin"]  # no temp left over
    assert case.store.get_bytes(case.store.put_bytes(data)) == data


def test_layout_on_backing_storage(case: StoreCase) -> None:
    digest = case.store.put_bytes(b"layout")
    assert case.raw.read(f"blobs/sha256/{digest}") == b"layout"
    case.store.put_ref("jobs/k1", digest)
    assert case.raw.read("refs/jobs/k1") == digest.encode()


def test_iter_chunks_respects_chunk_size(case: StoreCase) -> None:
    data = bytes(range(256)) * 3
    digest = case.store.put_bytes(data)
    chunks = list(case.store.iter_chunks(digest, chunk_size=100))
    assert b"".join(chunks) == data
    assert all(0 < len(c) <= 100 for c in chunks) and len(chunks) == 8
    with pytest.raises(ValueError):
        list(case.store.iter_chunks(digest, chunk_size=0))


def test_second_put_is_a_no_op(case: StoreCase, tmp_path: Path) -> None:
    first = case.store.put_bytes(b"same content")
    src = tmp_path / "same.txt"
    src.write_bytes(b"same content")
    assert case.store.put_bytes(b"same content") == first
    assert case.store.put_file(src) == first
    assert case.raw.listing("blobs/sha256") == [first]
    assert case.store.get_bytes(first) == b"same content"


# -- absence ------------------------------------------------------------------


def test_absent_blob(case: StoreCase, tmp_path: Path) -> None:
    assert case.store.has(ABSENT) is False
    assert case.store.size(ABSENT) is None
    dest = tmp_path / "dest"
    readers: list[Callable[[], object]] = [
        lambda: case.store.get_bytes(ABSENT),
        lambda: case.store.get_file(ABSENT, dest),
        lambda: list(case.store.iter_chunks(ABSENT)),
    ]
    for read in readers:
        with pytest.raises(BlobNotFound) as exc:
            read()
        assert isinstance(exc.value, KeyError)
        assert ABSENT in str(exc.value)
    assert not dest.exists()


# -- corruption ---------------------------------------------------------------


def test_corrupt_get_bytes(case: StoreCase) -> None:
    digest = case.store.put_bytes(b"precious bytes")
    case.corrupt(digest)
    with pytest.raises(BlobCorrupt, match=digest):
        case.store.get_bytes(digest)


def test_corrupt_get_file_leaves_no_dest(case: StoreCase, tmp_path: Path) -> None:
    digest = case.store.put_bytes(b"precious file")
    case.corrupt(digest)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(BlobCorrupt, match=digest):
        case.store.get_file(digest, out / "fresh.bin")
    assert list(out.iterdir()) == []  # neither the dest nor a temp file
    # An existing dest is not clobbered either: the rename happens only after verification.
    (out / "old.bin").write_bytes(b"previous")
    with pytest.raises(BlobCorrupt):
        case.store.get_file(digest, out / "old.bin")
    assert (out / "old.bin").read_bytes() == b"previous"
    assert [p.name for p in out.iterdir()] == ["old.bin"]


def test_corrupt_iter_chunks_yields_nothing(case: StoreCase) -> None:
    digest = case.store.put_bytes(b"precious stream" * 100_000)
    case.corrupt(digest)
    with pytest.raises(BlobCorrupt, match=digest):
        for _ in case.store.iter_chunks(digest, chunk_size=1024):
            pytest.fail("a chunk was yielded before the blob was verified")


# -- refs ---------------------------------------------------------------------


def test_refs_are_create_only(case: StoreCase) -> None:
    first, second = sha(b"first"), sha(b"second")
    assert case.store.get_ref("jobs/abc.1") is None
    assert case.store.put_ref("jobs/abc.1", first) == first
    assert case.store.put_ref("jobs/abc.1", second) == first
    assert case.store.get_ref("jobs/abc.1") == first
    assert case.store.get_ref("jobs/abc.2") is None


def test_delete_ref_allows_a_new_value(case: StoreCase) -> None:
    first, second = sha(b"first"), sha(b"second")
    case.store.put_ref("k", first)
    case.store.delete_ref("k")
    assert case.store.get_ref("k") is None
    case.store.delete_ref("k")  # already gone: fine
    case.store.delete_ref("never-existed")
    assert case.store.put_ref("k", second) == second
    assert case.store.get_ref("k") == second


def test_ref_name_rules(case: StoreCase) -> None:
    digest = sha(b"x")
    for name in ["a", "0", "jobs/sm_90/abc-1.2_x", "z" * 201]:
        assert case.store.put_ref(name, digest) == digest
        assert case.store.get_ref(name) == digest
    for name in BAD_REF_NAMES:
        with pytest.raises(ValueError, match="ref name"):
            case.store.put_ref(name, digest)
        with pytest.raises(ValueError, match="ref name"):
            case.store.get_ref(name)
        with pytest.raises(ValueError, match="ref name"):
            case.store.delete_ref(name)


def test_ref_names_that_prefix_each_other(case: StoreCase) -> None:
    one, two = sha(b"1"), sha(b"2")
    case.store.put_ref("p/q", one)
    if case.name == "local":
        # Known limitation: a file and a directory cannot share the name "p".
        with pytest.raises(ValueError, match="collides"):
            case.store.put_ref("p", two)
        case.store.put_ref("x", two)
        with pytest.raises(ValueError, match="collides"):
            case.store.put_ref("x/y/z", one)
        assert case.store.get_ref("x/y/z") is None
    else:
        assert case.store.put_ref("p", two) == two
    assert case.store.get_ref("p/q") == one


@pytest.mark.parametrize("bad", BAD_DIGESTS)
def test_invalid_digest_is_rejected(case: StoreCase, bad: str, tmp_path: Path) -> None:
    ops: list[Callable[[], object]] = [
        lambda: case.store.has(bad),
        lambda: case.store.size(bad),
        lambda: case.store.get_bytes(bad),
        lambda: case.store.get_file(bad, tmp_path / "dest"),
        lambda: case.store.iter_chunks(bad),
        lambda: case.store.put_ref("name", bad),
    ]
    for op in ops:
        with pytest.raises(ValueError) as exc:
            op()
        assert repr(bad) in str(exc.value)
    assert case.store.get_ref("name") is None


# -- concurrency --------------------------------------------------------------


def test_concurrent_puts_of_same_content(case: StoreCase, tmp_path: Path) -> None:
    data = payload(512 * 1024, seed=7)
    src = tmp_path / "src.bin"
    src.write_bytes(data)
    start = threading.Barrier(8)

    def put(i: int) -> str:
        start.wait()  # maximise overlap
        return case.store.put_file(src) if i % 2 else case.store.put_bytes(data)

    with ThreadPoolExecutor(8) as pool:
        digests = list(pool.map(put, range(8)))
    assert digests == [sha(data)] * 8
    assert case.store.get_bytes(digests[0]) == data
    assert case.raw.listing("blobs/sha256") == [digests[0]]  # no stray temp files


def test_concurrent_put_ref_has_one_winner(case: StoreCase) -> None:
    if case.name != "local":
        pytest.skip("moto checks If-None-Match non-atomically, so racing creates can both win")
    candidates = [sha(bytes([i])) for i in range(8)]
    start = threading.Barrier(8)

    def put(digest: str) -> str:
        start.wait()
        return case.store.put_ref("race", digest)

    with ThreadPoolExecutor(8) as pool:
        results = set(pool.map(put, candidates))
    assert len(results) == 1
    assert results == {case.store.get_ref("race")}
