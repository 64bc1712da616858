#!/usr/bin/env bash
# Fault-injection runs of keel-faults (docs/TESTING.md, "Fault injection").
#
#   bash tests/faults/run.sh                 the default runs (part of tests/run.sh):
#                                            60 s of each nemesis alone, one mixed run
#   bash tests/faults/run.sh --long [SEED…]  the opt-in long runs: 10 minutes of each
#                                            nemesis per seed (default: 5 seeds), then
#                                            a summary; takes hours
#
# Needs root (iptables) and the release binaries keel and keel-faults in
# $CARGO_TARGET_DIR/release (tests/run.sh builds them). Each run writes report.txt,
# history.jsonl, plot.svg and the nodes' logs into its own directory under
# $KEEL_FAULT_RUNS (default: $CARGO_TARGET_DIR/fault-runs); data directories are kept
# only for runs that found anomalies. A run's last line states its anomaly count; this
# script fails if any run found one, or if the harness itself failed.
set -euo pipefail
cd "$(dirname "$0")/../.."
TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}
BIN=$TARGET_DIR/release/keel-faults
export KEEL_BIN=${KEEL_BIN:-$TARGET_DIR/release/keel}
RUNS=${KEEL_FAULT_RUNS:-$TARGET_DIR/fault-runs}
# The address block of docs/TESTING.md for the fault harness: 127.0.100.x.
BLOCK=${KEEL_FAULT_BLOCK:-100}

[ -x "$BIN" ] || { echo "tests/faults/run.sh: $BIN missing (cargo build --release -p keel-tests --bin keel-faults)" >&2; exit 2; }
[ -x "$KEEL_BIN" ] || { echo "tests/faults/run.sh: $KEEL_BIN missing (cargo build --release --bin keel)" >&2; exit 2; }

# Leftover rules of an interrupted run (the harness also removes them itself).
remove_leftover_rules() {
    # (grep finds nothing in the usual case; that must not become the script's status)
    { iptables -w -S INPUT 2>/dev/null | grep -- "--comment keel-faults-$BLOCK" | sed 's/^-A /-D /' |
        while read -r rule; do eval "iptables -w $rule" || true; done; } || true
}
trap remove_leftover_rules EXIT

failures=()
summary=()

# run NAME ARGS…: one keel-faults run into $RUNS/<stamp>-NAME.
run() {
    local name=$1; shift
    local dir
    dir="$RUNS/$(date +%Y%m%d-%H%M%S)-$name"
    mkdir -p "$dir"
    echo "== keel-faults $name: $*  ($dir)"
    local status=0
    "$BIN" --block "$BLOCK" --out "$dir" "$@" >"$dir/stdout.txt" 2>"$dir/stderr.txt" || status=$?
    local last
    last=$(tail -n 1 "$dir/stdout.txt" 2>/dev/null || true)
    grep -E '^(fault [0-9]+ |  recovery:|sends:|final read:|baseline)' "$dir/report.txt" 2>/dev/null | sed 's/^/   /' || true
    echo "   $last (exit $status)"
    summary+=("$name: $last (exit $status) $dir")
    if [ "$status" -ne 0 ]; then
        failures+=("$name ($dir)")
        tail -n 30 "$dir/stderr.txt" | sed 's/^/   stderr: /'
    fi
}

if [ "${1:-}" = --long ]; then
    shift
    seeds=("$@")
    [ ${#seeds[@]} -gt 0 ] || seeds=(101 202 303 404 505)
    for seed in "${seeds[@]}"; do
        for n in kill pause partition lose-unsynced corrupt voters reassign all; do
            nodes=3
            [ "$n" = reassign ] && nodes=5
            run "long-$n-seed$seed" --nemesis "$n" --time-limit 600 --seed "$seed" --nodes "$nodes"
        done
        run "long-split-all-seed$seed" --nemesis all --time-limit 600 --seed "$seed" --topology split --nodes 3
    done
else
    # Fixed seeds, so a failing default run replays with the same schedule.
    run kill          --nemesis kill          --time-limit 60 --seed 1
    run pause         --nemesis pause         --time-limit 60 --seed 2
    run partition     --nemesis partition     --time-limit 60 --seed 3
    run lose-unsynced --nemesis lose-unsynced --time-limit 60 --seed 4
    run corrupt       --nemesis corrupt       --time-limit 60 --seed 5
    run voters        --nemesis voters        --time-limit 60 --seed 6
    run reassign      --nemesis reassign      --time-limit 60 --seed 7 --nodes 4
    run mixed         --nemesis all           --time-limit 60 --seed 8
fi

echo
echo "== fault runs"
printf '   %s\n' "${summary[@]}"
if [ ${#failures[@]} -gt 0 ]; then
    echo "fault runs with anomalies or harness failures: ${failures[*]}" >&2
    exit 1
fi
exit 0
