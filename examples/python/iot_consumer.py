#!/usr/bin/env python3
"""IoT: a service that reads what devices publish over MQTT.

Devices publish readings with any MQTT client to topics such as
``sensors/kitchen/temperature``; Junction routes an MQTT topic ``a/b/c`` as the
routing key ``a.b.c`` on the ``amq.topic`` exchange. This consumer binds a
durable queue there and prints every reading:

    python iot_consumer.py                       # sensors/# by default
    python iot_consumer.py --key "sensors.*.temperature" --count 1

and a device, for example:

    mosquitto_pub -h localhost -u guest -P guest -q 1 -t sensors/kitchen/temperature -m 21.5

Received lines are printed as ``routing.key: payload``. The broker address comes
from ``AMQP_URL`` (default ``amqp://guest:guest@localhost:5672/%2F``).
"""

import argparse
import os

import pika

AMQP_URL = os.environ.get("AMQP_URL", "amqp://guest:guest@localhost:5672/%2F")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queue", default="readings", help="the durable queue to read from")
    parser.add_argument(
        "--key", default="sensors.#", help="binding key on amq.topic (MQTT sensors/# is sensors.#)"
    )
    parser.add_argument(
        "--count", type=int, default=0, help="exit after this many messages (0: run forever)"
    )
    args = parser.parse_args()

    connection = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    channel = connection.channel()
    channel.queue_declare(queue=args.queue, durable=True)
    channel.queue_bind(queue=args.queue, exchange="amq.topic", routing_key=args.key)

    received = 0

    def on_message(ch, method, _properties, body: bytes) -> None:
        nonlocal received
        print(f"{method.routing_key}: {body.decode(errors='replace')}", flush=True)
        ch.basic_ack(method.delivery_tag)
        received += 1
        if args.count and received >= args.count:
            ch.stop_consuming()

    channel.basic_consume(queue=args.queue, on_message_callback=on_message)

    print("Waiting for readings. To exit press Ctrl+C", flush=True)
    try:
        channel.start_consuming()
    except KeyboardInterrupt:
        pass
    connection.close()


if __name__ == "__main__":
    main()
