"""kafka-python (the pure-Python client) against keel. Consumers use manual partition
assignment (assign + seek): keel has no group coordinator yet.

Usage: kafka_python_client.py MODE BOOTSTRAP TOPIC [COUNT]

Modes:
  roundtrip  create TOPIC with 3 partitions, produce COUNT keyed records with headers
             (acks=all, idempotent: the client's default), read every partition back
             from the beginning and compare keys, values, headers, timestamps and
             offsets with the delivery reports; then read from an offset in the middle
             of a batch.
  acks       produce with acks=0, acks=1 and acks=all to a 1-partition topic and read
             every record back in order.
  admin      create a topic with a config override, describe its configs, alter one,
             list, delete, and check it is gone.
  by-time    produce records with known timestamps and look offsets up by timestamp
             (ListOffsets with a timestamp, plus earliest and latest).
Prints a JSON summary; exits non-zero with a message on any mismatch.
"""
import json
import sys
import time

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import ConfigResource, ConfigResourceType, KafkaAdminClient, NewTopic

PARTITIONS = 3
TIMEOUT_S = 60
MID_BATCH_OFFSET = 7


def fail(msg):
    print(f"FAIL: {msg}", file=sys.stderr)
    sys.exit(1)


def admin_client(bootstrap):
    return KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=TIMEOUT_S * 1000)


def create_topic(bootstrap, topic, partitions, configs=None):
    admin = admin_client(bootstrap)
    admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1,
                                  topic_configs=configs or {})])
    admin.close()


def consumer(bootstrap):
    return KafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        request_timeout_ms=TIMEOUT_S * 1000,
    )


def read_all(bootstrap, topic, partitions):
    """Reads every partition from offset 0 up to its end offset at the time of the call:
    {(partition, offset): record}."""
    c = consumer(bootstrap)
    tps = [TopicPartition(topic, p) for p in range(partitions)]
    c.assign(tps)
    for tp in tps:
        c.seek(tp, 0)
    ends = c.end_offsets(tps)
    seen = {}
    deadline = time.time() + TIMEOUT_S
    while any(c.position(tp) < ends[tp] for tp in tps):
        if time.time() > deadline:
            fail(f"read only {len(seen)} records; positions {[c.position(tp) for tp in tps]}, ends {ends}")
        for tp, records in c.poll(timeout_ms=1000).items():
            for r in records:
                if (r.partition, r.offset) in seen:
                    fail(f"offset {r.offset} of partition {r.partition} returned twice")
                seen[(r.partition, r.offset)] = r
    c.close()
    return seen, {tp.partition: ends[tp] for tp in tps}


def roundtrip(bootstrap, topic, count):
    create_topic(bootstrap, topic, PARTITIONS)
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    base_ts = int(time.time() * 1000) - 60_000
    sent = []
    for i in range(count):
        key = f"key-{i}".encode()
        value = f"value-{i}-".encode() + bytes([i % 251]) * (i % 50)
        headers = [("seq", str(i).encode()), ("kind", b"roundtrip")]
        future = producer.send(topic, key=key, value=value, partition=i % PARTITIONS,
                               headers=headers, timestamp_ms=base_ts + i)
        sent.append((future, key, value, headers, base_ts + i))
    producer.flush(timeout=TIMEOUT_S)
    delivered = {}
    for future, key, value, headers, ts in sent:
        md = future.get(timeout=TIMEOUT_S)
        delivered[(md.partition, md.offset)] = (key, value, headers, ts)
    producer.close()
    if len(delivered) != count:
        fail(f"{len(delivered)} distinct acknowledged offsets for {count} records")

    records, ends = read_all(bootstrap, topic, PARTITIONS)
    seen = {k: (r.key, r.value, [(h[0], h[1]) for h in r.headers], r.timestamp) for k, r in records.items()}
    if seen != delivered:
        missing = set(delivered) - set(seen)
        extra = set(seen) - set(delivered)
        wrong = [k for k in delivered if k in seen and seen[k] != delivered[k]]
        fail(f"read back differs: {len(missing)} missing, {len(extra)} extra, {len(wrong)} different, e.g. "
             f"{[(k, delivered[k], seen.get(k)) for k in (list(missing) + wrong)[:3]]}")
    for p in range(PARTITIONS):
        offsets = sorted(o for (q, o) in seen if q == p)
        if offsets != list(range(ends[p])):
            fail(f"partition {p} offsets are not dense from 0 to {ends[p]}")

    # Start in the middle of a batch: the broker returns the whole batch and the client
    # must skip the records before the offset it asked for.
    c = consumer(bootstrap)
    tp = TopicPartition(topic, 0)
    c.assign([tp])
    c.seek(tp, MID_BATCH_OFFSET)
    first = None
    deadline = time.time() + TIMEOUT_S
    while first is None and time.time() < deadline:
        for records in c.poll(timeout_ms=1000, max_records=1).values():
            first = first or records[0]
    c.close()
    if first is None or first.offset != MID_BATCH_OFFSET or first.value != delivered[(0, MID_BATCH_OFFSET)][1]:
        fail(f"reading from offset {MID_BATCH_OFFSET} gave {first}")
    return {"produced": count, "read": len(seen), "partitions": PARTITIONS, "mid_batch_offset": MID_BATCH_OFFSET}


def acks(bootstrap, topic, count):
    create_topic(bootstrap, topic, 1)
    expected = []
    for acks_setting in (0, 1, "all"):
        producer = KafkaProducer(bootstrap_servers=bootstrap, acks=acks_setting,
                                 enable_idempotence=(acks_setting == "all"), linger_ms=2)
        futures = []
        for i in range(count):
            value = f"acks={acks_setting}-{i}".encode()
            futures.append(producer.send(topic, value=value, partition=0))
            expected.append(value)
        producer.flush(timeout=TIMEOUT_S)
        for f in futures:
            md = f.get(timeout=TIMEOUT_S)
            # acks=0: the client never learns the offset.
            if acks_setting != 0 and md.offset < 0:
                fail(f"acks={acks_setting}: no offset in the acknowledgement")
        producer.close()
    records, ends = read_all(bootstrap, topic, 1)
    values = [records[(0, o)].value for o in range(ends[0])]
    if values != expected:
        fail(f"read {len(values)} records, expected {len(expected)}; first difference at "
             f"{next((i for i, (a, b) in enumerate(zip(values, expected)) if a != b), None)}")
    return {"acks": ["0", "1", "all"], "read": len(values)}


def admin(bootstrap, topic, _count):
    a = admin_client(bootstrap)
    a.create_topics([NewTopic(topic, num_partitions=2, replication_factor=1,
                              topic_configs={"retention.ms": "123456"})])
    if topic not in a.list_topics():
        fail(f"{topic} not listed after create")
    described = a.describe_topics([topic])
    if len(described[0]["partitions"]) != 2:
        fail(f"describe_topics: {described}")
    resource = ConfigResource(ConfigResourceType.TOPIC, topic)
    configs = config_map(a.describe_configs([resource], config_filter="all"), topic)
    if configs.get("retention.ms") != "123456":
        fail(f"retention.ms is {configs.get('retention.ms')}")
    a.alter_configs([ConfigResource(ConfigResourceType.TOPIC, topic, configs={"max.message.bytes": "54321"})],
                    incremental=True)
    configs = config_map(a.describe_configs([resource], config_filter="all"), topic)
    if configs.get("max.message.bytes") != "54321" or configs.get("retention.ms") != "123456":
        fail(f"after alter: max.message.bytes={configs.get('max.message.bytes')} "
             f"retention.ms={configs.get('retention.ms')}")
    a.delete_topics([topic])
    deadline = time.time() + TIMEOUT_S
    while topic in a.list_topics():
        if time.time() > deadline:
            fail(f"{topic} still listed after delete")
        time.sleep(0.1)
    a.close()
    return {"created": topic, "described": True, "altered": True, "deleted": True}


def config_map(described, topic):
    """{name: value} of one topic from describe_configs' answer
    ({"topic": {name: {config name: {"value": ...}}}})."""
    return {name: entry["value"] for name, entry in described["topic"][topic].items()}


def by_time(bootstrap, topic, count):
    create_topic(bootstrap, topic, 1)
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=2)
    base_ts = 1_700_000_000_000
    step_ms = 10
    futures = [producer.send(topic, value=f"t{i}".encode(), partition=0, timestamp_ms=base_ts + i * step_ms)
               for i in range(count)]
    producer.flush(timeout=TIMEOUT_S)
    offsets = [f.get(timeout=TIMEOUT_S).offset for f in futures]
    producer.close()
    c = consumer(bootstrap)
    tp = TopicPartition(topic, 0)
    checks = {
        base_ts - 1: 0,                                # before everything: the first record
        base_ts + 5 * step_ms: offsets[5],             # exact hit
        base_ts + 5 * step_ms + 1: offsets[6],         # between two records: the next one
    }
    for ts, want in checks.items():
        got = c.offsets_for_times({tp: ts})[tp]
        if got is None or got.offset != want:
            fail(f"offsets_for_times({ts}) = {got}, expected offset {want}")
        if got.timestamp < ts:
            fail(f"offsets_for_times({ts}) returned an earlier timestamp {got.timestamp}")
    after = c.offsets_for_times({tp: base_ts + count * step_ms})[tp]
    if after is not None:
        fail(f"offsets_for_times after the last record = {after}, expected none")
    if c.beginning_offsets([tp])[tp] != 0 or c.end_offsets([tp])[tp] != count:
        fail(f"beginning/end offsets {c.beginning_offsets([tp])}, {c.end_offsets([tp])}")
    c.close()
    return {"lookups": len(checks) + 1}


MODES = {"roundtrip": roundtrip, "acks": acks, "admin": admin, "by-time": by_time}


def main():
    mode, bootstrap, topic = sys.argv[1], sys.argv[2], sys.argv[3]
    count = int(sys.argv[4]) if len(sys.argv) > 4 else 100
    print(json.dumps(MODES[mode](bootstrap, topic, count)))


if __name__ == "__main__":
    main()
