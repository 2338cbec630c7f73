"""`python -m planner_svc`: the planner as its own Celery worker on the planner queue."""
from __future__ import annotations

import logging
import sys

from kiln import farm
from kiln.config import Settings
from planner_svc.tasks import register


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    args = farm.worker_args(argv or ["--queues", farm.PLANNER_QUEUE], default_concurrency=2)
    settings = Settings.from_env()
    app = farm.make_celery(settings, "kiln-planner")
    register(app, settings)
    farm.start_heartbeat(settings, args.queues)
    # Planning is short and reports are tiny: threads keep it light.
    farm.run_worker(app, args.queues, "planner", args.concurrency, pool="threads")


if __name__ == "__main__":
    main(sys.argv[1:])
