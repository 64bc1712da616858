#!/usr/bin/env bash
# keel's benchmark: the machine's limits and keel's throughput, latency, CPU and memory
# in one run (see docs/PERFORMANCE.md). Opt-in; `bash tests/run.sh --bench [ARGS]`
# installs the build tools, builds keel and keel-bench, and calls this.
#
#   bash tests/bench/run.sh              the full run (~15 minutes on 2 cores)
#   bash tests/bench/run.sh --quick      a tenth of the records
#   bash tests/bench/run.sh --help       every option (data directory, record counts, …)
#
# Needs target/release/keel and target/release/keel-bench
# (`cargo build --release -p keel --bin keel -p keel-tests --bin keel-bench`) and python3.
set -euo pipefail
cd "$(dirname "$0")/../.."
exec python3 tests/bench/bench.py "$@"
