"""Produces each line of a file as one record (acks=all, idempotent) to a topic and
exits non-zero unless every record was acknowledged.

Usage: produce_lines.py BOOTSTRAP TOPIC FILE
"""
import sys

from confluent_kafka import Producer


def main():
    bootstrap, topic, path = sys.argv[1], sys.argv[2], sys.argv[3]
    producer = Producer({
        "bootstrap.servers": bootstrap,
        "acks": "all",
        "enable.idempotence": True,
        "linger.ms": 5,
        "message.timeout.ms": 60000,
    })
    failed = []

    def on_delivery(err, msg):
        if err is not None:
            failed.append(f"{msg.value().decode()}: {err}")

    with open(path) as f:
        for line in f:
            while True:
                try:
                    producer.produce(topic, value=line.rstrip("\n").encode(), partition=0, on_delivery=on_delivery)
                    break
                except BufferError:
                    producer.poll(0.05)
    remaining = producer.flush(90)
    if failed or remaining:
        print(f"{len(failed)} failed, {remaining} unsent; e.g. {failed[:3]}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
