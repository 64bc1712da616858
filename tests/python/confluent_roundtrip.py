"""Round trip through keel with confluent-kafka (librdkafka): create a topic with
3 partitions, produce keyed records with headers (acks=all), then read every partition
back from the beginning and check keys, values, headers, timestamps and offsets
against the delivery reports. Also reads from an offset in the middle of a batch.

Usage: confluent_roundtrip.py BOOTSTRAP TOPIC COUNT
Prints a JSON summary; exits non-zero with a message on any mismatch.
"""
import json
import sys
import time

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

PARTITIONS = 3
TIMEOUT_S = 60


def fail(msg):
    print(f"FAIL: {msg}", file=sys.stderr)
    sys.exit(1)


def main():
    bootstrap, topic, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    admin = AdminClient({"bootstrap.servers": bootstrap})
    futures = admin.create_topics([NewTopic(topic, num_partitions=PARTITIONS, replication_factor=1)])
    futures[topic].result(timeout=TIMEOUT_S)

    producer = Producer({
        "bootstrap.servers": bootstrap,
        "acks": "all",
        "linger.ms": 5,
        "enable.idempotence": False,
    })
    delivered = {}
    errors = []

    def on_delivery(err, msg):
        if err is not None:
            errors.append(str(err))
            return
        # Delivery reports do not carry headers; the sequence number in the key
        # names the headers that were sent.
        seq = msg.key().decode().split("-")[1]
        headers = [("seq", seq.encode()), ("kind", b"roundtrip")]
        delivered[(msg.partition(), msg.offset())] = (msg.key(), msg.value(), headers, msg.timestamp()[1])

    base_ts = int(time.time() * 1000) - 60_000
    for i in range(count):
        producer.produce(
            topic,
            key=f"key-{i}".encode(),
            value=f"value-{i}-".encode() + bytes([i % 251]) * (i % 50),
            partition=i % PARTITIONS,
            headers=[("seq", str(i).encode()), ("kind", b"roundtrip")],
            timestamp=base_ts + i,
            on_delivery=on_delivery,
        )
        if i % 1000 == 0:
            producer.poll(0)
    remaining = producer.flush(TIMEOUT_S)
    if remaining or errors:
        fail(f"{remaining} undelivered, errors: {errors[:5]}")
    if len(delivered) != count:
        fail(f"{len(delivered)} delivery reports for {count} records")

    consumer = Consumer({
        "bootstrap.servers": bootstrap,
        "group.id": "keel-roundtrip-unused",
        "enable.auto.commit": False,
        "enable.partition.eof": True,
    })
    consumer.assign([TopicPartition(topic, p, 0) for p in range(PARTITIONS)])
    seen = {}
    eof = set()
    deadline = time.time() + TIMEOUT_S
    while len(eof) < PARTITIONS and time.time() < deadline:
        msg = consumer.poll(1.0)
        if msg is None:
            continue
        if msg.error():
            if msg.error().code() == -191:  # _PARTITION_EOF
                eof.add(msg.partition())
                continue
            fail(f"consume error {msg.error()}")
        seen[(msg.partition(), msg.offset())] = (msg.key(), msg.value(), msg.headers(), msg.timestamp()[1])
    if len(eof) < PARTITIONS:
        fail(f"reached the end of only {sorted(eof)}")
    if seen != delivered:
        missing = set(delivered) - set(seen)
        extra = set(seen) - set(delivered)
        wrong = [k for k in delivered if k in seen and seen[k] != delivered[k]]
        fail(f"read back differs: {len(missing)} missing, {len(extra)} extra, {len(wrong)} different, e.g. "
             f"{[(k, delivered[k], seen.get(k)) for k in (list(missing) + wrong)[:3]]}")
    for p in range(PARTITIONS):
        offsets = sorted(o for (q, o) in seen if q == p)
        if offsets != list(range(len(offsets))):
            fail(f"partition {p} offsets are not dense from 0")

    # Start in the middle of a batch: batches hold many records with linger.ms=5,
    # so offset 7 is almost surely inside the first one. The broker returns the
    # whole batch; the client must skip to 7.
    mid = 7
    consumer.assign([TopicPartition(topic, 0, mid)])
    first = None
    deadline = time.time() + TIMEOUT_S
    while first is None and time.time() < deadline:
        msg = consumer.poll(1.0)
        if msg is not None and not msg.error():
            first = msg
    if first is None or first.offset() != mid or first.value() != delivered[(0, mid)][1]:
        fail(f"reading from offset {mid} gave {None if first is None else first.offset()}")
    consumer.close()
    print(json.dumps({"produced": count, "read": len(seen), "partitions": PARTITIONS, "mid_batch_offset": mid}))


if __name__ == "__main__":
    main()
