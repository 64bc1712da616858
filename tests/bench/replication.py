#!/usr/bin/env python3
"""keel's replication benchmark: acks=all produce throughput and latency to a 3-node
cluster (one process per node, all on this machine and its one disk), replication
factor 3 against replication factor 1 in the same run, 6 partitions, 100-byte and
1 KiB records, under both flush policies (`always`, the durable default: every replica
fsyncs before the high watermark covers a record; `interval`: Kafka's behaviour).

    python3 tests/bench/replication.py            full run (~5 minutes on 2 cores)
    python3 tests/bench/replication.py --quick    a tenth of the records

Needs target/release/keel and target/release/keel-bench. Prints a Markdown table
(also written to target/bench/replication.md) for docs/PERFORMANCE.md.
"""
import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NODE_IPS = ["127.0.0.92", "127.0.0.93", "127.0.0.94"]
CLIENT_PORT = 19192
CONTROLLER_PORT = 19193
START_TIMEOUT_S = 60
STEP_TIMEOUT_S = 300
PARTITIONS = 6
LINGER_MS = 5
BATCH_SIZE = 1_000_000
# Waits after creating a cluster, so its first elections and registrations are over.
SETTLE_S = 3


def log(msg):
    print(f"[replication-bench] {msg}", file=sys.stderr, flush=True)


class Cluster:
    """Three combined keel nodes with fresh data directories."""

    def __init__(self, keel, work, policy):
        voters = ",".join(f"{i + 1}@{ip}:{CONTROLLER_PORT}" for i, ip in enumerate(NODE_IPS))
        self.procs = []
        self.logs = []
        env = dict(os.environ, KEEL_LOG=os.environ.get("KEEL_LOG", "warn"))
        for i, ip in enumerate(NODE_IPS):
            node = os.path.join(work, f"{policy}-node{i + 1}")
            os.makedirs(node)
            log_file = open(os.path.join(node, "keel.log"), "ab")
            self.logs.append(log_file)
            self.procs.append(subprocess.Popen(
                [keel, "server", "--node-id", str(i + 1), "--roles", "broker,controller",
                 "--listen", f"{ip}:{CLIENT_PORT}", "--controller-listen", f"{ip}:{CONTROLLER_PORT}",
                 "--controller-quorum-voters", voters, "--data-dir", os.path.join(node, "data"),
                 "--set", f"log.flush.policy={policy}"],
                stdout=log_file, stderr=log_file, stdin=subprocess.DEVNULL, env=env))
        deadline = time.time() + START_TIMEOUT_S
        for ip in NODE_IPS:
            while True:
                try:
                    socket.create_connection((ip, CLIENT_PORT), timeout=1).close()
                    break
                except OSError:
                    if time.time() > deadline or any(p.poll() is not None for p in self.procs):
                        raise RuntimeError(f"the cluster did not start; logs in {work}")
                    time.sleep(0.1)
        time.sleep(SETTLE_S)
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
                p.wait()
        for f in self.logs:
            f.close()


def produce(bench, bootstrap, topic, records, size, rf):
    cmd = [bench, "produce", "--bootstrap-server", bootstrap, "--topic", topic,
           "--records", str(records), "--record-size", str(size), "--partitions", str(PARTITIONS),
           "--replication-factor", str(rf), "--acks", "all", "--linger-ms", str(LINGER_MS),
           "--batch-size", str(BATCH_SIZE), "--json"]
    log(" ".join(cmd[1:]))
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=STEP_TIMEOUT_S)
    if out.returncode != 0:
        raise RuntimeError(f"keel-bench failed:\n{out.stdout}\n{out.stderr}")
    line = [l for l in out.stdout.splitlines() if l.startswith("{")][-1]
    result = json.loads(line)
    log("  " + [l for l in out.stdout.splitlines() if not l.startswith("{")][0])
    return result


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
    ap.add_argument("--keel", default=os.path.join(target, "release", "keel"))
    ap.add_argument("--keel-bench", default=os.path.join(target, "release", "keel-bench"))
    ap.add_argument("--dir", default=os.environ.get("KEEL_BENCH_DIR", "/var/tmp"),
                    help="parent of the data directories; must be on the real disk")
    ap.add_argument("--records-small", type=int, default=5_000_000)
    ap.add_argument("--records-large", type=int, default=1_000_000)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=os.path.join(target, "bench", "replication.md"))
    args = ap.parse_args()
    if args.quick:
        args.records_small //= 10
        args.records_large //= 10
    work = tempfile.mkdtemp(prefix="keel-replication-bench-", dir=args.dir)
    rows = []
    try:
        for policy in ("always", "interval"):
            cluster = Cluster(args.keel, work, policy)
            try:
                for size, n in ((100, args.records_small), (1024, args.records_large)):
                    for rf in (1, 3):
                        topic = f"bench-{policy}-{size}-rf{rf}"
                        r = produce(args.keel_bench, cluster.bootstrap, topic, n, size, rf)
                        rows.append((policy, size, rf, r))
            finally:
                cluster.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    lines = ["| flush policy | record | RF | records/s | MB/s | p50 ms | p99 ms | p99.9 ms | errors |",
             "|---|---|---|---|---|---|---|---|---|"]
    for policy, size, rf, r in rows:
        label = "100 B" if size == 100 else "1 KiB"
        lines.append(f"| {policy} | {label} | {rf} | {r['records_per_sec']:,.0f} | {r['mb_per_sec']:.1f} | "
                     f"{r['latency_p50_ms']:.1f} | {r['latency_p99_ms']:.1f} | {r['latency_p999_ms']:.1f} | "
                     f"{r['errors']} |")
    table = "\n".join(lines)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        f.write(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
