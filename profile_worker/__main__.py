"""`python -m profile_worker --queues profile.cpu.x86_64`: one worker serves one device."""
from __future__ import annotations

import logging
import sys

from kiln import farm
from kiln.config import Settings
from profile_worker.tasks import register


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    # One task at a time: two profilers on one device would time each other.
    args = farm.worker_args(argv, default_concurrency=1)
    settings = Settings.from_env()
    app = farm.make_celery(settings, "kiln-profile")
    register(app, settings)
    farm.start_heartbeat(settings, args.queues)
    farm.run_worker(app, args.queues, "profile", args.concurrency)


if __name__ == "__main__":
    main(sys.argv[1:])
