#!/usr/bin/env bash
# Runs librdkafka's own test suite (Debian's librdkafka 2.0.2 source) against one keel
# broker, then against a 3-node keel cluster (default replication factor 3),
# and fails if any test expected to pass does not.
#
#   bash tests/librdkafka/run.sh                 the expected-to-pass tests, both setups
#   LRK_NODES=3 bash tests/librdkafka/run.sh     only the cluster's tests
#   TESTS=0001,0081/DeleteRecords bash tests/librdkafka/run.sh   chosen tests (NNNN/Sub: only
#                                                the sub-tests whose name contains Sub)
#
# The first run fetches the source with `apt-get source` (adding a deb-src entry derived
# from the machine's own apt sources when none exists), installs the build dependencies
# and builds the library and the test runner under $CARGO_TARGET_DIR/librdkafka-suite
# (2.5 to 6 minutes on 2 cores); later runs reuse that tree. The broker is
# target/release/keel: build it first (`cargo build --release --bin keel`).
#
# Environment:
#   TESTS            tests to run, comma-separated (default: EXPECTED_PASS below)
#   LRK_LISTEN       the single broker's address (default 127.0.0.71:19092, its own
#                    loopback address); the cluster's nodes are 127.0.0.7{2,3,4}:19092
#   LRK_NODES        1: only the single broker, 3: only the cluster (default: both)
#   KEEL_LOG         the broker's log filter (default info; `debug,keel::protocol=trace`
#                    adds a line per request with its API, version and client id)
#   LRK_FULL=1       run every test in full mode (without -Q: more messages, slower)
#   LRK_KEEP_DIR=1   keep the broker's data directory and log after the run
#   LRK_SRC_DIR=DIR  run the tests of another librdkafka source tree, already built
#                    (`./configure && make libs && make -C tests build`), instead of
#                    Debian's 2.0.2 (docs/COMPATIBILITY.md: client bugs of 2.0.2)
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$(pwd)
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
KEEL_BIN=${KEEL_BIN:-$TARGET_DIR/release/keel}

LIBRDKAFKA_VERSION=2.0.2
LIBRDKAFKA_DEB_VERSION=2.0.2-1
SUITE_DIR=$TARGET_DIR/librdkafka-suite
SRC_DIR=${LRK_SRC_DIR:-$SUITE_DIR/librdkafka-$LIBRDKAFKA_VERSION}
BUILT_STAMP=$SUITE_DIR/.built-$LIBRDKAFKA_DEB_VERSION
BUILD_DEPS=(liblz4-dev libsasl2-dev libzstd-dev rapidjson-dev dpkg-dev)

# The tests keel must pass: produce/consume/offsets first, then other broker tests that
# need nothing keel lacks. Tests that cannot pass yet (0014 among the first group) are
# listed, with the reason, in docs/COMPATIBILITY.md ("librdkafka test suite").
# 0004_conf is a local test (no broker), so -L skips it; it is run on its own with -l.
EXPECTED_PASS=0001,0002,0003,0005,0011,0012,0013,0015,0017,0022,0031,0034,0048,0054,0070,0073
EXPECTED_PASS+=,0007,0008,0016,0021,0035,0036,0039,0041,0044,0057,0059,0063,0065,0086,0110,0112
# 0081_admin stops at its first failing sub-test (CreateAcls): run the ones keel serves.
EXPECTED_PASS+=,0081/CreateTopics,0081/DeleteTopics,0081/CreatePartitions,0081/AlterConfigs
EXPECTED_PASS+=,0081/DescribeConfigs,0081/DeleteRecords
# Consumer groups and committed offsets on one node (the cluster runs the group set).
EXPECTED_PASS+=,0014,0020,0029,0040,0042,0060,0064,0067,0069,0083,0125,0130
EXPECTED_PASS+=,0081/ListConsumerGroups,0081/DescribeConsumerGroups,0081/DeleteGroups
EXPECTED_PASS+=,0081/DeleteConsumerGroupOffsets
EXPECTED_PASS_LOCAL=0004
# Tests whose broker sub-tests are skipped in quick mode (-Q): run in full mode.
FULL_MODE=0022,0018,0019,0102,0113
# Against the 3-node cluster: the produce/consume/offsets set again, 0090 (idempotence,
# read back through a consumer group), the consumer-group tests, and the produce set
# with -P (every producer idempotent).
EXPECTED_PASS_CLUSTER=0001,0002,0003,0005,0011,0012,0013,0015,0017,0022,0031,0034,0048,0054,0070,0073
EXPECTED_PASS_CLUSTER+=,0090
EXPECTED_PASS_CLUSTER+=,0018,0019,0030,0033,0050,0051,0056,0089,0091,0102,0118
# 0113 (cooperative rebalancing) in full mode, sub-test by sub-test: quick mode skips all
# but the first. Left out, with the reason in docs/COMPATIBILITY.md: h, i, j and n
# (librdkafka 2.0.2 hangs destroying a consumer after a topic deletion, its #4187),
# u (the 2.0.2 client crashes), o (needs a Java client).
for sub in a_assign_tests b_subscribe_with_cb_test c_subscribe_no_cb_test \
    d_change_subscription_add_topic e_change_subscription_remove_topic \
    f_assign_call_cooperative g_incremental_assign_call_eager k_add_partition \
    l_unsubscribe m_unsubscribe_2 s_subscribe_when_rebalancing \
    t_max_poll_interval_exceeded v_commit_during_rebalance x_incremental_rebalances; do
    EXPECTED_PASS_CLUSTER+=,0113/$sub
done
EXPECTED_PASS_CLUSTER_IDEMPOTENT=0001,0002,0003,0005,0011,0012,0013,0022,0034,0048
CLUSTER_IPS=(127.0.0.72 127.0.0.73 127.0.0.74)
CLUSTER_CLIENT_PORT=19092
CLUSTER_CONTROLLER_PORT=19093
# min.insync.replicas stays 1 (the suite creates topics with replication factor 1 too).
CLUSTER_SETTINGS=(--set default.replication.factor=3)
# The broker version the suite assumes: decides which tests and features it uses.
TEST_KAFKA_VERSION=3.7.0
# The default scenario of the suite's own trivup clusters auto-creates topics with 4
# partitions; several tests count on that.
BROKER_SETTINGS=(--set num.partitions=4 --set auto.create.topics.enable=true)
BROKER_START_TIMEOUT_SECS=60
BROKER_STOP_TIMEOUT_SECS=30
# test-runner enforces each test's own timeout; this only bounds a runner that hangs.
TEST_RUNNER_TIMEOUT_SECS=600

log() { printf '\n== librdkafka suite: %s ==\n' "$*"; }

as_root() {
    if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
        echo "tests/librdkafka/run.sh: need root (or sudo) to run: $*" >&2; exit 1; fi
}

# A deb-src entry for every deb entry of the machine's own apt sources, unless one exists.
ensure_deb_src() {
    if grep -rqsE '^(Types:.*deb-src|deb-src[[:space:]])' /etc/apt/sources.list /etc/apt/sources.list.d/; then
        return
    fi
    log "adding deb-src entries derived from the apt sources"
    if [ -f /etc/apt/sources.list.d/debian.sources ]; then
        sed 's/^Types: deb$/Types: deb-src/' /etc/apt/sources.list.d/debian.sources |
            as_root tee /etc/apt/sources.list.d/deb-src.sources >/dev/null
    elif [ -f /etc/apt/sources.list ]; then
        sed -n 's/^deb[[:space:]]/deb-src /p' /etc/apt/sources.list |
            as_root tee /etc/apt/sources.list.d/deb-src.list >/dev/null
    else
        echo "tests/librdkafka/run.sh: no apt sources to derive a deb-src entry from" >&2
        exit 1
    fi
    as_root apt-get update -qq
}

install_build_deps() {
    local missing=()
    for p in "${BUILD_DEPS[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        log "installing ${missing[*]}"
        as_root apt-get update -qq
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
}

build_suite() {
    if [ -n "${LRK_SRC_DIR:-}" ]; then
        [ -x "$SRC_DIR/tests/test-runner" ] && return
        echo "tests/librdkafka/run.sh: $SRC_DIR/tests/test-runner missing: build that tree first" >&2
        exit 1
    fi
    [ -f "$BUILT_STAMP" ] && [ -x "$SRC_DIR/tests/test-runner" ] && return
    ensure_deb_src
    install_build_deps
    local started=$SECONDS
    log "fetching and building librdkafka $LIBRDKAFKA_DEB_VERSION and its tests in $SUITE_DIR"
    rm -rf "$SUITE_DIR"
    mkdir -p "$SUITE_DIR"
    (
        cd "$SUITE_DIR"
        # A stale package list may not know the source package yet.
        apt-get source -qq "librdkafka=$LIBRDKAFKA_DEB_VERSION" >fetch.log 2>&1 || {
            as_root apt-get update -qq
            apt-get source -qq "librdkafka=$LIBRDKAFKA_DEB_VERSION" >fetch.log 2>&1
        }
        cd "$SRC_DIR"
        ./configure --disable-gssapi >"$SUITE_DIR/configure.log" 2>&1
        make -j2 libs >"$SUITE_DIR/make-libs.log" 2>&1
        make -C tests build >"$SUITE_DIR/make-tests.log" 2>&1
    ) || {
        echo "tests/librdkafka/run.sh: building the suite failed; logs in $SUITE_DIR" >&2
        exit 1
    }
    touch "$BUILT_STAMP"
    log "built in $((SECONDS - started)) s"
}

BROKER_PIDS=()
RUN_DIR=
stop_brokers() {
    local pid waited
    for pid in "${BROKER_PIDS[@]}"; do
        kill -0 "$pid" 2>/dev/null && kill -TERM "$pid"
    done
    for pid in "${BROKER_PIDS[@]}"; do
        waited=0
        while kill -0 "$pid" 2>/dev/null && [ $waited -lt $((BROKER_STOP_TIMEOUT_SECS * 10)) ]; do
            sleep 0.1
            waited=$((waited + 1))
        done
        kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
        wait "$pid" 2>/dev/null || true
    done
    BROKER_PIDS=()
}
cleanup() {
    stop_brokers
    if [ -n "$RUN_DIR" ] && [ "${LRK_KEEP_DIR:-0}" != 1 ]; then rm -rf "$RUN_DIR"; fi
}
trap cleanup EXIT

# Starts one node: start_node NAME LISTEN [server args...]; its log is $RUN_DIR/NAME.log.
start_node() {
    local name=$1 listen=$2
    shift 2
    KEEL_LOG=${KEEL_LOG:-info,openraft=warn} "$KEEL_BIN" server \
        --data-dir "$RUN_DIR/$name" --listen "$listen" "${BROKER_SETTINGS[@]}" "$@" \
        >"$RUN_DIR/$name.log" 2>&1 &
    BROKER_PIDS+=($!)
}

# Waits until every started node listens on its client address.
wait_listening() {
    local listen host port waited
    for listen in "$@"; do
        host=${listen%:*} port=${listen##*:} waited=0
        # The listener opens only once the node has registered and applied its metadata.
        until (exec 3<>"/dev/tcp/$host/$port") 2>/dev/null; do
            if [ $waited -ge $((BROKER_START_TIMEOUT_SECS * 10)) ]; then
                echo "tests/librdkafka/run.sh: keel did not listen on $listen in time; logs:" >&2
                tail -n 20 "$RUN_DIR"/*.log >&2
                exit 1
            fi
            sleep 0.1
            waited=$((waited + 1))
        done
    done
}

# Runs one test (NNNN, or NNNN/Subtest for the sub-tests whose name contains Subtest)
# with run-test.sh in its own test-runner, so that a test that hangs (test-runner then
# exits at once) cannot take the others with it. Prints one line for it; succeeds only
# if the test ran and passed.
run_one() {
    RUNS=$((RUNS + 1))
    local test=${1%%/*} mode_flag=$2 subtest= started=$SECONDS
    local out=$RUN_DIR/$(printf %03d $RUNS)-${1//\//-}${2//[^A-Za-z]/}.log
    local status=0 quick=-Q
    [[ $1 == */* ]] && subtest=${1#*/}
    [[ ",$FULL_MODE," == *",$test,"* || ${LRK_FULL:-0} == 1 ]] && quick=
    (
        cd "$SRC_DIR/tests"
        TESTS=$test SUBTESTS=$subtest RDKAFKA_TEST_CONF=$RUN_DIR/test.conf \
            TEST_KAFKA_VERSION=$TEST_KAFKA_VERSION \
            timeout --kill-after=10 "$TEST_RUNNER_TIMEOUT_SECS" ./run-test.sh $mode_flag $quick -E
    ) >"$out" 2>&1 || status=$?
    rm -f "$SRC_DIR"/tests/stats_*.json
    local verdict=FAILED
    if [ $status -eq 0 ]; then
        verdict=PASSED
        # test-runner also exits 0 when its filters left nothing to run.
        grep -q "Test ${test}_[a-z0-9_]* PASSED" "$out" || verdict=SKIPPED
        if [ -n "$subtest" ]; then
            # (not grep -q: under pipefail, sed killed by SIGPIPE when grep stops
            # early would turn a pass in a long log into SKIPPED)
            sed 's/\x1b\[[0-9;]*m//g' "$out" | grep "\[ [^ ]*${subtest}.*: PASS (" >/dev/null ||
                verdict=SKIPPED
        fi
    fi
    printf '%-7s %s %s (%d s)\n' "$verdict" "$1" "$mode_flag" "$((SECONDS - started))"
    [ $verdict = PASSED ]
}

RUNS=0
PASSED=0
FAILED=0
FAILURES=()
# run_set FLAGS TESTS: runs each test with run-test.sh's FLAGS, counting the verdicts.
run_set() {
    local flags=$1 test
    for test in ${2//,/ }; do
        if run_one "$test" "$flags"; then
            PASSED=$((PASSED + 1))
        else
            FAILED=$((FAILED + 1))
            FAILURES+=("$test ($flags)")
        fi
    done
}

single_broker() {
    local listen=${LRK_LISTEN:-127.0.0.71:19092}
    local selected=${TESTS:-$EXPECTED_PASS}
    start_node broker "$listen"
    wait_listening "$listen"
    printf 'bootstrap.servers=%s\n' "$listen" >"$RUN_DIR/test.conf"
    log "running tests $selected against one keel broker on $listen (logs in $RUN_DIR)"
    local started=$SECONDS
    run_set -L "$selected"
    [ -z "${TESTS:-}" ] && run_set -l "$EXPECTED_PASS_LOCAL"
    log "single broker: ran in $((SECONDS - started)) s"
    stop_brokers
}

cluster() {
    local voters= listens=() i ip
    for i in 1 2 3; do
        ip=${CLUSTER_IPS[$((i - 1))]}
        voters+=${voters:+,}$i@$ip:$CLUSTER_CONTROLLER_PORT
        listens+=("$ip:$CLUSTER_CLIENT_PORT")
    done
    for i in 1 2 3; do
        ip=${CLUSTER_IPS[$((i - 1))]}
        start_node "node$i" "$ip:$CLUSTER_CLIENT_PORT" --node-id "$i" \
            --roles broker,controller --controller-listen "$ip:$CLUSTER_CONTROLLER_PORT" \
            --controller-quorum-voters "$voters" "${CLUSTER_SETTINGS[@]}"
    done
    wait_listening "${listens[@]}"
    local bootstrap
    bootstrap=$(IFS=,; echo "${listens[*]}")
    printf 'bootstrap.servers=%s\n' "$bootstrap" >"$RUN_DIR/test.conf"
    local selected=${TESTS:-$EXPECTED_PASS_CLUSTER}
    log "running tests $selected against a 3-node keel cluster $bootstrap (logs in $RUN_DIR)"
    local started=$SECONDS
    run_set -L "$selected"
    if [ -z "${TESTS:-}" ]; then
        log "again with every producer idempotent (-P): $EXPECTED_PASS_CLUSTER_IDEMPOTENT"
        run_set "-L -P" "$EXPECTED_PASS_CLUSTER_IDEMPOTENT"
    fi
    log "cluster: ran in $((SECONDS - started)) s"
    stop_brokers
}

main() {
    if [ ! -x "$KEEL_BIN" ]; then
        echo "tests/librdkafka/run.sh: $KEEL_BIN not found: cargo build --release --bin keel" >&2
        exit 1
    fi
    build_suite
    RUN_DIR=$(mktemp -d "${TMPDIR:-/tmp}/keel-librdkafka-XXXXXX")
    case ${LRK_NODES:-both} in
        1) single_broker ;;
        3) cluster ;;
        *) single_broker; cluster ;;
    esac
    echo "librdkafka: $PASSED passed, $FAILED failed"
    if [ $FAILED -ne 0 ]; then
        local f
        for f in "${FAILURES[@]}"; do
            local test=${f%% *} flags=${f#* }
            local log_file=$RUN_DIR/${test//\//-}${flags//[^A-Za-z]/}.log
            echo "---- $f: failure lines (full output: $log_file) ----" >&2
            # Each failure: the "### Test ... failed at" line and the reason after it.
            sed 's/\x1b\[[0-9;]*m//g' "$log_file" |
                grep -A1 -E '^### Test ".*" failed' | grep -v '^--$' | tail -12 >&2 || true
        done
        for f in "$RUN_DIR"/*.log; do
            case $f in */broker.log|*/node?.log) ;; *) continue ;; esac
            echo "---- broker log tail ($f) ----" >&2
            tail -20 "$f" | sed 's/\x1b\[[0-9;]*m//g' >&2
        done
        LRK_KEEP_DIR=1
        exit 1
    fi
}

main "$@"
