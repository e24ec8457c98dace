"""Celery with ``task_default_queue_type = "quorum"`` on Junction, as Celery's documentation
sets it up for RabbitMQ: the task queue is a quorum queue; the worker sees it and uses
per-consumer prefetch (``worker_detect_quorum_queues``), and turns on native delayed
delivery, which declares Celery's 28 ``celery_delayed_*`` quorum queues (with
``x-overflow: reject-publish``, a message TTL, dead-lettering and
``x-dead-letter-strategy: at-least-once``) behind topic exchanges bound to each other. A
retry with ``countdown`` then travels through that chain of queues and exchanges.

One worker serves the module, on a queue of its own, stopped at the end as in test_celery.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator

import pika
import pytest

import celery_quorum_app
from processes import JunctionBroker
from test_celery import HERE, CeleryWorker, _close_client, _result


@pytest.fixture(scope="module")
def quorum_worker(
    broker: JunctionBroker, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[CeleryWorker]:
    run = uuid.uuid4().hex[:8]
    queue = f"test_celery_quorum-{run}"
    name = f"junction-quorum-{run}@{socket.gethostname()}"
    env = dict(
        os.environ,
        JUNCTION_CELERY_BROKER=f"amqp://guest:guest@{broker.host}:{broker.port}//",
        JUNCTION_CELERY_BACKEND="rpc://",
        JUNCTION_CELERY_QUEUE=queue,
        PYTHONPATH=os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")])),
        PYTHONUNBUFFERED="1",
    )
    celery_quorum_app.app.conf.update(celery_quorum_app.settings(env))
    log_path = tmp_path_factory.mktemp("celery") / "worker.log"
    started = CeleryWorker(env, name, queue, log_path, app="celery_quorum_app")
    try:
        started.wait_ready()
        yield started
    finally:
        died = not started.running
        code = started.stop()
        _close_client(celery_quorum_app.app)
    if died or code != 0:
        pytest.fail(
            f"the celery worker {'died during the tests' if died else 'did not stop cleanly'} "
            f"(exit code {code})\n{started.diagnostics()}",
            pytrace=False,
        )


def test_tasks_run_from_a_quorum_queue(quorum_worker, broker):
    assert _result(quorum_worker, celery_quorum_app.add.delay(20, 22)) == 42
    channel = pika.BlockingConnection(broker.pika_parameters()).channel()
    # Passive declarations: the queues exist, with the type Celery asked for.
    channel.queue_declare(quorum_worker.queue, passive=True)
    channel.queue_declare("celery_delayed_27", passive=True)
    channel.queue_declare("celery_delayed_0", passive=True)
    channel.connection.close()
    assert "global QoS" not in quorum_worker.output.text()


def test_a_countdown_retry_goes_through_native_delayed_delivery(quorum_worker):
    # Two failed attempts, each retried a second later through the celery_delayed_* queues.
    assert _result(quorum_worker, celery_quorum_app.retried.delay(2), timeout=30) == 2
