"""The tutorial programs of examples/python/ run as they would for a reader.

Each test starts the consumer first, waits for its ``Waiting ...`` line (its
queue exists and is bound from then on), runs the publisher, and checks what
the consumer printed before it exited on its own (``--count``).

The examples use the tutorials' fixed names (``hello``, ``logs``, ...), so each
name is used by one test only.
"""

from messages import receive


def test_send_and_receive(examples):
    receiver = examples("receive.py", "--count", "1")
    receiver.wait_ready()

    assert examples("send.py").finish() == ["Sent Hello World!"]

    assert receiver.finish()[-1] == "Received Hello World!"


def test_new_task_publishes_persistent_tasks_that_two_workers_share(examples, names, channel):
    queue = names("task_queue")
    assert examples("new_task.py", "--queue", queue, "First", "task.").finish() == [
        "Sent First task."
    ]
    [task] = receive(channel, queue, 1, auto_ack=False)
    assert task.body == b"First task."
    assert task.properties.delivery_mode == 2, "new_task.py must publish persistent messages"
    channel.basic_reject(task.delivery_tag, requeue=True)

    workers = [examples("worker.py", "--queue", queue, "--count", "2") for _ in range(2)]
    for worker in workers:
        worker.wait_ready()
    for i in range(2, 5):
        examples("new_task.py", "--queue", queue, f"Task {i}").finish()

    lines = [
        line
        for worker in workers
        for line in worker.finish(timeout=20)
        if line.startswith("Received ")
    ]
    # Which worker did what depends on timing; that each did two (--count 2,
    # exit 0) and that together they did every task does not. A worker that
    # stops may hand back a task it was sent, which then shows as redelivered.
    tasks = sorted(line.removeprefix("Received ").removesuffix(" (redelivered)") for line in lines)
    assert tasks == ["First task.", "Task 2", "Task 3", "Task 4"]
    assert "Received First task. (redelivered)" in lines, "a requeued task is flagged redelivered"


def test_emit_log_reaches_every_receive_logs(examples):
    receivers = [examples("receive_logs.py", "--count", "2") for _ in range(2)]
    for receiver in receivers:
        receiver.wait_ready()

    examples("emit_log.py", "info: first").finish()
    examples("emit_log.py", "error: second").finish()

    for receiver in receivers:
        assert receiver.finish()[-2:] == ["info: first", "error: second"]


def test_receive_logs_direct_gets_only_its_severities(examples):
    errors = examples("receive_logs_direct.py", "--count", "1", "error")
    info_and_warnings = examples("receive_logs_direct.py", "--count", "2", "info", "warning")
    errors.wait_ready()
    info_and_warnings.wait_ready()

    examples("emit_log_direct.py", "info", "all is well").finish()
    examples("emit_log_direct.py", "debug", "noise").finish()
    examples("emit_log_direct.py", "error", "Run. Run. Or it will explode.").finish()
    examples("emit_log_direct.py", "warning", "disk at 90%").finish()

    assert errors.finish()[-1:] == ["error: Run. Run. Or it will explode."]
    assert info_and_warnings.finish()[-2:] == ["info: all is well", "warning: disk at 90%"]


def test_receive_logs_topic_follows_its_patterns(examples):
    one_word = examples("receive_logs_topic.py", "--count", "1", "kern.*")
    any_words = examples("receive_logs_topic.py", "--count", "2", "kern.#")
    one_word.wait_ready()
    any_words.wait_ready()

    examples("emit_log_topic.py", "kern", "bare kern").finish()
    examples("emit_log_topic.py", "cron.info", "not kernel").finish()
    examples("emit_log_topic.py", "kern.critical", "A critical kernel error").finish()

    assert one_word.finish()[-1:] == ["kern.critical: A critical kernel error"]
    assert any_words.finish()[-2:] == ["kern: bare kern", "kern.critical: A critical kernel error"]


def test_rpc_client_gets_its_answers_from_rpc_server(examples):
    server = examples("rpc_server.py", "--count", "3")
    server.wait_ready()

    answers = examples("rpc_client.py", "10", "20", "30").finish(timeout=20)

    assert answers == ["fib(10) = 55", "fib(20) = 6765", "fib(30) = 832040"]
    server.finish()
