#!/usr/bin/env bash
# Runs every fuzz target (or those named after the time) for a bounded time each, one
# after another, and prints how many inputs libFuzzer tried. Not run in CI: it takes
# minutes and grows fuzz/corpus/, which is checked in and replayed by
# tests/fuzz_corpus.rs.
#
#   fuzz/run.sh [seconds-per-target, default 60] [target...]
#
# Works with a stable toolchain: without a sanitizer (the default here) cargo-fuzz
# needs no -Z flag. FUZZ_SANITIZER=address runs under AddressSanitizer instead, which
# takes -Zsanitizer, so RUSTC_BOOTSTRAP=1 is set for it; it runs about six times
# slower, and since the gateway forbids `unsafe` and its C dependencies are not built
# with it, it adds little: the invariants the harnesses assert (src/fuzzing/) are what
# finds bugs here. A crash leaves its reproducer in fuzz/artifacts/<target>/: check it
# in with the fix, and tests/fuzz_corpus.rs replays it from then on.
set -euo pipefail

sanitizer=${FUZZ_SANITIZER:-none}
if [ "$sanitizer" != none ]; then
    export RUSTC_BOOTSTRAP=1
fi

seconds=${1:-60}
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    targets=(request_head token proxy_header config)
fi

cd "$(dirname "$0")"
root=$(cd .. && pwd)
if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi

failed=()
for target in "${targets[@]}"; do
    mkdir -p "corpus/$target" "artifacts/$target"
    log="$root/target/fuzz-$target.log"
    echo "== $target, ${seconds}s (log: $log)"
    cargo fuzz run "$target" --sanitizer "$sanitizer" --target-dir "$root/target" \
        "corpus/$target" -- -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
        >"$log" 2>&1 || failed+=("$target")
    grep -E '^Done [0-9]+ runs' "$log" || true
    grep -E 'panicked at|^SUMMARY|Test unit written to' "$log" || true
done

if [ ${#failed[@]} -gt 0 ]; then
    echo "failed: ${failed[*]} (reproducers in fuzz/artifacts/)"
    exit 1
fi
