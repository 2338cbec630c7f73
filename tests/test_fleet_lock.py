"""The fleet-wide compile lock outlives its TTL while its holder works, and frees itself when the holder dies."""
from __future__ import annotations

import threading
import time

import pytest
import redis

from kiln import farm
from tests.support.redis import redis_server


@pytest.fixture(scope="module")
def r():
    with redis_server() as url:
        client = redis.Redis.from_url(url, decode_responses=True)
        yield client
        client.close()


def test_a_held_lock_is_renewed_past_its_ttl(r):
    """A CUTLASS compile outlasts the TTL many times over: nobody else may take the lock meanwhile."""
    taken_by_other = threading.Event()

    def contender() -> None:
        try:
            with farm.fleet_lock(r, "kiln:lock:test-renew", wait_s=0.1, ttl_s=0.6):
                taken_by_other.set()
        except TimeoutError:
            pass

    with farm.fleet_lock(r, "kiln:lock:test-renew", wait_s=1, ttl_s=0.6):
        for _ in range(6):  # 3 s held: five TTLs
            time.sleep(0.5)
            t = threading.Thread(target=contender)
            t.start()
            t.join()
            assert not taken_by_other.is_set(), "the lock expired while its holder was still working"
            assert r.pttl("kiln:lock:test-renew") > 0
    assert r.get("kiln:lock:test-renew") is None  # released on exit


def test_a_lock_whose_holder_died_frees_itself_within_its_ttl(r):
    lock = r.lock("kiln:lock:test-dead", timeout=0.5, thread_local=False)
    assert lock.acquire()  # a holder that never renews nor releases: a killed worker
    t0 = time.monotonic()
    with farm.fleet_lock(r, "kiln:lock:test-dead", wait_s=5, ttl_s=0.5):
        assert time.monotonic() - t0 < 2.0
