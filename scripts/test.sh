#!/usr/bin/env bash
# The whole test suite, from a fresh machine: set-up, C++ unit tests (plain,
# under ThreadSanitizer, and under AddressSanitizer + UBSan), a short run of
# every fuzz target from its committed seeds, then the Python tests (which build
# on the installed extension). Arguments go to pytest.
#   MPOOL_FUZZ_SECONDS   seconds per fuzz target (default 15; 0 skips them)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
log() { printf '\033[1m[test]\033[0m %s\n' "$*"; }

bash scripts/setup.sh --test
JOBS="$(nproc)"
export CCACHE_BASEDIR="$ROOT"

for variant in plain tsan asan; do
  dir="build/cpp-$variant"
  flags=(-DMPOOL_BUILD_TESTS=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo)
  [[ $variant == tsan ]] && flags+=(-DMPOOL_SANITIZE=thread)
  [[ $variant == asan ]] && flags+=(-DMPOOL_SANITIZE=address)  # ASan + UBSan
  log "C++ tests ($variant)"
  cmake -S . -B "$dir" "${flags[@]}" >/dev/null
  cmake --build "$dir" -j "$JOBS" >/dev/null
  TSAN_OPTIONS="halt_on_error=1 second_deadlock_stack=1 ${TSAN_OPTIONS:-}" \
  ASAN_OPTIONS="detect_leaks=1 strict_string_checks=1 detect_stack_use_after_return=1 check_initialization_order=1 ${ASAN_OPTIONS:-}" \
  UBSAN_OPTIONS="print_stacktrace=1 halt_on_error=1 ${UBSAN_OPTIONS:-}" \
    ctest --test-dir "$dir" --output-on-failure -j "$JOBS"
done

# Each fuzz target for a few seconds from its committed seeds only (a fresh
# corpus, a fixed seed): a crash, sanitizer report or broken invariant fails the
# test command. Long runs are scripts/fuzz.sh's job (docs/fuzzing.md).
FUZZ_SECONDS="${MPOOL_FUZZ_SECONDS:-15}"
if ((FUZZ_SECONDS > 0)); then
  for target in $(bash scripts/fuzz.sh --list); do
    corpus="$(mktemp -d)"
    FUZZ_CORPUS="$corpus" bash scripts/fuzz.sh "$target" "$FUZZ_SECONDS" -seed=1 -print_final_stats=0 \
      > "build/fuzz-$target.log" 2>&1 \
      || { tail -n 60 "build/fuzz-$target.log"; echo "fuzz target $target failed (log: build/fuzz-$target.log)" >&2; exit 1; }
    log "fuzz $target: $(grep -Eo 'Done [0-9]+ runs in [0-9]+ second\(s\)' "build/fuzz-$target.log" || echo ok)"
    rm -rf "$corpus"
  done
fi

log "Python tests"
.venv/bin/python -m pytest tests/python "$@"
