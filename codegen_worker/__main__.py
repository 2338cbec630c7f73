"""`python -m codegen_worker --queues codegen.cuda`: wire settings to a Celery worker."""
from __future__ import annotations

import logging
import sys

from codegen_worker.backends import get_backend
from codegen_worker.tasks import register
from kiln import farm
from kiln.config import Settings


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    args = farm.worker_args(argv, default_concurrency=2)
    settings = Settings.from_env()
    app = farm.make_celery(settings, "kiln-codegen")
    register(app, settings)
    r = farm.redis_client(settings)
    for q in args.queues:
        family = q.split(".", 1)[1]
        version = get_backend(family).toolchain_version()
        # The frontend puts this into job keys: a new compiler means new artifacts.
        r.hset(farm.TOOLCHAINS_KEY, family, version)
        logging.info("codegen worker for %s: toolchain %s", family, version)
    farm.start_heartbeat(settings, args.queues)
    farm.run_worker(app, args.queues, "codegen", args.concurrency)


if __name__ == "__main__":
    main(sys.argv[1:])
