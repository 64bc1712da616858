"""A consumer-group member for keel's group tests, with confluent-kafka (librdkafka) or
kafka-python. It subscribes to TOPIC in GROUP, consumes, and after every poll commits
what it processed, synchronously. It prints one JSON object per line, flushed at once:

  {"e": "assigned", "parts": [...]}    the whole assignment after a change
  {"e": "revoked", "parts": [...]}     partitions taken away (cooperative: only those)
  {"e": "rec", "p": P, "o": O, "v": V} a record processed
  {"e": "committed", "offsets": {P: O}} offsets the broker acknowledged (next to read)
  {"e": "closed"}                       after a clean close (SIGTERM)

Usage: group_member.py CLIENT BOOTSTRAP GROUP TOPIC [key=value ...]
  CLIENT: confluent | kafka-python
  options: strategy=range|roundrobin|cooperative-sticky|sticky  instance=ID
           session_ms=N
SIGTERM closes the consumer (it leaves the group, or for a static member keeps its
membership until the session timeout); SIGKILL is the crash the tests inject.
"""
import json
import signal
import sys

STOP = False


def out(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def on_term(_sig, _frame):
    global STOP
    STOP = True


def run_confluent(bootstrap, group, topic, opts):
    from confluent_kafka import Consumer, KafkaException

    strategy = opts.get("strategy", "range")
    conf = {
        "bootstrap.servers": bootstrap,
        "group.id": group,
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        "session.timeout.ms": int(opts.get("session_ms", 6000)),
        "heartbeat.interval.ms": 500,
        "partition.assignment.strategy": strategy,
        "topic.metadata.refresh.interval.ms": 2000,
    }
    if "instance" in opts:
        conf["group.instance.id"] = opts["instance"]
    consumer = Consumer(conf)
    owned = set()

    def on_assign(c, parts):
        if strategy == "cooperative-sticky":
            c.incremental_assign(parts)
            owned.update(p.partition for p in parts)
        else:
            c.assign(parts)
            owned.clear()
            owned.update(p.partition for p in parts)
        out({"e": "assigned", "parts": sorted(owned)})

    def on_revoke(c, parts):
        gone = sorted(p.partition for p in parts)
        if strategy == "cooperative-sticky":
            c.incremental_unassign(parts)
            owned.difference_update(gone)
        else:
            c.unassign()
            owned.clear()
        out({"e": "revoked", "parts": gone})

    def on_lost(c, parts):
        on_revoke(c, parts)

    consumer.subscribe([topic], on_assign=on_assign, on_revoke=on_revoke, on_lost=on_lost)
    while not STOP:
        msgs = consumer.consume(num_messages=200, timeout=0.3)
        offsets = {}
        for m in msgs:
            if m.error():
                sys.stderr.write(f"consume error: {m.error()}\n")
                continue
            out({"e": "rec", "p": m.partition(), "o": m.offset(), "v": m.value().decode()})
            offsets[m.partition()] = m.offset() + 1
        if offsets:
            try:
                committed = consumer.commit(asynchronous=False)
                acked = {str(tp.partition): tp.offset for tp in committed if tp.error is None and tp.partition in offsets}
                if acked:
                    out({"e": "committed", "offsets": acked})
            except KafkaException as e:
                # A commit refused during a rebalance: the records are consumed again
                # by whoever owns the partition next (at-least-once).
                sys.stderr.write(f"commit failed: {e}\n")
    consumer.close()
    out({"e": "closed"})


def run_kafka_python(bootstrap, group, topic, opts):
    from kafka import KafkaConsumer, OffsetAndMetadata, TopicPartition
    from kafka.consumer.subscription_state import ConsumerRebalanceListener
    from kafka.coordinator.assignors.range import RangePartitionAssignor
    from kafka.coordinator.assignors.roundrobin import RoundRobinPartitionAssignor
    from kafka.coordinator.assignors.sticky.sticky_assignor import StickyPartitionAssignor
    from kafka.errors import CommitFailedError, KafkaError

    assignors = {
        "range": RangePartitionAssignor,
        "roundrobin": RoundRobinPartitionAssignor,
        "sticky": StickyPartitionAssignor,
    }
    kwargs = {}
    if "instance" in opts:
        kwargs["group_instance_id"] = opts["instance"]
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        session_timeout_ms=int(opts.get("session_ms", 6000)),
        heartbeat_interval_ms=500,
        partition_assignment_strategy=[assignors[opts.get("strategy", "range")]],
        metadata_max_age_ms=2000,
        **kwargs,
    )

    class Listener(ConsumerRebalanceListener):
        def on_partitions_revoked(self, revoked):
            out({"e": "revoked", "parts": sorted(tp.partition for tp in revoked)})

        def on_partitions_assigned(self, assigned):
            out({"e": "assigned", "parts": sorted(tp.partition for tp in assigned)})

    consumer.subscribe([topic], listener=Listener())
    while not STOP:
        batches = consumer.poll(timeout_ms=300, max_records=200)
        offsets = {}
        for tp, records in batches.items():
            for r in records:
                out({"e": "rec", "p": tp.partition, "o": r.offset, "v": r.value.decode()})
                offsets[tp] = r.offset + 1
        if offsets:
            try:
                consumer.commit({tp: OffsetAndMetadata(o, "", -1) for tp, o in offsets.items()})
                out({"e": "committed", "offsets": {str(tp.partition): o for tp, o in offsets.items()}})
            except (CommitFailedError, KafkaError) as e:
                sys.stderr.write(f"commit failed: {e}\n")
    consumer.close()
    out({"e": "closed"})


def main():
    client, bootstrap, group, topic = sys.argv[1:5]
    opts = dict(a.split("=", 1) for a in sys.argv[5:])
    signal.signal(signal.SIGTERM, on_term)
    if client == "confluent":
        run_confluent(bootstrap, group, topic, opts)
    elif client == "kafka-python":
        run_kafka_python(bootstrap, group, topic, opts)
    else:
        sys.exit(f"unknown client {client}")


if __name__ == "__main__":
    main()
