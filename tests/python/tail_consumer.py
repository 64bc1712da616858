"""Reads every partition of a topic from the beginning, forever, printing one line per
record as it arrives: "<partition> <offset> <value>", flushed at once, so a test can
check what a consumer saw while brokers were killed under it (offsets must only go
forward, and every offset must hold the value a final read finds there).

Usage: tail_consumer.py BOOTSTRAP TOPIC PARTITIONS
"""
import sys

from confluent_kafka import Consumer, TopicPartition


def main():
    bootstrap, topic, partitions = sys.argv[1], sys.argv[2], int(sys.argv[3])
    consumer = Consumer({
        "bootstrap.servers": bootstrap,
        "group.id": "keel-tail-unused",
        "enable.auto.commit": False,
        # A reset would hide a consumer skipping or rewinding: fail loudly instead.
        "auto.offset.reset": "error",
        "topic.metadata.refresh.interval.ms": 1000,
    })
    consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    out = sys.stdout
    while True:
        msg = consumer.poll(0.5)
        if msg is None:
            continue
        if msg.error():
            sys.stderr.write(f"consume error on partition {msg.partition()}: {msg.error()}\n")
            sys.stderr.flush()
            continue
        out.write(f"{msg.partition()} {msg.offset()} {msg.value().decode()}\n")
        out.flush()


if __name__ == "__main__":
    main()
