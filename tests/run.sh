#!/usr/bin/env bash
# Runs keel's whole test suite, installing what it needs on a fresh Debian machine:
# build tools for RocksDB, kcat and iptables (apt), the Python Kafka clients (venv),
# kafkajs (npm); then librdkafka's own test suite (tests/librdkafka/run.sh builds it
# from Debian's source package on first use).
#
#   bash tests/run.sh            the default suite (CI runs exactly this)
#   bash tests/run.sh --bench    instead: the benchmark (tests/bench/run.sh, arguments
#                                after --bench go to it; see docs/PERFORMANCE.md)
#   bash tests/run.sh --faults-long [SEED…]
#                                instead: the long fault-injection runs (10 minutes per
#                                nemesis and seed, hours in all; tests/faults/run.sh)
#
# Builds go to $CARGO_TARGET_DIR (default ./target); keep it between runs, a cold
# build compiles RocksDB from source (12-25 minutes on 2 cores).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
APT_PACKAGES=(clang libclang-dev kcat iptables python3-venv)

log() { printf '\n== %s ==\n' "$*"; }

as_root() {
    if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
        echo "tests/run.sh: need root (or sudo) to run: $*" >&2; exit 1; fi
}

install_apt_packages() {
    local missing=()
    for p in "${APT_PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        log "installing ${missing[*]}"
        as_root apt-get update -qq
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
}

install_python_clients() {
    local venv=$TARGET_DIR/test-venv
    if [ ! -x "$venv/bin/python" ]; then
        log "creating $venv"
        python3 -m venv "$venv"
    fi
    if ! cmp -s tests/python/requirements.txt "$venv/.installed-requirements" 2>/dev/null; then
        log "installing Python clients"
        "$venv/bin/pip" install -q --disable-pip-version-check -r tests/python/requirements.txt
        cp tests/python/requirements.txt "$venv/.installed-requirements"
    fi
    export KEEL_PYTHON=$venv/bin/python
}

# kafkajs (pinned by tests/node/package-lock.json) into tests/node/node_modules
# (git-ignored), with the machine's Node.js; Debian's nodejs/npm if there is none.
install_node_clients() {
    if ! command -v npm >/dev/null; then
        log "installing nodejs npm"
        as_root apt-get update -qq
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null
    fi
    if ! cmp -s tests/node/package-lock.json tests/node/node_modules/.installed-package-lock.json 2>/dev/null; then
        log "installing Node.js clients"
        (cd tests/node && npm ci --no-audit --no-fund --loglevel=error)
        cp tests/node/package-lock.json tests/node/node_modules/.installed-package-lock.json
    fi
}

if [ "${1:-}" = --bench ]; then
    shift
    install_apt_packages
    log "building keel and keel-bench (release)"
    cargo build --release -p keel --bin keel -p keel-tests --bin keel-bench
    exec bash tests/bench/run.sh "$@"
fi

if [ "${1:-}" = --faults-long ]; then
    shift
    install_apt_packages
    log "building keel and keel-faults (release)"
    cargo build --release -p keel --bin keel -p keel-tests --bin keel-faults
    exec bash tests/faults/run.sh --long "$@"
fi

install_apt_packages
install_python_clients
install_node_clients

log "building (release)"
cargo build --release --workspace --all-targets

log "running the test suite"
export KEEL_BIN=$TARGET_DIR/release/keel
cargo test --release --workspace -- --test-threads=2

log "running librdkafka's own test suite against keel"
bash tests/librdkafka/run.sh

log "running the fault-injection runs (keel-faults, 60 s per nemesis and one mixed)"
bash tests/faults/run.sh
log "all tests passed"
