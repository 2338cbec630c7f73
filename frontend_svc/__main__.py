"""`python -m frontend_svc`: wire settings to the gRPC server and serve."""
from __future__ import annotations

import logging
import signal
import sys
import threading

from frontend_svc.server import make_server
from frontend_svc.submit import Frontend
from kiln import farm
from kiln.config import Settings
from kiln.jobs import JobStore


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    settings = Settings.from_env()
    frontend = Frontend(settings.open_store(), JobStore(farm.redis_client(settings)),
                        farm.make_celery(settings, "kiln-frontend"), settings.job_idle_timeout_s)
    server, port = make_server(frontend, settings.grpc_listen)
    server.start()
    logging.info("frontend listening on %s (port %d)", settings.grpc_listen, port)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
    server.stop(grace=5).wait()


if __name__ == "__main__":
    sys.exit(main())
