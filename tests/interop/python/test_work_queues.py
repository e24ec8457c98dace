"""Tutorial 2, "Work queues": manual acks, prefetch 1 and redelivery.

Each worker is a connection of its own with a channel set up as worker.py sets
it up (durable queue, prefetch 1, manual ack). In the last test the worker is
``examples/python/worker.py`` itself, killed in the middle of a task.
"""

import pika

from messages import Consumer


def _worker(connect, queue: str) -> Consumer:
    """A consumer set up like worker.py: durable queue, prefetch 1, manual ack."""
    channel = connect().channel()
    channel.queue_declare(queue, durable=True)
    channel.basic_qos(prefetch_count=1)
    return Consumer(channel, queue, auto_ack=False)


def _publish_tasks(channel, queue: str, *bodies: bytes) -> None:
    for body in bodies:
        channel.basic_publish(
            exchange="",
            routing_key=queue,
            body=body,
            properties=pika.BasicProperties(delivery_mode=pika.DeliveryMode.Persistent),
        )


def test_with_prefetch_1_each_worker_holds_one_task_and_the_rest_wait_in_the_queue(connect, names):
    queue = names("tasks")
    first, second = _worker(connect, queue), _worker(connect, queue)
    publisher = connect().channel()

    _publish_tasks(publisher, queue, b"task 1", b"task 2", b"task 3")

    # Neither worker acks, so each can hold only one task...
    held = {first.expect().body, second.expect().body}
    assert held == {b"task 1", b"task 2"}
    # ...and the third is still in the queue, where basic.get finds it.
    method, _properties, body = publisher.basic_get(queue, auto_ack=True)
    assert method is not None, "task 3 was not left in the queue"
    assert body == b"task 3"


def test_a_busy_worker_is_not_given_the_next_task(connect, names):
    queue = names("tasks")
    publisher = connect().channel()
    publisher.queue_declare(queue, durable=True)

    slow = _worker(connect, queue)
    _publish_tasks(publisher, queue, b"long task")
    long_task = slow.expect()  # and the slow worker keeps working on it, unacked

    fast = _worker(connect, queue)
    quick_tasks = [f"quick task {i}".encode() for i in range(1, 5)]
    _publish_tasks(publisher, queue, *quick_tasks)

    # Round-robin would hand every other task to the slow worker; prefetch 1
    # sends them all to the worker that is free.
    done = []
    for _ in quick_tasks:
        task = fast.expect()
        done.append(task.body)
        fast.channel.basic_ack(task.delivery_tag)
    assert done == quick_tasks

    slow.channel.basic_ack(long_task.delivery_tag)
    assert long_task.body == b"long task"


def test_an_unacked_task_goes_to_another_worker_when_the_first_closes_its_connection(
    connect, names
):
    queue = names("tasks")
    publisher = connect().channel()
    publisher.queue_declare(queue, durable=True)
    quitter = _worker(connect, queue)
    _publish_tasks(publisher, queue, b"unfinished")
    task = quitter.expect()
    assert not task.redelivered

    other = _worker(connect, queue)
    quitter.channel.connection.close()

    again = other.expect()
    assert again.body == b"unfinished"
    assert again.redelivered, "a message that had been delivered before must be flagged redelivered"
    other.channel.basic_ack(again.delivery_tag)


def test_the_task_of_a_killed_worker_py_goes_to_another_worker_redelivered(
    connect, names, examples
):
    queue = names("tasks")
    worker = examples("worker.py", "--queue", queue)
    worker.wait_ready()
    publisher = connect().channel()
    # 60 dots: a minute of work, far longer than this test waits.
    _publish_tasks(publisher, queue, b"doomed task" + b"." * 60)
    worker.expect_line("Received doomed task")

    other = _worker(connect, queue)
    # SIGKILL: the worker's TCP connection drops without connection.close.
    worker.kill()

    again = other.expect()
    assert again.body.startswith(b"doomed task")
    assert again.redelivered
    other.channel.basic_ack(again.delivery_tag)
