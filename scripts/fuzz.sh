#!/usr/bin/env bash
# Builds and runs one libFuzzer target of fuzz/ (see docs/fuzzing.md).
#   scripts/fuzz.sh <target> [seconds=60] [extra libFuzzer flags...]
#   scripts/fuzz.sh --list
# Targets are the mpool_add_fuzzer() calls in fuzz/CMakeLists.txt. Seeds come from
# fuzz/corpus/<target>/ (copied into the working corpus build/fuzz/corpus/<target>/,
# which grows across runs), a dictionary from fuzz/<target>.dict when present.
# Crashing inputs land in build/fuzz/artifacts/<target>/. FUZZ_CORPUS=<dir> uses
# <dir> as the working corpus instead (still seeded from fuzz/corpus/<target>/).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
log() { printf '\033[1m[fuzz]\033[0m %s\n' "$*"; }

if [[ "${1:-}" == "--list" ]]; then
  sed -n 's/^mpool_add_fuzzer(\([A-Za-z0-9_]*\).*/\1/p' fuzz/CMakeLists.txt
  exit 0
fi
TARGET="${1:?usage: scripts/fuzz.sh <target> [seconds] [libFuzzer flags...] (scripts/fuzz.sh --list)}"
SECONDS_TO_RUN="${2:-60}"
shift $(( $# >= 2 ? 2 : 1 ))
grep -q "^mpool_add_fuzzer(${TARGET}[ )]" fuzz/CMakeLists.txt \
  || { echo "unknown fuzz target '$TARGET'; known: $(bash "$0" --list | tr '\n' ' ')" >&2; exit 2; }

# clang with libFuzzer's runtime (Debian: clang + libclang-rt-<version>-dev).
if ! command -v clang++ >/dev/null; then
  if command -v apt-get >/dev/null && [[ $(id -u) == 0 ]]; then
    log "installing clang and its fuzzer runtime"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq --no-install-recommends clang >/dev/null
  else
    echo "scripts/fuzz.sh needs clang++ with libFuzzer (Debian: apt-get install clang libclang-rt-dev)" >&2
    exit 1
  fi
fi
CLANG_MAJOR="$(clang++ -dumpversion | cut -d. -f1)"
if [[ ! -f "$(clang++ -print-resource-dir)/lib/linux/libclang_rt.fuzzer-x86_64.a" ]]; then
  if command -v apt-get >/dev/null && [[ $(id -u) == 0 ]]; then
    log "installing libclang-rt-${CLANG_MAJOR}-dev"
    [[ -n "$(ls -A /var/lib/apt/lists 2>/dev/null | grep -v -e '^lock$' -e '^partial$')" ]] || apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "libclang-rt-${CLANG_MAJOR}-dev" >/dev/null
  else
    echo "libFuzzer runtime missing: apt-get install libclang-rt-${CLANG_MAJOR}-dev" >&2
    exit 1
  fi
fi

BUILD=build/fuzz
log "building $TARGET"
CC=clang CXX=clang++ cmake -S . -B "$BUILD" -DMPOOL_BUILD_FUZZ=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build "$BUILD" --target "$TARGET" -j "${FUZZ_JOBS:-2}" >/dev/null

CORPUS="${FUZZ_CORPUS:-$BUILD/corpus/$TARGET}"  # FUZZ_CORPUS: another working corpus (scripts/test.sh: a fresh one)
ARTIFACTS="$BUILD/artifacts/$TARGET"
mkdir -p "$CORPUS" "$ARTIFACTS"
[[ -d "fuzz/corpus/$TARGET" ]] && cp -n "fuzz/corpus/$TARGET"/* "$CORPUS"/ 2>/dev/null || true
flags=(-max_total_time="$SECONDS_TO_RUN" -artifact_prefix="$ARTIFACTS/" -print_final_stats=1)
[[ -f "fuzz/$TARGET.dict" ]] && flags+=(-dict="fuzz/$TARGET.dict")
log "running $TARGET for ${SECONDS_TO_RUN}s (corpus $CORPUS)"
exec "$BUILD/fuzz/$TARGET" "${flags[@]}" "$@" "$CORPUS"
