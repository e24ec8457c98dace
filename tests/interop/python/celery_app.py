"""The Celery application that test_celery.py runs against Junction, unchanged from what a
Celery user would write.

The worker (``python -m celery -A celery_app worker``), the ``celery inspect`` command line
and the test process all import this module; they agree on where the broker is through the
environment, read by :func:`settings`:

* ``JUNCTION_CELERY_BROKER``: the broker URL, ``amqp://guest:guest@127.0.0.1:PORT//``;
* ``JUNCTION_CELERY_BACKEND``: the result backend, ``rpc://`` unless set (results come back
  as AMQP messages to the caller's own reply queue);
* ``JUNCTION_CELERY_QUEUE``: the queue tasks are sent to and the worker consumes, unique to
  a test run so that the shared broker is not polluted. It is declared with RabbitMQ's
  arguments, as Celery users configure them: ``x-max-priority`` (task ``priority``) and
  dead-lettering through the default exchange to ``<queue>.dead`` (tasks that raise
  ``Reject``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from celery import Celery
from celery.exceptions import Reject
from kombu import Exchange, Queue


def settings(environ: Mapping[str, str]) -> dict:
    """Celery configuration for the broker and queue that ``environ`` names."""
    queue = environ.get("JUNCTION_CELERY_QUEUE", "celery")
    return dict(
        common_settings(environ),
        task_default_queue=queue,
        task_queues=[
            Queue(
                queue,
                Exchange(queue, type="direct"),
                routing_key=queue,
                max_priority=10,
                queue_arguments={
                    "x-dead-letter-exchange": "",
                    "x-dead-letter-routing-key": dead_letter_queue(queue),
                },
            )
        ],
    )


def common_settings(environ: Mapping[str, str]) -> dict:
    """What every configuration here shares: the broker, the backend, serializers."""
    return dict(
        broker_url=environ.get("JUNCTION_CELERY_BROKER", "amqp://guest:guest@127.0.0.1:5672//"),
        result_backend=environ.get("JUNCTION_CELERY_BACKEND", "rpc://"),
        # Fail fast instead of retrying for minutes when the broker is not there.
        broker_connection_retry_on_startup=False,
        broker_connection_timeout=5,
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        worker_cancel_long_running_tasks_on_connection_loss=True,
    )


def dead_letter_queue(queue: str) -> str:
    """Where the broker dead-letters the tasks that ``queue``'s worker rejects."""
    return f"{queue}.dead"


app = Celery("celery_app")
app.conf.update(settings(os.environ))


@app.task
def add(x: int, y: int) -> int:
    return x + y


@app.task(bind=True)
def where(self) -> dict:
    """Which worker ran this task, from which queue and with which priority it came."""
    info = self.request.delivery_info or {}
    return {
        "hostname": self.request.hostname,
        "routing_key": info.get("routing_key"),
        "priority": info.get("priority"),
    }


@app.task(bind=True, max_retries=5)
def flaky(self, failures: int) -> int:
    """Fails its first ``failures`` attempts, each retried a second later (``countdown``);
    returns how many retries it took, as Celery counted them in ``request.retries``."""
    if self.request.retries < failures:
        raise self.retry(exc=RuntimeError(f"attempt {self.request.retries} fails"), countdown=1)
    return self.request.retries


@app.task
def fail(message: str) -> None:
    """Always raises; the caller's ``get()`` re-raises it through the result backend."""
    raise ValueError(message)


@app.task(acks_late=True)
def refuse() -> None:
    """Rejects its own message without requeueing it: the broker dead-letters it."""
    raise Reject("refused on purpose", requeue=False)
