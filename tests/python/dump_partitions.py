"""Reads every partition of a topic from the beginning to the end and prints one JSON
line per record: {"p": partition, "o": offset, "k": key, "v": value}.

Usage: dump_partitions.py BOOTSTRAP TOPIC PARTITIONS
"""
import json
import sys
import time

from confluent_kafka import Consumer, TopicPartition

TIMEOUT_S = 120


def main():
    bootstrap, topic, partitions = sys.argv[1], sys.argv[2], int(sys.argv[3])
    consumer = Consumer({
        "bootstrap.servers": bootstrap,
        "group.id": "keel-dump-unused",
        "enable.auto.commit": False,
        "enable.partition.eof": True,
    })
    consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    eof = set()
    deadline = time.time() + TIMEOUT_S
    while len(eof) < partitions and time.time() < deadline:
        msg = consumer.poll(1.0)
        if msg is None:
            continue
        if msg.error():
            if msg.error().code() == -191:
                eof.add(msg.partition())
                continue
            print(f"consume error {msg.error()}", file=sys.stderr)
            sys.exit(1)
        eof.discard(msg.partition())
        key = msg.key().decode() if msg.key() is not None else None
        print(json.dumps({"p": msg.partition(), "o": msg.offset(), "k": key, "v": msg.value().decode()}))
    if len(eof) < partitions:
        print(f"reached the end of only {sorted(eof)}", file=sys.stderr)
        sys.exit(1)
    consumer.close()


if __name__ == "__main__":
    main()
