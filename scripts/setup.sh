#!/usr/bin/env bash
# Create .venv (if missing) and install stbp into it. Sourced by the other scripts.
# STBP_TORCH picks the torch requirement (default torch==2.13.0, a CPU build on our machines;
# the package itself accepts any torch >= 2.1). STBP_EXTRAS adds extras, e.g. "test".
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
python="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$python" -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check "${STBP_TORCH:-torch==2.13.0}"
extras="${STBP_EXTRAS:-}"
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".${extras:+[$extras]}"
