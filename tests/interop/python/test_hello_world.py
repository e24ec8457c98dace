"""Tutorial 1, "Hello World!": a queue, the default exchange, publish and consume."""

from messages import receive


def test_a_message_published_to_the_default_exchange_reaches_the_queue_named_by_its_key(
    connect, names
):
    queue = names("hello")
    producer = connect().channel()
    consumer = connect().channel()
    producer.queue_declare(queue)
    consumer.queue_declare(queue)  # declaring again is harmless

    producer.basic_publish(exchange="", routing_key=queue, body=b"Hello World!")

    [delivery] = receive(consumer, queue, 1)
    assert delivery.body == b"Hello World!"
    assert delivery.routing_key == queue
    assert delivery.method.exchange == ""
    assert not delivery.redelivered


def test_messages_arrive_in_the_order_they_were_published(channel, names):
    queue = names("ordered")
    channel.queue_declare(queue)
    bodies = [f"message {i}".encode() for i in range(50)]
    for body in bodies:
        channel.basic_publish(exchange="", routing_key=queue, body=body)

    assert [d.body for d in receive(channel, queue, len(bodies))] == bodies
