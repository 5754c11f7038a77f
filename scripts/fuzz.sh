#!/usr/bin/env bash
# Coverage-guided fuzzing of ploinkyd's input readers with atheris (libFuzzer for Python).
#
#   bash scripts/fuzz.sh                  every harness in fuzz/, 20 s each
#   FUZZ_SECONDS=300 bash scripts/fuzz.sh task config     some of them, longer
#
# Installs atheris into .venv when it is missing (a binary wheel from PyPI; it is not a
# project dependency). Each harness starts from its seeds (fuzz/seeds/<target>/) and a
# dictionary; new corpus entries and crashers go under $FUZZ_OUT (a fresh temporary
# directory unless set). Prints one line per target: runs, seconds, executions per second,
# crashes. Exits 1 if any harness crashed: add the crasher to tests/test_fuzz.py as an
# @example, then fix the reader.
set -euo pipefail

cd "$(dirname "$0")/.."
PY=.venv/bin/python
SECONDS_EACH=${FUZZ_SECONDS:-20}
OUT=${FUZZ_OUT:-$(mktemp -d /tmp/ploinky-fuzz.XXXXXX)}
mkdir -p "$OUT"
# The files the harnesses write for their targets (agent.toml, config files), on tmpfs.
FUZZ_SCRATCH=$(mktemp -d "$( [ -w /dev/shm ] && echo /dev/shm || echo /tmp )/ploinky-fuzz.XXXXXX")
export FUZZ_SCRATCH
trap 'rm -rf "$FUZZ_SCRATCH"' EXIT

if ! "$PY" -c "import atheris" 2>/dev/null; then
    echo "fuzz: installing atheris into .venv" >&2
    "$PY" -m pip install --quiet atheris
fi

declare -A DICT=([task]=json [api_body]=json [config]=toml [agent]=toml [plugin_manifest]=toml)
if [ "$#" -gt 0 ]; then
    targets=("$@")
else
    targets=()
    for harness in fuzz/fuzz_*.py; do
        name=${harness#fuzz/fuzz_}
        targets+=("${name%.py}")
    done
fi

# The repository's own examples are good seeds too.
seed_examples() {
    local target=$1 dir=$2 i=0 file
    case $target in
        agent) for file in agents/*/agent.toml; do cp "$file" "$dir/example-$((i++))"; done ;;
        plugin_manifest)
            for file in plugins/*/ploinky-plugin.toml; do cp "$file" "$dir/example-$((i++))"; done
            ;;
        config) for file in config/*.toml; do [ -f "$file" ] && cp "$file" "$dir/example-$((i++))"; done ;;
    esac
    return 0
}

failed=0
printf '%-16s %10s %8s %10s %8s\n' target runs seconds execs/s crashes
for target in "${targets[@]}"; do
    harness=fuzz/fuzz_$target.py
    [ -f "$harness" ] || { echo "fuzz: no harness $harness" >&2; exit 2; }
    corpus=$OUT/corpus-$target
    seeds=$OUT/seeds-$target
    mkdir -p "$corpus" "$seeds" "$OUT/crashes"
    cp fuzz/seeds/"$target"/* "$seeds"/ 2>/dev/null || true
    seed_examples "$target" "$seeds"
    log=$OUT/$target.log
    status=0
    "$PY" "$harness" -max_total_time="$SECONDS_EACH" -timeout=10 -rss_limit_mb=4096 \
        -dict="fuzz/${DICT[$target]:-json}.dict" -artifact_prefix="$OUT/crashes/$target-" \
        -print_final_stats=1 "$corpus" "$seeds" >"$log" 2>&1 || status=$?
    runs=$(sed -n 's/^Done \([0-9]*\) runs in \([0-9]*\) second.*/\1/p' "$log" | tail -1)
    took=$(sed -n 's/^Done \([0-9]*\) runs in \([0-9]*\) second.*/\2/p' "$log" | tail -1)
    if [ -z "$runs" ]; then  # stopped by a crash: libFuzzer's stats still count the runs
        runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
        took=$SECONDS_EACH
    fi
    crashes=$(find "$OUT/crashes" -name "$target-*" | wc -l)
    rate=$(( ${runs:-0} / (${took:-1} > 0 ? ${took:-1} : 1) ))
    printf '%-16s %10s %8s %10s %8s\n' "$target" "${runs:-0}" "${took:-?}" "$rate" "$crashes"
    if [ "$status" -ne 0 ] || [ "$crashes" -gt 0 ]; then
        failed=1
        echo "fuzz: $target crashed (exit $status); log $log:" >&2
        grep -E -A25 'Traceback|ERROR: libFuzzer|Uncaught Python exception' "$log" | head -60 >&2 || true
    fi
done
echo "fuzz: corpus, logs and crashers in $OUT"
exit "$failed"
