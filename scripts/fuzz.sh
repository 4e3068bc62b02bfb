#!/usr/bin/env bash
# Fuzzes feedgate-core with libFuzzer, one target after another.
#
#   bash scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]
#
# Defaults: 600 s per target, every target in fuzz/fuzz_targets/. Needs
# cargo-fuzz (`cargo install cargo-fuzz`) and the nightly toolchain
# (`rustup toolchain install nightly`); it runs `cargo +nightly fuzz`.
# Not run by CI.
#
# Runs one fuzzer at a time (-jobs=1 -workers=1) with -rss_limit_mb=2048
# -timeout=10. Corpora live in fuzz/corpus/<target> (git keeps only the
# seed-* files), crashes in fuzz/artifacts/<target>, logs in
# fuzz/logs/<target>.log. Prints each target's executions and whether it
# crashed; exits 1 if any target crashed. Save a crashing input under
# fuzz/regressions/<target>/ with its `.expected` outcome (see
# core/tests/fuzz_regressions.rs).
set -euo pipefail

cd "$(dirname "$0")/../fuzz"
seconds=${1:-600}
shift || true
if [ $# -gt 0 ]; then
    targets=("$@")
else
    targets=()
    for f in fuzz_targets/*.rs; do targets+=("$(basename "$f" .rs)"); done
fi

cargo +nightly fuzz build
mkdir -p logs
crashed=0
summary=()
for t in "${targets[@]}"; do
    mkdir -p "corpus/$t" "artifacts/$t"
    log="logs/$t.log"
    echo "== $t: ${seconds}s (log: fuzz/$log)"
    start=$(date +%s)
    rc=0
    # With -jobs, libFuzzer writes the job's output to fuzz-0.log and prints
    # it when the job ends; both land in the log.
    cargo +nightly fuzz run "$t" -- -max_total_time="$seconds" -jobs=1 -workers=1 \
        -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 >"$log" 2>&1 || rc=$?
    elapsed=$(( $(date +%s) - start ))
    rm -f fuzz-0.log
    runs=$(grep -oE 'stat::number_of_executed_units: *[0-9]+' "$log" | tail -1 | grep -oE '[0-9]+$' || true)
    if [ -z "$runs" ]; then
        runs=$(grep -oE '^Done [0-9]+ runs' "$log" | tail -1 | grep -oE '[0-9]+' || true)
    fi
    corpus=$(find "corpus/$t" -type f | wc -l)
    if [ "$rc" -ne 0 ] || grep -qE 'ERROR: libFuzzer|SUMMARY: (libFuzzer|AddressSanitizer)|panicked at' "$log"; then
        status="CRASHED (rc=$rc; input in fuzz/artifacts/$t/, see $log)"
        crashed=1
    else
        status="ok"
    fi
    line="$t: ${elapsed}s, ${runs:-?} executions, corpus $corpus files, $status"
    echo "$line"
    summary+=("$line")
done

echo
echo "== summary"
printf '%s\n' "${summary[@]}"
exit "$crashed"
