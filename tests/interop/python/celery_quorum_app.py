"""A second Celery application, for test_celery_quorum.py: its task queue is a quorum queue,
configured as Celery's documentation says (``task_default_queue_type = "quorum"``), with the
broker and queue named by the environment as in ``celery_app``.

It is an app of its own (not a setting of ``celery_app.app``) because a Celery app reads its
queues once: the test process runs both modules' tests.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from celery import Celery
from kombu import Exchange, Queue

from celery_app import common_settings


def settings(environ: Mapping[str, str]) -> dict:
    """The configuration: ``celery_app``'s, with a quorum task queue."""
    queue = environ.get("JUNCTION_CELERY_QUEUE", "celery")
    return dict(
        common_settings(environ),
        task_default_queue=queue,
        task_default_queue_type="quorum",
        task_queues=[
            Queue(
                queue,
                Exchange(queue, type="direct"),
                routing_key=queue,
                queue_arguments={"x-queue-type": "quorum"},
            )
        ],
    )


app = Celery("celery_quorum_app")
app.conf.update(settings(os.environ))


@app.task
def add(x: int, y: int) -> int:
    return x + y


@app.task(bind=True, max_retries=5)
def retried(self, failures: int) -> int:
    """Fails its first ``failures`` attempts, each retried a second later (``countdown``,
    which a worker with quorum queues sends through native delayed delivery)."""
    if self.request.retries < failures:
        raise self.retry(exc=RuntimeError(f"attempt {self.request.retries} fails"), countdown=1)
    return self.request.retries
