#!/usr/bin/env bash
# The whole test suite, from a fresh machine: set-up, C++ unit tests (plain and
# under ThreadSanitizer), then the Python tests (which build on the installed
# extension).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
log() { printf '\033[1m[test]\033[0m %s\n' "$*"; }

bash scripts/setup.sh --test
JOBS="$(nproc)"
export CCACHE_BASEDIR="$ROOT"

for variant in plain tsan; do
  dir="build/cpp-$variant"
  flags=(-DMPOOL_BUILD_TESTS=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo)
  [[ $variant == tsan ]] && flags+=(-DMPOOL_SANITIZE=thread)
  log "C++ tests ($variant)"
  cmake -S . -B "$dir" "${flags[@]}" >/dev/null
  cmake --build "$dir" -j "$JOBS" >/dev/null
  TSAN_OPTIONS="halt_on_error=1 second_deadlock_stack=1 ${TSAN_OPTIONS:-}" \
    ctest --test-dir "$dir" --output-on-failure -j "$JOBS"
done

log "Python tests"
.venv/bin/python -m pytest tests/python "$@"
