"""Writes and reads a compacted topic with confluent-kafka (librdkafka).

Usage:
  compacted_topic.py produce BOOTSTRAP TOPIC KEYS ROUNDS COMPRESSION [TOMBSTONE_KEYS]
      Writes ROUNDS values of each of KEYS keys ("key-0007" -> "key-0007:v3:<padding>"),
      round by round, with an idempotent acks=all producer, then a tombstone (null
      value) for each key in the comma-separated TOMBSTONE_KEYS (key numbers). Prints
      one JSON object: {"acked": n, "latest": {key: {"o": offset, "v": value|null}}}
      with the offset and value of the last acknowledged record of every key.
  compacted_topic.py dump BOOTSTRAP TOPIC PARTITIONS
      Reads every partition from the beginning to its end and prints one JSON line per
      record: {"p": partition, "o": offset, "k": key, "v": value or null}.
  compacted_topic.py keyless BOOTSTRAP TOPIC
      Produces one record without a key and prints {"error": name} (or {"error": null}
      if it was accepted).
"""
import json
import sys
import time

from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition

TIMEOUT_S = 120
PADDING = "." * 40


def key_name(k):
    return f"key-{k:04d}"


def produce(bootstrap, topic, keys, rounds, compression, tombstones):
    producer = Producer({
        "bootstrap.servers": bootstrap,
        "enable.idempotence": True,
        "acks": "all",
        "compression.type": compression,
        "linger.ms": 5,
        "message.timeout.ms": TIMEOUT_S * 1000,
    })
    latest = {}
    errors = []
    acked = [0]

    def report(err, msg):
        if err is not None:
            errors.append(str(err))
            return
        acked[0] += 1
        k = msg.key().decode()
        v = msg.value().decode() if msg.value() is not None else None
        prev = latest.get(k)
        if prev is None or prev["o"] < msg.offset():
            latest[k] = {"o": msg.offset(), "v": v}

    for r in range(rounds):
        for k in range(keys):
            producer.produce(topic, key=key_name(k), value=f"{key_name(k)}:v{r}:{PADDING}",
                             on_delivery=report)
            producer.poll(0)
    for k in tombstones:
        producer.produce(topic, key=key_name(k), value=None, on_delivery=report)
    if producer.flush(TIMEOUT_S) != 0:
        errors.append("flush timed out")
    if errors:
        print(f"delivery failed: {errors[:5]}", file=sys.stderr)
        sys.exit(1)
    print(json.dumps({"acked": acked[0], "latest": latest}))


def dump(bootstrap, topic, partitions):
    consumer = Consumer({
        "bootstrap.servers": bootstrap,
        "group.id": "keel-compaction-dump-unused",
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
            if msg.error().code() == KafkaError._PARTITION_EOF:
                eof.add(msg.partition())
                continue
            print(f"consume error {msg.error()}", file=sys.stderr)
            sys.exit(1)
        eof.discard(msg.partition())
        print(json.dumps({
            "p": msg.partition(),
            "o": msg.offset(),
            "k": msg.key().decode() if msg.key() is not None else None,
            "v": msg.value().decode() if msg.value() is not None else None,
        }))
    if len(eof) < partitions:
        print(f"reached the end of only {sorted(eof)}", file=sys.stderr)
        sys.exit(1)
    consumer.close()


def keyless(bootstrap, topic):
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "retries": 0})
    result = {}

    def report(err, _msg):
        result["error"] = err.name() if err is not None else None

    producer.produce(topic, value=b"no key", on_delivery=report)
    producer.flush(TIMEOUT_S)
    print(json.dumps(result))


def main():
    mode = sys.argv[1]
    if mode == "produce":
        tombstones = [int(k) for k in sys.argv[7].split(",")] if len(sys.argv) > 7 and sys.argv[7] else []
        produce(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), sys.argv[6], tombstones)
    elif mode == "dump":
        dump(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    elif mode == "keyless":
        keyless(sys.argv[2], sys.argv[3])
    else:
        print(f"unknown mode {mode}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
