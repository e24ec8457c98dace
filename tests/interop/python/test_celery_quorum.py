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

from collections.abc import Iterator

import pika
import pytest

import celery_quorum_app
from processes import JunctionBroker
from test_celery import CeleryWorker, _result, running_worker


@pytest.fixture(scope="module")
def quorum_worker(
    broker: JunctionBroker, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[CeleryWorker]:
    with running_worker(
        broker, tmp_path_factory, celery_quorum_app, "test_celery_quorum"
    ) as started:
        yield started


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
