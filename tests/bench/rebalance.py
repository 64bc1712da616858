#!/usr/bin/env python3
"""keel's consumer-group rebalance benchmark: how long a 10-member group takes to
hand a departed member's partitions to the others, on a 3-node cluster (all on this
machine). Members are confluent-kafka (librdkafka) processes running
tests/python/group_member.py on a 30-partition topic with a trickle of records.

For each assignment strategy (eager `range`, incremental `cooperative-sticky`) and
each round it measures, from the moment the harness acts until the 9 (or 10)
remaining members hold every partition exactly once:
  join   a tenth member joins a steady group of 9
  leave  a member closes cleanly (LeaveGroup)
  kill   a member is SIGKILLed (found dead after session.timeout.ms)

    python3 tests/bench/rebalance.py             5 rounds per strategy (~6 minutes)
    python3 tests/bench/rebalance.py --rounds 2

Needs target/release/keel and the test venv (bash tests/run.sh creates it). Prints a
Markdown table (also written to target/bench/rebalance.md) for docs/PERFORMANCE.md.
"""
import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NODE_IPS = ["127.0.0.95", "127.0.0.96", "127.0.0.97"]
CLIENT_PORT = 19292
CONTROLLER_PORT = 19293
START_TIMEOUT_S = 60
PARTITIONS = 30
MEMBERS = 10
SESSION_TIMEOUT_MS = 6000
STEP_TIMEOUT_S = 120
# An assignment counts as steady once unchanged for this long (it is not part of the
# measured time: the time is when the assignment was first complete).
STEADY_S = 2.0


def log(msg):
    print(f"[rebalance-bench] {msg}", file=sys.stderr, flush=True)


class Cluster:
    def __init__(self, keel, work):
        voters = ",".join(f"{i + 1}@{ip}:{CONTROLLER_PORT}" for i, ip in enumerate(NODE_IPS))
        self.procs, self.logs = [], []
        env = dict(os.environ, KEEL_LOG=os.environ.get("KEEL_LOG", "warn"))
        for i, ip in enumerate(NODE_IPS):
            node = os.path.join(work, f"node{i + 1}")
            os.makedirs(node)
            f = open(os.path.join(node, "keel.log"), "ab")
            self.logs.append(f)
            self.procs.append(subprocess.Popen(
                [keel, "server", "--node-id", str(i + 1), "--roles", "broker,controller",
                 "--listen", f"{ip}:{CLIENT_PORT}", "--controller-listen", f"{ip}:{CONTROLLER_PORT}",
                 "--controller-quorum-voters", voters, "--data-dir", os.path.join(node, "data")],
                stdout=f, stderr=f, stdin=subprocess.DEVNULL, env=env))
        deadline = time.time() + START_TIMEOUT_S
        for ip in NODE_IPS:
            while True:
                try:
                    socket.create_connection((ip, CLIENT_PORT), timeout=1).close()
                    break
                except OSError:
                    if time.time() > deadline:
                        raise RuntimeError(f"the cluster did not start; logs in {work}")
                    time.sleep(0.1)
        self.bootstrap = ",".join(f"{ip}:{CLIENT_PORT}" for ip in NODE_IPS)

    def stop(self):
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
        for p in self.procs:
            try:
                p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                p.kill()
        for f in self.logs:
            f.close()


class Member:
    """One group_member.py process; its assignment is followed from its events."""

    def __init__(self, python, name, bootstrap, group, topic, strategy):
        self.name = name
        self.owned = set()
        self.lock = threading.Lock()
        self.proc = subprocess.Popen(
            [python, os.path.join(ROOT, "tests/python/group_member.py"), "confluent",
             bootstrap, group, topic, f"strategy={strategy}", f"session_ms={SESSION_TIMEOUT_MS}"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, text=True)
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            try:
                e = json.loads(line)
            except ValueError:
                continue
            with self.lock:
                if e["e"] == "assigned":
                    self.owned = set(e["parts"])
                elif e["e"] == "revoked":
                    self.owned -= set(e["parts"])
                elif e["e"] == "closed":
                    self.owned = set()

    def assignment(self):
        with self.lock:
            return frozenset(self.owned)

    def alive(self):
        return self.proc.poll() is None

    def kill(self):
        self.proc.kill()
        self.proc.wait()

    def close(self):
        self.proc.terminate()
        self.proc.wait(timeout=60)


def wait_complete(members, since):
    """Seconds from `since` until the live members first held every partition exactly
    once, each member at least one (there are more partitions than members), in an
    assignment that then stayed unchanged for STEADY_S."""
    first_complete, snapshot = None, None
    deadline = time.monotonic() + STEP_TIMEOUT_S
    while time.monotonic() < deadline:
        now = time.monotonic()
        current = tuple(m.assignment() for m in members if m.alive())
        parts = [p for a in current for p in a]
        complete = len(parts) == PARTITIONS and len(set(parts)) == PARTITIONS and all(current)
        if complete and current == snapshot:
            if now - first_complete >= STEADY_S:
                return first_complete - since
        elif complete:
            first_complete, snapshot = now, current
        else:
            first_complete, snapshot = None, None
        time.sleep(0.02)
    raise RuntimeError("the group did not settle")


def create_topic(python, bootstrap, topic):
    code = (
        "import sys\nfrom confluent_kafka.admin import AdminClient, NewTopic\n"
        f"a = AdminClient({{'bootstrap.servers': '{bootstrap}'}})\n"
        f"a.create_topics([NewTopic('{topic}', num_partitions={PARTITIONS}, replication_factor=3)])['{topic}'].result(60)\n"
    )
    subprocess.run([python, "-c", code], check=True, timeout=120)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
    ap.add_argument("--keel", default=os.path.join(target, "release", "keel"))
    ap.add_argument("--python", default=os.environ.get("KEEL_PYTHON", os.path.join(target, "test-venv", "bin", "python")))
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--dir", default=os.environ.get("KEEL_BENCH_DIR", "/var/tmp"))
    ap.add_argument("--out", default=os.path.join(target, "bench", "rebalance.md"))
    ap.add_argument("--strategies", default="range,cooperative-sticky")
    ap.add_argument("--keep", action="store_true", help="keep the nodes' data and logs")
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="keel-rebalance-bench-", dir=args.dir)
    cluster = Cluster(args.keel, work)
    results = {}
    producer = None
    try:
        topic = "rebalance"
        create_topic(args.python, cluster.bootstrap, topic)
        producer = subprocess.Popen(
            [args.python, os.path.join(ROOT, "tests/python/acked_producer.py"), cluster.bootstrap,
             topic, str(PARTITIONS), "rate=100"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for strategy in args.strategies.split(","):
            group = f"bench-{strategy}"
            serial = 0

            def spawn():
                nonlocal serial
                serial += 1
                return Member(args.python, f"m{serial}", cluster.bootstrap, group, topic, strategy)

            started = time.monotonic()
            members = [spawn() for _ in range(MEMBERS)]
            formed = wait_complete(members, started)
            log(f"{strategy}: {MEMBERS} members formed the group in {formed:.2f} s")
            for r in range(args.rounds):
                for kind in ("leave", "join", "kill", "join"):
                    t0 = time.monotonic()
                    if kind == "join":
                        members.append(spawn())
                    else:
                        victim = members.pop(0)
                        if kind == "kill":
                            victim.kill()
                        else:
                            victim.close()
                    took = wait_complete(members, t0)
                    results.setdefault((strategy, kind), []).append(took)
                    log(f"{strategy} round {r + 1}: {kind} -> {len(members)} members settled in {took:.2f} s")
            for m in members:
                m.kill()
    finally:
        if producer:
            producer.kill()
        cluster.stop()
        if args.keep:
            log(f"nodes' data and logs kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    lines = [
        f"| strategy | event | members after | rounds | median s | min s | max s |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for (strategy, kind), v in results.items():
        after = MEMBERS if kind == "join" else MEMBERS - 1
        lines.append(f"| {strategy} | {kind} | {after} | {len(v)} | {statistics.median(v):.2f} | {min(v):.2f} | {max(v):.2f} |")
    table = "\n".join(lines)
    print(table)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        f.write(table + "\n")


if __name__ == "__main__":
    main()
