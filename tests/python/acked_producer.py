"""Produces unique values to a topic until killed, printing one line per
acknowledged record: "<partition> <offset> <value>", flushed at once, so whoever kills
the broker knows exactly which records were acknowledged.

Usage: acked_producer.py BOOTSTRAP TOPIC PARTITIONS [idempotent] [rate=RECORDS_PER_S]
"""
import sys
import time

from confluent_kafka import Producer


def main():
    bootstrap, topic, partitions = sys.argv[1], sys.argv[2], int(sys.argv[3])
    extra = sys.argv[4:]
    idempotent = "idempotent" in extra
    rate = next((float(a.split("=", 1)[1]) for a in extra if a.startswith("rate=")), None)
    producer = Producer({
        "bootstrap.servers": bootstrap,
        "acks": "all",
        "linger.ms": 2,
        "enable.idempotence": idempotent,
        "message.timeout.ms": 120000,
        "retry.backoff.ms": 100,
        "reconnect.backoff.max.ms": 500,
    })
    out = sys.stdout

    def on_delivery(err, msg):
        if err is None:
            out.write(f"{msg.partition()} {msg.offset()} {msg.value().decode()}\n")
            out.flush()
        else:
            sys.stderr.write(f"failed {msg.value().decode()}: {err}\n")
            sys.stderr.flush()

    i = 0
    while True:
        try:
            producer.produce(topic, value=f"v{i}".encode(), partition=i % partitions, on_delivery=on_delivery)
            i += 1
        except BufferError:
            producer.poll(0.05)
            continue
        if rate is not None:
            producer.poll(0)
            time.sleep(1.0 / rate)
        elif i % 50 == 0:
            producer.poll(0)
            time.sleep(0.002)


if __name__ == "__main__":
    main()
