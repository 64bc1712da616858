"""confluent-kafka (librdkafka) against keel, feature by feature; the round trip is in
confluent_roundtrip.py. Consumers use manual partition assignment (assign), never a
consumer group: keel has no group coordinator yet.

Usage: confluent_features.py MODE BOOTSTRAP TOPIC [COUNT]

Modes:
  acks     produce with acks=0, acks=1 and acks=all to a 1-partition topic and read
           every record back in order.
  admin    create a topic with a config override, describe its configs, alter one
           incrementally, list, delete, and check it is gone.
  by-time  produce records with known timestamps and look offsets up by timestamp
           (ListOffsets with a timestamp), plus the watermarks.
Prints a JSON summary; exits non-zero with a message on any mismatch.
"""
import json
import sys
import time

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import (AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource,
                                   NewTopic, ResourceType)

TIMEOUT_S = 60


def fail(msg):
    print(f"FAIL: {msg}", file=sys.stderr)
    sys.exit(1)


def create_topic(bootstrap, topic, partitions, config=None):
    admin = AdminClient({"bootstrap.servers": bootstrap})
    futures = admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1,
                                            config=config or {})])
    futures[topic].result(timeout=TIMEOUT_S)
    return admin


def consumer(bootstrap):
    return Consumer({
        "bootstrap.servers": bootstrap,
        "group.id": "keel-features-unused",  # required by the API; assign() never joins it
        "enable.auto.commit": False,
        "enable.partition.eof": True,
    })


def read_partition(bootstrap, topic, partition):
    c = consumer(bootstrap)
    c.assign([TopicPartition(topic, partition, 0)])
    out = []
    deadline = time.time() + TIMEOUT_S
    while time.time() < deadline:
        msg = c.poll(1.0)
        if msg is None:
            continue
        if msg.error():
            if msg.error().code() == -191:  # _PARTITION_EOF
                break
            fail(f"consume error {msg.error()}")
        out.append(msg)
    else:
        fail(f"did not reach the end of partition {partition}")
    c.close()
    return out


def acks(bootstrap, topic, count):
    create_topic(bootstrap, topic, 1)
    expected = []
    for setting in ("0", "1", "all"):
        producer = Producer({
            "bootstrap.servers": bootstrap,
            "acks": setting,
            "enable.idempotence": setting == "all",
            "linger.ms": 2,
        })
        reports = []
        for i in range(count):
            value = f"acks={setting}-{i}".encode()
            producer.produce(topic, value=value, partition=0,
                             on_delivery=lambda err, msg: reports.append((err, msg.offset())))
            expected.append(value)
        if producer.flush(TIMEOUT_S):
            fail(f"acks={setting}: records left unsent")
        errors = [e for e, _ in reports if e is not None]
        if errors or len(reports) != count:
            fail(f"acks={setting}: {len(reports)} reports, errors {errors[:3]}")
        # acks=0: the client never learns the offset.
        if setting != "0" and any(o < 0 for _, o in reports):
            fail(f"acks={setting}: delivery report without an offset")
    values = [m.value() for m in read_partition(bootstrap, topic, 0)]
    if values != expected:
        fail(f"read {len(values)} records, expected {len(expected)}")
    return {"acks": ["0", "1", "all"], "read": len(values)}


def admin(bootstrap, topic, _count):
    a = create_topic(bootstrap, topic, 2, {"retention.ms": "123456"})
    md = a.list_topics(timeout=TIMEOUT_S)
    if topic not in md.topics or len(md.topics[topic].partitions) != 2:
        fail(f"{topic} not listed with 2 partitions after create")
    resource = ConfigResource(ResourceType.TOPIC, topic)

    def describe():
        entries = a.describe_configs([resource])[resource].result(timeout=TIMEOUT_S)
        return {name: e.value for name, e in entries.items()}

    if describe().get("retention.ms") != "123456":
        fail(f"retention.ms is {describe().get('retention.ms')}")
    alter = ConfigResource(ResourceType.TOPIC, topic, incremental_configs=[
        ConfigEntry("max.message.bytes", "54321", incremental_operation=AlterConfigOpType.SET)])
    a.incremental_alter_configs([alter])[alter].result(timeout=TIMEOUT_S)
    configs = describe()
    if configs.get("max.message.bytes") != "54321" or configs.get("retention.ms") != "123456":
        fail(f"after alter: {configs.get('max.message.bytes')}, {configs.get('retention.ms')}")
    a.delete_topics([topic])[topic].result(timeout=TIMEOUT_S)
    deadline = time.time() + TIMEOUT_S
    while topic in a.list_topics(timeout=TIMEOUT_S).topics:
        if time.time() > deadline:
            fail(f"{topic} still listed after delete")
        time.sleep(0.1)
    return {"created": topic, "described": True, "altered": True, "deleted": True}


def by_time(bootstrap, topic, count):
    create_topic(bootstrap, topic, 1)
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 2})
    base_ts = 1_700_000_000_000
    step_ms = 10
    offsets = {}
    for i in range(count):
        producer.produce(topic, value=f"t{i}".encode(), partition=0, timestamp=base_ts + i * step_ms,
                         on_delivery=lambda err, msg: offsets.__setitem__(msg.value(), msg.offset()))
    if producer.flush(TIMEOUT_S) or len(offsets) != count:
        fail("records left unsent")
    c = consumer(bootstrap)
    checks = [
        (base_ts - 1, offsets[b"t0"]),               # before everything: the first record
        (base_ts + 5 * step_ms, offsets[b"t5"]),     # exact hit
        (base_ts + 5 * step_ms + 1, offsets[b"t6"]), # between two records: the next one
        (base_ts + count * step_ms, -1),             # after the last record: none (-1)
    ]
    for ts, want in checks:
        [got] = c.offsets_for_times([TopicPartition(topic, 0, ts)], timeout=TIMEOUT_S)
        if got.error or got.offset != want:
            fail(f"offsets_for_times({ts}) = {got.offset} ({got.error}), expected {want}")
    low, high = c.get_watermark_offsets(TopicPartition(topic, 0), timeout=TIMEOUT_S)
    if (low, high) != (0, count):
        fail(f"watermarks {(low, high)}")
    c.close()
    return {"lookups": len(checks)}


MODES = {"acks": acks, "admin": admin, "by-time": by_time}


def main():
    mode, bootstrap, topic = sys.argv[1], sys.argv[2], sys.argv[3]
    count = int(sys.argv[4]) if len(sys.argv) > 4 else 100
    print(json.dumps(MODES[mode](bootstrap, topic, count)))


if __name__ == "__main__":
    main()
