"""A real moto S3 server on 127.0.0.1 for tests that talk HTTP to "S3".

Nothing global is configured (no env vars, no patched boto3): tests build
their own clients against the yielded endpoint with explicit dummy credentials.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from moto.server import ThreadedMotoServer

TEST_CREDENTIALS = {
    "aws_access_key_id": "testing",
    "aws_secret_access_key": "testing",
    "region_name": "us-east-1",
}


@contextmanager
def moto_s3_server() -> Iterator[str]:
    """Run a moto server on a free port; yield its endpoint URL.

    moto keeps its backends in process-global state, so every server in one
    process sees the same buckets: tests should use unique bucket names.
    """
    # port=0 lets the OS pick a free port, so parallel test runs never collide.
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        yield f"http://{host}:{port}"
    finally:
        server.stop()
