#!/usr/bin/env bash
# A short run of every fuzz target over its committed corpus (docs/fuzzing.md): builds the
# targets with cargo-fuzz (installed if missing), replays the corpus and fuzzes a few seconds
# more per target. Exits non-zero on any crash, panic, leak, timeout or out-of-memory.
#
#   scripts/fuzz-smoke.sh              # every target, FUZZ_SECONDS (default 15) each
#   scripts/fuzz-smoke.sh stomp_frame  # some targets
set -euo pipefail

CARGO_FUZZ_VERSION=0.13.2
SECONDS_PER_TARGET=${FUZZ_SECONDS:-15}
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

# cargo-fuzz passes nightly flags (-Z, sanitizer coverage): the stable toolchain takes them
# with the bootstrap setting.
export RUSTC_BOOTSTRAP=1
export CARGO_BUILD_JOBS=${CARGO_BUILD_JOBS:-1}

if ! cargo fuzz --version 2>/dev/null | grep -q "$CARGO_FUZZ_VERSION"; then
    nice -n 19 cargo install --locked "cargo-fuzz@$CARGO_FUZZ_VERSION"
fi

targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    mapfile -t targets < <(cargo fuzz list)
fi

if [ $# -eq 0 ]; then
    nice -n 19 cargo fuzz build -s none
else
    for target in "${targets[@]}"; do nice -n 19 cargo fuzz build -s none "$target"; done
fi

failed=0
passed=0
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for target in "${targets[@]}"; do
    mkdir -p "$work/$target"
    start=$(date +%s)
    # New inputs go to a scratch directory; the committed corpus is only read.
    if nice -n 19 cargo fuzz run -s none "$target" "$work/$target" "fuzz/corpus/$target" -- \
        -max_total_time="$SECONDS_PER_TARGET" -max_len=65536 -rss_limit_mb=2048 -timeout=10 \
        -artifact_prefix="$work/$target-" -print_final_stats=1 >"$work/$target.log" 2>&1; then
        passed=$((passed + 1))
        echo "$target: ok ($(grep -a -o 'stat::number_of_executed_units: *[0-9]*' "$work/$target.log" | grep -o '[0-9]*$') runs, $(( $(date +%s) - start )) s)"
    else
        echo "$target: FAILED"
        grep -a -E "panicked|ERROR|SUMMARY|Test unit written" -A 4 "$work/$target.log" | head -n 40
        failed=$((failed + 1))
    fi
done
echo "fuzz-smoke: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
